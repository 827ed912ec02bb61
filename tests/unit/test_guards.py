"""Input guards (imaging/guards.py): modality, CT-looking pixels and body region judged from the content."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk

from dicomnode.imaging.guards import Accepts, InputRefused, _neck_above_chest, check_input, region_evidence
from dicomnode.imaging.volume import load_series
from dicomnode.pipelines.registry import get_pipeline, parse_pipeline
from tests.phantoms import Phantom, make_ct_phantom, make_mr_head_phantom
from tests.support import shared_data


def _image(phantom: Phantom) -> sitk.Image:
    return phantom.to_sitk()


def ct_head(seed: int = 0) -> Phantom:
    """A head CT made from the MR head phantom's anatomy: skull 900 HU, brain 35, CSF 8, scalp 20."""
    mr = make_mr_head_phantom(shape=(40, 96, 96), spacing=(4.0, 2.5, 2.5), seed=seed)
    clean = np.full(mr.image.shape, -1000.0, dtype=np.float32)
    clean[mr.masks["head"]] = 20.0
    clean[mr.masks["skull"]] = 900.0
    clean[mr.masks["csf"]] = 8.0
    clean[mr.masks["brain"] & ~mr.masks["ventricles"]] = 35.0
    rng = np.random.default_rng(seed)
    image = clean + rng.normal(0, 8.0, clean.shape).astype(np.float32)
    return replace(mr, image=image, clean=clean, modality="CT")


def test_accepts_is_declared_in_the_pipeline_yaml_and_checked() -> None:
    assert get_pipeline("lung-ct").accepts == Accepts(("CT",), "ct", ("chest",), 20.0)
    assert get_pipeline("liver-ct").accepts.regions == ("abdomen",)
    assert get_pipeline("brain-mr").accepts.pixels == "mr"
    base = "name: x\nversion: 1\ndescription: d\n"
    with pytest.raises(Exception, match="unknown region"):
        parse_pipeline(base + "accepts: {regions: [belly]}\n")
    with pytest.raises(Exception, match="unknown key"):
        parse_pipeline(base + "accepts: {region: [chest]}\n")


def test_mr_pixels_labelled_ct_are_refused_with_the_reason() -> None:
    # real MR (pyradiomics brain1) whose header would say CT
    mr = sitk.ReadImage(str(shared_data("radiomics", "brain1_image.nrrd")))
    mr = sitk.Cast(mr, sitk.sitkFloat32)
    with pytest.raises(InputRefused, match="accepts CT only: the pixels do not look like CT: only 0.00 % of"):
        check_input(get_pipeline("liver-ct").accepts, mr, "CT", pipeline="liver-ct")
    # and CT pixels are refused by the MR pipeline
    ct = make_ct_phantom(shape=(20, 64, 64), spacing=(5.0, 5.0, 5.0), lesions=False)
    with pytest.raises(InputRefused, match="accepts MR only, but the pixels look like CT"):
        check_input(get_pipeline("brain-mr").accepts, ct.to_sitk(), "MR", pipeline="brain-mr")
    with pytest.raises(InputRefused, match="works on CT but the series is 'MR'"):
        check_input(get_pipeline("lung-ct").accepts, ct.to_sitk(), "MR")


def test_head_chest_and_abdomen_are_told_apart_by_content() -> None:
    head = region_evidence(_image(ct_head()))
    assert head.extent_mm["head"] >= 60 and head.extent_mm["chest"] == 0
    # the abdomen phantom has lung bases in its upper part; a chest-only crop of it is all chest
    ct = make_ct_phantom(shape=(40, 96, 96), spacing=(5.0, 3.8, 3.8), lesions=False, seed=2)
    regions = region_evidence(ct.to_sitk())
    assert regions.extent_mm["abdomen"] >= 60 and regions.extent_mm["chest"] >= 30
    assert regions.extent_mm["head"] == 0
    # real data: lung1 is a chest CT, ct-abdomen-20 an upper abdomen with thin lung bases
    lung1 = load_series(sorted(shared_data("radiomics", "lung1-dicom").glob("*.dcm")))
    chest = region_evidence(lung1.to_sitk())
    assert chest.extent_mm["chest"] >= 150 and chest.extent_mm["head"] == 0
    # lung1 runs up into the neck and shoulders: above the lungs is the neck, not an abdomen
    assert chest.extent_mm["neck"] >= 30 and chest.extent_mm["abdomen"] == 0
    assert chest.regions[-1] == "neck" and chest.regions[0] == "chest"
    abdomen = load_series(sorted(shared_data("ct-abdomen-20", "dicom").glob("*.dcm")))
    with pytest.raises(InputRefused, match=r"needs the chest in the images \(at least 20 mm\), but their "
                                           r"content shows abdomen 40 mm"):
        check_input(get_pipeline("lung-ct").accepts, abdomen.to_sitk(), "CT", pipeline="lung-ct")
    with pytest.raises(InputRefused, match="needs the abdomen in the images, but their content shows head"):
        check_input(get_pipeline("liver-ct").accepts, _image(ct_head()), "CT", pipeline="liver-ct")
    # a chest CT whose lowest slice holds the liver's dome: refused by name, not contoured (liver-ct used to
    # take the chest-wall muscle there for a 665 ml liver, held by QC)
    with pytest.raises(InputRefused, match=r"needs the abdomen in the images, but their content shows "
                                           r"neck \d+ mm, chest \d+ mm"):
        check_input(get_pipeline("liver-ct").accepts, lung1.to_sitk(), "CT", pipeline="liver-ct")
    accepted = check_input(get_pipeline("liver-ct").accepts, abdomen.to_sitk(), "CT")
    assert accepted["regions_mm"]["abdomen"] == 40


