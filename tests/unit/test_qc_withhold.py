"""A secondary organ whose QC fails is withheld (not in the SEG/SR/result's segments, named in
``qc.withheld``) instead of holding the whole result; the organ the pipeline is about (required) and lesions
still hold it. Without this a native-phase CT whose aorta fails QC was held for an operator every time."""

from __future__ import annotations

import pytest

from dicomnode.imaging.qc import QCFlag, QCReport, QCStatus, SegmentQC
from dicomnode.pipelines.registry import PipelineFileError, get_pipeline, parse_pipeline
from dicomnode.pipelines.runner import withheld_labels
from dicomnode.send.held import qc_reason

HEAD = "name: x\nversion: 1\ndescription: d\nsteps:\n  - {id: a, use: grid.working}\n"
FAIL = SegmentQC(QCStatus.FAIL, (QCFlag.IMPLAUSIBLE_VOLUME,), ("Aorta volume 3 ml is below 20 ml.",))
WARN = SegmentQC(QCStatus.WARN, (QCFlag.TRUNCATED,), ("Liver touches the edge.",))


def test_a_withheld_failure_leaves_a_warn_result_that_says_what_is_missing() -> None:
    report = QCReport({"Liver": WARN, "Aorta": FAIL})
    assert report.status == QCStatus.FAIL
    kept = report.withhold(["Aorta"])
    assert kept.status == QCStatus.WARN  # incomplete, and says so; not held
    data = kept.to_json()
    assert list(data["segments"]) == ["Liver"]
    assert data["withheld"]["Aorta"]["reasons"] == ["Aorta volume 3 ml is below 20 ml."]
    assert QCReport.from_json(data) == kept
    assert QCReport({"Aorta": FAIL}).withhold(["Aorta"]).status == QCStatus.WARN
    assert "withheld" not in QCReport({"Liver": WARN}).to_json()  # the format is unchanged without one


def test_only_secondary_organs_declared_withhold_are_withheld() -> None:
    spec = get_pipeline("liver-ct")
    report = QCReport({"Liver": FAIL, "Aorta": FAIL, "Spleen": WARN, "Lesion 1": FAIL})
    assert withheld_labels(spec, report) == ["Aorta"]  # the liver and a lesion hold the result
    held = report.withhold(withheld_labels(spec, report))
    assert held.status == QCStatus.FAIL and "Liver" in qc_reason(held.to_json())


@pytest.mark.parametrize(
    ("segment", "expected"),
    [
        ("{from: a, label: Liver, on_qc_fail: withhold}", "Segment 'Liver' is required"),
        ("{from: a, each: true, on_qc_fail: withhold}", "one segment per label (lesions)"),
        ("{from: a, required: false, on_qc_fail: drop}", "on_qc_fail"),
    ],
)
def test_withhold_is_refused_where_it_would_hide_the_main_finding(segment: str, expected: str) -> None:
    with pytest.raises(PipelineFileError) as info:
        parse_pipeline(HEAD + "segments:\n  - " + segment + "\n", "p.yaml")
    assert expected in str(info.value), str(info.value)


def test_a_declared_withhold_reaches_the_segment_spec() -> None:
    text = HEAD + "segments:\n  - {from: a, required: false, on_qc_fail: withhold}\n"
    spec = parse_pipeline(text, "p.yaml")
    (segment,) = spec.segments
    assert segment.on_qc_fail == "withhold"


def test_a_declared_organ_that_is_not_found_is_said_not_silent() -> None:
    """A 120 mm slab above the kidneys: liver-ct declares both kidneys; none is sent, and result.json says
    each was looked for and not found (with the images' head-feet coverage), while everything that is sent
    keeps its own verdict."""
    from dicomnode.imaging.volume import Volume
    from dicomnode.jobs import JobSpec
    from dicomnode.pipelines.runner import process_volume
    from tests.phantoms import make_ct_phantom

    ct = make_ct_phantom(shape=(24, 128, 128), z_centre_mm=60.0)
    assert not ct.masks["kidney-right"].any() and not ct.masks["kidney-left"].any()
    volume = Volume.from_sitk(ct.to_sitk(), modality="CT", units="HU")
    job = JobSpec("t", "liver-ct", {}, (), "/tmp")
    processed, summary = process_volume(get_pipeline("liver-ct"), volume, job)
    sent = {s.label for s in processed.segments}
    qc = summary["qc"]
    assert {"Right kidney", "Left kidney"} <= set(qc["not_found"]), qc.get("not_found")
    assert "120 mm head to feet" in qc["not_found"]["Right kidney"]
    assert not sent & set(qc["not_found"]) and not sent & set(qc.get("withheld", {}))
    declared = {d.label for d in get_pipeline("liver-ct").segments if not d.each}
    assert declared == (sent & declared) | set(qc["not_found"]) | set(qc.get("withheld", {}))
    assert QCReport.from_json(qc).not_found == qc["not_found"]


def test_a_coronal_or_sagittal_stack_gets_the_organs_and_verdicts_of_the_axial_one() -> None:
    """The same voxels written as a sagittal stack (ImageOrientationPatient 0/1/0/0/0/−1: every array axis
    moved): the working grid is laid out axially in the patient's frame, so every organ and its QC verdict
    are those of the axial series, on the sagittal grid. Before, the spleen was not found and QC read the
    sagittal planes as body cross-sections (a liver 'implausibly large for a body 12 cm across')."""
    import numpy as np
    import SimpleITK as sitk

    from dicomnode.imaging.volume import Volume
    from dicomnode.jobs import JobSpec
    from dicomnode.pipelines.runner import process_volume
    from tests import variants
    from tests.phantoms import make_ct_phantom

    ct = make_ct_phantom(shape=(40, 112, 112), spacing=(5.0, 3.2, 3.2), seed=5, lesions=False,
                         fat_planes=True)
    labels = np.zeros(ct.image.shape, np.uint8)
    for value, key in enumerate(("liver", "spleen", "kidney-right", "kidney-left"), 1):
        labels[ct.masks[key]] = value
    results = {}
    for plane in ("axial", "sagittal"):
        image, lab = ct.to_sitk(), ct.to_sitk(labels)
        if plane != "axial":
            image, lab = variants.reslice(image, lab, plane)
        truth = sitk.GetArrayFromImage(lab)
        volume = Volume.from_sitk(image, modality="CT", units="HU")
        processed, summary = process_volume(get_pipeline("liver-ct"), volume,
                                            JobSpec("t", "liver-ct", {}, (), "/tmp"))
        masks = {s.label: s.mask for s in processed.segments}
        assert {"Liver", "Spleen", "Right kidney", "Left kidney"} <= set(masks), (plane, summary["qc"])
        results[plane] = (summary["qc"]["segments"], {
            label: 2 * (masks[label] & (truth == value)).sum() / (masks[label].sum() + (truth == value).sum())
            for value, label in enumerate(("Liver", "Spleen", "Right kidney", "Left kidney"), 1)})
    axial_qc, axial_dice = results["axial"]
    sagittal_qc, sagittal_dice = results["sagittal"]
    assert axial_qc == sagittal_qc
    for label, dice in axial_dice.items():
        assert dice > 0.9 and abs(sagittal_dice[label] - dice) < 0.01, (label, dice, sagittal_dice[label])
