"""The shortcuts taken for full-size series give the same objects and numbers as the straightforward way:
the SR's image library completed outside highdicom equals highdicom's own, and pyradiomics on the
label's bounding box equals pyradiomics on the whole volume."""

from __future__ import annotations

import copy

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicomnode.errors import OutputError, QuantifyError
from dicomnode.imaging.quantify import make_extractor, quantify_arrays
from dicomnode.outputs.derived import DROPPED_KEYWORDS, header_copy
from dicomnode.outputs.library import IMAGE_LIBRARY, complete_image_library, is_uniform, library_seed
from dicomnode.outputs.package import write_result_package
from tests.support import shared_data


@pytest.fixture(scope="module")
def processed(real_ct_processed):  # noqa: ANN001
    return real_ct_processed


def _library(ds: pydicom.Dataset) -> pydicom.Dataset:
    return next(
        item for item in ds.ContentSequence
        if (item.ConceptNameCodeSequence[0].CodingSchemeDesignator,
            item.ConceptNameCodeSequence[0].CodeValue) == IMAGE_LIBRARY
    )


def test_completed_library_equals_highdicoms_full_library(processed, tmp_path):
    sources = processed.sources
    assert is_uniform(sources)
    write_result_package(processed, tmp_path)
    written = _library(pydicom.dcmread(tmp_path / "sr.dcm"))
    expected = hd.sr.ImageLibrary(list(sources))[0]
    assert len(written.ContentSequence[0].ContentSequence) == len(sources)
    assert written == expected
    uids = [item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            for item in written.ContentSequence[0].ContentSequence if item.ValueType == "IMAGE"]
    assert uids == [ds.SOPInstanceUID for ds in sources]  # every source, in source order


def test_non_uniform_series_gets_highdicoms_library_for_every_image(processed):
    sources = list(processed.sources)
    sources[3] = copy.deepcopy(sources[3])  # Dataset.copy() would share the element dict
    sources[3].SliceThickness = "2.5"
    assert not is_uniform(sources)
    assert library_seed(sources, [7]) == sources
    assert library_seed(processed.sources, [7, 2, 7]) == [processed.sources[2], processed.sources[7]]
    assert library_seed(processed.sources, []) == [processed.sources[0]]


def test_completing_a_report_without_a_library_is_refused():
    report = pydicom.Dataset()
    report.ContentSequence = []
    with pytest.raises(OutputError, match="111028"):
        complete_image_library(report, [])


@pytest.mark.parametrize("classes", [("firstorder",), ("shape", "glcm", "glszm")])
def test_bounding_box_features_equal_whole_volume_features(processed, classes):
    import SimpleITK as sitk

    mask = processed.segments[1].mask  # spleen: a small box inside the 512x512 slices
    cropped = quantify_arrays(processed.image, mask, processed.spacing, feature_classes=classes)
    image = sitk.GetImageFromArray(processed.image)
    label = sitk.GetImageFromArray(mask.astype(np.uint8))
    for img in (image, label):
        img.SetSpacing(tuple(float(s) for s in processed.spacing[::-1]))
    whole = make_extractor({"additionalInfo": False}, classes).execute(image, label, label=1)
    whole = {k: float(v) for k, v in whole.items() if not k.startswith("diagnostics_")}
    assert whole and set(whole) <= set(cropped)
    for name, value in whole.items():
        assert cropped[name] == pytest.approx(value, rel=1e-9, abs=1e-9), name


def test_normalised_features_use_the_whole_image(processed):
    mask = processed.segments[1].mask
    image = processed.image.copy()
    far = image[:, :20, :20]
    far[...] = far * 3.0  # changes the whole-image statistics, never the spleen's voxels
    args = dict(feature_classes=("firstorder",), settings={"normalize": True})
    first = quantify_arrays(processed.image, mask, processed.spacing, **args)
    second = quantify_arrays(image, mask, processed.spacing, **args)
    assert first["original_firstorder_Mean"] != pytest.approx(second["original_firstorder_Mean"], rel=1e-6)



def test_selected_features_equal_the_full_class_and_unknown_names_are_refused(processed):
    mask = processed.segments[1].mask
    names = ["original_firstorder_Mean", "original_firstorder_StandardDeviation", "original_glcm_Contrast"]
    full = quantify_arrays(processed.image, mask, processed.spacing, feature_classes=("firstorder", "glcm"))
    some = quantify_arrays(processed.image, mask, processed.spacing, feature_classes=("firstorder", "glcm"),
                           features=names)
    assert set(names) <= set(some) < set(full)
    assert "original_firstorder_Skewness" not in some
    for name in [*names, "voxel_count", "volume_ml"]:
        assert some[name] == pytest.approx(full[name], rel=1e-12), name
    with pytest.raises(QuantifyError, match="original_firstorder_Meen"):
        quantify_arrays(processed.image, mask, processed.spacing, feature_classes=("firstorder",),
                        features=["original_firstorder_Meen"])


@pytest.mark.parametrize("keep_private", [False, True])
def test_header_copy_equals_a_pruned_deep_copy_and_shares_nothing(keep_private):
    source = pydicom.dcmread(sorted(shared_data("ct-abdomen-20", "dicom").glob("*.dcm"))[0])
    expected = copy.deepcopy(source)
    for keyword in DROPPED_KEYWORDS:
        if keyword in expected:
            delattr(expected, keyword)
    if not keep_private:
        expected.remove_private_tags()
    got = header_copy(source, keep_private_tags=keep_private)
    assert "PixelData" not in got and any(e.VR == "SQ" for e in got)
    assert got == expected
    assert any(e.tag.is_private for e in got) == keep_private
    before = copy.deepcopy(source)
    got.ImageType = ["DERIVED", "SECONDARY"]
    got.PatientName = "CHANGED"
    next(e for e in got if e.VR == "SQ" and len(e.value)).value[0].CodeMeaning = "changed"
    assert source == before
