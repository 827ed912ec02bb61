"""The comparison with prior studies in the TID 1500 Measurement Report: time-point context and change.

Input is the ``comparison`` block of ``result.json`` (:mod:`dicomnode.compare.prior`); with
``status: compared`` the report states, per finding:

- a TID 1502 Time Point Context on the finding's current groups: Time Point = the study date and Subject
  Time Point Identifier = the study's Study Instance UID (no Time Point Order: it is a NUM, which OHIF and
  dcmqi read as one of the finding's measurements — OHIF then shows it instead of the volume);
- one TID 1501 measurement group per prior time point with the **same tracking UID** as the current finding
  (the findings of two studies are one finding followed over time) and that time point's context: the prior
  values (Volume, mean Attenuation Coefficient / MR signal, Long Axis of lesions);
- in the current volumetric group: the change since the most recent prior (absolute and percent, in the
  node's private scheme ``99DICOMNODE``: DICOM has no concept for "change of a measurement since a prior"),
  the current longest axial diameter of lesions (Long Axis over all slices, the planar group's is the key
  slice's), the interval in days (SCT 385673002 Interval) and, for lesions, the status as a qualitative
  evaluation (DCM 111021 "Description of Change": SCT New finding / No change / Increase in size /
  Decrease in size / Absent);
- a lesion gone since the prior: a planar group on the current image nearest to where the prior lesion lies
  after registration (a CIRCLE of the prior's long axis), with status Absent, its prior values and the
  prior's tracking UID. OHIF needs image coordinates in every merged finding, hence the circle.

The prior study's images go into the Pertinent Other Evidence Sequence (highdicom puts evidence from other
studies there).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from dicomnode.outputs.codes import UNIT_HU, UNIT_ML, UNIT_MM, intensity_quantity
from dicomnode.outputs.uids import UID_PREFIX

SCHEME = "99DICOMNODE"
UNIT_PERCENT = hd.sr.CodedConcept("%", "UCUM", "percent")
UNIT_DAY = hd.sr.CodedConcept("d", "UCUM", "day")
INTERVAL = hd.sr.CodedConcept("385673002", "SCT", "Interval")
CHANGE_STATUS = hd.sr.CodedConcept("111021", "DCM", "Description of Change")
STATUS_CODES: dict[str, hd.sr.CodedConcept] = {
    "new": hd.sr.CodedConcept("129721008", "SCT", "New finding"),
    "stable": hd.sr.CodedConcept("260388006", "SCT", "No change"),
    "grown": hd.sr.CodedConcept("15454001", "SCT", "Increase in size"),
    "shrunk": hd.sr.CodedConcept("19776001", "SCT", "Decrease in size"),
    "gone": hd.sr.CodedConcept("272519000", "SCT", "Absent"),
}
#: result.json value key → (name stem for change concepts, what it is)
QUANTITIES = {"volume_ml": ("VOL", "volume"), "mean": ("MEAN", "mean intensity"),
              "longest_diameter_mm": ("AXIS", "long axis")}


def change_concept(key: str, percent: bool) -> hd.sr.CodedConcept:
    stem, text = QUANTITIES[key]
    if percent:
        return hd.sr.CodedConcept(f"{stem}-CHANGE-PCT", SCHEME, f"Percent change of {text} since prior")
    return hd.sr.CodedConcept(f"{stem}-CHANGE", SCHEME, f"Change of {text} since prior")  # ≤ 16 characters


@dataclass(frozen=True)
class TimePoint:
    study_uid: str
    date: str  # YYYYMMDD
    order: int  # 1 = the oldest study in the report (not written, see the module docstring)

    def context(self) -> hd.sr.TimePointContext:
        return hd.sr.TimePointContext(time_point=self.date or "unknown",
                                      subject_time_point_identifier=self.study_uid)


@dataclass(frozen=True)
class FindingChange:
    """One finding's comparison as ``result.json`` states it (values in the report's units)."""

    label: str
    status: str  # compared (organs) | new | stable | grown | shrunk | gone
    values: Mapping[str, Mapping[str, Any]]  # "volume_ml"/"mean"/"longest_diameter_mm" → prior/current/…
    tracking_uid: str | None = None
    position_mm: tuple[float, float, float] | None = None  # a gone lesion, in current patient coordinates
    history: Sequence[tuple[TimePoint, Mapping[str, float]]] = ()  # older priors' values, oldest first


@dataclass(frozen=True)
class SRComparison:
    current: TimePoint
    prior: TimePoint
    interval_days: int | None
    findings: Mapping[str, FindingChange]
    older: Sequence[TimePoint] = field(default_factory=tuple)


def _values(entry: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    found: dict[str, Mapping[str, Any]] = {}
    for key, value in entry.items():
        if not isinstance(value, Mapping):
            continue
        if key in ("volume_ml", "longest_diameter_mm"):
            found[key] = value
        elif key.startswith("mean_"):
            found["mean"] = value
    return found


def sr_comparison(block: Mapping[str, Any] | None, current: Dataset) -> SRComparison | None:
    """The SR's view of a ``comparison`` block (None unless it compared)."""
    if not block or block.get("status") != "compared":
        return None
    history = [h for h in block.get("history") or [] if isinstance(h, Mapping)]
    history.sort(key=lambda h: str(h.get("study_date", "")))
    older = tuple(TimePoint(str(h.get("study_uid", "")), str(h.get("study_date", "")), n)
                  for n, h in enumerate(history, start=1))
    prior = TimePoint(str(block.get("prior_study_uid", "")), str(block.get("prior_study_date", "")),
                      len(older) + 1)
    now = TimePoint(str(current.get("StudyInstanceUID", "")), str(current.get("StudyDate", "") or ""),
                    len(older) + 2)
    findings = {}
    for label, entry in (block.get("findings") or {}).items():
        past = []
        for point, h in zip(older, history, strict=True):
            values = (h.get("findings") or {}).get(label)
            if isinstance(values, Mapping):
                past.append((point, {k: float(v) for k, v in _values_flat(values).items()}))
        position = entry.get("position_mm")
        findings[label] = FindingChange(
            label, str(entry.get("status", "")), _values(entry), entry.get("tracking_uid"),
            tuple(float(v) for v in position) if position else None, tuple(past))
    return SRComparison(now, prior, block.get("interval_days"), findings, older)