def test_a_coronal_stack_is_judged_on_its_axial_planes() -> None:
    ct = make_ct_phantom(shape=(40, 96, 96), spacing=(5.0, 3.8, 3.8), lesions=False, seed=2)
    axial = ct.to_sitk()
    # the same voxels as a coronal stack: array axis 0 runs anterior→posterior
    array = np.ascontiguousarray(np.transpose(sitk.GetArrayFromImage(axial), (1, 0, 2)))
    coronal = sitk.GetImageFromArray(array)
    coronal.SetSpacing((3.8, 5.0, 3.8))
    coronal.SetDirection((1, 0, 0, 0, 0, 1, 0, 1, 0))
    a, c = region_evidence(axial), region_evidence(coronal)
    assert c.extent_mm == pytest.approx(a.extent_mm)


def test_the_neck_is_what_lies_above_the_chest_or_below_the_head() -> None:
    # axis 0 runs inferior → superior; 5 mm slices
    trunk = ["abdomen"] * 4 + ["chest"] * 8 + ["abdomen"] * 3
    assert _neck_above_chest(trunk, 5.0) == ["abdomen"] * 4 + ["chest"] * 8 + ["neck"] * 3
    # one slice of bowel gas is not a chest: nothing above it becomes neck
    gas = ["abdomen"] * 4 + ["chest"] + ["abdomen"] * 5
    assert _neck_above_chest(gas, 5.0) == gas
    # a chest with a 10 mm gap (a breath-hold artefact) is still one chest
    gap = ["chest"] * 4 + ["abdomen"] * 2 + ["chest"] * 4 + ["abdomen"] * 2
    bridged = _neck_above_chest(gap, 5.0)
    assert bridged[-2:] == ["neck", "neck"] and bridged[4] == "abdomen"
    # head and neck without a chest: below the skull is the neck
    assert _neck_above_chest(["abdomen"] * 3 + ["head"] * 5, 5.0) == ["neck"] * 3 + ["head"] * 5


def test_a_slab_too_thin_for_3d_filters_is_refused_by_name() -> None:
    # ct-3slice: three real 1 mm GE slices; liver-ct's filters need four samples along each axis
    slab = load_series(sorted(shared_data("ct-3slice").glob("0*.dcm"))).to_sitk()
    with pytest.raises(InputRefused, match=r"works on volumes of at least 4 slices, but the series has 3 "
                                           r"along one axis \(3.0 mm; 512x512x3 voxels\)"):
        check_input(get_pipeline("liver-ct").accepts, slab, "CT", pipeline="liver-ct")
    # a pipeline without steps (forwarding) has nothing to filter
    check_input(Accepts(), slab, "CT", volumetric=False)


def test_air_off_its_level_warns_every_segment_that_hu_may_be_off() -> None:
    """A rescale intercept of -1000 written for -1024 passes every CT check (air, soft tissue, regions) and
    moves every HU value by 24: the air's level outside the padding says so, and the image's correct
    storages and a small field of view (little air but the padding) do not."""
    from dicomnode.imaging.guards import pixel_evidence
    from dicomnode.imaging.qc import QCFlag, QCReport, QCStatus, SegmentQC
    from dicomnode.imaging.volume import read_volume

    array = read_volume(shared_data("ct-abdomen-20", "dicom")).array
    assert pixel_evidence(array).air_offset() == ""
    assert pixel_evidence(array[:, 106:406, 106:406]).air_offset() == ""  # a 300 mm field of view
    shifted = pixel_evidence(array + 24.0)
    assert "reads -97" in shifted.air_offset() and "+2" in shifted.air_offset()
    image = sitk.GetImageFromArray(array + 24.0)
    image.SetSpacing((0.977, 0.977, 2.0))
    evidence = check_input(Accepts(pixels="ct"), image, "CT", pipeline="liver-ct")
    assert evidence["warnings"] == [shifted.air_offset()]
    report = QCReport({"Liver": SegmentQC(), "Spleen": SegmentQC(QCStatus.FAIL)}).warning_all(
        QCFlag.IMPLAUSIBLE_INTENSITY, evidence["warnings"][0])
    assert report.segments["Liver"].status == QCStatus.WARN
    assert report.segments["Spleen"].status == QCStatus.FAIL  # never lowered
    assert all(QCFlag.IMPLAUSIBLE_INTENSITY in s.flags for s in report.segments.values())
