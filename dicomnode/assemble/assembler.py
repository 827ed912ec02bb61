"""Series/study grouping and completion, with every timer's state in SQLite.

Tables (owned here; other stages read them through :class:`AssemblyRecords`)::

    assembly_series  (study_uid, series_uid) PK, state 'open'|'complete', generation (completions so far),
                     instance_count (distinct instances), first_received_at, last_received_at,
                     completed_at, reason, evidence ('declared'|'contiguous'|NULL), checked_count
    assembly_studies study_uid PK, state, generation, instance_count, last_received_at, completed_at
    assembly_events  one row per completion: kind 'series'|'study', study_uid, series_uid ('' for a
                     study), generation, reason, instance_count, emitted_at, emit_count, handed_on_at
                     (NULL until the handlers have had it); UNIQUE (kind, study_uid, series_uid, generation)

A new instance opens (or re-opens) its series and study. An apscheduler interval job checks open series
every ``check_interval_seconds`` (the deadlines themselves are derived from the timestamps in SQLite, so a
restart resumes every timer where it was): quiet period passed → complete ('quiet'); content
evidence → complete early ('content'). A study completes when none of its series is open and its own
quiet period has passed.
Each completion increments the generation and is recorded in ``assembly_events`` before it is emitted;
after a restart every completion whose ``handed_on_at`` is NULL is emitted again (reason 'recovered').
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from enum import StrEnum

from apscheduler.schedulers.background import BackgroundScheduler

from dicomnode.assemble.evidence import CONTIGUOUS, DECLARED, InstanceFacts, content_evidence
from dicomnode.config import CompletionConfig
from dicomnode.database import Database, Schema, Step, check_in, rebuild_table
from dicomnode.errors import AssemblyError
from dicomnode.events import SeriesReady, StudyReady
from dicomnode.spool.header import InstanceHeader
from dicomnode.spool.index import SpoolIndex

log = logging.getLogger(__name__)

Event = SeriesReady | StudyReady
QuietResolver = Callable[[str, str], float | None]


class AssemblyState(StrEnum):
    OPEN = "open"
    COMPLETE = "complete"


class EventKind(StrEnum):
    SERIES = "series"
    STUDY = "study"


#: Step 1 is the tables as every release before schema versions created them: never edit it, append a step.
DDL_V1 = """
CREATE TABLE IF NOT EXISTS assembly_series (
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'open',
    generation INTEGER NOT NULL DEFAULT 0,
    instance_count INTEGER NOT NULL DEFAULT 0,
    first_received_at REAL NOT NULL,
    last_received_at REAL NOT NULL,
    completed_at REAL,
    reason TEXT,
    evidence TEXT,
    checked_count INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (study_uid, series_uid)
);
CREATE INDEX IF NOT EXISTS assembly_series_state ON assembly_series (state);
CREATE TABLE IF NOT EXISTS assembly_studies (
    study_uid TEXT PRIMARY KEY,
    state TEXT NOT NULL DEFAULT 'open',
    generation INTEGER NOT NULL DEFAULT 0,
    instance_count INTEGER NOT NULL DEFAULT 0,
    last_received_at REAL NOT NULL,
    completed_at REAL
);
CREATE TABLE IF NOT EXISTS assembly_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL DEFAULT '',
    generation INTEGER NOT NULL,
    reason TEXT NOT NULL,
    instance_count INTEGER NOT NULL,
    emitted_at REAL NOT NULL,
    emit_count INTEGER NOT NULL DEFAULT 1,
    handed_on_at REAL,
    UNIQUE (kind, study_uid, series_uid, generation)
);
"""

_OPEN = "state TEXT NOT NULL DEFAULT 'open',"
_STATE = f"state TEXT NOT NULL DEFAULT 'open' {check_in('state', AssemblyState)},"
_TABLES = {  # the table and its indexes, one entry per table, for the rebuild of step 2
    name: ";".join(s for s in DDL_V1.split(";") if f" {name} " in s or f" {name}(" in s) + ";"
    for name in ("assembly_series", "assembly_studies", "assembly_events")
}


def _step2_checks(conn: sqlite3.Connection) -> None:
    """CHECK constraints generated from :class:`AssemblyState` and :class:`EventKind`."""
    rebuild_table(conn, "assembly_series", _TABLES["assembly_series"].replace(_OPEN, _STATE))
    rebuild_table(conn, "assembly_studies", _TABLES["assembly_studies"].replace(_OPEN, _STATE))
    rebuild_table(conn, "assembly_events", _TABLES["assembly_events"].replace(
        "kind TEXT NOT NULL,", f"kind TEXT NOT NULL {check_in('kind', EventKind)},"))


SCHEMA = Schema("assembly", ("assembly_series", "assembly_studies", "assembly_events"), (
    Step("assembly_series, assembly_studies, assembly_events", DDL_V1),
    Step("state and kind CHECKs from AssemblyState and EventKind", _step2_checks),
))


class AssemblyRecords:
    """What other stages ask of the assembly tables (the :class:`Assembler` writes them)."""

    def __init__(self, database: Database) -> None:
        self.database = database
        database.migrate(SCHEMA)

    def study_states(self, study_uids: Sequence[str] | None = None) -> dict[str, tuple[AssemblyState, int]]:
        """(state, generation) of the given studies, or of all."""
        sql, args = "SELECT study_uid, state, generation FROM assembly_studies", list(study_uids or ())
        if study_uids is not None:
            if not study_uids:
                return {}
            sql += f" WHERE study_uid IN ({','.join('?' * len(args))})"
        return {r["study_uid"]: (AssemblyState(r["state"]), int(r["generation"]))
                for r in self.database.conn.execute(sql, args)}

    def series_states(self, study_uid: str | None = None) -> dict[tuple[str, str], tuple[AssemblyState, int]]:
        """(state, generation) per (study, series), of one study or of all."""
        sql, args = "SELECT study_uid, series_uid, state, generation FROM assembly_series", []
        if study_uid is not None:
            sql += " WHERE study_uid = ?"
            args.append(study_uid)
        return {(r["study_uid"], r["series_uid"]): (AssemblyState(r["state"]), int(r["generation"]))
                for r in self.database.conn.execute(sql, args)}

    def arrival(self, study_uid: str, series_uid: str) -> tuple[float, float, int] | None:
        """(first received, last received, distinct instances) of a series, or None if unknown."""
        row = self.database.conn.execute(
            "SELECT first_received_at, last_received_at, instance_count FROM assembly_series "
            "WHERE study_uid = ? AND series_uid = ?", (study_uid, series_uid),
        ).fetchone()
        if row is None:
            return None
        return float(row["first_received_at"]), float(row["last_received_at"]), int(row["instance_count"])

    def completed_studies(self) -> dict[str, float]:
        """Complete studies and when they completed (0 when unknown)."""
        rows = self.database.conn.execute(
            "SELECT study_uid, COALESCE(completed_at, 0) AS at FROM assembly_studies WHERE state = ?",
            (AssemblyState.COMPLETE,),
        ).fetchall()
        return {r["study_uid"]: float(r["at"]) for r in rows}

    def is_complete(self, study_uid: str, conn: sqlite3.Connection | None = None) -> bool:
        row = (conn or self.database.conn).execute(
            "SELECT state FROM assembly_studies WHERE study_uid = ?", (study_uid,)).fetchone()
        return row is not None and row["state"] == AssemblyState.COMPLETE

    def open_series(self, study_uid: str) -> int:
        """How many series of the study are not complete."""
        return int(self.database.conn.execute(
            "SELECT COUNT(*) FROM assembly_series WHERE study_uid = ? AND state != ?",
            (study_uid, AssemblyState.COMPLETE),
        ).fetchone()[0])

    def not_handed_on(self, study_uid: str) -> int:
        """How many completions of the study were not yet handed on to routing."""
        return int(self.database.conn.execute(
            "SELECT COUNT(*) FROM assembly_events WHERE study_uid = ? AND handed_on_at IS NULL", (study_uid,)
        ).fetchone()[0])

    def forget_study(self, study_uid: str, conn: sqlite3.Connection) -> None:
        """Delete the study's rows (retention, inside its removal transaction)."""
        conn.execute("DELETE FROM assembly_series WHERE study_uid = ?", (study_uid,))
        conn.execute("DELETE FROM assembly_studies WHERE study_uid = ?", (study_uid,))
        conn.execute("DELETE FROM assembly_events WHERE study_uid = ?", (study_uid,))


