"""Result package on the real CT (../shared/data/ct-abdomen-20): SEG, derived series, SR, capture.

Masks are the reference labels (liver = 5, spleen = 1) resampled by geometry onto the DICOM grid, so the
NRRD/DICOM slice order is handled by positions, not by index. The enhanced array is the CT plus a ramp.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage

from dicomnode.config import ViewerProfile
from dicomnode.errors import OutputError
from dicomnode.imaging.qc import QCFlag, QCStatus, SegmentQC
from dicomnode.imaging.volume import read_volume, resample_onto
from dicomnode.outputs.api import ProcessedSeries, Provenance, Segment, Window
from dicomnode.outputs.codes import DEFAULT_SR_FEATURES, LESION_SR_FEATURES
from dicomnode.outputs.package import write_result_package
from dicomnode.outputs.provenance import read_provenance
from dicomnode.outputs.seg import SegSpec, build_seg
from dicomnode.outputs.segmask import seg_mask
from dicomnode.outputs.uids import UIDFactory, params_hash
from dicomnode.route.ownership import own_output_reason
from dicomnode.send.deidentify import Deidentifier
from dicomnode.send.results import result_kind, wanted
from tests.support import shared_data

PARAMS = {"sigma": 1.0, "organs": ["liver", "spleen"]}


def make_processed(params: dict = PARAMS) -> ProcessedSeries:
    volume = read_volume(shared_data("ct-abdomen-20", "dicom"))
    labels = resample_onto(sitk.ReadImage(str(shared_data("ct-abdomen-20", "reference-labels.nrrd"))), volume)
    provenance = Provenance(
        pipeline="liver-ct", pipeline_version="1.2", params=params, params_hash=params_hash(params),
        node_version="0.1.0", steps=("Gaussian smoothing", "Unsharp mask"), rule="ct-abdomen",
        ruleset_hash="f" * 64,
    )
    ramp = np.linspace(0, 20, volume.shape[2], dtype=np.float32)[None, None, :]
    return ProcessedSeries(
        sources=volume.datasets,
        segments=(
            Segment("Liver", "liver", labels == 5, (221, 130, 101)),
            Segment("Spleen", "spleen", labels == 1, (157, 108, 162)),
        ),
        provenance=provenance,
        enhanced=volume.array + ramp,
        image=volume.array,
        spacing=volume.spacing,
        window=(60.0, 160.0),
    )


@pytest.fixture(scope="module")
def processed(real_ct_processed) -> ProcessedSeries:  # noqa: ANN001
    return real_ct_processed


@pytest.fixture(scope="module")
def package(processed, tmp_path_factory):
    out = tmp_path_factory.mktemp("package")
    paths = write_result_package(processed, out, ViewerProfile(secondary_capture=True))
    return out, paths


def test_labels_land_on_the_right_dicom_slices(processed):
    nrrd = sitk.ReadImage(str(shared_data("ct-abdomen-20", "reference-labels.nrrd")))
    z_nrrd = [nrrd.TransformIndexToPhysicalPoint((0, 0, k))[2] for k in range(nrrd.GetSize()[2])]
    z_dicom = [float(ds.ImagePositionPatient[2]) for ds in processed.sources]
    assert z_dicom == pytest.approx(z_nrrd)  # both ascending: voxel k of the NRRD is source k
    liver = processed.segments[0].mask
    assert liver.sum() == (sitk.GetArrayFromImage(nrrd) == 5).sum() > 10000


def test_package_files_have_stable_names(package, processed):
    out, paths = package
    names = sorted(str(p.relative_to(out)) for p in paths)
    n = len(processed.sources)
    assert names == sorted(
        ["seg.dcm", "sr.dcm", "ko.dcm"] + [f"derived/IM{i:05d}.dcm" for i in range(1, n + 1)]
        + ["capture.dcm"]
    )


def test_seg_is_coded_on_the_source_grid_and_round_trips(package, processed):
    out, _ = package
    seg = hd.seg.segread(out / "seg.dcm")
    src = processed.sources[0]
    assert seg.StudyInstanceUID == src.StudyInstanceUID
    assert seg.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert seg.SeriesInstanceUID != src.SeriesInstanceUID
    assert seg.SegmentationType == "BINARY"
    assert seg.ContentCreatorName == "DICOMNODE^AUTOMATIC"
    assert seg.SeriesDescription == "liver-ct segmentation" and int(seg.SeriesNumber) == 1001
    types = [(s.SegmentLabel, s.SegmentedPropertyTypeCodeSequence[0].CodeValue) for s in seg.SegmentSequence]
    assert types == [("Liver", "10200004"), ("Spleen", "78961009")]
    for item in seg.SegmentSequence:
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
        assert item.SegmentAlgorithmName == "liver-ct" and item.SegmentAlgorithmType == "AUTOMATIC"
        assert len(item.RecommendedDisplayCIELabValue) == 3
    non_empty = sum(int(s.mask[k].any()) for s in processed.segments for k in range(len(processed.sources)))
    assert int(seg.NumberOfFrames) == non_empty  # empty frames omitted by default
    for number, segment in enumerate(processed.segments, start=1):
        assert np.array_equal(seg_mask(seg, processed.sources, number), segment.mask)
    assert read_provenance(seg)["params_hash"] == processed.provenance.params_hash
    equipment = [e for e in seg.ContributingEquipmentSequence if e.Manufacturer == "dicomnode"][0]
    assert "ruleset_hash=" + "f" * 64 in equipment.ContributionDescription


def test_seg_keeps_all_frames_when_the_profile_asks(processed):
    uids = UIDFactory(processed.sources[0].SeriesInstanceUID, "liver-ct", "x")
    seg = build_seg(processed.sources, processed.segments, processed.provenance, uids,
                    SegSpec(omit_empty_frames=False))
    assert int(seg.NumberOfFrames) == 2 * len(processed.sources)


def test_derived_series_keeps_geometry_and_stored_representation(package, processed):
    out, _ = package
    first_uid = None
    for k, source in enumerate(processed.sources):
        ds = pydicom.dcmread(out / "derived" / f"IM{k + 1:05d}.dcm")
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                        "FrameOfReferenceUID", "StudyInstanceUID", "BitsStored", "PixelRepresentation",
                        "RescaleIntercept"):
            assert ds[keyword].value == source[keyword].value, keyword
        assert list(ds.ImageType[:2]) == ["DERIVED", "SECONDARY"]
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert [c.CodeValue for c in ds.DerivationCodeSequence] == ["113088", "113089"]
        assert "Gaussian smoothing" in ds.DerivationDescription
        assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (60.0, 160.0)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        expected = np.clip(np.rint(processed.enhanced[k]), -1024, 4095 - 1024)
        assert np.array_equal(hu, expected)
        first_uid = first_uid or ds.SeriesInstanceUID
        assert ds.SeriesInstanceUID == first_uid != source.SeriesInstanceUID
        assert "SIEMENS CSA HEADER" not in str(ds)  # source private tags dropped
        assert read_provenance(ds)["pipeline"] == "liver-ct"


def test_derived_series_says_what_its_values_mean(processed, tmp_path):
    """HU-declaring series: RescaleType HU and every window with its explanation (organ first); a display
    series (non-linear enhancement): RescaleType US and ImageComments that say so."""
    windows = (Window(95.0, 150.0, "LIVER"), Window(40.0, 400.0, "ABDOMEN"))
    quantitative = dataclasses.replace(processed, windows=windows)
    write_result_package(quantitative, tmp_path / "q", ViewerProfile(send_sr=False, send_seg=False))
    ds = pydicom.dcmread(tmp_path / "q" / "derived" / "IM00001.dcm")
    assert ds.RescaleType == "HU"
    assert [float(v) for v in ds.WindowCenter] == [95.0, 40.0]
    assert [float(v) for v in ds.WindowWidth] == [150.0, 400.0]
    assert list(ds.WindowCenterWidthExplanation) == ["LIVER", "ABDOMEN"]
    assert "keep the source's Hounsfield units" in ds.ImageComments
    display = dataclasses.replace(processed, windows=windows[1:], enhanced_values="display")
    write_result_package(display, tmp_path / "d", ViewerProfile(send_sr=False, send_seg=False))
    ds = pydicom.dcmread(tmp_path / "d" / "derived" / "IM00001.dcm")
    assert ds.RescaleType == "US"
    assert ds.ImageComments.startswith("DISPLAY ONLY") and "not Hounsfield units" in ds.ImageComments
    assert "DISPLAY ONLY" in ds.SeriesDescription
    assert (float(ds.WindowCenter), float(ds.WindowWidth), ds.WindowCenterWidthExplanation) == (
        40.0, 400.0, "ABDOMEN")


def _groups(sr):
    return sr.ContentSequence[-1].ContentSequence  # Imaging Measurements container


def test_sr_volumes_reference_the_seg_and_match_voxel_count(package, processed):
    out, _ = package
    sr = hd.sr.srread(out / "sr.dcm")
    seg = pydicom.dcmread(out / "seg.dcm")
    assert sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "COMPLETE"
    assert sr.StudyInstanceUID == processed.sources[0].StudyInstanceUID
    volumetric = sr.content.get_volumetric_roi_measurement_groups()
    assert [g.tracking_identifier for g in volumetric] == ["Liver", "Spleen"]
    voxel_ml = math.prod(processed.spacing) / 1000.0
    seg_items = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
    for number, (group, segment) in enumerate(zip(volumetric, processed.segments, strict=True), start=1):
        ref = group.referenced_segment
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert ref.referenced_segment_numbers == [number] or ref.referenced_segment_numbers == number
        assert group.tracking_uid == seg_items[number].TrackingUID
        volume = group.get_measurements(name=pydicom.sr.codedict.codes.SCT.Volume)[0]
        assert volume.unit.value == "ml"
        assert volume.value == pytest.approx(int(segment.mask.sum()) * voxel_ml, rel=1e-9)
        names = [m.name.meaning for m in group.get_measurements()]
        assert len(names) == len(DEFAULT_SR_FEATURES)
        # TID 1500 as the field writes it: the quantity with a Derivation modifier, not the statistic
        assert not group.get_measurements(name=pydicom.sr.codedict.codes.SCT.Mean)
        attenuation = group.get_measurements(name=pydicom.sr.codedict.codes.DCM.AttenuationCoefficient)
        by_derivation = {m.derivation.meaning: m for m in attenuation}
        assert set(by_derivation) == {"Mean", "Standard Deviation", "Median", "Minimum", "Maximum",
                                      "10th percentile", "90th percentile"}
        assert by_derivation["Mean"].derivation.value == "373098007"
        assert by_derivation["10th percentile"].derivation.value == "QG58"  # IBSI intensity statistic
        mean = by_derivation["Mean"]
        assert mean.unit.value == "[hnsf'U]"
        assert mean.value == pytest.approx(float(processed.image[segment.mask].mean()), rel=1e-4)
        # one finding per structure: the planar group shares the tracking identifier and UID
        (planar,) = [p for p in sr.content.get_planar_roi_measurement_groups()
                     if p.tracking_uid == group.tracking_uid]
        assert planar.tracking_identifier == group.tracking_identifier
    observer = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121005"]
    assert observer[0].ConceptCodeSequence[0].CodeValue == "121007"  # Device


def test_sr_key_slice_outline_lies_on_the_largest_cross_section(package, processed):
    out, _ = package
    sr = hd.sr.srread(out / "sr.dcm")
    planar = sr.content.get_planar_roi_measurement_groups()
    assert len(planar) == len(processed.segments)
    spacing = [float(v) for v in processed.sources[0].PixelSpacing]
    for group, segment in zip(planar, processed.segments, strict=True):
        key = int(np.argmax(segment.mask.sum(axis=(1, 2))))
        region = group.roi
        assert region.ValueType == "SCOORD" and region.GraphicType == "POLYLINE"
        referenced = region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        assert referenced == processed.sources[key].SOPInstanceUID
        points = region.value
        assert np.allclose(points[0], points[-1])  # closed
        labels, count = ndimage.label(segment.mask[key])
        largest = ndimage.binary_fill_holes(labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1)
        x, y = points[:, 0] * spacing[1], points[:, 1] * spacing[0]
        polygon = abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2
        assert polygon == pytest.approx(largest.sum() * spacing[0] * spacing[1], rel=0.03)
        area = group.get_measurements(name=pydicom.sr.codedict.codes.SCT.Area)[0]
        assert area.value == pytest.approx(segment.mask[key].sum() * spacing[0] * spacing[1])
        long_axis = group.get_measurements(name=pydicom.sr.codedict.codes.SCT.LongAxis)[0].value
        short_axis = group.get_measurements(name=pydicom.sr.codedict.codes.SCT.ShortAxis)[0].value
        assert 0 < short_axis <= long_axis
        rows, cols = np.nonzero(largest)
        extent = math.hypot((np.ptp(rows) + 1) * spacing[0], (np.ptp(cols) + 1) * spacing[1])
        assert long_axis <= extent + 1e-6  # never more than the bounding-box diagonal


def test_kos_flags_the_key_slice_of_each_finding_as_the_sr_does(package, processed):
    out, _ = package
    ko = hd.ko.KeyObjectSelectionDocument.from_dataset(pydicom.dcmread(out / "ko.dcm"))
    source = processed.sources[0]
    assert ko.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.59" and ko.Modality == "KO"
    assert (ko.StudyInstanceUID, ko.PatientID) == (source.StudyInstanceUID, source.PatientID)
    sr_series = pydicom.dcmread(out / "sr.dcm", stop_before_pixels=True).SeriesInstanceUID
    assert ko.SeriesInstanceUID not in {source.SeriesInstanceUID, sr_series}
    assert int(ko.SeriesNumber) == 5000 + int(source.SeriesNumber) % 1000
    title = ko.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator) == ("113000", "DCM")  # CID 7010 "Of Interest"
    images = ko.content.get_references(value_type=hd.sr.ValueTypeValues.IMAGE)
    refs = [r.ReferencedSOPSequence[0] for r in images]
    flagged = [(r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID) for r in refs]
    key_slices = sorted({int(np.argmax(s.mask.sum(axis=(1, 2)))) for s in processed.segments})
    assert flagged == [(processed.sources[k].SOPClassUID, processed.sources[k].SOPInstanceUID)
                       for k in key_slices]
    sr = hd.sr.srread(out / "sr.dcm")  # the same images the SR's planar groups outline
    planar = {g.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
              for g in sr.content.get_planar_roi_measurement_groups()}
    assert {uid for _, uid in flagged} == planar
    evidence = ko.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == source.SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in evidence.ReferencedSOPSequence} == planar
    (description,) = [i.TextValue for i in ko.ContentSequence
                      if i.ConceptNameCodeSequence[0].CodeValue == "113012"]  # Key Object Description
    assert "Liver" in description and "Spleen" in description
    assert read_provenance(ko)["pipeline"] == "liver-ct"
    assert result_kind(out / "ko.dcm") == "ko"  # sent unless the destination's profile says send_ko: false
    assert wanted(ViewerProfile(), "ko") and not wanted(ViewerProfile(send_ko=False), "ko")


def test_capture_is_a_true_colour_multiframe_sc_of_the_key_slices(package, processed):
    out, paths = package
    ds = pydicom.dcmread(out / "capture.dcm")
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7.4"  # Multi-frame True Color Secondary Capture
    assert (ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.BitsAllocated, ds.PlanarConfiguration) == (
        "RGB", 3, 8, 0)
    assert ds.BurnedInAnnotation == "YES" and ds.SeriesDescription.startswith("NOT FOR DIAGNOSIS")
    assert "NOT FOR DIAGNOSIS" in ds.ImageComments
    assert ds.StudyInstanceUID == processed.sources[0].StudyInstanceUID
    keys = sorted({int(np.argmax(s.mask.sum(axis=(1, 2)))) for s in processed.segments})  # as the SR and KOS
    assert int(ds.NumberOfFrames) == len(keys) == 2
    assert [r.ReferencedSOPInstanceUID for r in ds.SourceImageSequence] == [
        processed.sources[k].SOPInstanceUID for k in keys]
    frames = ds.pixel_array
    assert frames.shape == (len(keys), *processed.image.shape[1:], 3) and frames.dtype == np.uint8
    below_text = np.zeros(processed.image.shape[1:], dtype=bool)
    below_text[100:] = True
    text = frames[:, :90, :300]
    assert (text == 255).all(axis=-1).sum() > 300  # "NOT FOR DIAGNOSIS" and the summary, in white
    for frame, k in zip(frames, keys, strict=True):
        for segment in processed.segments:
            mask = segment.mask[k]
            band = mask & ~ndimage.binary_erosion(mask, iterations=2) & below_text
            assert band.sum() > 100
            assert (frame[band] == segment.color).all(), segment.label  # the SEG's display colour
            inside = ndimage.binary_erosion(mask, iterations=4) & below_text
            centre, width = processed.window
            expected = np.clip((processed.image[k] - (centre - width / 2)) / width * 255, 0, 255).round()
            assert (frame[inside] == expected[inside][:, None]).all()  # grey: the organ window, R = G = B
    # no object with outlines burned into CT pixels any more: every burned-in object is the RGB capture
    for path in paths:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        burned = header.get("BurnedInAnnotation") == "YES"
        if burned or "NOT FOR DIAGNOSIS" in str(header.get("ImageComments", "")):
            assert path.name == "capture.dcm" and header.PhotometricInterpretation == "RGB", path
    assert not (out / "capture").exists()


def test_capture_summary_says_a_truncated_volume_is_a_lower_bound(processed):
    from dicomnode.outputs.capture import summary_lines

    liver, spleen = processed.segments[:2]
    cut = dataclasses.replace(liver, qc=SegmentQC(QCStatus.WARN, (QCFlag.TRUNCATED,), ("cut",)))
    values = {liver.label: {"volume_ml": 699.44, "original_firstorder_Mean": 89.2},
              spleen.label: {"volume_ml": 249.2}}
    assert summary_lines([cut, spleen], values, "HU") == [
        f"{liver.label} >= 699.4 ml mean 89 HU", f"{spleen.label} 249.2 ml"]


def test_rewriting_a_package_removes_the_ct_capture_of_earlier_releases(processed, tmp_path):
    stale = tmp_path / "capture" / "IM00001.dcm"
    stale.parent.mkdir()
    stale.write_bytes(b"old CT with outlines at the maximum value")
    values = {s.label: {f: 1.0 for f in DEFAULT_SR_FEATURES if f != "volume_ml"} for s in processed.segments}
    paths = write_result_package(dataclasses.replace(processed, measurements=values), tmp_path,
                                 ViewerProfile(send_enhanced=False, secondary_capture=True))
    assert not stale.exists() and tmp_path / "capture.dcm" in paths


def test_every_result_object_is_recognised_as_the_nodes_own_output(package, processed):
    """No loops: each object of the package says it is the node's output, also once a PACS stripped the
    private provenance block; the source CT does not."""
    out, paths = package
    assert own_output_reason(processed.sources[0]) is None
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert "provenance block (pipeline liver-ct" in own_output_reason(ds), path
        for elem in list(ds.group_dataset(0x0077)):
            del ds[elem.tag]
        assert "ContributingEquipmentSequence names dicomnode" in own_output_reason(ds), path
    # as a de-identifying destination receives them (new UIDs, private tags removed): still recognised
    seg = Deidentifier("secret").deidentify(pydicom.dcmread(out / "seg.dcm", stop_before_pixels=True))
    assert seg.SOPInstanceUID != pydicom.dcmread(out / "seg.dcm", stop_before_pixels=True).SOPInstanceUID
    assert "ContributingEquipmentSequence names dicomnode" in own_output_reason(seg)


def _uids(out):
    found = {}
    for path in sorted(out.rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        found[str(path.relative_to(out))] = (ds.SOPInstanceUID, ds.SeriesInstanceUID)
    return found


def test_rerun_gives_identical_uids_and_new_params_new_ones(package, processed, tmp_path):
    out, _ = package
    given = {f: 1.0 for f in DEFAULT_SR_FEATURES if f != "volume_ml"}
    measured = {s.label: given for s in processed.segments}
    again = dataclasses.replace(processed, measurements=measured)  # skips the slow quantification
    write_result_package(again, tmp_path / "again", ViewerProfile(secondary_capture=True))
    assert _uids(tmp_path / "again") == _uids(out)
    other = dataclasses.replace(
        again, provenance=dataclasses.replace(processed.provenance, params_hash=params_hash({"sigma": 2}))
    )
    write_result_package(other, tmp_path / "other", ViewerProfile(send_enhanced=False))
    new = _uids(tmp_path / "other")
    assert set(new) == {"seg.dcm", "sr.dcm", "ko.dcm"}
    assert not {u for pair in new.values() for u in pair} & {u for pair in _uids(out).values() for u in pair}


def test_params_hash_is_canonical():
    assert params_hash({"a": 1, "b": [1, 2]}) == params_hash({"b": [1, 2], "a": 1})
    assert params_hash({"a": 1}) != params_hash({"a": 2})


def test_bad_inputs_fail_with_clear_errors(processed, tmp_path):
    wrong_shape = dataclasses.replace(
        processed, segments=(Segment("Liver", "liver", np.zeros((3, 4, 4), dtype=bool)),)
    )
    with pytest.raises(OutputError, match=r"Mask of segment 'Liver' has shape \(3, 4, 4\)"):
        write_result_package(wrong_shape, tmp_path)
    unknown = dataclasses.replace(
        processed, segments=(Segment("Thing", "unobtainium", processed.segments[0].mask),)
    )
    with pytest.raises(OutputError, match="Structure 'unobtainium' has no code"):
        write_result_package(unknown, tmp_path)
    with pytest.raises(OutputError, match="Feature 'original_glcm_Foo' has no SR code"):
        write_result_package(processed, tmp_path, features=["original_glcm_Foo"])
    with pytest.raises(OutputError, match="enhanced volume has shape"):
        write_result_package(dataclasses.replace(processed, enhanced=processed.enhanced[:3]), tmp_path,
                             ViewerProfile(send_seg=False, send_sr=False))
    no_image = dataclasses.replace(processed, image=None)
    with pytest.raises(OutputError, match="carries no source image"):
        write_result_package(no_image, tmp_path, ViewerProfile(send_enhanced=False))


def test_empty_segment_still_gives_valid_objects(processed, tmp_path):
    empty = Segment("Lesion 1", "neoplasm", np.zeros_like(processed.segments[1].mask), (255, 255, 0))
    spleen = processed.segments[1]
    measured = {"Spleen": {f: 1.0 for f in LESION_SR_FEATURES if f != "volume_ml"}}
    dot = np.zeros_like(empty.mask)
    dot[10, 200, 300] = True  # a one-voxel lesion: pyradiomics cannot measure it, its volume is reported
    tiny = Segment("Lesion 2", "neoplasm", dot, (255, 255, 0))
    small = dataclasses.replace(processed, segments=(spleen, empty, tiny), measurements=measured)
    profile = ViewerProfile(send_enhanced=False)
    paths = write_result_package(small, tmp_path, profile, features=LESION_SR_FEATURES)
    sr = hd.sr.srread(tmp_path / "sr.dcm")
    groups = sr.content.get_volumetric_roi_measurement_groups()
    # the empty lesion has no finding (nothing to draw it on: OHIF would blank the viewport); the SEG keeps it
    assert [g.tracking_identifier for g in groups] == ["Spleen", "Lesion 2"]
    assert len(groups[0].get_measurements()) == len(LESION_SR_FEATURES)
    diameter = [m for m in groups[0].get_measurements() if m.name.value == "L0JK"]
    assert diameter[0].name.scheme_designator == "IBSI" and diameter[0].unit.value == "mm"
    voxel_ml = math.prod(processed.spacing) / 1000.0
    assert [m.value for m in groups[1].get_measurements()] == pytest.approx([voxel_ml])
    planar = sr.content.get_planar_roi_measurement_groups()
    assert [g.tracking_identifier for g in planar] == ["Spleen", "Lesion 2"]
    assert len(pydicom.dcmread(tmp_path / "seg.dcm").SegmentSequence) == 3
    assert {p.name for p in paths} == {"seg.dcm", "sr.dcm", "ko.dcm"}
    ko = pydicom.dcmread(tmp_path / "ko.dcm")  # the empty lesion has no key image either
    flagged = [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in ko.ContentSequence
               if i.ValueType == "IMAGE"]
    assert flagged == [processed.sources[i].SOPInstanceUID
                       for i in sorted({10, int(np.argmax(spleen.mask.sum(axis=(1, 2))))})]


def test_seg_without_source_references_is_placed_by_position(package, processed, tmp_path):
    ds = pydicom.dcmread(package[0] / "seg.dcm")
    for item in ds.PerFrameFunctionalGroupsSequence:
        del item.DerivationImageSequence
    del ds.ReferencedSeriesSequence
    ds.save_as(tmp_path / "noref.dcm")
    seg = hd.seg.segread(tmp_path / "noref.dcm")
    for number, segment in enumerate(processed.segments, start=1):
        assert np.array_equal(seg_mask(seg, processed.sources, number), segment.mask)
    shifted = [copy.deepcopy(s) for s in processed.sources]  # Dataset.copy() shares the elements
    for s in shifted:
        s.ImagePositionPatient = [float(v) + 1.0 for v in s.ImagePositionPatient]
    with pytest.raises(OutputError, match="lies on no slice of the series"):
        seg_mask(seg, shifted, 1)


def test_sources_missing_type2_patient_attributes_still_give_a_package(processed, tmp_path):
    """Non-conforming senders omit Type 2 attributes (e.g. PatientBirthDate); results are still written,
    with the attributes present and empty, and the source headers are left untouched."""
    stripped = []
    for source in processed.sources:
        bare = pydicom.Dataset(dict(source.items()))  # pydicom.Dataset(source) shares the element dict
        bare.file_meta = source.file_meta
        for keyword in ("PatientBirthDate", "PatientSex", "ReferringPhysicianName", "AccessionNumber"):
            if keyword in bare:
                delattr(bare, keyword)
        stripped.append(bare)
    small = dataclasses.replace(processed, sources=tuple(stripped), enhanced=None)
    write_result_package(small, tmp_path, ViewerProfile(send_enhanced=False))
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    assert "PatientBirthDate" in seg and seg.PatientBirthDate == ""
    assert "PatientBirthDate" not in stripped[0]
    assert "PatientBirthDate" in processed.sources[0]


@functools.cache
def _deepest_voxel(mask: bytes, shape: tuple[int, ...], spacing: tuple[float, ...]) -> tuple[int, ...]:
    """The index of the mask's voxel farthest from its surface; computed once per mask (the distance
    transform of the shared CT's liver takes ~1 CPU s, and four tests ask for it)."""
    depth = ndimage.distance_transform_edt(np.frombuffer(mask, dtype=bool).reshape(shape), sampling=spacing)
    return tuple(int(i) for i in np.unravel_index(np.argmax(depth), depth.shape))


