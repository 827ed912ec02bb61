"""Results held back by quality control: the ``held_results`` table and its state machine.

A job whose QC verdict is ``fail`` is not sent to a destination whose policy is ``on_qc_fail: hold``
(the rule's ``then.on_qc_fail``, else the destination's, default ``hold``). Its result files wait here, one
row per (job, destination), until an operator looks at them in the console (or ``dicomnode queue held``)
and releases them (they go into the outbox, filtered by the destination's viewer profile) or discards
them. Both decisions are recorded with the operator's name and written to the audit trail by the caller.

States: ``held`` → ``released`` | ``discarded``.
"""

from __future__ import annotations

import builtins
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from dicomnode.database import Database, Schema, Step, check_in
from dicomnode.errors import SendError

log = logging.getLogger(__name__)


class HeldState(StrEnum):
    HELD = "held"
    RELEASED = "released"
    DISCARDED = "discarded"


class QCPolicy(StrEnum):
    HOLD = "hold"
    SEND = "send"


DDL_V1 = f"""
CREATE TABLE IF NOT EXISTS held_results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    destination TEXT NOT NULL,
    study_uid TEXT NOT NULL DEFAULT '',
    series_uid TEXT NOT NULL DEFAULT '',
    pipeline TEXT NOT NULL DEFAULT '',
    files TEXT NOT NULL,
    qc TEXT NOT NULL,
    reason TEXT NOT NULL,
    state TEXT NOT NULL {check_in("state", HeldState)},
    created_at REAL NOT NULL,
    decided_at REAL,
    decided_by TEXT NOT NULL DEFAULT '',
    UNIQUE (job_id, destination)
);
CREATE INDEX IF NOT EXISTS held_results_state ON held_results (state, created_at);
"""

SCHEMA = Schema("held_results", ("held_results",), (Step("held_results", DDL_V1),))


@dataclass(frozen=True)
class HeldResult:
    id: int
    job_id: str
    destination: str
    study_uid: str
    series_uid: str
    pipeline: str
    files: tuple[str, ...]
    qc: dict[str, Any]
    reason: str
    state: HeldState
    created_at: float
    decided_at: float | None
    decided_by: str

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "files": list(self.files), "state": str(self.state)}


def qc_reason(qc: dict[str, Any]) -> str:
    """One line naming the failed segments and their reasons (from a ``QCReport.to_json()``)."""
    parts = []
    for label, verdict in (qc.get("segments") or {}).items():
        if verdict.get("status") == "fail":
            parts.append(f"{label}: " + " ".join(verdict.get("reasons") or verdict.get("flags") or []))
    return "; ".join(parts) or f"QC status {qc.get('status', '?')}"


class HeldResults:
    """The ``held_results`` table of the node database."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self._clock = clock
        db.migrate(SCHEMA)

    def hold(
        self, job_id: str, destination: str, files: Sequence[str], qc: dict[str, Any], *,
        study_uid: str = "", series_uid: str = "", pipeline: str = "",
    ) -> int:
        """Hold ``files`` of ``job_id`` for ``destination`` (a rerun of the job holds its new files again)."""
        now = self._clock()
        reason = qc_reason(qc)
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO held_results (job_id, destination, study_uid, series_uid, pipeline, files, qc, "
                "reason, state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (job_id, destination) DO UPDATE SET files = excluded.files, qc = excluded.qc, "
                "reason = excluded.reason, state = excluded.state, created_at = excluded.created_at, "
                "decided_at = NULL, decided_by = ''",
                (job_id, destination, study_uid, series_uid, pipeline, json.dumps(list(files)),
                 json.dumps(qc), reason, str(HeldState.HELD), now),
            )
            row = conn.execute("SELECT id FROM held_results WHERE job_id = ? AND destination = ?",
                               (job_id, destination)).fetchone()
        log.warning("Results of job %s held for %s: QC failed (%s).", job_id, destination, reason)
        return int(row["id"])

    def get(self, held_id: int) -> HeldResult:
        row = self.db.conn.execute("SELECT * FROM held_results WHERE id = ?", (held_id,)).fetchone()
        if row is None:
            raise SendError(f"No held result with id {held_id}.")
        return _record(row)

    def list(
        self, state: HeldState | str | None = None, study_uid: str | None = None, limit: int = 200,
    ) -> builtins.list[HeldResult]:
        clauses, args = [], []
        if state is not None:
            clauses.append("state = ?")
            args.append(str(HeldState(state)))
        if study_uid:
            clauses.append("study_uid = ?")
            args.append(study_uid)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.db.conn.execute(
            f"SELECT * FROM held_results{where} ORDER BY created_at DESC, id DESC LIMIT ?", (*args, limit)
        ).fetchall()
        return [_record(r) for r in rows]

    def counts(self) -> dict[str, int]:
        rows = self.db.conn.execute("SELECT state, COUNT(*) AS n FROM held_results GROUP BY state").fetchall()
        return {str(r["state"]): int(r["n"]) for r in rows}

    def release(self, held_id: int, user: str, deliver: Callable[[HeldResult], object]) -> HeldResult:
        """Mark a held result released and ``deliver`` it (queue it in the outbox) in one transaction."""
        return self._decide(held_id, user, HeldState.RELEASED, deliver)

    def discard(self, held_id: int, user: str) -> HeldResult:
        return self._decide(held_id, user, HeldState.DISCARDED, None)

    def _decide(
        self, held_id: int, user: str, state: HeldState, deliver: Callable[[HeldResult], object] | None,
    ) -> HeldResult:
        with self.db.transaction() as conn:
            item = self.get(held_id)
            if item.state is not HeldState.HELD:
                raise SendError(f"Held result {held_id} is already {item.state}; it cannot be {state} again.")
            conn.execute("UPDATE held_results SET state = ?, decided_at = ?, decided_by = ? WHERE id = ?",
                         (str(state), self._clock(), user, held_id))
            if deliver is not None:
                deliver(item)  # joins this transaction: released and queued together, or neither
        log.info("Held result %d (job %s → %s) %s by %s.", held_id, item.job_id, item.destination, state,
                 user)
        return self.get(held_id)


def _record(row: Any) -> HeldResult:  # noqa: ANN401 - sqlite3.Row
    return HeldResult(
        id=int(row["id"]), job_id=row["job_id"], destination=row["destination"], study_uid=row["study_uid"],
        series_uid=row["series_uid"], pipeline=row["pipeline"], files=tuple(json.loads(row["files"])),
        qc=json.loads(row["qc"]), reason=row["reason"], state=HeldState(row["state"]),
        created_at=float(row["created_at"]), decided_at=row["decided_at"], decided_by=row["decided_by"],
    )


def release_to_outbox(
    held: HeldResults, outbox: Any, config: Any, held_id: int, user: str,  # noqa: ANN401 - Outbox, Config
) -> HeldResult:
    """Release a held result: its files are queued for its destination (that destination's viewer profile
    decides which kinds go) in the same transaction that marks it released."""
    from dicomnode.send.results import enqueue_results

    def deliver(item: HeldResult) -> None:
        enqueue_results(outbox, config, item.files, [item.destination], job_id=item.job_id)

    return held.release(held_id, user, deliver)
