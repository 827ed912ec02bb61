"""The comparison with a prior study in the current study's TID 1500 SR (dicomnode.outputs.timepoints): time
points, prior values in TID 1501 groups under the finding's tracking UID, the change, lesion status, a gone
lesion drawn where it was, the prior study as Pertinent Other Evidence; read back with highdicom and dcmqi."""

from __future__ import annotations

import json
import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset

from dicomnode.config import ViewerProfile
from dicomnode.outputs.package import write_result_package
from dicomnode.outputs.timepoints import matched_tracking, nearest_image_point
from tests.unit.test_outputs import _lesion_case

PRIOR_STUDY = "1.2.826.0.1.3680043.8.498.77"
LESION_PRIOR_UID = "1.2.826.0.1.3680043.8.498.55.1"
GONE_UID = "1.2.826.0.1.3680043.8.498.55.2"


def _block(liver_ml: float, lesion_ml: float, gone_at: list[float]) -> dict:
    return {
        "status": "compared", "prior_study_uid": PRIOR_STUDY, "prior_study_date": "20200110",
        "interval_days": 1456,
        "findings": {
            "Liver": {"status": "compared",
                      "volume_ml": {"prior": 1500.0, "current": liver_ml, "change": liver_ml - 1500.0,
                                    "change_percent": round(100 * (liver_ml - 1500.0) / 1500.0, 1)},
                      "mean_hu": {"prior": 60.0, "current": 61.0, "change": 1.0, "change_percent": 1.7},
                      "prior_label": "Liver"},
            "Lesion 1": {"status": "grown",
                         "volume_ml": {"prior": 0.5, "current": lesion_ml, "change": lesion_ml - 0.5,
                                       "change_percent": 200.0},
                         "mean_hu": {"prior": -10.0, "current": -20.0, "change": -10.0,
                                     "change_percent": None},
                         "longest_diameter_mm": {"prior": 9.0, "current": 14.0, "change": 5.0,
                                                 "change_percent": 55.6},
                         "prior_label": "Lesion 1", "tracking_uid": LESION_PRIOR_UID},
            "Lesion 2 (prior)": {"status": "gone",
                                 "volume_ml": {"prior": 0.3, "current": None},
                                 "longest_diameter_mm": {"prior": 8.0, "current": None},
                                 "prior_label": "Lesion 2", "tracking_uid": GONE_UID, "position_mm": gone_at},
        },
    }


def _prior_header(study: str, n: int) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, f"{study}.1"
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", f"{study}.1.{n}"
    return ds


