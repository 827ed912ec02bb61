"""Volume I/O: geometry, sorting, rescale, multi-frame, compressed input and clear errors."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dicomnode.errors import VolumeError
from dicomnode.imaging.volume import load_series, read_volume, resample_onto, stored_values
from tests.phantoms import make_ct_phantom, write_dicom_series
from tests.support import shared_data


@pytest.fixture(scope="module")
def phantom():
    return make_ct_phantom(shape=(12, 48, 48), spacing=(4.0, 6.0, 6.0), lesions=False, noise_sd=5.0)


def test_real_ct_geometry_matches_the_reference_label_grid() -> None:
    volume = read_volume(shared_data("ct-abdomen-20", "dicom"))
    assert volume.shape == (20, 512, 512)
    assert volume.spacing == pytest.approx((2.0, 0.9765625, 0.9765625))
    # sorted by position along the normal (ascending z), not by InstanceNumber (which descends here)
    assert volume.origin[2] == pytest.approx(-804.5)
    assert [int(ds.InstanceNumber) for ds in volume.datasets][:2] == [286, 285]
    assert volume.units == "HU" and volume.array.dtype == np.float32
    assert volume.array.min() == pytest.approx(-1024.0)
    reference = sitk.ReadImage(str(shared_data("ct-abdomen-20", "reference-labels.nrrd")))
    labels = resample_onto(reference, volume)
    assert np.array_equal(labels, sitk.GetArrayFromImage(reference))  # same grid, same slice order
    assert 60 < float(np.median(volume.array[labels == 5])) < 140  # liver in HU


def test_jpeg2000_series_decodes_identically_and_gets_stable_uids() -> None:
    plain = read_volume(shared_data("ct-abdomen-20", "dicom"))
    j2k = read_volume(shared_data("ct-abdomen-20", "dicom-jpeg2000"))
    assert np.array_equal(plain.array, j2k.array)
    series = {str(ds.SeriesInstanceUID) for ds in j2k.datasets}
    assert len(series) == 1 and series.pop()  # empty UIDs repaired, one per series
    again = read_volume(shared_data("ct-abdomen-20", "dicom-jpeg2000"))
    assert again.datasets[0].SeriesInstanceUID == j2k.datasets[0].SeriesInstanceUID  # deterministic
    assert all(ds.SOPInstanceUID for ds in j2k.datasets)


def test_shuffled_instance_numbers_are_sorted_by_position(tmp_path, phantom) -> None:
    files = write_dicom_series(phantom, tmp_path, shuffle_instance_numbers=True)
    volume = load_series(reversed(files))
    assert volume.shape == phantom.image.shape
    assert np.abs(volume.array - phantom.image).max() <= 0.51  # stored as integers
    assert volume.spacing == pytest.approx(phantom.spacing)
    assert volume.origin == pytest.approx(phantom.origin)


def test_duplicate_positions_fail_naming_the_files() -> None:
    with pytest.raises(VolumeError, match=r"duplicate slice position.*CT26\.dcm.*CT28\.dcm"):
        read_volume(shared_data("dupe-positions"))


def test_missing_slice_is_irregular_spacing(tmp_path, phantom) -> None:
    files = write_dicom_series(phantom, tmp_path, drop_slices=(5,))
    with pytest.raises(VolumeError, match=r"Irregular slice spacing.*8\.00 mm"):
        load_series(files)


def test_gantry_tilt_is_refused(tmp_path, phantom) -> None:
    files = write_dicom_series(phantom, tmp_path, tilt_deg=15.0)
    with pytest.raises(VolumeError, match="gantry tilt"):
        load_series(files)


def test_two_series_non_images_and_mixed_sizes_are_refused(tmp_path, phantom) -> None:
    a = write_dicom_series(phantom, tmp_path / "a")
    b = write_dicom_series(phantom, tmp_path / "b")
    with pytest.raises(VolumeError, match="mixes 2 series"):
        load_series(a + b[:1])
    seg = shared_data("ct-abdomen-20", "reference-seg-liver-spleen-aorta.dcm")
    with pytest.raises(VolumeError, match=r"not images.*Segmentation"):
        load_series([*a, seg])
    small = make_ct_phantom(shape=(12, 40, 40), spacing=(4.0, 6.0, 6.0), lesions=False)
    c = write_dicom_series(small, tmp_path / "c", series_uid=str(pydicom.dcmread(a[0]).SeriesInstanceUID))
    with pytest.raises(VolumeError, match="matrix size"):
        load_series(a[:6] + c[6:])


def test_not_dicom_is_a_clear_error(tmp_path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_text("not dicom")
    with pytest.raises(VolumeError, match="not a DICOM file"):
        load_series([junk])
    with pytest.raises(VolumeError, match="No DICOM files"):
        read_volume(tmp_path)


def test_stored_values_round_trip_and_clip(tmp_path, phantom) -> None:
    files = write_dicom_series(phantom, tmp_path, unsigned=True, intercept=-1024.0)
    volume = load_series(files)
    stored = stored_values(volume, volume.array)
    original = pydicom.dcmread(files[0]).pixel_array
    assert stored[0].dtype == np.uint16 and np.array_equal(stored[0], original)
    clipped = stored_values(volume, np.full(volume.shape, -5000.0, dtype=np.float32))
    assert int(clipped[0].min()) == 0  # below the representable range → 0, not wrapped


def test_enhanced_multiframe_ct_loads_like_the_single_frames(tmp_path, phantom) -> None:
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    files = write_dicom_series(phantom, tmp_path / "single")
    datasets = [pydicom.dcmread(f) for f in files]
    multi = LegacyConvertedEnhancedCTImage(
        legacy_datasets=datasets, series_instance_uid=pydicom.uid.generate_uid(), series_number=2,
        sop_instance_uid=pydicom.uid.generate_uid(), instance_number=1,
    )
    path = tmp_path / "multi.dcm"
    multi.save_as(path)
    single, enhanced = load_series(files), load_series([path])
    assert enhanced.shape == single.shape
    assert np.array_equal(enhanced.array, single.array)
    assert enhanced.origin == pytest.approx(single.origin)
    assert enhanced.frames and len(enhanced.datasets) == 1


def test_nrrd_input(tmp_path, phantom) -> None:
    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(phantom.to_sitk(), str(path))
    volume = read_volume(path)
    assert volume.shape == phantom.image.shape and volume.spacing == pytest.approx(phantom.spacing)
    with pytest.raises(VolumeError, match="does not exist"):
        read_volume(tmp_path / "missing.nrrd")