class Assembler:
    """Tracks series/studies and emits :class:`SeriesReady`/:class:`StudyReady` through ``emit``."""

    def __init__(
        self,
        database: Database,
        index: SpoolIndex,
        config: CompletionConfig,
        emit: Callable[[Event], None],
        *,
        quiet_resolver: QuietResolver | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.database = database
        self.index = index
        self.config = config
        self.emit = emit
        self.quiet_resolver = quiet_resolver
        self.clock = clock
        self._scheduler: BackgroundScheduler | None = None
        self.records = AssemblyRecords(database)

    # -- intake (called by the receive path inside its index transaction) ---------------------------
    def on_instance(self, header: InstanceHeader, conn: sqlite3.Connection, now: float | None = None) -> None:
        """Record a newly indexed instance: (re)open its series and study."""
        now = self.clock() if now is None else now
        row = conn.execute(
            "SELECT state, generation FROM assembly_series WHERE study_uid = ? AND series_uid = ?",
            (header.study_uid, header.series_uid),
        ).fetchone()
        if row is not None and row["state"] == "complete":
            log.info(
                "Late instance %s re-opens series %s (generation %d was complete).",
                header.sop_instance_uid,
                header.series_uid,
                row["generation"],
            )
        conn.execute(
            """INSERT INTO assembly_series (study_uid, series_uid, instance_count, first_received_at,
                   last_received_at) VALUES (?, ?, 1, ?, ?)
               ON CONFLICT(study_uid, series_uid) DO UPDATE SET state = 'open',
                   instance_count = instance_count + 1, last_received_at = excluded.last_received_at""",
            (header.study_uid, header.series_uid, now, now),
        )
        conn.execute(
            """INSERT INTO assembly_studies (study_uid, instance_count, last_received_at) VALUES (?, 1, ?)
               ON CONFLICT(study_uid) DO UPDATE SET state = 'open', instance_count = instance_count + 1,
                   last_received_at = excluded.last_received_at""",
            (header.study_uid, now),
        )

    def reconcile(self) -> int:
        """Open series whose indexed instances the assembly tables do not count (after recovery)."""
        now = self.clock()
        with self.database.transaction() as conn:
            counted = {
                (r["study_uid"], r["series_uid"]): int(r["instance_count"])
                for r in conn.execute("SELECT study_uid, series_uid, instance_count FROM assembly_series")
            }
            rows = [
                {"study_uid": study, "series_uid": series, "n": n}
                for (study, series), n in self.index.series_counts().items()
                if counted.get((study, series)) != n
            ]
            for r in rows:
                conn.execute(
                    """INSERT INTO assembly_series (study_uid, series_uid, instance_count, first_received_at,
                           last_received_at) VALUES (?, ?, ?, ?, ?)
                       ON CONFLICT(study_uid, series_uid) DO UPDATE SET state = 'open',
                           instance_count = excluded.instance_count,
                           last_received_at = excluded.last_received_at""",
                    (r["study_uid"], r["series_uid"], r["n"], now, now),
                )
                conn.execute(
                    """INSERT INTO assembly_studies (study_uid, instance_count, last_received_at)
                       VALUES (?, 0, ?) ON CONFLICT(study_uid) DO UPDATE SET state = 'open',
                           last_received_at = excluded.last_received_at""",
                    (r["study_uid"], now),
                )
        if rows:
            log.info("Re-opened %d series with instances found by recovery.", len(rows))
        return len(rows)

    # -- completion -----------------------------------------------------------------------------------
    def _quiet_seconds(self, study_uid: str, series_uid: str) -> float:
        if self.quiet_resolver is not None:
            override = self.quiet_resolver(study_uid, series_uid)
            if override is not None:
                return float(override)
        return self.config.series_quiet_seconds

    def _evidence(self, row: sqlite3.Row) -> str | None:
        if row["checked_count"] == row["instance_count"]:
            return row["evidence"]
        facts = [
            InstanceFacts(
                r["instance_number"],
                r["acquisition_number"],
                r["images_in_acquisition"],
                r["number_of_slices"],
                r["slice_position"],
            )
            for r in self.index.instances(row["study_uid"], row["series_uid"])
        ]
        evidence = content_evidence(facts)
        self.database.conn.execute(
            """UPDATE assembly_series SET evidence = ?, checked_count = ?
               WHERE study_uid = ? AND series_uid = ? AND instance_count = ?""",
            (evidence, row["instance_count"], row["study_uid"], row["series_uid"], row["instance_count"]),
        )
        return evidence

    def tick(self) -> list[Event]:
        """Complete what is due now; returns (and emits) the new events."""
        now = self.clock()
        events: list[Event] = []
        open_series = self.database.conn.execute(
            "SELECT * FROM assembly_series WHERE state = 'open'"
        ).fetchall()
        for row in open_series:
            idle = now - row["last_received_at"]
            quiet = self._quiet_seconds(row["study_uid"], row["series_uid"])
            reason = None
            if idle >= quiet:
                reason = "quiet"
            else:
                evidence = self._evidence(row)
                content_quiet = min(quiet, self.config.content_quiet_seconds)
                if evidence == DECLARED or (evidence == CONTIGUOUS and idle >= content_quiet):
                    reason = "content"
            if reason is not None:
                event = self._complete_series(row, reason, now)
                if event is not None:
                    events.append(event)
        for row in self.database.conn.execute(
            "SELECT * FROM assembly_studies WHERE state = 'open'"
        ).fetchall():
            if now - row["last_received_at"] >= self.config.study_quiet_seconds:
                event = self._complete_study(row["study_uid"], now)
                if event is not None:
                    events.append(event)
        for event in events:
            self.emit(event)
        return events

    def _complete_series(self, row: sqlite3.Row, reason: str, now: float) -> SeriesReady | None:
        with self.database.transaction() as conn:
            changed = conn.execute(
                """UPDATE assembly_series SET state = 'complete', generation = generation + 1,
                       completed_at = ?, reason = ?
                   WHERE study_uid = ? AND series_uid = ? AND state = 'open' AND instance_count = ?""",
                (now, reason, row["study_uid"], row["series_uid"], row["instance_count"]),
            ).rowcount
            if not changed:  # an instance arrived meanwhile: check again next tick
                return None
            generation = row["generation"] + 1
            conn.execute(
                """INSERT INTO assembly_events (kind, study_uid, series_uid, generation, reason,
                       instance_count, emitted_at) VALUES ('series', ?, ?, ?, ?, ?, ?)""",
                (row["study_uid"], row["series_uid"], generation, reason, row["instance_count"], now),
            )
        return self._series_event(
            row["study_uid"], row["series_uid"], row["instance_count"], generation, reason
        )

    def _complete_study(self, study_uid: str, now: float) -> StudyReady | None:
        with self.database.transaction() as conn:
            series = conn.execute(
                "SELECT series_uid, state, instance_count FROM assembly_series WHERE study_uid = ?",
                (study_uid,),
            ).fetchall()
            if not series or any(s["state"] != "complete" for s in series):
                return None
            conn.execute(
                """UPDATE assembly_studies SET state = 'complete', generation = generation + 1,
                       completed_at = ? WHERE study_uid = ?""",
                (now, study_uid),
            )
            generation = conn.execute(
                "SELECT generation FROM assembly_studies WHERE study_uid = ?", (study_uid,)
            ).fetchone()[0]
            count = sum(s["instance_count"] for s in series)
            conn.execute(
                """INSERT INTO assembly_events (kind, study_uid, series_uid, generation, reason,
                       instance_count, emitted_at) VALUES ('study', ?, '', ?, 'quiet', ?, ?)""",
                (study_uid, generation, count, now),
            )
        return StudyReady(
            study_uid=study_uid,
            series_uids=tuple(s["series_uid"] for s in series),
            generation=generation,
            study_dir=self.index.root / study_uid,
        )

    def _series_event(self, study: str, series: str, count: int, generation: int, reason: str) -> SeriesReady:
        return SeriesReady(
            study_uid=study,
            series_uid=series,
            instance_count=count,
            generation=generation,
            reason=reason,
            series_dir=self.index.root / study / series,
        )

    # -- handing on -----------------------------------------------------------------------------------
    def is_current(self, event: Event) -> bool:
        """False when the event was superseded (its series/study re-opened or completed again)."""
        if isinstance(event, SeriesReady):
            row = self.database.conn.execute(
                "SELECT state, generation FROM assembly_series WHERE study_uid = ? AND series_uid = ?",
                (event.study_uid, event.series_uid),
            ).fetchone()
        else:
            row = self.database.conn.execute(
                "SELECT state, generation FROM assembly_studies WHERE study_uid = ?", (event.study_uid,)
            ).fetchone()
        return row is not None and row["state"] == "complete" and row["generation"] == event.generation

    def mark_handed_on(self, event: Event) -> None:
        kind, series = ("series", event.series_uid) if isinstance(event, SeriesReady) else ("study", "")
        self.database.conn.execute(
            """UPDATE assembly_events SET handed_on_at = ?
               WHERE kind = ? AND study_uid = ? AND series_uid = ? AND generation <= ?
                 AND handed_on_at IS NULL""",
            (self.clock(), kind, event.study_uid, series, event.generation),
        )

    def pending_events(self) -> list[Event]:
        """Completions recorded but not handed on (after a restart), current generation only."""
        rows = self.database.conn.execute(
            """SELECT e.* FROM assembly_events e
               LEFT JOIN assembly_series s ON e.kind = 'series' AND s.study_uid = e.study_uid
                    AND s.series_uid = e.series_uid
               LEFT JOIN assembly_studies t ON e.kind = 'study' AND t.study_uid = e.study_uid
               WHERE e.handed_on_at IS NULL
                 AND COALESCE(s.state, t.state) = 'complete'
                 AND COALESCE(s.generation, t.generation) = e.generation
               ORDER BY e.id"""
        ).fetchall()
        events: list[Event] = []
        for r in rows:
            if r["kind"] == "series":
                events.append(
                    self._series_event(
                        r["study_uid"], r["series_uid"], r["instance_count"], r["generation"], "recovered"
                    )
                )
            else:
                series = [s.series_uid for s in self.index.series_of(r["study_uid"])]
                events.append(
                    StudyReady(
                        r["study_uid"], tuple(series), r["generation"], self.index.root / r["study_uid"]
                    )
                )
        return events

    # -- timer (apscheduler) -------------------------------------------------------------------------------
    def start(self) -> None:
        """Reconcile with the index, re-emit what was not handed on, then start the timer."""
        self.reconcile()
        pending = self.pending_events()
        if pending:
            log.info(
                "Re-emitting %d completion(s) that were not handed on before the last stop.", len(pending)
            )
            with self.database.transaction() as conn:
                for event in pending:
                    kind, series = (
                        ("series", event.series_uid) if isinstance(event, SeriesReady) else ("study", "")
                    )
                    conn.execute(
                        """UPDATE assembly_events SET emit_count = emit_count + 1
                           WHERE kind = ? AND study_uid = ? AND series_uid = ? AND generation = ?""",
                        (kind, event.study_uid, series, event.generation),
                    )
        for event in pending:
            self.emit(event)
        scheduler = BackgroundScheduler(
            daemon=True, job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
        )
        scheduler.add_job(
            self._checked_tick, "interval", seconds=self.config.check_interval_seconds,
            id="dicomnode-completion", name="completion check",
        )
        scheduler.start()
        self._scheduler = scheduler

    def _checked_tick(self) -> None:
        try:
            self.tick()
        except (sqlite3.Error, AssemblyError):
            log.exception("Completion check failed; retrying in %.1f s.", self.config.check_interval_seconds)

    def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)  # waits for a check in progress
            self._scheduler = None

