"""The audit trail: what happened to each study, when — received → completed → routed → processed → sent.

One row per event in the ``audit`` table of the node database. Stages record:

==============  ================================================================================
stage           who records it, and when
==============  ================================================================================
``received``    the listener, once per series per association at release (detail: ``instances``,
                ``calling_aet``, ``association``) — not once per instance
``completed``   the assembler, when a series (``series_uid`` set) or the study (no series) is complete
``routed``      the router, per rule that matched (detail: ``rule``, ``actions``)
``processed``   the pipeline runner, per job (``job_id``; detail: ``pipeline``, ``seconds``, ``outputs``)
``sent``        the outbox, per delivered batch (detail: ``destination``, ``instances``)
``failed``      any stage, when something for this study failed (detail: ``stage``, ``error``)
``removed``     retention, when the study's files were deleted (detail: ``files``, ``bytes``)
``operator``    the web console, per operator action (detail: ``action``, ``user``, what it did)
``security``    the web console, about the console itself, not a study (``study_uid`` is empty):
                a login lockout (detail: ``event: login_lockout``, ``kind`` user|address, ``key``,
                ``failures``, ``until``) and a password change (``event: password_changed``, ``user``,
                ``client``, ``sessions_revoked``)
==============  ================================================================================

:func:`study_timeline` is what ``dicomnode status --study UID`` shows (and prints with ``--json``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from dicomnode.database import Database, Schema, Step
from dicomnode.errors import DicomNodeError


class AuditStage(StrEnum):
    RECEIVED = "received"
    COMPLETED = "completed"
    ROUTED = "routed"
    PROCESSED = "processed"
    SENT = "sent"
    FAILED = "failed"
    REMOVED = "removed"
    OPERATOR = "operator"
    SECURITY = "security"


STAGES: tuple[AuditStage, ...] = tuple(AuditStage)
FLOW: tuple[AuditStage, ...] = (AuditStage.RECEIVED, AuditStage.COMPLETED, AuditStage.ROUTED,
                                AuditStage.PROCESSED, AuditStage.SENT)

#: Step 1 is the table as every release before schema versions created it: never edit it, append a step.
DDL_V1 = """
CREATE TABLE IF NOT EXISTS audit (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    time       REAL NOT NULL,
    study_uid  TEXT NOT NULL,
    series_uid TEXT,
    job_id     TEXT,
    stage      TEXT NOT NULL,
    detail     TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS audit_study_time ON audit (study_uid, time);
CREATE INDEX IF NOT EXISTS audit_time ON audit (time);
"""

SCHEMA = Schema("audit", ("audit",), (Step("audit", DDL_V1),))


class AuditError(DicomNodeError):
    """An audit event is invalid or the audit trail cannot be read."""


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


class AuditTrail:
    """Records and reads the ``audit`` table."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate(SCHEMA)

    def record(
        self,
        stage: str,
        study_uid: str,
        *,
        series_uid: str | None = None,
        job_id: str | None = None,
        detail: Mapping[str, Any] | None = None,
        at: float | None = None,
    ) -> None:
        """Append one event (``at``: UNIX time, default now)."""
        if stage not in STAGES:
            raise AuditError(f"Audit stage '{stage}' is not one of {', '.join(STAGES)}.")
        if not study_uid and stage != AuditStage.SECURITY:
            raise AuditError(f"An audit event for stage '{stage}' needs a study UID (got {study_uid!r}).")
        self.db.conn.execute(
            "INSERT INTO audit (time, study_uid, series_uid, job_id, stage, detail) VALUES (?,?,?,?,?,?)",
            (time.time() if at is None else at, study_uid, series_uid or None, job_id or None, stage,
             json.dumps(dict(detail or {}), sort_keys=True, default=str)),
        )

    def events(self, study_uid: str | None = None, since: float | None = None) -> list[dict[str, Any]]:
        """Events in time order, of one study or of all (optionally since a UNIX time)."""
        where, args = [], []
        if study_uid is not None:
            where.append("study_uid = ?")
            args.append(study_uid)
        if since is not None:
            where.append("time >= ?")
            args.append(since)
        sql = "SELECT time, study_uid, series_uid, job_id, stage, detail FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self.db.conn.execute(sql + " ORDER BY time, id", args).fetchall()
        return [
            {"time": _iso(r["time"]), "timestamp": r["time"], "study_uid": r["study_uid"],
             "series_uid": r["series_uid"], "job_id": r["job_id"], "stage": r["stage"],
             "detail": json.loads(r["detail"] or "{}")}
            for r in rows
        ]

    def unresolved_failure(self, study_uid: str) -> bool:
        """True when the study's last ``failed`` event is not followed by a ``processed`` or ``sent`` one."""
        row = self.db.conn.execute(
            "SELECT MAX(CASE WHEN stage = ? THEN time END) AS failed, "
            "MAX(CASE WHEN stage IN (?, ?) THEN time END) AS recovered FROM audit WHERE study_uid = ?",
            (AuditStage.FAILED, AuditStage.PROCESSED, AuditStage.SENT, study_uid),
        ).fetchone()
        if row["failed"] is None:
            return False
        return row["recovered"] is None or row["recovered"] < row["failed"]

    def timeline(self, study_uid: str) -> dict[str, Any]:
        """The study's events plus per-stage first/last times and the time spent between stages.

        ``durations["a→b"]`` is the time from the last ``a`` event to the last ``b`` event (e.g. from the
        last instance received to the last series completed); ``receiving_seconds`` spans the first to the
        last ``received``; ``total_seconds`` the first event to the last ``sent`` (or last event).
        """
        events = self.events(study_uid)
        if not events:
            raise AuditError(f"No audit events for study '{study_uid}' (unknown study, or removed from the "
                             "audit trail).")
        stages: dict[str, dict[str, Any]] = {}
        for event in events:
            entry = stages.setdefault(event["stage"], {"count": 0, "first": event["timestamp"]})
            entry["count"] += 1
            entry["last"] = event["timestamp"]
        durations: dict[str, float] = {}
        present = [s for s in FLOW if s in stages]
        for before, after in zip(present, present[1:], strict=False):
            durations[f"{before}→{after}"] = round(stages[after]["last"] - stages[before]["last"], 3)
        end = stages["sent"]["last"] if "sent" in stages else events[-1]["timestamp"]
        failures = [e for e in events if e["stage"] == "failed"]
        return {
            "study_uid": study_uid,
            "state": events[-1]["stage"],
            "failed": bool(failures),
            "stages": {
                name: {"count": s["count"], "first": _iso(s["first"]), "last": _iso(s["last"])}
                for name, s in sorted(stages.items(), key=lambda kv: STAGES.index(kv[0]))
            },
            "durations": durations,
            "receiving_seconds": round(stages["received"]["last"] - stages["received"]["first"], 3)
            if "received" in stages else None,
            "total_seconds": round(end - events[0]["timestamp"], 3),
            "events": [{k: v for k, v in e.items() if k != "timestamp"} for e in events],
        }

    def export_json(self, study_uid: str | None = None, since: float | None = None) -> str:
        """The events (one study, or all) as a JSON array, for archiving or a SIEM."""
        events = [{k: v for k, v in e.items() if k != "timestamp"} for e in self.events(study_uid, since)]
        return json.dumps(events, indent=2, ensure_ascii=False)


def study_timeline(db: Database, study_uid: str) -> dict[str, Any]:
    """The timeline of one study (see :meth:`AuditTrail.timeline`); raises :class:`AuditError` if unknown."""
    return AuditTrail(db).timeline(study_uid)


def format_timeline(timeline: Mapping[str, Any]) -> str:
    """Readable text of :func:`study_timeline` for ``dicomnode status --study``."""
    lines = [f"Study {timeline['study_uid']}: {timeline['state']}"
             + (" (with failures)" if timeline["failed"] else "")]
    for name, stage in timeline["stages"].items():
        lines.append(f"  {name:<10} x{stage['count']:<4} first {stage['first']}  last {stage['last']}")
    if timeline["durations"]:
        lines.append("  " + "  ".join(f"{k} {v:.1f}s" for k, v in timeline["durations"].items()))
    lines.append(f"  total {timeline['total_seconds']:.1f}s")
    for event in timeline["events"]:
        who = " ".join(f"{k}={event[k]}" for k in ("series_uid", "job_id") if event[k])
        detail = json.dumps(event["detail"], sort_keys=True) if event["detail"] else ""
        lines.append(f"    {event['time']}  {event['stage']:<10} {who} {detail}".rstrip())
    return "\n".join(lines)