def _lesion_case(processed: ProcessedSeries, shift_mm: float = 0.0) -> ProcessedSeries:
    """The liver of the shared CT with a 14 mm hypodense lesion (-20 HU) inside it, shifted by shift_mm."""
    liver = processed.segments[0].mask
    centre = np.array(_deepest_voxel(np.ascontiguousarray(liver, dtype=bool).tobytes(), liver.shape,
                                     tuple(float(s) for s in processed.spacing)), dtype=float)
    centre[2] += shift_mm / processed.spacing[2]
    zz, yy, xx = np.indices(liver.shape, sparse=True)
    sz, sy, sx = processed.spacing
    distance = np.sqrt(((zz - centre[0]) * sz) ** 2 + ((yy - centre[1]) * sy) ** 2
                       + ((xx - centre[2]) * sx) ** 2)
    lesion = distance <= 7.0
    image = np.where(lesion, -20.0, processed.image).astype(np.float32)
    qc = SegmentQC(QCStatus.WARN, (QCFlag.LOW_CONTRAST, QCFlag.SEARCH_LIMITED),
                   ("lesion contrast below 30 HU", "the search cannot see lesions of lower contrast"))
    segments = (processed.segments[0], Segment("Lesion 1", "lesion", lesion, (255, 255, 0), "lesion", qc))
    return dataclasses.replace(processed, segments=segments, image=image, measurements={})


