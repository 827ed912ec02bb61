"""The ``job_leases`` table: one row per (job, attempt) handed to Celery, in the node's SQLite database.

States: ``pending`` (recorded, not yet on the broker) → ``queued`` (message published) → ``running``
(a worker's claim was seen) → one final state: ``collected`` (its committed result was accepted),
``failed`` (the worker reported a failure or was killed by the hard limit), ``expired`` (no result by
claim + hard limit + lease), ``lost`` (the message vanished from the broker before any worker claimed
it), ``rejected`` (the result folder did not match its hashes) or ``superseded`` (another attempt of the
job was collected first).

:meth:`LeaseStore.collect` is the conditional update that makes the first commit of a job win: it
succeeds only while no attempt of the job has been collected.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from enum import StrEnum

from dicomnode.database import Database, Schema, Step, check_in, sql_list


class LeaseState(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    COLLECTED = "collected"
    FAILED = "failed"
    EXPIRED = "expired"
    LOST = "lost"
    REJECTED = "rejected"
    SUPERSEDED = "superseded"


ACTIVE: tuple[LeaseState, ...] = (LeaseState.PENDING, LeaseState.QUEUED, LeaseState.RUNNING)
FINAL: tuple[LeaseState, ...] = tuple(s for s in LeaseState if s not in ACTIVE)

DDL_V1 = f"""
CREATE TABLE IF NOT EXISTS job_leases (
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    pipeline TEXT NOT NULL,
    queue TEXT NOT NULL,
    state TEXT NOT NULL {check_in("state", LeaseState)},
    task_id TEXT NOT NULL DEFAULT '',
    manifest_sha256 TEXT NOT NULL DEFAULT '',
    worker TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    misses INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    dispatched_at REAL,
    claimed_at REAL,
    finished_at REAL,
    PRIMARY KEY (job_id, attempt)
);
CREATE INDEX IF NOT EXISTS job_leases_state ON job_leases (state);
"""

SCHEMA = Schema("job_leases", ("job_leases",), (Step("job_leases", DDL_V1),))


@dataclass(frozen=True)
class Lease:
    job_id: str
    attempt: int
    pipeline: str
    queue: str
    state: LeaseState
    task_id: str
    manifest_sha256: str
    worker: str
    error: str
    misses: int
    created_at: float
    dispatched_at: float | None
    claimed_at: float | None
    finished_at: float | None


class LeaseStore:
    def __init__(self, database: Database) -> None:
        self.db = database
        database.migrate(SCHEMA)

    def open(self, job_id: str, attempt: int, pipeline: str, queue: str) -> Lease:
        """The lease of (job, attempt), created ``pending`` if it does not exist yet."""
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO job_leases (job_id, attempt, pipeline, queue, state, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, attempt, pipeline, queue, LeaseState.PENDING, time.time()))
        lease = self.get(job_id, attempt)
        assert lease is not None
        return lease

    def get(self, job_id: str, attempt: int) -> Lease | None:
        row = self.db.conn.execute(
            "SELECT * FROM job_leases WHERE job_id = ? AND attempt = ?", (job_id, attempt)).fetchone()
        return None if row is None else _lease(row)

    def active(self) -> list[Lease]:
        rows = self.db.conn.execute(
            f"SELECT * FROM job_leases WHERE state IN ({sql_list(ACTIVE)}) ORDER BY created_at"
        ).fetchall()
        return [_lease(r) for r in rows]

    def of_job(self, job_id: str) -> list[Lease]:
        rows = self.db.conn.execute(
            "SELECT * FROM job_leases WHERE job_id = ? ORDER BY attempt", (job_id,)).fetchall()
        return [_lease(r) for r in rows]

    def dispatched(self, job_id: str, attempt: int, task_id: str, manifest_sha256: str) -> None:
        self._update(job_id, attempt, (LeaseState.PENDING,), state=LeaseState.QUEUED, task_id=task_id,
                     manifest_sha256=manifest_sha256, dispatched_at=time.time(), misses=0)

    def claimed(self, job_id: str, attempt: int, worker: str) -> bool:
        return self._update(job_id, attempt, (LeaseState.QUEUED,), state=LeaseState.RUNNING, worker=worker,
                            claimed_at=time.time())

    def missed(self, job_id: str, attempt: int) -> int:
        """Count one broker scan that did not find the attempt's message; returns the count."""
        with self.db.transaction() as conn:
            conn.execute("UPDATE job_leases SET misses = misses + 1 WHERE job_id = ? AND attempt = ? "
                         "AND state = ?", (job_id, attempt, LeaseState.QUEUED))
            row = conn.execute("SELECT misses FROM job_leases WHERE job_id = ? AND attempt = ?",
                               (job_id, attempt)).fetchone()
        return int(row["misses"]) if row else 0

    def seen(self, job_id: str, attempt: int) -> None:
        self._update(job_id, attempt, (LeaseState.QUEUED,), misses=0)

    def end(self, job_id: str, attempt: int, state: LeaseState, error: str = "") -> bool:
        """Move an active lease to a final ``state``; False when it was no longer active."""
        if state not in FINAL:
            raise ValueError(f"Lease state '{state}' is not a final state ({', '.join(FINAL)}).")
        return self._update(job_id, attempt, ACTIVE, state=state, error=error, finished_at=time.time())

    def collect(self, job_id: str, attempt: int, worker: str) -> bool:
        """The conditional update on (job, attempt): mark it collected unless an attempt of the job already
        was; the job's other active attempts become ``superseded``. True for the winning commit."""
        now = time.time()
        with self.db.transaction() as conn:
            won = conn.execute(
                "SELECT 1 FROM job_leases WHERE job_id = ? AND state = ?", (job_id, LeaseState.COLLECTED)
            ).fetchone()
            if won is not None:
                return False
            cursor = conn.execute(
                "UPDATE job_leases SET state = ?, finished_at = ?, error = '', "
                "worker = CASE WHEN ? != '' THEN ? ELSE worker END "
                "WHERE job_id = ? AND attempt = ? AND state != ?",
                (LeaseState.COLLECTED, now, worker, worker, job_id, attempt, LeaseState.REJECTED))
            if cursor.rowcount != 1:
                return False
            conn.execute(
                "UPDATE job_leases SET state = ?, finished_at = ? WHERE job_id = ? "
                f"AND attempt != ? AND state IN ({sql_list(ACTIVE)})",
                (LeaseState.SUPERSEDED, now, job_id, attempt))
        return True

    def per_worker(self) -> dict[str, dict[str, int]]:
        """Attempts per worker (``(not claimed)`` before a claim) and state, for ``dicomnode status``."""
        rows = self.db.conn.execute(
            "SELECT CASE WHEN worker = '' THEN '(not claimed)' ELSE worker END AS who, state, COUNT(*) AS n "
            "FROM job_leases GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
        out: dict[str, dict[str, int]] = {}
        for r in rows:
            out.setdefault(str(r["who"]), {})[str(r["state"])] = int(r["n"])
        return out

    def _update(self, job_id: str, attempt: int, allowed: tuple[LeaseState, ...], **fields: object) -> bool:
        marks = ",".join("?" * len(allowed))
        assignments = ", ".join(f"{name} = ?" for name in fields)
        with self.db.transaction() as conn:
            cursor = conn.execute(
                f"UPDATE job_leases SET {assignments} "
                f"WHERE job_id = ? AND attempt = ? AND state IN ({marks})",
                (*fields.values(), job_id, attempt, *allowed))
        return cursor.rowcount == 1


def _lease(row: sqlite3.Row) -> Lease:
    data = dict(row)
    data["state"] = LeaseState(data["state"])
    return Lease(**data)