def _values_flat(values: Mapping[str, Any]) -> dict[str, float]:
    """History values ``{"volume_ml": 1.2, "mean_hu": 50}`` → ``{"volume_ml": 1.2, "mean": 50}``."""
    out = {}
    for key, value in values.items():
        if value is None or isinstance(value, Mapping | list):
            continue
        out["mean" if key.startswith("mean_") else key] = value
    return out


def _measurement(key: str, value: float, modality: str) -> hd.sr.Measurement:
    if key == "volume_ml":
        return hd.sr.Measurement(name=codes.SCT.Volume, value=float(value), unit=UNIT_ML)
    if key == "longest_diameter_mm":
        return hd.sr.Measurement(name=codes.SCT.LongAxis, value=float(value), unit=UNIT_MM)
    quantity = intensity_quantity(modality)
    unit = UNIT_HU if modality.upper() == "CT" else hd.sr.CodedConcept("[arb'U]", "UCUM", "arbitrary unit")
    if quantity is None:
        return hd.sr.Measurement(name=codes.SCT.Mean, value=float(value), unit=unit)
    return hd.sr.Measurement(name=quantity, value=float(value), unit=unit, derivation=codes.SCT.Mean)


def _change_unit(key: str, modality: str) -> hd.sr.CodedConcept:
    if key == "volume_ml":
        return UNIT_ML
    if key == "longest_diameter_mm":
        return UNIT_MM
    return UNIT_HU if modality.upper() == "CT" else hd.sr.CodedConcept("[arb'U]", "UCUM", "arbitrary unit")


def change_measurements(change: FindingChange, comparison: SRComparison,
                        modality: str) -> list[hd.sr.Measurement]:
    """What goes into the current volumetric group: the change of each value and the interval."""
    found = []
    for key in QUANTITIES:
        value = change.values.get(key) or {}
        if key == "longest_diameter_mm" and value.get("current") is not None:
            found.append(_measurement(key, value["current"], modality))  # over all slices, not the key one
        if value.get("change") is not None:
            found.append(hd.sr.Measurement(name=change_concept(key, False), value=float(value["change"]),
                                           unit=_change_unit(key, modality)))
        if value.get("change_percent") is not None:
            found.append(hd.sr.Measurement(name=change_concept(key, True),
                                           value=float(value["change_percent"]), unit=UNIT_PERCENT))
    if comparison.interval_days is not None and change.values:
        found.append(hd.sr.Measurement(name=INTERVAL, value=float(comparison.interval_days), unit=UNIT_DAY))
    return found