def test_lesion_finding_is_coded_as_the_field_writes_it_and_keeps_its_tracking_uid(processed, tmp_path):
    """Lesion 52988006 with the liver as Finding Site, hypodense as a qualitative evaluation, the QC verdict
    as qualitative evaluations, one finding (planar + volumetric, one tracking UID = the SEG's); the
    tracking UIDs stay the same with other parameters, another study and a lesion moved by 3 mm."""
    case = _lesion_case(processed)
    profile = ViewerProfile(send_enhanced=False)
    write_result_package(case, tmp_path / "a", profile)
    sr = hd.sr.srread(tmp_path / "a" / "sr.dcm")
    (volumetric,) = [g for g in sr.content.get_volumetric_roi_measurement_groups()
                     if g.tracking_identifier == "Lesion 1"]
    (planar,) = [g for g in sr.content.get_planar_roi_measurement_groups()
                 if g.tracking_identifier == "Lesion 1"]
    assert planar.tracking_uid == volumetric.tracking_uid
    assert volumetric.finding_type.value == "52988006"
    assert [s.value.value for s in volumetric.finding_sites] == ["10200004"]  # Liver
    evaluations = {(e.name.value, e.value.value) for e in volumetric.get_qualitative_evaluations()}
    assert ("112118", "129746008") in evaluations  # Density: low density lesion
    assert ("QC-STATUS", "QC-WARN") in evaluations and ("QC-FLAG", "QC-LOW_CONTRAST") in evaluations
    # a code longer than a CodeValue's 16 characters travels as a Long Code Value
    assert ("QC-FLAG", "QC-SEARCH_LIMITED") in evaluations
    seg = pydicom.dcmread(tmp_path / "a" / "seg.dcm")
    assert seg.SegmentSequence[1].TrackingUID == volumetric.tracking_uid
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    family = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmFamilyCodeSequence
    assert family[0].CodeMeaning == "Histogram Analysis"
    uids = {g.tracking_identifier: g.tracking_uid for g in sr.content.get_volumetric_roi_measurement_groups()}
    # rerun with other parameters, a follow-up study (other study/series UIDs), the lesion 3 mm elsewhere
    other = dataclasses.replace(
        _lesion_case(processed, shift_mm=3.0),
        provenance=dataclasses.replace(processed.provenance, params_hash=params_hash({"sigma": 2})),
        sources=tuple(_restudied(s) for s in processed.sources),
    )
    write_result_package(other, tmp_path / "b", profile)
    again = hd.sr.srread(tmp_path / "b" / "sr.dcm")
    assert again.StudyInstanceUID != sr.StudyInstanceUID
    groups = again.content.get_volumetric_roi_measurement_groups()
    assert {g.tracking_identifier: g.tracking_uid for g in groups} == uids
    # another patient: other tracking UIDs
    third = dataclasses.replace(case, sources=tuple(_restudied(s, "OTHER") for s in processed.sources))
    write_result_package(third, tmp_path / "c", profile)
    moved = hd.sr.srread(tmp_path / "c" / "sr.dcm")
    groups = moved.content.get_volumetric_roi_measurement_groups()
    assert not {g.tracking_uid for g in groups} & set(uids.values())


