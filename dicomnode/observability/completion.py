"""What the operations layer records when a series or study is complete, and the spool's size for scrapes.

:class:`CompletionRecorder` is a ready handler (``Service.add_ready_handler``): for every series it counts
``dicomnode_series_completed_total`` and writes ``received`` (first/last arrival and instance count, from
the assembler's table) and ``completed`` to the audit trail; for every study it writes ``completed``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from dicomnode.database import Database
from dicomnode.events import SeriesReady, StudyReady


class CompletionMetrics(Protocol):
    def series_completed(self) -> None: ...


class CompletionAudit(Protocol):
    def record(self, stage: str, study_uid: str, *, series_uid: str | None = None, job_id: str | None = None,
               detail: Mapping[str, Any] | None = None, at: float | None = None) -> None: ...


class CompletionRecorder:
    def __init__(self, database: Database, metrics: CompletionMetrics, audit: CompletionAudit) -> None:
        self.database = database
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
        row = self.database.conn.execute(
            "SELECT first_received_at, last_received_at, instance_count FROM assembly_series "
            "WHERE study_uid = ? AND series_uid = ?", (event.study_uid, event.series_uid),
        ).fetchone()
        if row is not None:
            self.audit.record("received", event.study_uid, series_uid=event.series_uid,
                              detail={"instances": row["instance_count"],
                                      "first_received_at": row["first_received_at"]},
                              at=row["last_received_at"])
        self.audit.record("completed", event.study_uid, series_uid=event.series_uid,
                          detail={"instances": event.instance_count, "generation": event.generation,
                                  "reason": event.reason})


def spool_bytes_from_database(database: Database) -> Callable[[], int]:
    """Bytes of DICOM instances in the spool index, read at each scrape."""

    def total() -> int:
        row = database.conn.execute("SELECT COALESCE(SUM(size), 0) FROM spool_instances").fetchone()
        return int(row[0])

    return total
