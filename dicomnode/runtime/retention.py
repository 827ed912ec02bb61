"""Retention: remove studies that were processed and delivered more than ``retention.keep_days`` ago.

A study is removed only when every one of these holds (anything else keeps it, forever if need be):

* the assembler marked the study and each of its series ``complete`` and handed every completion on to
  routing (``assembly_events.handed_on_at`` set) — nothing is waiting to be routed;
* every outbox row of the study is ``sent`` — nothing queued, sending, failed-and-retrying or dead — and,
  for destinations with storage commitment, ``committed`` (a ``sent`` row still awaiting its commitment
  report keeps the study);
* every routing decision of the study is ``done`` (none ``pending``, none ``failed`` — e.g. unroutable for
  want of a valid rule set); a series that matched no rule counts as done;
* every job of the study is ``done`` (none queued, running or failed), and the audit trail shows no
  ``failed`` event that is not followed by a later ``processed``/``sent`` one;
* its latest activity (last instance received, completion, last delivery) is older than ``keep_days``.

Removal is crash-safe: inside one database transaction the study folder is renamed into
``<spool>/.trash/`` (hidden, so spool recovery never re-indexes it) and the study's rows are deleted
(through each table's owner: spool index, assembly records, decision log, its finished outbox rows, its
jobs);
the files are deleted after the commit. A crash before the commit leaves rows and (trashed) files that
the next run finishes; an instance of the study that arrives during the removal is moved back from the
trash. The output folders of the study's jobs (only inside ``<storage.path>/jobs``) go too. The audit
trail keeps a ``removed`` event.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dicomnode.assemble.assembler import AssemblyRecords
from dicomnode.config import Config
from dicomnode.database import Database
from dicomnode.observability.audit import AuditTrail
from dicomnode.observability.metrics import Metrics
from dicomnode.pipelines.jobstore import JobStore
from dicomnode.route.decisions import DecisionLog
from dicomnode.send.outbox import Outbox
from dicomnode.spool.index import SpoolIndex

log = logging.getLogger(__name__)

TRASH_DIR_NAME = ".trash"
DAY = 86400.0


@dataclass
class RetentionReport:
    removed: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # study → why it stays (only old-enough studies)
    files: int = 0
    bytes: int = 0


class Retention:
    """Service component: every ``retention.check_interval_minutes`` remove what may be removed."""

    def __init__(self, config: Config, db: Database, *, metrics: Metrics | None = None,
                 audit: AuditTrail | None = None, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.db = db
        self.spool_root = config.storage.spool_dir
        self.jobs_root = config.storage.jobs_dir
        self.trash = self.spool_root / TRASH_DIR_NAME
        self.metrics = metrics
        self.audit = audit if audit is not None else AuditTrail(db)
        self.index = SpoolIndex(db, self.spool_root)
        self.assembly = AssemblyRecords(db)
        self.outbox = Outbox(db, config.outbox)
        self.decisions = DecisionLog(db)
        self.jobs = JobStore(db)
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- component -------------------------------------------------------------------------------------
    def start(self) -> None:
        if not self.config.retention.enabled or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)
        self._thread.start()
        log.info("Retention on: processed and delivered studies are removed after %g day(s).",
                 self.config.retention.keep_days)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        interval = self.config.retention.check_interval_minutes * 60.0
        while not self._stop.is_set():
            try:
                self.run_once()
            except (OSError, sqlite3.Error):  # try again next round; nothing is half-removed (see above)
                log.exception("Retention run failed; retrying in %.0f s.", interval)
            self._stop.wait(interval)

    # -- the work --------------------------------------------------------------------------------------
    def run_once(self, now: float | None = None, *, dry_run: bool = False) -> RetentionReport:
        """Remove every study that qualifies (see the module docstring); ``dry_run`` only reports."""
        now = self.clock() if now is None else now
        cutoff = now - self.config.retention.keep_days * DAY
        report = RetentionReport()
        if not dry_run:
            self._empty_trash()
        for study_uid, last_activity in self._old_studies(cutoff):
            reason = self._blocker(study_uid)
            if reason is not None:
                report.kept[study_uid] = reason
                log.debug("Retention keeps study %s: %s", study_uid, reason, extra={"study_uid": study_uid})
                continue
            if dry_run:
                report.removed.append(study_uid)
                continue
            files, nbytes = self._remove(study_uid, cutoff)
            if files < 0:
                report.kept[study_uid] = "new activity during removal"
                continue
            report.removed.append(study_uid)
            report.files += files
            report.bytes += nbytes
            age_days = (now - last_activity) / DAY
            log.info("Retention removed study %s (%d files, %d bytes; last activity %.1f days ago).",
                     study_uid, files, nbytes, age_days, extra={"study_uid": study_uid})
            self.audit.record("removed", study_uid, detail={"files": files, "bytes": nbytes,
                                                            "keep_days": self.config.retention.keep_days})
            if self.metrics is not None:
                self.metrics.study_removed(nbytes)
        return report

    def _old_studies(self, cutoff: float) -> list[tuple[str, float]]:
        """Complete studies whose latest activity (last instance, completion, last delivery) is older
        than ``cutoff``, oldest first."""
        received = self.index.last_received_by_study()
        sent = self.outbox.last_sent_by_study()
        old = []
        for study_uid, completed_at in self.assembly.completed_studies().items():
            if study_uid not in received:
                continue
            last = max(received[study_uid], completed_at, sent.get(study_uid, 0.0))
            if last < cutoff:
                old.append((study_uid, last))
        return sorted(old, key=lambda item: item[1])

    def _blocker(self, study_uid: str) -> str | None:
        """Why ``study_uid`` must stay, or None when it may go."""
        open_series = self.assembly.open_series(study_uid)
        if open_series:
            return f"{open_series} series not complete"
        waiting = self.assembly.not_handed_on(study_uid)
        if waiting:
            return f"{waiting} completion(s) not yet handed to routing"
        undelivered = self.outbox.undelivered(study_uid)
        if undelivered:
            return "undelivered: " + ", ".join(f"{n} {state}" for state, n in sorted(undelivered.items()))
        decisions = self.decisions.not_done(study_uid)
        if decisions:
            return "routing decisions not done: " + ", ".join(
                f"{n} {state}" for state, n in sorted(decisions.items()))
        jobs = self.jobs.unfinished(study_uid)
        if jobs:
            return "jobs not done: " + ", ".join(f"{n} {state}" for state, n in sorted(jobs.items()))
        if self.audit.unresolved_failure(study_uid):
            return "the audit trail records a failure not followed by success"
        return None

    def _remove(self, study_uid: str, cutoff: float) -> tuple[int, int]:
        """Trash the folder and delete the rows atomically; (-1, 0) if the study changed meanwhile."""
        study_dir = self.spool_root / study_uid
        trashed = self.trash / f"{study_uid}.{uuid.uuid4().hex}"
        with self.db.transaction() as conn:
            # Re-check under the write lock: an instance stored since the scan re-opens the study.
            last = self.index.last_received(study_uid, conn)
            if not self.assembly.is_complete(study_uid, conn) or last is None or last >= cutoff:
                return -1, 0
            files, nbytes = self.index.study_size(study_uid, conn)
            job_dirs = {self.jobs_root / job_id for job_id in self.outbox.job_ids(study_uid)}
            for job_id, output_dir in self.jobs.output_dirs(study_uid).items():
                job_dirs.add(self.jobs_root / job_id)
                if output_dir:
                    job_dirs.add(Path(output_dir))
            if study_dir.exists():
                self.trash.mkdir(parents=True, exist_ok=True)
                os.rename(study_dir, trashed)
            self.index.forget_study(study_uid, conn)
            self.assembly.forget_study(study_uid, conn)
            self.decisions.forget_study(study_uid, conn)
            self.outbox.purge(study_uid=study_uid)  # its finished rows; joins this transaction
            self.jobs.forget_study(study_uid, conn)
        self._rescue(study_uid, trashed)
        jobs_root = self.jobs_root.resolve()
        for job_dir in {d.resolve() for d in job_dirs}:
            if job_dir.is_relative_to(jobs_root) and job_dir != jobs_root and job_dir.is_dir():
                shutil.rmtree(job_dir, ignore_errors=True)  # only ever inside <storage.path>/jobs
        shutil.rmtree(trashed, ignore_errors=True)
        return files, nbytes

    def _rescue(self, study_uid: str, trashed: Path) -> None:
        """Put back any file the index knows again (stored into the folder just before it was trashed)."""
        if not trashed.exists():
            return
        for path in self.index.study_paths(study_uid):
            final = self.spool_root / path
            stray = trashed / Path(path).relative_to(study_uid)
            if stray.exists() and not final.exists():
                final.parent.mkdir(parents=True, exist_ok=True)
                os.rename(stray, final)
                log.warning("Retention put back %s, received while its study was being removed.", final)

    def _empty_trash(self) -> None:
        if self.trash.is_dir():
            for leftover in self.trash.iterdir():
                shutil.rmtree(leftover, ignore_errors=True)
