"""What the operations layer records when a series or study is complete.

:class:`CompletionRecorder` is a ready handler (``Service.add_ready_handler``): for every series it counts
``dicomnode_series_completed_total`` and writes ``received`` (first/last arrival and instance count, from
the assembler's table) and ``completed`` to the audit trail; for every study it writes ``completed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from dicomnode.assemble.assembler import AssemblyRecords
from dicomnode.database import Database
from dicomnode.events import SeriesReady, StudyReady


class CompletionMetrics(Protocol):
    def series_completed(self) -> None: ...


class CompletionAudit(Protocol):
    def record(self, stage: str, study_uid: str, *, series_uid: str | None = None, job_id: str | None = None,
               detail: Mapping[str, Any] | None = None, at: float | None = None) -> None: ...


class CompletionRecorder:
    def __init__(self, database: Database, metrics: CompletionMetrics, audit: CompletionAudit) -> None:
        self.assembly = AssemblyRecords(database)
        self.metrics = metrics
        self.audit = audit

    def __call__(self, event: SeriesReady | StudyReady) -> None:
        if isinstance(event, SeriesReady):
            self._series(event)
        else:
            self.audit.record("completed", event.study_uid,
                              detail={"series": len(event.series_uids), "generation": event.generation})

    def _series(self, event: SeriesReady) -> None:
        self.metrics.series_completed()
        arrival = self.assembly.arrival(event.study_uid, event.series_uid)
        if arrival is not None:
            first, last, instances = arrival
            self.audit.record("received", event.study_uid, series_uid=event.series_uid,
                              detail={"instances": instances, "first_received_at": first}, at=last)
        self.audit.record("completed", event.study_uid, series_uid=event.series_uid,
                          detail={"instances": event.instance_count, "generation": event.generation,
                                  "reason": event.reason})
