"""Retention: remove studies that were processed and delivered more than ``retention.keep_days`` ago.

A study is removed only when every one of these holds (anything else keeps it, forever if need be):

* the assembler marked the study and each of its series ``complete`` and handed every completion on to
  routing (``assembly_events.handed_on_at`` set) — nothing is waiting to be routed;
* every outbox row of the study is ``sent`` — nothing queued, sending, failed-and-retrying or dead;
* every routing decision of the study is ``done`` (none ``pending``, none ``failed`` — e.g. unroutable for
  want of a valid rule set); a series that matched no rule counts as done;
* no job of the study is in any state but a successful one (when a ``jobs`` table exists), and the audit
  trail shows no ``failed`` event that is not followed by a later ``processed``/``sent`` one;
* its latest activity (last instance received, completion, last delivery) is older than ``keep_days``.

Removal is crash-safe: inside one database transaction the study folder is renamed into
``<spool>/.trash/`` (hidden, so spool recovery never re-indexes it) and the study's rows are deleted
(``spool_instances``, ``assembly_*``, ``route_decisions``, its ``sent`` outbox rows, its ``jobs`` rows);
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

from dicomnode.config import Config
from dicomnode.database import Database
from dicomnode.observability.audit import AuditTrail
from dicomnode.observability.metrics import Metrics

log = logging.getLogger(__name__)

TRASH_DIR_NAME = ".trash"
DAY = 86400.0
#: Job states that count as finished successfully (anything else keeps the study).
JOB_DONE_STATES = ("done", "succeeded", "success", "completed", "ok", "sent", "delivered")


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
        tables = self._tables()
        if not {"spool_instances", "assembly_studies", "assembly_series"} <= tables:
            return report
        for study_uid, last_activity in self._old_studies(cutoff, tables):
            reason = self._blocker(study_uid, tables)
            if reason is not None:
                report.kept[study_uid] = reason
                log.debug("Retention keeps study %s: %s", study_uid, reason, extra={"study_uid": study_uid})
                continue
            if dry_run:
                report.removed.append(study_uid)
                continue
            files, nbytes = self._remove(study_uid, cutoff, tables)
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

    def _tables(self) -> set[str]:
        return {r[0] for r in self.db.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def _old_studies(self, cutoff: float, tables: set[str]) -> list[tuple[str, float]]:
        sent = ("(SELECT MAX(sent_at) FROM outbox o WHERE o.study_uid = s.study_uid)"
                if "outbox" in tables else "NULL")
        rows = self.db.conn.execute(
            f"""SELECT s.study_uid,
                       MAX(MAX(i.received_at), COALESCE(s.completed_at, 0), COALESCE({sent}, 0)) AS last
                FROM assembly_studies s JOIN spool_instances i ON i.study_uid = s.study_uid
                WHERE s.state = 'complete'
                GROUP BY s.study_uid HAVING last < ? ORDER BY last""",
            (cutoff,),
        ).fetchall()
        return [(r["study_uid"], float(r["last"])) for r in rows]

    def _blocker(self, study_uid: str, tables: set[str]) -> str | None:
        """Why ``study_uid`` must stay, or None when it may go."""
        conn = self.db.conn
        open_series = conn.execute(
            "SELECT COUNT(*) FROM assembly_series WHERE study_uid = ? AND state != 'complete'", (study_uid,)
        ).fetchone()[0]
        if open_series:
            return f"{open_series} series not complete"
        if "assembly_events" in tables:
            waiting = conn.execute(
                "SELECT COUNT(*) FROM assembly_events WHERE study_uid = ? AND handed_on_at IS NULL",
                (study_uid,),
            ).fetchone()[0]
            if waiting:
                return f"{waiting} completion(s) not yet handed to routing"
        if "outbox" in tables:
            rows = conn.execute(
                "SELECT state, COUNT(*) AS n FROM outbox WHERE study_uid = ? AND state != 'sent' "
                "GROUP BY state",
                (study_uid,),
            ).fetchall()
            if rows:
                return "undelivered: " + ", ".join(f"{r['n']} {r['state']}" for r in rows)
        if "route_decisions" in tables:
            rows = conn.execute(
                "SELECT state, COUNT(*) AS n FROM route_decisions WHERE study_uid = ? AND state != 'done' "
                "GROUP BY state", (study_uid,),
            ).fetchall()
            if rows:
                return "routing decisions not done: " + ", ".join(f"{r['n']} {r['state']}" for r in rows)
        if "jobs" in tables and self._has_columns("jobs", {"study_uid", "state"}):
            marks = ",".join("?" * len(JOB_DONE_STATES))
            rows = conn.execute(
                f"SELECT state, COUNT(*) AS n FROM jobs WHERE study_uid = ? AND state NOT IN ({marks}) "
                "GROUP BY state",
                (study_uid, *JOB_DONE_STATES),
            ).fetchall()
            if rows:
                return "jobs not done: " + ", ".join(f"{r['n']} {r['state']}" for r in rows)
        last_failure = conn.execute(
            "SELECT MAX(time) FROM audit WHERE study_uid = ? AND stage = 'failed'", (study_uid,)
        ).fetchone()[0]
        if last_failure is not None:
            recovered = conn.execute(
                "SELECT MAX(time) FROM audit WHERE study_uid = ? AND stage IN ('processed', 'sent')",
                (study_uid,),
            ).fetchone()[0]
            if recovered is None or recovered < last_failure:
                return "the audit trail records a failure not followed by success"
        return None

    def _has_columns(self, table: str, columns: set[str]) -> bool:
        return columns <= {r[1] for r in self.db.conn.execute(f"PRAGMA table_info({table})")}

    def _remove(self, study_uid: str, cutoff: float, tables: set[str]) -> tuple[int, int]:
        """Trash the folder and delete the rows atomically; (-1, 0) if the study changed meanwhile."""
        study_dir = self.spool_root / study_uid
        trashed = self.trash / f"{study_uid}.{uuid.uuid4().hex}"
        with self.db.transaction() as conn:
            # Re-check under the write lock: an instance stored since the scan re-opens the study.
            row = conn.execute(
                """SELECT s.state, MAX(i.received_at) AS last FROM assembly_studies s
                   JOIN spool_instances i ON i.study_uid = s.study_uid WHERE s.study_uid = ?""",
                (study_uid,),
            ).fetchone()
            if row is None or row["state"] != "complete" or row["last"] is None or row["last"] >= cutoff:
                return -1, 0
            size_row = conn.execute(
                "SELECT COUNT(*) AS n, COALESCE(SUM(size), 0) AS bytes FROM spool_instances "
                "WHERE study_uid = ?",
                (study_uid,),
            ).fetchone()
            job_dirs: set[Path] = set()
            if "outbox" in tables:
                job_dirs |= {self.jobs_root / r[0] for r in conn.execute(
                    "SELECT DISTINCT job_id FROM outbox WHERE study_uid = ? AND job_id IS NOT NULL",
                    (study_uid,))}
            if "jobs" in tables and self._has_columns("jobs", {"study_uid", "id", "output_dir"}):
                for r in conn.execute("SELECT id, output_dir FROM jobs WHERE study_uid = ?", (study_uid,)):
                    job_dirs.add(self.jobs_root / r["id"])
                    if r["output_dir"]:
                        job_dirs.add(Path(r["output_dir"]))
            if study_dir.exists():
                self.trash.mkdir(parents=True, exist_ok=True)
                os.rename(study_dir, trashed)
            conn.execute("DELETE FROM spool_instances WHERE study_uid = ?", (study_uid,))
            for table in ("assembly_series", "assembly_studies", "assembly_events", "route_decisions"):
                if table in tables:
                    conn.execute(f"DELETE FROM {table} WHERE study_uid = ?", (study_uid,))
            if "outbox" in tables:
                conn.execute("DELETE FROM outbox WHERE study_uid = ? AND state = 'sent'", (study_uid,))
            if "jobs" in tables and self._has_columns("jobs", {"study_uid"}):
                conn.execute("DELETE FROM jobs WHERE study_uid = ?", (study_uid,))
        self._rescue(study_uid, trashed)
        jobs_root = self.jobs_root.resolve()
        for job_dir in {d.resolve() for d in job_dirs}:
            if job_dir.is_relative_to(jobs_root) and job_dir != jobs_root and job_dir.is_dir():
                shutil.rmtree(job_dir, ignore_errors=True)  # only ever inside <storage.path>/jobs
        shutil.rmtree(trashed, ignore_errors=True)
        return int(size_row["n"]), int(size_row["bytes"])

    def _rescue(self, study_uid: str, trashed: Path) -> None:
        """Put back any file the index knows again (stored into the folder just before it was trashed)."""
        if not trashed.exists():
            return
        for r in self.db.conn.execute("SELECT path FROM spool_instances WHERE study_uid = ?", (study_uid,)):
            final = self.spool_root / r["path"]
            stray = trashed / Path(r["path"]).relative_to(study_uid)
            if stray.exists() and not final.exists():
                final.parent.mkdir(parents=True, exist_ok=True)
                os.rename(stray, final)
                log.warning("Retention put back %s, received while its study was being removed.", final)

    def _empty_trash(self) -> None:
        if self.trash.is_dir():
            for leftover in self.trash.iterdir():
                shutil.rmtree(leftover, ignore_errors=True)
