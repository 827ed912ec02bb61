"""A lesion search the image's noise blinds is said so on the organ searched (runner QC): the liver of a
low-dose scan whose lesion threshold rose above 40 HU is `warn` `low_contrast` with the threshold quoted."""

from __future__ import annotations

from dicomnode.imaging.qc import QCFlag, QCReport, QCStatus, SegmentQC
from dicomnode.pipelines.registry import get_pipeline
from dicomnode.pipelines.runner import with_lesion_search_limits


def test_a_noise_blinded_lesion_search_warns_on_the_liver() -> None:
    spec = get_pipeline("liver-ct")
    report = QCReport({"Liver": SegmentQC(QCStatus.PASS), "Spleen": SegmentQC(QCStatus.PASS)})
    noisy = with_lesion_search_limits(report, spec, {"lesions.threshold": "54.2",
                                                     "lesions.organ_median": "105.9"})
    liver = noisy.segments["Liver"]
    assert liver.status == QCStatus.WARN and QCFlag.LOW_CONTRAST in liver.flags
    (reason,) = liver.reasons
    assert "by more than 54 HU" in reason and "does not rule them out" in reason
    assert noisy.segments["Spleen"] == SegmentQC(QCStatus.PASS)  # only the organ searched
    quiet = with_lesion_search_limits(report, spec, {"lesions.threshold": "22.1"})
    assert quiet.segments == report.segments


def test_each_round_candidate_the_search_dropped_is_named_on_the_liver() -> None:
    """A dropped round candidate (the step's ``doubtful`` estimate) is a `warn` on the organ searched, with
    the flag its reason maps to and the sentence naming it; none leaves the report as it was."""
    spec = get_pipeline("liver-ct")
    report = QCReport({"Liver": SegmentQC(QCStatus.PASS), "Spleen": SegmentQC(QCStatus.PASS)})
    doubts = ("a round hyperdense candidate of 24 mm at (-70, -21, -14) mm (LPS) was not reported as a "
              "lesion: it joins a vessel (continues as a vessel); a round hypodense candidate of 12 mm at "
              "(1, 2, 3) mm (LPS) was not reported as a lesion: it is cut by the edge of the images (cut by "
              "the field of view)")
    named = with_lesion_search_limits(report, spec, {"lesions.threshold": "22.1", "lesions.doubtful": doubts})
    liver = named.segments["Liver"]
    assert liver.status == QCStatus.WARN
    assert set(liver.flags) == {QCFlag.LOW_CONTRAST, QCFlag.TRUNCATED}
    assert len(liver.reasons) == 2 and "24 mm at (-70, -21, -14)" in liver.reasons[0]
    assert all(r.startswith("In Liver, a round") and "not ruled out" in r for r in liver.reasons)
    assert named.segments["Spleen"] == SegmentQC(QCStatus.PASS)
    assert with_lesion_search_limits(report, spec, {"lesions.doubtful": ""}).segments == report.segments