@pytest.fixture(scope="module")
def compared(real_ct_processed, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN001, ANN201
    case = _lesion_case(real_ct_processed)
    middle = case.sources[len(case.sources) // 2]
    gone_at = [float(v) for v in middle.ImagePositionPatient]
    gone_at[0] += 100.0  # 100 mm along the rows of the middle image
    gone_at[1] += 120.0
    liver_ml = float(case.segments[0].mask.sum() * np.prod(case.spacing) / 1000.0)
    out = tmp_path_factory.mktemp("sr-comparison")
    write_result_package(case, out, ViewerProfile(send_enhanced=False),
                         comparison=_block(liver_ml, 1.5, gone_at),
                         prior_evidence=[_prior_header(PRIOR_STUDY, n) for n in range(3)])
    return out, case, gone_at


def _evaluations(group) -> set[tuple[str, str]]:  # noqa: ANN001
    return {(e.name.value, e.value.value) for e in group.get_qualitative_evaluations()}


def _numbers(group) -> dict[str, float]:  # noqa: ANN001
    return {m.name.value: m.value for m in group.get_measurements()}


def _time_point(group) -> dict[str, str]:  # noqa: ANN001
    """TID 1502 items of a group: concept code → value."""
    found = {}
    for item in group[0].ContentSequence:
        if item.name.value in ("C2348792", "126073", "126070"):
            value = getattr(item, "value", "")
            found[item.name.value] = str(int(value)) if isinstance(value, float) else str(value)
    return found


def test_current_findings_carry_their_time_point_and_the_change_since_the_prior(compared) -> None:  # noqa: ANN001
    out, case, _ = compared
    sr = hd.sr.srread(out / "sr.dcm")
    current_study = str(case.sources[0].StudyInstanceUID)
    volumetric = sr.content.get_volumetric_roi_measurement_groups()
    (liver,) = [g for g in volumetric if g.tracking_identifier == "Liver"]
    point = _time_point(liver)
    assert point == {"C2348792": str(case.sources[0].StudyDate), "126070": current_study}
    numbers = _numbers(liver)
    assert numbers["VOL-CHANGE-PCT"] == pytest.approx(_block(numbers["118565006"], 0, [])
                                                         ["findings"]["Liver"]["volume_ml"]["change_percent"])
    assert numbers["MEAN-CHANGE"] == pytest.approx(1.0) and numbers["385673002"] == 1456  # Interval, days
    (lesion,) = [g for g in sr.content.get_volumetric_roi_measurement_groups()
                 if g.tracking_identifier == "Lesion 1"]
    assert ("111021", "15454001") in _evaluations(lesion)  # Description of Change: Increase in size
    assert _numbers(lesion)["AXIS-CHANGE"] == pytest.approx(5.0)


def test_prior_values_are_tid1501_groups_of_the_same_finding_at_the_prior_time_point(compared) -> None:  # noqa: ANN001
    out, _, _ = compared
    sr = hd.sr.srread(out / "sr.dcm")
    priors = {g.tracking_identifier: g for g in sr.content.get_image_measurement_groups()}
    assert set(priors) == {"Liver", "Lesion 1", "Lesion 2 (prior)"}
    assert _time_point(priors["Liver"]) == {"C2348792": "20200110", "126070": PRIOR_STUDY}
    assert _numbers(priors["Liver"])["118565006"] == 1500.0
    assert _numbers(priors["Lesion 1"])["103339001"] == 9.0  # Long Axis
    groups = sr.content.get_volumetric_roi_measurement_groups()
    volumetric = {g.tracking_identifier: g.tracking_uid for g in groups}
    assert priors["Liver"].tracking_uid == volumetric["Liver"]
    # the matched lesion keeps the prior's tracking UID, in the SR and in the SEG
    assert volumetric["Lesion 1"] == priors["Lesion 1"].tracking_uid == LESION_PRIOR_UID
    seg = pydicom.dcmread(out / "seg.dcm", stop_before_pixels=True)
    assert {s.SegmentLabel: s.TrackingUID for s in seg.SegmentSequence}["Lesion 1"] == LESION_PRIOR_UID
    # the prior study is referenced
    other = sr.PertinentOtherEvidenceSequence
    assert [str(s.StudyInstanceUID) for s in other] == [PRIOR_STUDY]
    assert len(other[0].ReferencedSeriesSequence[0].ReferencedSOPSequence) == 3


def test_a_gone_lesion_is_drawn_where_it_was_with_status_absent(compared) -> None:  # noqa: ANN001
    out, case, gone_at = compared
    sr = hd.sr.srread(out / "sr.dcm")
    (gone,) = [g for g in sr.content.get_planar_roi_measurement_groups()
               if g.tracking_identifier == "Lesion 2 (prior)"]
    assert gone.tracking_uid == GONE_UID
    assert ("111021", "272519000") in _evaluations(gone)
    region = gone.roi
    assert region.graphic_type == hd.sr.GraphicTypeValues.CIRCLE
    k, column, row = nearest_image_point(gone_at, case.sources)
    image = region.ContentSequence[0].ReferencedSOPSequence[0]  # SELECTED FROM the source image
    assert image.ReferencedSOPInstanceUID == case.sources[k].SOPInstanceUID
    spacing = [float(v) for v in case.sources[k].PixelSpacing]
    assert (column, row) == pytest.approx((100.0 / spacing[1], 120.0 / spacing[0]), abs=0.01)
    np.testing.assert_allclose(region.value[0], (column, row), atol=0.01)


def test_dcmqi_reads_the_comparison_sr(compared, tmp_path) -> None:  # noqa: ANN001
    reader = shutil.which("tid1500reader")
    if reader is None:
        pytest.skip("dcmqi's tid1500reader is not installed")
    out, _, _ = compared
    subprocess.run([reader, "--inputDICOM", str(out / "sr.dcm"), "--outputMetadata",
                    str(tmp_path / "sr.json")], check=True, capture_output=True, timeout=120)
    groups = json.loads((tmp_path / "sr.json").read_text())["Measurements"]
    lesion = [g for g in groups if g["TrackingUniqueIdentifier"] == LESION_PRIOR_UID]
    # planar and volumetric at the current time point, then the prior's values at the prior's
    assert [g["TrackingIdentifier"] for g in lesion] == ["Lesion 1"] * 3
    assert [g.get("timePoint") for g in lesion] == [lesion[0]["timePoint"]] * 2 + ["20200110"]
    volumes = [m["value"] for m in lesion[2]["measurementItems"] if m["quantity"]["CodeValue"] == "118565006"]
    assert volumes == ["0.5"]


def test_matched_tracking_gives_a_new_uid_to_a_finding_whose_own_uid_is_taken() -> None:
    tracking = {"Liver": "1.1", "Lesion 1": "1.2", "Lesion 2": "1.3"}
    block = {"status": "compared", "findings": {
        "Liver": {"status": "compared", "tracking_uid": "1.1"},
        "Lesion 1": {"status": "stable", "tracking_uid": "1.3"},  # the prior's lesion was in Lesion 2's cell
        "Lesion 2": {"status": "new"},
        "Lesion 9 (prior)": {"status": "gone", "tracking_uid": "1.9"},
    }}
    updated = matched_tracking(block, tracking)
    assert updated["Liver"] == "1.1" and updated["Lesion 1"] == "1.3"
    assert updated["Lesion 2"] not in {"1.1", "1.2", "1.3", "1.9"}
    assert matched_tracking({"status": "unavailable"}, tracking) == tracking
