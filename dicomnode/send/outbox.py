"""The durable outbox: every instance to deliver is a row in the node database until it is sent or dead.

States: ``queued`` → ``sending`` → ``sent`` | ``failed`` (retry scheduled with exponential backoff) |
``dead`` (``outbox.max_attempts`` reached, or a permanent refusal). For a destination with storage
commitment, ``sent`` → ``committed`` when the destination reports it keeps the instance, or
``commit_failed`` when it does not (or never reports after ``MAX_COMMIT_REQUESTS`` requests): a new row then
sends the instance again. Rows left in ``sending`` by a crash
go back to ``queued`` on the next start (:meth:`Outbox.recover_interrupted`); DICOM's re-store of the
same SOP Instance UID is idempotent at the PACS, so nothing is lost and nothing duplicated.

Enqueueing is idempotent per (destination, SOP Instance UID) while a row is pending: a rerun of a
deterministic result replaces the pending row (new file, attempts reset) instead of adding another.
"""

from __future__ import annotations

import builtins
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from dicomnode.config import OutboxConfig
from dicomnode.database import Database, Schema, Step, check_in, rebuild_table, sql_list
from dicomnode.errors import SendError

log = logging.getLogger(__name__)


class OutboxState(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"  # a retry is scheduled
    DEAD = "dead"
    COMMITTED = "committed"  # sent, and the destination committed to keep it (storage commitment)
    COMMIT_FAILED = "commit_failed"  # sent, commitment refused or never reported: a new row re-sends it


class Origin(StrEnum):
    RESULT = "result"
    FORWARD = "forward"


State = OutboxState
STATES: tuple[OutboxState, ...] = tuple(OutboxState)
#: Rows still to be delivered (``failed`` has a retry scheduled).
PENDING: tuple[OutboxState, ...] = (OutboxState.QUEUED, OutboxState.SENDING, OutboxState.FAILED)
#: Rows the sender may claim now (when due).
DUE: tuple[OutboxState, ...] = (OutboxState.QUEUED, OutboxState.FAILED)
#: Rows whose story is over (what ``purge`` removes by default).
FINISHED: tuple[OutboxState, ...] = (OutboxState.SENT, OutboxState.DEAD, OutboxState.COMMITTED,
                                     OutboxState.COMMIT_FAILED)
#: Storage commitment requests per row before the instance is sent again.
MAX_COMMIT_REQUESTS = 3
ORIGINS: tuple[Origin, ...] = tuple(Origin)

DDL_V1 = f"""
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    file_path TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL DEFAULT '',
    study_uid TEXT NOT NULL DEFAULT '',
    origin TEXT NOT NULL {check_in("origin", Origin)},
    job_id TEXT,
    state TEXT NOT NULL {check_in("state", OutboxState)},
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    last_status INTEGER,
    resend INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    sent_at REAL,
    commit_uid TEXT,
    commit_deadline REAL,
    commit_requests INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS outbox_pending_sop ON outbox (destination, sop_instance_uid)
    WHERE state IN ({sql_list(PENDING)});
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, destination, next_attempt_at);
"""

SCHEMA = Schema("outbox", ("outbox",), (
    Step("outbox", DDL_V1),
    Step("storage commitment: committed/commit_failed states, commit_uid/commit_deadline/commit_requests",
         lambda conn: rebuild_table(conn, "outbox", DDL_V1)),
    # the router asks, for every series it routes, whether the node generated it (result_job: no loops)
    Step("series index for own-output recognition",
         "CREATE INDEX IF NOT EXISTS outbox_series ON outbox (series_uid, origin);"),
))
_PENDING = sql_list(PENDING)
_DUE = sql_list(DUE)


@dataclass(frozen=True)
class OutboxItem:
    id: int
    destination: str
    file_path: Path
    sop_instance_uid: str
    series_uid: str
    study_uid: str
    origin: str
    job_id: str | None
    state: OutboxState
    attempts: int
    next_attempt_at: float
    last_error: str
    last_status: int | None
    created_at: float
    updated_at: float
    sent_at: float | None
    commit_uid: str | None = None  # '' = a commitment request is due; a UID = the transaction awaited
    commit_deadline: float | None = None
    commit_requests: int = 0

    @classmethod
    def from_row(cls, row: object) -> OutboxItem:
        data = dict(row)  # type: ignore[call-overload]
        data.pop("resend", None)
        data["file_path"] = Path(data["file_path"])
        data["state"] = OutboxState(data["state"])
        return cls(**data)

    def to_dict(self) -> dict[str, object]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class DestinationContact:
    """How the outbox last got on with a destination (see :meth:`Outbox.contacts`).

    ``last_failure`` is the last attempt the destination did not answer with a DIMSE/HTTP status
    (connection refused, timeout, association rejected or aborted); ``failing_since`` is set when that
    failure is newer than the last delivery: the later of the last delivery and the creation of the
    oldest entry that has failed since (an entry is tried as soon as it is due, so this is when the
    failures began, give or take the queue ahead of it)."""

    destination: str
    last_success: float | None
    last_failure: float | None
    failing_since: float | None
    last_error: str


@dataclass(frozen=True)
class _Identity:
    sop_instance_uid: str
    series_uid: str
    study_uid: str


def read_identity(path: Path) -> _Identity:
    """The UIDs of a DICOM file, read from its header only."""
    try:
        ds = dcmread(path, stop_before_pixels=True,
                     specific_tags=["SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"])
    except (OSError, InvalidDicomError) as exc:
        raise SendError(f"Cannot enqueue '{path}': it is not a readable DICOM file ({exc}).") from exc
    sop = str(ds.get("SOPInstanceUID", "") or ds.file_meta.get("MediaStorageSOPInstanceUID", ""))
    if not sop:
        raise SendError(f"Cannot enqueue '{path}': it has no SOP Instance UID.")
    return _Identity(sop, str(ds.get("SeriesInstanceUID", "")), str(ds.get("StudyInstanceUID", "")))


class Outbox:
    """The ``outbox`` table of the node database and its state machine."""

    def __init__(self, db: Database, config: OutboxConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.config = config
        self._clock = clock
        db.migrate(SCHEMA)

    # -- producers -------------------------------------------------------------------------------
    def enqueue(
        self, destination: str, files: Iterable[Path | str], origin: Origin, job_id: str | None = None
    ) -> list[int]:
        """Queue ``files`` for ``destination``; returns one row id per file (an existing pending row for
        the same SOP instance is reused and points at the new file)."""
        if origin not in ORIGINS:
            raise SendError(f"Outbox origin '{origin}' is not one of {', '.join(ORIGINS)}.")
        items = [(Path(f).resolve(), read_identity(Path(f))) for f in files]
        now = self._clock()
        ids: list[int] = []
        with self.db.transaction() as conn:
            for path, ident in items:
                row = conn.execute(
                    "SELECT id, state FROM outbox WHERE destination = ? AND sop_instance_uid = ? "
                    f"AND state IN ({_PENDING})", (destination, ident.sop_instance_uid),
                ).fetchone()
                if row is None:
                    cur = conn.execute(
                        "INSERT INTO outbox (destination, file_path, sop_instance_uid, series_uid, "
                        "study_uid, origin, job_id, state, next_attempt_at, created_at, updated_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
                        (destination, str(path), ident.sop_instance_uid, ident.series_uid, ident.study_uid,
                         origin, job_id, now, now, now),
                    )
                    ids.append(int(cur.lastrowid or 0))
                    continue
                # a pending send of the same instance: point it at the new file; if it is being sent
                # right now, send it once more afterwards (the file may have changed)
                conn.execute(
                    "UPDATE outbox SET file_path = ?, series_uid = ?, study_uid = ?, origin = ?, job_id = ?, "
                    "attempts = CASE WHEN state = 'sending' THEN attempts ELSE 0 END, "
                    "state = CASE WHEN state = 'sending' THEN 'sending' ELSE 'queued' END, "
                    "resend = CASE WHEN state = 'sending' THEN 1 ELSE 0 END, "
                    "next_attempt_at = ?, last_error = '', updated_at = ? WHERE id = ?",
                    (str(path), ident.series_uid, ident.study_uid, origin, job_id, now, now, row["id"]),
                )
                ids.append(int(row["id"]))
        log.info("Queued %d instance(s) for destination %s (origin %s, job %s)", len(ids), destination,
                 origin, job_id or "-", extra={"destination": destination, "job_id": job_id})
        return ids

    # -- the sender's side -----------------------------------------------------------------------
    def recover_interrupted(self) -> int:
        """Put rows a crash left in ``sending`` back to ``queued`` (call once at start-up)."""
        now = self._clock()
        with self.db.transaction() as conn:
            cur = conn.execute(
                "UPDATE outbox SET state = 'queued', resend = 0, next_attempt_at = ?, updated_at = ? "
                "WHERE state = 'sending'", (now, now),
            )
        if cur.rowcount:
            log.warning("Re-queued %d outbox row(s) left in 'sending' by an interrupted run", cur.rowcount)
        return cur.rowcount

    def due_destinations(self) -> builtins.list[str]:
        now = self._clock()
        rows = self.db.conn.execute(
            f"SELECT DISTINCT destination FROM outbox WHERE state IN ({_DUE}) "
            "AND next_attempt_at <= ? ORDER BY destination", (now,),
        ).fetchall()
        return [r["destination"] for r in rows]

    def claim_due(self, destination: str, limit: int | None = None) -> builtins.list[OutboxItem]:
        """Atomically move up to ``limit`` (default ``batch_size``) due rows of ``destination`` to
        ``sending`` and return them, oldest first."""
        limit = limit or self.config.batch_size
        now = self._clock()
        with self.db.transaction() as conn:
            rows = conn.execute(
                f"SELECT * FROM outbox WHERE destination = ? AND state IN ({_DUE}) "
                "AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?", (destination, now, limit),
            ).fetchall()
            ids = [r["id"] for r in rows]
            conn.executemany("UPDATE outbox SET state = 'sending', updated_at = ? WHERE id = ?",
                             [(now, i) for i in ids])
        return [OutboxItem.from_row({**dict(r), "state": OutboxState.SENDING}) for r in rows]

    def mark_sent(self, ids: Sequence[int], status: int | None = 0, *, commitment: bool = False) -> None:
        """Record delivered rows; with ``commitment`` a storage commitment request becomes due for them."""
        now = self._clock()
        commit_uid = "" if commitment else None
        with self.db.transaction() as conn:
            conn.executemany(
                "UPDATE outbox SET state = CASE WHEN resend THEN 'queued' ELSE 'sent' END, "
                "sent_at = ?, attempts = attempts + 1, last_status = ?, last_error = '', resend = 0, "
                "next_attempt_at = ?, updated_at = ?, commit_uid = ?, commit_deadline = ?, "
                "commit_requests = 0 WHERE id = ? AND state = 'sending'",
                [(now, status, now, now, commit_uid, now, i) for i in ids],
            )

    # -- storage commitment ------------------------------------------------------------------------
    def commitments_due(self, destination: str) -> builtins.list[OutboxItem]:
        """``sent`` rows of ``destination`` whose commitment request is due, or whose report is overdue."""
        rows = self.db.conn.execute(
            "SELECT * FROM outbox WHERE destination = ? AND state = 'sent' AND commit_uid IS NOT NULL "
            "AND commit_deadline <= ? ORDER BY id LIMIT ?",
            (destination, self._clock(), self.config.batch_size),
        ).fetchall()
        return [OutboxItem.from_row(r) for r in rows]

    def await_commitment(self, ids: Sequence[int], transaction_uid: str, timeout: float) -> None:
        """Commitment of ``ids`` requested as ``transaction_uid``; the report is due within ``timeout``."""
        now = self._clock()
        with self.db.transaction() as conn:
            conn.executemany(
                "UPDATE outbox SET commit_uid = ?, commit_deadline = ?, "
                "commit_requests = commit_requests + 1, updated_at = ? WHERE id = ? AND state = 'sent'",
                [(transaction_uid, now + timeout, now, i) for i in ids])

    def commitment_request_failed(self, ids: Sequence[int], error: str, *, counted: bool = False) -> None:
        """The request could not be made: it is due again after the backoff of its request count
        (``counted``: :meth:`await_commitment` already counted this request)."""
        now = self._clock()
        with self.db.transaction() as conn:
            for i in ids:
                row = conn.execute("SELECT commit_requests FROM outbox WHERE id = ?", (i,)).fetchone()
                requests = int(row["commit_requests"]) + (0 if counted else 1) if row is not None else 1
                conn.execute(
                    "UPDATE outbox SET commit_uid = '', commit_requests = ?, commit_deadline = ?, "
                    "last_error = ?, updated_at = ? WHERE id = ? AND state = 'sent'",
                    (requests, now + self.backoff(requests), error, now, i))

    def record_commitment(self, transaction_uid: str, committed: Sequence[str],
                          failed: Sequence[tuple[str, int]]) -> tuple[int, int]:
        """Apply a storage commitment report; returns (rows committed, rows to be sent again). Instances
        the destination did not commit to keep are marked ``commit_failed`` and queued again as new rows."""
        now = self._clock()
        reasons = dict(failed)
        done = again = 0
        with self.db.transaction() as conn:
            rows = conn.execute("SELECT * FROM outbox WHERE commit_uid = ? AND state = 'sent'",
                                (transaction_uid,)).fetchall()
            for row in rows:
                sop = row["sop_instance_uid"]
                if sop in committed:
                    conn.execute("UPDATE outbox SET state = 'committed', last_error = '', updated_at = ? "
                                 "WHERE id = ?", (now, row["id"]))
                    done += 1
                elif sop in reasons:
                    error = (f"The destination did not commit to keep SOP instance '{sop}' (FailureReason "
                             f"0x{reasons[sop]:04X}); it is sent again.")
                    self._send_again(conn, row, error, now)
                    again += 1
        return done, again

    def commitments_given_up(self, ids: Sequence[int], error: str) -> int:
        """Rows whose commitment was requested ``MAX_COMMIT_REQUESTS`` times without a report: sent again."""
        now = self._clock()
        with self.db.transaction() as conn:
            rows = [conn.execute("SELECT * FROM outbox WHERE id = ? AND state = 'sent'", (i,)).fetchone()
                    for i in ids]
            for row in rows:
                if row is not None:
                    self._send_again(conn, row, error, now)
        return sum(1 for r in rows if r is not None)

    @staticmethod
    def _send_again(conn: sqlite3.Connection, row: sqlite3.Row, error: str, now: float) -> None:
        conn.execute("UPDATE outbox SET state = 'commit_failed', last_error = ?, updated_at = ? WHERE id = ?",
                     (error, now, row["id"]))
        pending = conn.execute(
            f"SELECT id FROM outbox WHERE destination = ? AND sop_instance_uid = ? AND state IN ({_PENDING})",
            (row["destination"], row["sop_instance_uid"])).fetchone()
        if pending is not None:
            return
        conn.execute(
            "INSERT INTO outbox (destination, file_path, sop_instance_uid, series_uid, study_uid, origin, "
            "job_id, state, attempts, next_attempt_at, last_error, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
            (row["destination"], row["file_path"], row["sop_instance_uid"], row["series_uid"],
             row["study_uid"], row["origin"], row["job_id"], row["attempts"], now, error, now, now))

    def backoff(self, attempts: int) -> float:
        """Delay before attempt ``attempts + 1``: initial, doubling, capped at the maximum."""
        cfg = self.config
        return float(min(cfg.backoff_initial_seconds * 2 ** max(attempts - 1, 0), cfg.backoff_max_seconds))

    def mark_failed(
        self, item_id: int, error: str, *, status: int | None = None, permanent: bool = False
    ) -> OutboxState:
        """Record a failed attempt: ``failed`` with the next attempt scheduled, or ``dead`` when the
        attempts are used up or the failure is permanent. Returns the new state."""
        now = self._clock()
        with self.db.transaction() as conn:
            row = conn.execute("SELECT attempts, resend FROM outbox WHERE id = ?", (item_id,)).fetchone()
            if row is None:
                raise SendError(f"Outbox row {item_id} does not exist.")
            attempts = int(row["attempts"]) + 1
            dead = permanent or attempts >= self.config.max_attempts
            state = OutboxState.DEAD if dead else OutboxState.FAILED
            if row["resend"] and not permanent:  # a newer file was queued meanwhile: try it right away
                state, attempts = OutboxState.QUEUED, 0
            delay = 0.0 if state == OutboxState.QUEUED else self.backoff(attempts)
            conn.execute(
                "UPDATE outbox SET state = ?, attempts = ?, last_error = ?, last_status = ?, resend = 0, "
                "next_attempt_at = ?, updated_at = ? WHERE id = ?",
                (state, attempts, error, status, now + delay, now, item_id),
            )
        return state

    # -- operators -------------------------------------------------------------------------------
    def get(self, item_id: int) -> OutboxItem:
        row = self.db.conn.execute("SELECT * FROM outbox WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            raise SendError(f"Outbox entry {item_id} does not exist (see 'dicomnode queue list').")
        return OutboxItem.from_row(row)

    def list(
        self, state: str | None = None, destination: str | None = None, limit: int | None = None
    ) -> builtins.list[OutboxItem]:
        where, args = self._filter(state, destination)
        sql = f"SELECT * FROM outbox{where} ORDER BY id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [OutboxItem.from_row(r) for r in self.db.conn.execute(sql, args).fetchall()]

    def retry(self, item_id: int) -> OutboxItem:
        """Send a ``failed`` or ``dead`` entry again now (a dead one gets a fresh set of attempts)."""
        item = self.get(item_id)
        if item.state not in (OutboxState.FAILED, OutboxState.DEAD):
            raise SendError(f"Outbox entry {item_id} is '{item.state}'; only failed or dead entries can be "
                            "retried.")
        now = self._clock()
        with self.db.transaction() as conn:
            clash = conn.execute(
                "SELECT id FROM outbox WHERE destination = ? AND sop_instance_uid = ? AND id != ? "
                f"AND state IN ({_PENDING})",
                (item.destination, item.sop_instance_uid, item_id),
            ).fetchone()
            if clash is not None:
                raise SendError(f"Outbox entry {item_id} is already pending again as entry {clash['id']}.")
            conn.execute(
                "UPDATE outbox SET state = 'queued', "
                "attempts = CASE WHEN state = 'dead' THEN 0 ELSE attempts END,"
                " next_attempt_at = ?, updated_at = ? WHERE id = ?", (now, now, item_id),
            )
        return self.get(item_id)

    def retry_failed(self, destination: str | None = None) -> int:
        """Send every failed and dead entry again now; returns how many were re-queued."""
        count = 0
        for item in self.list(destination=destination):
            if item.state in (OutboxState.FAILED, OutboxState.DEAD):
                try:
                    self.retry(item.id)
                except SendError as exc:  # a newer pending row exists: that one will be sent
                    log.info("%s", exc)
                    continue
                count += 1
        return count

    def purge(
        self, state: str | None = None, destination: str | None = None, study_uid: str | None = None
    ) -> int:
        """Delete entries: by default those that are finished (``sent`` and ``dead``). ``sending`` entries
        are in flight and cannot be purged. ``study_uid`` limits it to one study's entries."""
        if state == OutboxState.SENDING:
            raise SendError("Entries in state 'sending' are in flight and cannot be purged.")
        states = FINISHED if state is None else (state,)
        for s in states:
            if s not in STATES:
                raise SendError(f"Outbox state '{s}' is not one of {', '.join(STATES)}.")
        args: builtins.list[object] = builtins.list(states)
        sql = f"DELETE FROM outbox WHERE state IN ({', '.join('?' * len(states))})"
        if destination:
            sql += " AND destination = ?"
            args.append(destination)
        if study_uid:
            sql += " AND study_uid = ?"
            args.append(study_uid)
        with self.db.transaction() as conn:
            return conn.execute(sql, args).rowcount

    def depth_by_destination(self) -> dict[str, int]:
        """Pending entries (queued, sending, failed) per destination."""
        rows = self.db.conn.execute(
            f"SELECT destination, COUNT(*) AS n FROM outbox WHERE state IN ({_PENDING}) "
            "GROUP BY destination ORDER BY destination"
        ).fetchall()
        return {r["destination"]: int(r["n"]) for r in rows}

    def counts(self) -> dict[str, dict[str, int]]:
        """Entries per destination and state."""
        out: dict[str, dict[str, int]] = {}
        for r in self.db.conn.execute(
            "SELECT destination, state, COUNT(*) AS n FROM outbox GROUP BY destination, state"
        ).fetchall():
            out.setdefault(r["destination"], {})[r["state"]] = int(r["n"])
        return out

    # -- what the other stages ask of the outbox ---------------------------------------------------
    def of_study(self, study_uid: str) -> builtins.list[OutboxItem]:
        """Every entry of a study, oldest first."""
        rows = self.db.conn.execute(
            "SELECT * FROM outbox WHERE study_uid = ? ORDER BY id", (study_uid,)).fetchall()
        return [OutboxItem.from_row(r) for r in rows]

    def undelivered(self, study_uid: str) -> dict[str, int]:
        """A study's entries not yet safely delivered, per state (empty: all of it was delivered): every
        state but ``committed``, ``commit_failed`` (a newer row re-sends it) and ``sent``; ``sent`` rows whose
        storage commitment is still awaited are counted as ``awaiting commitment``."""
        rows = self.db.conn.execute(
            "SELECT CASE WHEN state = 'sent' THEN 'awaiting commitment' ELSE state END AS what, "
            "COUNT(*) AS n FROM outbox WHERE study_uid = ? AND (state NOT IN (?, ?, ?) OR "
            "(state = ? AND commit_uid IS NOT NULL)) GROUP BY what",
            (study_uid, OutboxState.SENT, OutboxState.COMMITTED, OutboxState.COMMIT_FAILED,
             OutboxState.SENT),
        ).fetchall()
        return {str(r["what"]): int(r["n"]) for r in rows}

    def study_counts(self, study_uids: Sequence[str]) -> dict[str, dict[OutboxState, int]]:
        """Entries per state of each of ``study_uids`` (studies without entries are left out)."""
        out: dict[str, dict[OutboxState, int]] = {}
        if not study_uids:
            return out
        marks = ",".join("?" * len(study_uids))
        for r in self.db.conn.execute(
            f"SELECT study_uid, state, COUNT(*) AS n FROM outbox WHERE study_uid IN ({marks}) "
            "GROUP BY study_uid, state", builtins.list(study_uids),
        ):
            out.setdefault(r["study_uid"], {})[OutboxState(r["state"])] = int(r["n"])
        return out

    def last_sent_by_study(self) -> dict[str, float]:
        """The time of each study's last delivery (studies with none are left out)."""
        rows = self.db.conn.execute(
            "SELECT study_uid, MAX(sent_at) AS last FROM outbox WHERE sent_at IS NOT NULL GROUP BY study_uid"
        ).fetchall()
        return {r["study_uid"]: float(r["last"]) for r in rows}

    def contacts(self) -> dict[str, DestinationContact]:
        """Per destination with entries: the last delivery, the last unanswered attempt and, when that is
        the newer one, since when it has been failing (see :class:`DestinationContact`)."""
        # a row being retried (claimed: 'sending') still carries its last unanswered attempt's error: the
        # destination is failing until that retry is answered, not reachable for the moment it is in flight
        unanswered = f"(state IN ({sql_list((OutboxState.FAILED, OutboxState.DEAD))}) OR " \
                     f"(state = '{OutboxState.SENDING}' AND last_error != '')) AND attempts > 0 " \
                     "AND last_status IS NULL"
        rows = self.db.conn.execute(
            f"SELECT destination, MAX(sent_at) AS success, MAX(CASE WHEN {unanswered} THEN updated_at END) "
            "AS failure FROM outbox GROUP BY destination ORDER BY destination").fetchall()
        out: dict[str, DestinationContact] = {}
        for row in rows:
            success, failure = row["success"], row["failure"]
            since, error = None, ""
            if failure is not None and (success is None or failure > success):
                first = self.db.conn.execute(
                    f"SELECT MIN(created_at) AS first FROM outbox WHERE destination = ? AND {unanswered} "
                    "AND updated_at > ?", (row["destination"], success or 0.0)).fetchone()["first"]
                since = max(float(success or 0.0), float(first if first is not None else failure))
                error = self.db.conn.execute(
                    f"SELECT last_error FROM outbox WHERE destination = ? AND {unanswered} "
                    "ORDER BY updated_at DESC, id DESC LIMIT 1", (row["destination"],)).fetchone()[0]
            out[row["destination"]] = DestinationContact(
                row["destination"], None if success is None else float(success),
                None if failure is None else float(failure), since, str(error))
        return out

    def result_job(self, series_uid: str) -> str | None:
        """The job whose results hold the series ``series_uid`` (None: the node queued no result of it)."""
        row = self.db.conn.execute(
            "SELECT job_id FROM outbox WHERE series_uid = ? AND origin = ? ORDER BY id DESC LIMIT 1",
            (series_uid, Origin.RESULT),
        ).fetchone()
        return None if row is None else str(row[0] or "?")

    def job_ids(self, study_uid: str) -> set[str]:
        """The jobs whose results a study's entries deliver."""
        return {r[0] for r in self.db.conn.execute(
            "SELECT DISTINCT job_id FROM outbox WHERE study_uid = ? AND job_id IS NOT NULL", (study_uid,))}

    @staticmethod
    def _filter(state: str | None, destination: str | None) -> tuple[str, builtins.list[object]]:
        clauses, args = [], []
        if state is not None:
            if state not in STATES:
                raise SendError(f"Outbox state '{state}' is not one of {', '.join(STATES)}.")
            clauses.append("state = ?")
            args.append(state)
        if destination is not None:
            clauses.append("destination = ?")
            args.append(destination)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), args
