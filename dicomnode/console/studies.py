"""The Studies page: searchable study list and one study's series, decisions, jobs, deliveries and events.

Reads only. Per-study aggregates the stages do not offer (search by patient/date/modality, delivery
counts per study) are read here with plain SELECTs on their tables; everything else goes through their
APIs (:class:`SpoolIndex`, :func:`query_decisions`, :class:`Outbox`, :class:`AuditTrail`).

A study's console *state* summarises what the node did with it, worst first::

    failed     a decision or delivery failed for good (decision 'failed', outbox 'dead')
    sending    deliveries pending (queued, sending, failed with a retry scheduled)
    delivered  everything queued for it was sent
    routed / unrouted / discarded   decisions recorded, nothing to deliver
    complete   assembled, not routed yet
    receiving  series still open
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from dicomnode.console.jobs import JobView, study_jobs
from dicomnode.console.node import ConsoleNode
from dicomnode.route.decisions import query_decisions
from dicomnode.send.outbox import OutboxItem

STATES = ("receiving", "complete", "routed", "unrouted", "discarded", "sending", "delivered", "failed")
LIST_LIMIT = 200


@dataclass
class StudyRow:
    study_uid: str
    patient_name: str
    patient_id: str
    study_date: str
    modalities: str
    series_count: int
    instance_count: int
    last_received_at: float
    assembly: str = "open"
    decisions: Counter[str] = field(default_factory=Counter)  # action → count
    decisions_failed: int = 0
    outbox: Counter[str] = field(default_factory=Counter)  # state → count
    state: str = "receiving"


@dataclass
class SeriesRow:
    series_uid: str
    modality: str
    series_number: int | None
    instance_count: int
    size: int
    last_received_at: float
    state: str
    description: str = ""
    previews: list[str] = field(default_factory=list)  # job ids with a SEG to preview


@dataclass
class Delivery:
    destination: str
    counts: Counter[str]
    items: list[OutboxItem]


@dataclass
class StudyDetail:
    row: StudyRow
    series: list[SeriesRow]
    decisions: list[dict[str, Any]]
    jobs: list[JobView]
    deliveries: list[Delivery]
    events: list[dict[str, Any]]


def _state(row: StudyRow) -> str:
    pending = row.outbox["queued"] + row.outbox["sending"] + row.outbox["failed"]
    if row.decisions_failed or row.outbox["dead"]:
        return "failed"
    if pending:
        return "sending"
    if row.outbox["sent"]:
        return "delivered"
    if row.decisions:
        actions = set(row.decisions)
        if actions == {"discard"}:
            return "discarded"
        if actions == {"unrouted"}:
            return "unrouted"
        return "routed"
    return "complete" if row.assembly == "complete" else "receiving"


def _normalise_date(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())[:8]


def search_studies(
    node: ConsoleNode, *, patient: str = "", date_from: str = "", date_to: str = "", modality: str = "",
    state: str = "", limit: int = LIST_LIMIT,
) -> list[StudyRow]:
    """Studies newest first, filtered (patient: name or ID, ``*``/space as wildcards; dates YYYYMMDD)."""
    where, args = [], []
    if patient.strip():
        pattern = "%" + "%".join(patient.replace("*", " ").split()) + "%"
        where.append("study_uid IN (SELECT study_uid FROM spool_instances "
                     "WHERE patient_name LIKE ? OR patient_id LIKE ?)")
        args += [pattern, pattern]
    if _normalise_date(date_from):
        where.append("study_date >= ?")
        args.append(_normalise_date(date_from))
    if _normalise_date(date_to):
        where.append("study_date <= ?")
        args.append(_normalise_date(date_to))
    if modality.strip():
        where.append("study_uid IN (SELECT study_uid FROM spool_instances WHERE modality = ?)")
        args.append(modality.strip().upper())
    sql = (
        "SELECT study_uid, MAX(patient_name) AS patient_name, MAX(patient_id) AS patient_id, "
        "MAX(study_date) AS study_date, GROUP_CONCAT(DISTINCT modality) AS modalities, "
        "COUNT(DISTINCT series_uid) AS series_count, COUNT(*) AS instance_count, "
        "MAX(received_at) AS last_received_at FROM spool_instances"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " GROUP BY study_uid ORDER BY last_received_at DESC LIMIT ?"
    )
    conn = node.database.conn
    fetch = limit * 4 if state else limit
    rows = [StudyRow(**dict(r)) for r in conn.execute(sql, [*args, fetch]).fetchall()]
    _annotate(node, rows)
    if state:
        rows = [r for r in rows if r.state == state]
    return rows[:limit]


def _annotate(node: ConsoleNode, rows: list[StudyRow]) -> None:
    if not rows:
        return
    by_uid = {r.study_uid: r for r in rows}
    marks = ",".join("?" * len(by_uid))
    uids = list(by_uid)
    conn = node.database.conn
    tables = node.tables()
    if "assembly_studies" in tables:
        for r in conn.execute(f"SELECT study_uid, state FROM assembly_studies WHERE study_uid IN ({marks})",
                              uids):
            by_uid[r["study_uid"]].assembly = r["state"]
    for r in conn.execute(
        f"SELECT study_uid, action, state, COUNT(*) AS n FROM route_decisions WHERE study_uid IN ({marks}) "
        "GROUP BY study_uid, action, state", uids,
    ):
        row = by_uid[r["study_uid"]]
        row.decisions[r["action"]] += r["n"]
        if r["state"] == "failed":
            row.decisions_failed += r["n"]
    for r in conn.execute(
        f"SELECT study_uid, state, COUNT(*) AS n FROM outbox WHERE study_uid IN ({marks}) "
        "GROUP BY study_uid, state", uids,
    ):
        by_uid[r["study_uid"]].outbox[r["state"]] += r["n"]
    for row in rows:
        row.state = _state(row)


def study_outbox(node: ConsoleNode, study_uid: str) -> list[OutboxItem]:
    rows = node.database.conn.execute(
        "SELECT * FROM outbox WHERE study_uid = ? ORDER BY id", (study_uid,)
    ).fetchall()
    return [OutboxItem.from_row(r) for r in rows]


def _series_states(node: ConsoleNode, study_uid: str) -> dict[str, str]:
    if "assembly_series" not in node.tables():
        return {}
    rows = node.database.conn.execute(
        "SELECT series_uid, state FROM assembly_series WHERE study_uid = ?", (study_uid,)
    ).fetchall()
    return {r["series_uid"]: r["state"] for r in rows}


def _series_description(node: ConsoleNode, study_uid: str, series_uid: str) -> str:
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    files = node.index.series_files(study_uid, series_uid)[:1]
    if not files:
        return ""
    try:
        ds = dcmread(files[0], stop_before_pixels=True, specific_tags=["SeriesDescription"])
    except (OSError, InvalidDicomError):
        return ""
    return str(ds.get("SeriesDescription", "") or "")


def study_detail(node: ConsoleNode, study_uid: str) -> StudyDetail | None:
    rows = search_studies_by_uid(node, study_uid)
    if not rows:
        return None
    row = rows[0]
    states = _series_states(node, study_uid)
    decisions = query_decisions(node.database.conn, limit=500, study_uid=study_uid)
    events = node.audit.events(study_uid)
    jobs = study_jobs(node, study_uid, decisions, events)
    series = []
    for s in node.index.series_of(study_uid):
        series.append(SeriesRow(
            s.series_uid, s.modality, s.series_number, s.instance_count, s.size, s.last_received_at,
            states.get(s.series_uid, "open"), _series_description(node, study_uid, s.series_uid),
            [j.job_id for j in jobs if j.series_uid == s.series_uid and j.seg is not None],
        ))
    deliveries: dict[str, Delivery] = {}
    for item in study_outbox(node, study_uid):
        entry = deliveries.setdefault(item.destination, Delivery(item.destination, Counter(), []))
        entry.counts[item.state] += 1
        entry.items.append(item)
    return StudyDetail(row, series, decisions, jobs, list(deliveries.values()), events)


def search_studies_by_uid(node: ConsoleNode, study_uid: str) -> list[StudyRow]:
    rows = node.database.conn.execute(
        "SELECT study_uid, MAX(patient_name) AS patient_name, MAX(patient_id) AS patient_id, "
        "MAX(study_date) AS study_date, GROUP_CONCAT(DISTINCT modality) AS modalities, "
        "COUNT(DISTINCT series_uid) AS series_count, COUNT(*) AS instance_count, "
        "MAX(received_at) AS last_received_at FROM spool_instances WHERE study_uid = ? GROUP BY study_uid",
        (study_uid,),
    ).fetchall()
    found = [StudyRow(**dict(r)) for r in rows]
    _annotate(node, found)
    return found
