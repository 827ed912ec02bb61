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
