"""Quality-control verdicts of a pipeline's segments: the contract between the pipelines (which compute
them), ``result.json``, the SR (qualitative evaluations of each finding), the console and the hold logic.

A segment's verdict is ``pass`` (nothing found), ``warn`` (usable with the reasons stated: e.g. a
truncated organ whose volume is a lower bound) or ``fail`` (do not trust it). The report's status is the
worst of its segments'. A segment the pipeline declares ``on_qc_fail: withhold`` (a secondary organ such
as the aorta of liver-ct) is not sent when its verdict is ``fail``: it moves to ``withheld`` and the report
is then at least ``warn`` (the result is incomplete, and says so) instead of holding the whole result.
``result.json`` carries :meth:`QCReport.to_json`::

    "qc": {"status": "pass|warn|fail",
           "segments": {"Liver": {"status": "warn", "flags": ["truncated"], "reasons": ["..."]}},
           "withheld": {"Aorta": {"status": "fail", "flags": ["implausible_volume"], "reasons": ["..."]}},
           "not_found": {"Right kidney": "Right kidney was not found in this image: ..."}}

``not_found`` names the optional segments the pipeline declares but did not find (no contour is sent): a
missing organ is said, not silent — a reader of the result knows the pipeline looked for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any


class QCStatus(StrEnum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"

    @property
    def rank(self) -> int:
        return {QCStatus.PASS: 0, QCStatus.WARN: 1, QCStatus.FAIL: 2}[self]


class QCFlag(StrEnum):
    TRUNCATED = "truncated"  # the segment touches the edge of the field of view
    IMPLAUSIBLE_VOLUME = "implausible_volume"  # outside the organ's range for this body size
    IMPLAUSIBLE_INTENSITY = "implausible_intensity"  # outside the organ's plausible intensity range
    LEAK = "leak"  # overlaps or spills into a neighbour's territory
    METAL = "metal"  # metal present in or near the segment
    LOW_CONTRAST = "low_contrast"  # weak organ/background contrast
    SEARCH_LIMITED = "search_limited"  # a lesion search within the segment cannot promise to see every lesion


def worst(statuses: Iterable[QCStatus]) -> QCStatus:
    """The most severe of ``statuses`` (``pass`` for none)."""
    return max(statuses, key=lambda s: s.rank, default=QCStatus.PASS)


@dataclass(frozen=True)
class SegmentQC:
    """The verdict on one segment: status, the flags raised and one sentence per flag."""

    status: QCStatus = QCStatus.PASS
    flags: tuple[QCFlag, ...] = ()
    reasons: tuple[str, ...] = ()

    def adding(self, status: QCStatus, flags: Iterable[QCFlag], reasons: Iterable[str]) -> SegmentQC:
        """This verdict made at least ``status``, with ``flags`` (each once) and ``reasons`` added."""
        return SegmentQC(worst((self.status, status)), tuple(dict.fromkeys((*self.flags, *flags))),
                         (*self.reasons, *reasons))

    def to_json(self) -> dict[str, Any]:
        return {
            "status": str(self.status),
            "flags": [str(f) for f in self.flags],
            "reasons": list(self.reasons),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SegmentQC:
        return cls(
            QCStatus(data.get("status", "pass")),
            tuple(QCFlag(f) for f in data.get("flags", ())),
            tuple(str(r) for r in data.get("reasons", ())),
        )


@dataclass(frozen=True)
class QCReport:
    """Verdicts per segment label ("Liver", "Lesion 1", ...)."""

    segments: Mapping[str, SegmentQC] = field(default_factory=dict)
    withheld: Mapping[str, SegmentQC] = field(default_factory=dict)  # failed segments not sent
    not_found: Mapping[str, str] = field(default_factory=dict)  # declared segments not found: label -> reason

    @property
    def status(self) -> QCStatus:
        statuses = [s.status for s in self.segments.values()]
        if self.withheld:
            statuses.append(QCStatus.WARN)
        return worst(statuses)

    def withhold(self, labels: Iterable[str]) -> QCReport:
        """This report with the segments ``labels`` moved to ``withheld`` (they are not sent)."""
        moved = set(labels)
        return QCReport(
            {k: v for k, v in self.segments.items() if k not in moved},
            {**self.withheld, **{k: v for k, v in self.segments.items() if k in moved}},
            self.not_found,
        )

    def warning_all(self, flag: QCFlag, reason: str) -> QCReport:
        """This report with every sent segment made at least ``warn`` by ``flag`` and ``reason`` (evidence
        about the whole image, e.g. its HU calibration)."""
        warned = {label: qc.adding(QCStatus.WARN, (flag,), (reason,)) for label, qc in self.segments.items()}
        return replace(self, segments=warned)

    def with_not_found(self, reasons: Mapping[str, str]) -> QCReport:
        """This report with ``reasons`` (label -> sentence) for declared segments that were not found."""
        return QCReport(self.segments, self.withheld, {**self.not_found, **reasons})

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "status": str(self.status),
            "segments": {label: qc.to_json() for label, qc in self.segments.items()},
        }
        if self.withheld:
            data["withheld"] = {label: qc.to_json() for label, qc in self.withheld.items()}
        if self.not_found:
            data["not_found"] = dict(self.not_found)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> QCReport:
        if not data:
            return cls()
        return cls(
            {str(k): SegmentQC.from_json(v) for k, v in dict(data.get("segments", {})).items()},
            {str(k): SegmentQC.from_json(v) for k, v in dict(data.get("withheld", {})).items()},
            {str(k): str(v) for k, v in dict(data.get("not_found", {})).items()},
        )
