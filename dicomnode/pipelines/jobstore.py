"""The ``jobs`` table: every processing job, its state, attempts, error and timings (visible, retryable).

States: ``queued`` → ``running`` → ``done`` | ``failed``; :meth:`JobStore.retry` puts a failed job back
to ``queued`` with ``attempt + 1`` (refused once ``max_attempts`` is reached). The stored spec is the
job's :class:`~dicomnode.jobs.JobSpec` JSON, so a retry resubmits exactly what ran.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace

from dicomnode.database import Database
from dicomnode.errors import PipelineError
from dicomnode.jobs import JobResult, JobSpec

DDL = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    study_uid TEXT NOT NULL DEFAULT '',
    series_uid TEXT NOT NULL DEFAULT '',
    output_dir TEXT NOT NULL DEFAULT '',
    params TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
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


@dataclass(frozen=True)
class JobRecord:
    id: str
    pipeline: str
    study_uid: str
    series_uid: str
    params: dict
    spec: JobSpec
    state: str
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
        database.ensure_schema(DDL)

    def create(self, spec: JobSpec) -> JobRecord:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO jobs (id, pipeline, study_uid, series_uid, output_dir, params, spec, state, "
                "attempt, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?)",
                (spec.job_id, spec.pipeline, spec.study_uid, spec.series_uid, spec.output_dir,
                 json.dumps(spec.params, sort_keys=True), spec.to_json(), spec.attempt, time.time()),
            )
        return self.get(spec.job_id)

    def mark_running(self, job_id: str) -> None:
        self._transition(job_id, ("queued",), "running", started_at=time.time(), finished_at=None)

    def mark_done(self, job_id: str, result: JobResult) -> None:
        now = time.time()
        self._transition(
            job_id, ("running", "queued"), "done", finished_at=now, error="",
            output_files=json.dumps(list(result.output_files)), seconds=result.summary.get("seconds"),
        )

    def mark_failed(self, job_id: str, error: str) -> None:
        self._transition(job_id, ("running", "queued"), "failed", finished_at=time.time(), error=error)

    def finish(self, result: JobResult) -> None:
        """Record a :class:`JobResult` (done or failed)."""
        if result.ok:
            self.mark_done(result.job_id, result)
        else:
            self.mark_failed(result.job_id, result.error)

    def retry(self, job_id: str) -> JobSpec:
        """Queue a failed job again (attempt + 1) and return the spec to resubmit."""
        record = self.get(job_id)
        if record.state != "failed":
            raise PipelineError(f"Job '{job_id}' is {record.state}; only failed jobs can be retried.")
        if record.attempt >= self.max_attempts:
            raise PipelineError(
                f"Job '{job_id}' already ran {record.attempt} times (max_attempts {self.max_attempts})."
            )
        spec = replace(record.spec, attempt=record.attempt + 1)
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET state = 'queued', attempt = ?, spec = ?, error = '', started_at = NULL, "
                "finished_at = NULL, seconds = NULL WHERE id = ?",
                (spec.attempt, spec.to_json(), job_id),
            )
        return spec

    def requeue_interrupted(self) -> list[JobSpec]:
        """Jobs left ``queued`` or ``running`` by a stopped or killed node, put back to ``queued`` (oldest
        first) so the node can run them again at start-up."""
        with self.db.transaction() as conn:
            rows = conn.execute(
                "SELECT spec FROM jobs WHERE state IN ('queued', 'running') ORDER BY created_at"
            ).fetchall()
            conn.execute(
                "UPDATE jobs SET state = 'queued', started_at = NULL WHERE state IN ('queued', 'running')"
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

    def _transition(self, job_id: str, allowed: tuple[str, ...], state: str, **fields: object) -> None:
        with self.db.transaction() as conn:
            row = conn.execute("SELECT state, started_at FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise PipelineError(f"No job '{job_id}' in the jobs table.")
            if row["state"] not in allowed:
                raise PipelineError(f"Job '{job_id}' is {row['state']}; it cannot become {state}.")
            timed = state in ("done", "failed") and row["started_at"] is not None
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
        state=row["state"],
        attempt=int(row["attempt"]),
        error=row["error"],
        output_files=tuple(json.loads(row["output_files"])),
        created_at=float(row["created_at"]),
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        seconds=row["seconds"],
    )
