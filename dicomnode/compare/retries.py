"""Durable retries of comparisons the prior source could not answer: the ``comparison_retries`` table.

A job whose comparison came back ``unavailable`` (the PACS did not answer, or the comparison ran past
``priors.wait_seconds``) was sent without it; it is run again later as a new job (``<job>-cmp1``, ``-cmp2`` …;
deterministic UIDs: its objects replace those sent without comparison). The schedule lives in the node
database, not in a timer, so a restart keeps it: one row per original job with the next run's job spec, the
attempts made, when the next is due and why the last comparison was unavailable.

States: ``pending`` (due at ``due_at``) → ``running`` (submitted) → ``done`` (compared, or no prior) |
``pending`` again (still unavailable) | ``given_up`` (still unavailable after the last attempt; the reason
says why).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

from dicomnode.database import Database, Schema, Step, check_in
from dicomnode.jobs import JobSpec

log = logging.getLogger(__name__)


class RetryState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    GIVEN_UP = "given_up"


DDL_V1 = f"""
CREATE TABLE IF NOT EXISTS comparison_retries (
    job_id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due_at REAL NOT NULL,
    state TEXT NOT NULL {check_in("state", RetryState)},
    reason TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS comparison_retries_due ON comparison_retries (state, due_at);
"""

SCHEMA = Schema("comparison_retries", ("comparison_retries",), (Step("comparison_retries", DDL_V1),))


@dataclass(frozen=True)
class ComparisonRetry:
    job_id: str  # the original job
    spec: JobSpec  # the next run
    attempts: int  # runs made after the original
    due_at: float
    state: RetryState
    reason: str


def retry_base(job_id: str) -> tuple[str, int]:
    """(original job id, retry number) of ``job-1-cmp2`` → ``("job-1", 2)``; the original is number 0."""
    base, _, count = job_id.rpartition("-cmp")
    return (base, int(count)) if base and count.isdigit() else (job_id, 0)


class ComparisonRetries:
    """The ``comparison_retries`` table of the node database."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self._clock = clock
        db.migrate(SCHEMA)

    def unavailable(self, spec: JobSpec, reason: str, delay_seconds: float,
                    max_attempts: int) -> ComparisonRetry:
        """Record that ``spec``'s comparison was unavailable: schedule the next run after ``delay_seconds``,
        or give up when ``max_attempts`` runs after the original were made."""
        base, number = retry_base(spec.job_id)
        now = self._clock()
        if number >= max_attempts:
            state, due_at, next_spec = RetryState.GIVEN_UP, now, spec
            reason = f"Comparison still unavailable after {number} retries: {reason}"
        else:
            state, due_at = RetryState.PENDING, now + delay_seconds
            name = f"{base}-cmp{number + 1}"
            next_spec = replace(spec, job_id=name, attempt=1,
                                output_dir=str(Path(spec.output_dir).with_name(Path(name).name)))
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO comparison_retries (job_id, spec, attempts, due_at, state, reason, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id) DO UPDATE SET "
                "spec = excluded.spec, attempts = excluded.attempts, due_at = excluded.due_at, "
                "state = excluded.state, reason = excluded.reason, updated_at = excluded.updated_at",
                (base, next_spec.to_json(), number, due_at, str(state), reason, now, now),
            )
        return self.get(base)

    def finished(self, spec: JobSpec, status: str) -> None:
        """A retry run's comparison gave ``status`` (compared or no_prior): its schedule is done."""
        base, number = retry_base(spec.job_id)
        if number == 0:
            return
        with self.db.transaction() as conn:
            conn.execute("UPDATE comparison_retries SET state = ?, reason = ?, updated_at = ? "
                         "WHERE job_id = ?",
                         (str(RetryState.DONE), f"comparison {status} on retry {number}", self._clock(),
                          base))

    def due(self) -> list[ComparisonRetry]:
        """Pending retries whose time has come, oldest first."""
        rows = self.db.conn.execute(
            "SELECT * FROM comparison_retries WHERE state = ? AND due_at <= ? ORDER BY due_at",
            (str(RetryState.PENDING), self._clock())).fetchall()
        return [_record(r) for r in rows]

    def started(self, retry: ComparisonRetry) -> None:
        """``retry`` (as :meth:`due` returned it) was submitted. Only that retry is marked running: when its
        job has already ended (a fast 'unavailable' scheduled the next retry, or it compared), the newer
        state stands (marking it running would leave the schedule stuck)."""
        with self.db.transaction() as conn:
            conn.execute("UPDATE comparison_retries SET state = ?, updated_at = ? "
                         "WHERE job_id = ? AND state = ? AND attempts = ?",
                         (str(RetryState.RUNNING), self._clock(), retry.job_id, str(RetryState.PENDING),
                          retry.attempts))

    def get(self, job_id: str) -> ComparisonRetry:
        row = self.db.conn.execute("SELECT * FROM comparison_retries WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(f"No comparison retry for job '{job_id}'.")
        return _record(row)

    def list(self) -> list[ComparisonRetry]:
        rows = self.db.conn.execute("SELECT * FROM comparison_retries ORDER BY updated_at DESC").fetchall()
        return [_record(r) for r in rows]


def _record(row) -> ComparisonRetry:  # noqa: ANN001 - sqlite3.Row
    return ComparisonRetry(str(row["job_id"]), JobSpec.from_json(row["spec"]), int(row["attempts"]),
                           float(row["due_at"]), RetryState(row["state"]), str(row["reason"]))
