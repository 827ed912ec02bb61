"""The decision log: one row per routing decision in the node database (table ``route_decisions``).

Columns::

    id, decided_at REAL (UNIX time), level 'series'|'study', study_uid, series_uid ('' for a study),
    generation (the completion event's generation), rule ('' when nothing matched), rule_file,
    ruleset_hash (SHA-256 of the rule files), action 'pipeline'|'forward'|'pipeline+forward'|'discard'|
    'none'|'unrouted'|'ignored' (the node's own output, see route.ownership), pipeline, params (JSON),
    destinations (JSON list), priority, fallback (0/1),
    quiet_seconds, job_id, instance_count, explanation (why the rule held), state 'pending'|'done'|'failed'
    (:class:`DecisionState`, a CHECK constraint since schema step 2), error

A decision is recorded (``pending``) before its action runs and marked ``done``/``failed`` afterwards.
``UNIQUE (level, study_uid, series_uid, generation, rule)`` makes a re-delivered event (restart) re-run only
the actions that had not completed, never the finished ones.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from dicomnode.database import Database, Schema, Step, check_in, rebuild_table


class DecisionState(StrEnum):
    PENDING = "pending"  # recorded, its action not yet run
    DONE = "done"
    FAILED = "failed"


#: Step 1 is the table as every release before schema versions created it: never edit it, append a step.
DDL_V1 = """
CREATE TABLE IF NOT EXISTS route_decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    decided_at REAL NOT NULL,
    level TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL DEFAULT '',
    generation INTEGER NOT NULL,
    rule TEXT NOT NULL DEFAULT '',
    rule_file TEXT NOT NULL DEFAULT '',
    ruleset_hash TEXT NOT NULL DEFAULT '',
    action TEXT NOT NULL,
    pipeline TEXT,
    params TEXT NOT NULL DEFAULT '{}',
    destinations TEXT NOT NULL DEFAULT '[]',
    priority INTEGER NOT NULL DEFAULT 0,
    fallback INTEGER NOT NULL DEFAULT 0,
    quiet_seconds REAL,
    job_id TEXT,
    instance_count INTEGER NOT NULL DEFAULT 0,
    explanation TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL DEFAULT 'pending',
    error TEXT NOT NULL DEFAULT '',
    UNIQUE (level, study_uid, series_uid, generation, rule)
);
CREATE INDEX IF NOT EXISTS route_decisions_series ON route_decisions (study_uid, series_uid);
"""

DDL = DDL_V1.replace(
    "state TEXT NOT NULL DEFAULT 'pending',",
    f"state TEXT NOT NULL DEFAULT 'pending' {check_in('state', DecisionState)},",
)

SCHEMA = Schema("route_decisions", ("route_decisions",), (
    Step("route_decisions", DDL_V1),
    Step("state CHECK from DecisionState", lambda conn: rebuild_table(conn, "route_decisions", DDL)),
))


@dataclass(frozen=True)
class Decision:
    """What the router decided for one subject and one rule (or that nothing matched)."""

    level: str
    study_uid: str
    series_uid: str
    generation: int
    rule: str
    rule_file: str
    ruleset_hash: str
    action: str
    pipeline: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    destinations: tuple[str, ...] = ()
    priority: int = 0
    fallback: bool = False
    quiet_seconds: float | None = None
    job_id: str | None = None
    instance_count: int = 0
    explanation: str = ""


@dataclass(frozen=True)
class RecordedDecision:
    id: int
    decision: Decision
    state: DecisionState


class DecisionLog:
    """Reads and writes ``route_decisions`` (see the module docstring)."""

    def __init__(self, database: Database, clock: Any = time.time) -> None:
        self.database = database
        self.clock = clock
        database.migrate(SCHEMA)

    def record(self, decisions: Sequence[Decision]) -> list[RecordedDecision]:
        """Insert the decisions (already recorded ones are kept) and return those whose action is pending."""
        now = self.clock()
        out: list[RecordedDecision] = []
        with self.database.transaction() as conn:
            for d in decisions:
                conn.execute(
                    """INSERT OR IGNORE INTO route_decisions (decided_at, level, study_uid, series_uid,
                           generation, rule, rule_file, ruleset_hash, action, pipeline, params, destinations,
                           priority, fallback, quiet_seconds, job_id, instance_count, explanation, state)
                       VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
                    (
                        now, d.level, d.study_uid, d.series_uid, d.generation, d.rule, d.rule_file,
                        d.ruleset_hash, d.action, d.pipeline, json.dumps(d.params, sort_keys=True),
                        json.dumps(list(d.destinations)), d.priority, int(d.fallback), d.quiet_seconds,
                        d.job_id, d.instance_count, d.explanation, DecisionState.PENDING,
                    ),
                )
                row = conn.execute(
                    """SELECT id, state FROM route_decisions WHERE level = ? AND study_uid = ?
                       AND series_uid = ? AND generation = ? AND rule = ?""",
                    (d.level, d.study_uid, d.series_uid, d.generation, d.rule),
                ).fetchone()
                out.append(RecordedDecision(int(row["id"]), d, DecisionState(row["state"])))
        return [r for r in out if r.state == DecisionState.PENDING]

    def mark(self, decision_id: int, state: DecisionState, error: str = "") -> None:
        self.database.conn.execute(
            "UPDATE route_decisions SET state = ?, error = ? WHERE id = ?",
            (DecisionState(state), error, decision_id),
        )

    def recent(self, limit: int = 50, study_uid: str | None = None) -> list[dict[str, Any]]:
        """The newest decisions first (all studies, or one)."""
        sql = "SELECT * FROM route_decisions"
        args: list[Any] = []
        if study_uid:
            sql += " WHERE study_uid = ?"
            args.append(study_uid)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return [_row(r) for r in self.database.conn.execute(sql, args).fetchall()]

    def get(self, decision_id: int, study_uid: str) -> dict[str, Any] | None:
        """One decision of a study (as :meth:`recent` gives them), or None."""
        row = self.database.conn.execute(
            "SELECT * FROM route_decisions WHERE id = ? AND study_uid = ?", (decision_id, study_uid)
        ).fetchone()
        return None if row is None else _row(row)

    def not_done(self, study_uid: str) -> dict[DecisionState, int]:
        """A study's decisions per state, for every state but ``done`` (empty: all of them are done)."""
        rows = self.database.conn.execute(
            "SELECT state, COUNT(*) AS n FROM route_decisions WHERE study_uid = ? AND state != ? "
            "GROUP BY state", (study_uid, DecisionState.DONE),
        ).fetchall()
        return {DecisionState(r["state"]): int(r["n"]) for r in rows}

    def study_summary(self, study_uids: Sequence[str]) -> dict[str, list[tuple[str, DecisionState, int]]]:
        """(action, state, count) of each of ``study_uids``' decisions (studies without any left out)."""
        out: dict[str, list[tuple[str, DecisionState, int]]] = {}
        if not study_uids:
            return out
        marks = ",".join("?" * len(study_uids))
        for r in self.database.conn.execute(
            "SELECT study_uid, action, state, COUNT(*) AS n FROM route_decisions "
            f"WHERE study_uid IN ({marks}) GROUP BY study_uid, action, state", list(study_uids),
        ):
            out.setdefault(r["study_uid"], []).append((r["action"], DecisionState(r["state"]), int(r["n"])))
        return out

    def routed_instance_counts(self, study_uid: str, level: str) -> set[int]:
        """The instance counts the study's earlier decisions of ``level`` saw (own-output handling)."""
        return {int(r[0]) for r in self.database.conn.execute(
            "SELECT DISTINCT instance_count FROM route_decisions WHERE study_uid = ? AND level = ?",
            (study_uid, level),
        )}

    def failed_since(self, since: float) -> int:
        return int(self.database.conn.execute(
            "SELECT COUNT(*) FROM route_decisions WHERE state = ? AND decided_at >= ?",
            (DecisionState.FAILED, since),
        ).fetchone()[0])

    def forget_study(self, study_uid: str, conn: sqlite3.Connection) -> int:
        """Delete the study's decisions (retention, inside its removal transaction)."""
        return conn.execute("DELETE FROM route_decisions WHERE study_uid = ?", (study_uid,)).rowcount