def _restudied(source, patient: str | None = None):  # noqa: ANN001, ANN202
    # a deep copy: setting an attribute a shallow copy shares sets it in the session's source too
    other = copy.deepcopy(source)
    other.StudyInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["study", str(source.StudyInstanceUID)])
    other.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["series", str(source.SeriesInstanceUID)])
    other.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["sop", str(source.SOPInstanceUID)])
    if patient is not None:
        other.PatientID = patient
    return other


def test_the_ivc_is_coded_in_the_seg_and_the_sr(processed, tmp_path):
    """liver-ct's 'Inferior vena cava' segment (structure inferior-vena-cava) as SNOMED CT 64131007, an
    anatomical structure, in the SEG and as the SR finding with itself as its finding site; its volume in
    the SR is the reference's IVC (label 63)."""
    volume = read_volume(shared_data("ct-abdomen-20", "dicom"))
    labels = resample_onto(sitk.ReadImage(str(shared_data("ct-abdomen-20", "reference-labels.nrrd"))), volume)
    ivc = Segment("Inferior vena cava", "inferior-vena-cava", labels == 63, (0, 151, 206))
    case = dataclasses.replace(processed, segments=(processed.segments[0], ivc), measurements={})
    write_result_package(case, tmp_path, ViewerProfile(send_enhanced=False))
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    item = seg.SegmentSequence[1]
    assert item.SegmentLabel == "Inferior vena cava"
    assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == "64131007"
    assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    assert np.array_equal(seg_mask(seg, processed.sources, 2), ivc.mask)
    sr = hd.sr.srread(tmp_path / "sr.dcm")
    (group,) = [g for g in sr.content.get_volumetric_roi_measurement_groups()
                if g.tracking_identifier == "Inferior vena cava"]
    assert group.finding_type.value == "64131007"
    assert [s.value.value for s in group.finding_sites] == ["64131007"]
    (volume_ml,) = [m.value for m in group.get_measurements() if m.name.value == "118565006"]
    expected = float(ivc.mask.sum()) * float(np.prod(processed.spacing)) / 1000.0
    assert float(volume_ml) == pytest.approx(expected, rel=1e-3) and expected > 4.0