def status_evaluation(change: FindingChange) -> list[hd.sr.QualitativeEvaluation]:
    code = STATUS_CODES.get(change.status)
    return [hd.sr.QualitativeEvaluation(name=CHANGE_STATUS, value=code)] if code is not None else []


def prior_groups(change: FindingChange, comparison: SRComparison, tracking: hd.sr.TrackingIdentifier,
                 modality: str, finding_type: hd.sr.CodedConcept
                 ) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """TID 1501 groups with the finding's values at the prior time points (oldest first)."""
    groups = []
    points: list[tuple[TimePoint, Mapping[str, float]]] = list(change.history)
    prior_values = {k: v.get("prior") for k, v in change.values.items()}
    if any(v is not None for v in prior_values.values()):
        points.append((comparison.prior, prior_values))  # type: ignore[arg-type]
    for point, values in points:
        measured = [_measurement(k, v, modality) for k, v in values.items()
                    if v is not None and k in QUANTITIES]
        if not measured:
            continue
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, time_point_context=point.context(), finding_type=finding_type,
            measurements=measured))
    return groups


def nearest_image_point(position: Sequence[float], sources: Sequence[Dataset]) -> tuple[int, float, float]:
    """(index of the source image nearest to ``position``, column, row) of a patient point (mm)."""
    first = sources[0]
    row_dir = np.array([float(v) for v in first.ImageOrientationPatient[:3]])
    col_dir = np.array([float(v) for v in first.ImageOrientationPatient[3:]])
    normal = np.cross(row_dir, col_dir)
    point = np.asarray(position, dtype=float)
    origins = np.array([[float(v) for v in s.ImagePositionPatient] for s in sources])
    k = int(np.argmin(np.abs((point - origins) @ normal)))
    spacing = [float(v) for v in sources[k].PixelSpacing]  # row spacing, column spacing
    offset = point - origins[k]
    column = float(np.clip(offset @ row_dir / spacing[1], 0, int(sources[k].Columns) - 1))
    row = float(np.clip(offset @ col_dir / spacing[0], 0, int(sources[k].Rows) - 1))
    return k, column, row


def gone_region(change: FindingChange, sources: Sequence[Dataset]) -> tuple[int, hd.sr.ImageRegion] | None:
    """A circle of the prior long axis where a gone lesion was (None without its position)."""
    if change.position_mm is None:
        return None
    k, column, row = nearest_image_point(change.position_mm, sources)
    diameter = (change.values.get("longest_diameter_mm") or {}).get("prior") or 10.0
    radius = max(float(diameter) / 2.0 / float(sources[k].PixelSpacing[1]), 1.0)
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.CIRCLE,
        graphic_data=np.array([[column, row], [column + radius, row]]),
        source_image=hd.sr.SourceImageForRegion(referenced_sop_class_uid=sources[k].SOPClassUID,
                                                referenced_sop_instance_uid=sources[k].SOPInstanceUID),
    )
    return k, region


def matched_tracking(block: Mapping[str, Any] | None, tracking: Mapping[str, str]) -> dict[str, str]:
    """``tracking`` (current label → tracking UID) with the prior's tracking UID for findings matched to a
    prior finding: one finding keeps one tracking UID across time points. A finding whose own UID is now
    another's (a new lesion where a gone or moved one was) gets a new UID."""
    updated = dict(tracking)
    if not block or block.get("status") != "compared":
        return updated
    entries = block.get("findings") or {}
    claimed = {}
    for label, entry in entries.items():
        uid = entry.get("tracking_uid")
        if uid and (label in tracking or entry.get("status") == "gone"):
            claimed[str(uid)] = label
            if label in tracking and entry.get("status") != "gone":
                updated[label] = str(uid)
    for label, uid in tracking.items():
        if updated[label] == uid and claimed.get(uid, label) != label:
            updated[label] = str(generate_uid(prefix=UID_PREFIX, entropy_srcs=["dicomnode-tracking-new", uid,
                                                                                label]))
    return updated