def _row(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    out["params"] = json.loads(out.get("params") or "{}")
    out["destinations"] = json.loads(out.get("destinations") or "[]")
    out["fallback"] = bool(out.get("fallback"))
    return out


def read_decisions(
    database_path: Path, *, limit: int = 50, study_uid: str | None = None
) -> list[dict[str, Any]]:
    """For CLI commands (``dicomnode status``), also while the node runs; empty without a database."""
    if not Path(database_path).exists():
        return []
    db = Database(database_path)
    try:
        return DecisionLog(db).recent(limit, study_uid)
    finally:
        db.close()


def format_decision(row: dict[str, Any]) -> str:
    """One line for ``dicomnode status``."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["decided_at"]))
    subject = f"series {row['series_uid']}" if row["level"] == "series" else f"study {row['study_uid']}"
    what = row["action"]
    if row.get("pipeline"):
        what += f" {row['pipeline']}"
    if row["destinations"]:
        what += " → " + ",".join(row["destinations"])
    rule = row["rule"] or "(no rule)"
    state = row["state"] + (f": {row['error']}" if row.get("error") else "")
    why = ""
    if row["action"] == "ignored" and row.get("explanation"):
        why = "  — " + str(row["explanation"]).split(". Own outputs")[0]
    return (
        f"{when}  {subject} gen {row['generation']}  rule {rule}  {what}  "
        f"[rules {str(row['ruleset_hash'])[:12] or '-'}] {state}{why}"
    )
