"""The ``jobs`` table: every processing job, its state, attempts, error and timings (visible, retryable).

States: ``queued`` → ``running`` → ``done`` | ``failed``; :meth:`JobStore.retry` puts a failed job back
to ``queued`` with ``attempt + 1`` (refused once ``max_attempts`` is reached). The stored spec is the
job's :class:`~dicomnode.jobs.JobSpec` JSON, so a retry resubmits exactly what ran.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, replace
from enum import StrEnum

from dicomnode.database import Database, Schema, Step, check_in, sql_list
from dicomnode.errors import PipelineError
from dicomnode.jobs import JobResult, JobSpec


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


#: States a job is still on its way in (a retry of a failed job is an operator's decision).
ACTIVE = (JobState.QUEUED, JobState.RUNNING)
FINISHED = (JobState.DONE, JobState.FAILED)

DDL_V1 = f"""
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    study_uid TEXT NOT NULL DEFAULT '',
    series_uid TEXT NOT NULL DEFAULT '',
    output_dir TEXT NOT NULL DEFAULT '',
    params TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL {check_in("state", JobState)},
    attempt INTEGER NOT NULL DEFAULT 1,
    error TEXT NOT NULL DEFAULT '',
    output_files TEXT NOT NULL DEFAULT '[]',
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    seconds REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
"""

SCHEMA = Schema("jobs", ("jobs",), (Step("jobs", DDL_V1),))


@dataclass(frozen=True)
class JobRecord:
    id: str
    pipeline: str
    study_uid: str
    series_uid: str
    params: dict
    spec: JobSpec
    state: JobState
    attempt: int
    error: str
    output_files: tuple[str, ...]
    created_at: float
    started_at: float | None
    finished_at: float | None
    seconds: float | None


class JobStore:
    """Jobs in the node database (``jobs`` table)."""

    def __init__(self, database: Database, *, max_attempts: int = 2) -> None:
        self.db = database
        self.max_attempts = max_attempts
        database.migrate(SCHEMA)

    def create(self, spec: JobSpec) -> JobRecord:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO jobs (id, pipeline, study_uid, series_uid, output_dir, params, spec, state, "
                "attempt, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (spec.job_id, spec.pipeline, spec.study_uid, spec.series_uid, spec.output_dir,
                 json.dumps(spec.params, sort_keys=True), spec.to_json(), JobState.QUEUED, spec.attempt,
                 time.time()),
            )
        return self.get(spec.job_id)

    def mark_running(self, job_id: str) -> None:
        self._transition(
            job_id, (JobState.QUEUED,), JobState.RUNNING, started_at=time.time(), finished_at=None
        )

    def mark_done(self, job_id: str, result: JobResult) -> None:
        now = time.time()
        self._transition(
            job_id, ACTIVE, JobState.DONE, finished_at=now, error="",
            output_files=json.dumps(list(result.output_files)), seconds=result.summary.get("seconds"),
        )

    def mark_failed(self, job_id: str, error: str) -> None:
        self._transition(job_id, ACTIVE, JobState.FAILED, finished_at=time.time(), error=error)

    def finish(self, result: JobResult) -> None:
        """Record a :class:`JobResult` (done or failed)."""
        if result.ok:
            self.mark_done(result.job_id, result)
        else:
            self.mark_failed(result.job_id, result.error)

    def retry(self, job_id: str) -> JobSpec:
        """Queue a failed job again (attempt + 1) and return the spec to resubmit."""
        record = self.get(job_id)
        if record.state != JobState.FAILED:
            raise PipelineError(f"Job '{job_id}' is {record.state}; only failed jobs can be retried.")
        if record.attempt >= self.max_attempts:
            raise PipelineError(
                f"Job '{job_id}' already ran {record.attempt} times (max_attempts {self.max_attempts})."
            )
        spec = replace(record.spec, attempt=record.attempt + 1)
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET state = ?, attempt = ?, spec = ?, error = '', started_at = NULL, "
                "finished_at = NULL, seconds = NULL WHERE id = ?",
                (JobState.QUEUED, spec.attempt, spec.to_json(), job_id),
            )
        return spec

    def requeue_interrupted(self) -> list[JobSpec]:
        """Jobs left ``queued`` or ``running`` by a stopped or killed node, put back to ``queued`` (oldest
        first) so the node can run them again at start-up."""
        with self.db.transaction() as conn:
            rows = conn.execute(
                f"SELECT spec FROM jobs WHERE state IN ({sql_list(ACTIVE)}) ORDER BY created_at"
            ).fetchall()
            conn.execute(
                f"UPDATE jobs SET state = ?, started_at = NULL WHERE state IN ({sql_list(ACTIVE)})",
                (JobState.QUEUED,),
            )
        return [JobSpec.from_json(r["spec"]) for r in rows]

    def get(self, job_id: str) -> JobRecord:
        row = self.db.conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise PipelineError(f"No job '{job_id}' in the jobs table.")
        return _record(row)

    def list(self, state: str | None = None, limit: int = 100) -> list[JobRecord]:
        if state is None:
            rows = self.db.conn.execute("SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,))
        else:
            rows = self.db.conn.execute(
                "SELECT * FROM jobs WHERE state = ? ORDER BY created_at DESC LIMIT ?", (state, limit)
            )
        return [_record(r) for r in rows.fetchall()]

    def of_study(self, study_uid: str) -> list[JobRecord]:
        """Every job of a study, oldest first."""
        rows = self.db.conn.execute(
            "SELECT * FROM jobs WHERE study_uid = ? ORDER BY created_at", (study_uid,)).fetchall()
        return [_record(r) for r in rows]

    def output_dirs(self, study_uid: str) -> dict[str, str]:
        """Each job of a study and its output folder ('' when none was recorded)."""
        rows = self.db.conn.execute(
            "SELECT id, output_dir FROM jobs WHERE study_uid = ?", (study_uid,)).fetchall()
        return {r["id"]: r["output_dir"] for r in rows}

    def unfinished(self, study_uid: str) -> dict[JobState, int]:
        """Jobs of a study per state, for every state but ``done`` (empty: all its jobs succeeded)."""
        rows = self.db.conn.execute(
            "SELECT state, COUNT(*) AS n FROM jobs WHERE study_uid = ? AND state != ? GROUP BY state",
            (study_uid, JobState.DONE),
        ).fetchall()
        return {JobState(r["state"]): int(r["n"]) for r in rows}

    def counts(self) -> dict[str, int]:
        """Jobs per state (only the states that occur)."""
        rows = self.db.conn.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetchall()
        return {str(r["state"]): int(r["n"]) for r in rows}

    def forget_study(self, study_uid: str, conn: sqlite3.Connection) -> int:
        """Delete the study's jobs (retention, inside its removal transaction)."""
        return conn.execute("DELETE FROM jobs WHERE study_uid = ?", (study_uid,)).rowcount

    def _transition(
        self, job_id: str, allowed: tuple[JobState, ...], state: JobState, **fields: object
    ) -> None:
        with self.db.transaction() as conn:
            row = conn.execute("SELECT state, started_at FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise PipelineError(f"No job '{job_id}' in the jobs table.")
            if row["state"] not in allowed:
                raise PipelineError(f"Job '{job_id}' is {row['state']}; it cannot become {state}.")
            timed = state in FINISHED and row["started_at"] is not None
            if timed and fields.get("seconds") is None:
                fields["seconds"] = float(fields["finished_at"]) - float(row["started_at"])  # type: ignore[arg-type]
            assignments = ", ".join(f"{name} = ?" for name in fields)
            conn.execute(
                f"UPDATE jobs SET state = ?, {assignments} WHERE id = ?", (state, *fields.values(), job_id)
            )


def _record(row) -> JobRecord:  # noqa: ANN001 - sqlite3.Row
    return JobRecord(
        id=row["id"],
        pipeline=row["pipeline"],
        study_uid=row["study_uid"],
        series_uid=row["series_uid"],
        params=json.loads(row["params"]),
        spec=JobSpec.from_json(row["spec"]),
        state=JobState(row["state"]),
        attempt=int(row["attempt"]),
        error=row["error"],
        output_files=tuple(json.loads(row["output_files"])),
        created_at=float(row["created_at"]),
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        seconds=row["seconds"],
    )
