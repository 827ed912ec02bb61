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
