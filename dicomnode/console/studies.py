"""The Studies page: searchable study list and one study's series, decisions, jobs, deliveries and events.

Reads only, through the owners of the tables (:class:`SpoolIndex`, :class:`AssemblyRecords`,
:class:`DecisionLog`, :class:`Outbox`, :class:`AuditTrail`).

A study's console *state* summarises what the node did with it, worst first::

    failed     a decision or delivery failed for good (decision 'failed', outbox 'dead')
    sending    deliveries pending (queued, sending, failed with a retry scheduled)
    delivered  everything queued for it was sent
    routed / unrouted / discarded / ignored   decisions recorded, nothing to deliver (ignored: the node's
               own outputs, sent back to it)
    complete   assembled, not routed yet
    receiving  series still open
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from dicomnode.console.jobs import JobView, study_jobs
from dicomnode.console.node import ConsoleNode
from dicomnode.route.decisions import DecisionState
from dicomnode.send.outbox import OutboxItem

STATES = ("receiving", "complete", "routed", "unrouted", "discarded", "ignored", "sending", "delivered",
          "failed")
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
        if actions == {"ignored"}:
            return "ignored"
        return "routed"
    return "complete" if row.assembly == "complete" else "receiving"


def _normalise_date(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())[:8]


def search_studies(
    node: ConsoleNode, *, patient: str = "", date_from: str = "", date_to: str = "", modality: str = "",
    state: str = "", limit: int = LIST_LIMIT,
) -> list[StudyRow]:
    """Studies newest first, filtered (patient: name or ID, ``*``/space as wildcards; dates YYYYMMDD)."""
    pattern = "%" + "%".join(patient.replace("*", " ").split()) + "%" if patient.strip() else ""
    fetch = limit * 4 if state else limit
    rows = [StudyRow(**r) for r in node.index.search(
        patient_pattern=pattern, date_from=_normalise_date(date_from), date_to=_normalise_date(date_to),
        modality=modality.strip().upper(), limit=fetch,
    )]
    _annotate(node, rows)
    if state:
        rows = [r for r in rows if r.state == state]
    return rows[:limit]


def _annotate(node: ConsoleNode, rows: list[StudyRow]) -> None:
    if not rows:
        return
    by_uid = {r.study_uid: r for r in rows}
    uids = list(by_uid)
    assert node.assembly is not None
    for study_uid, (assembly_state, _) in node.assembly.study_states(uids).items():
        by_uid[study_uid].assembly = assembly_state
    for study_uid, decisions in node.decisions.study_summary(uids).items():
        row = by_uid[study_uid]
        for action, decision_state, n in decisions:
            row.decisions[action] += n
            if decision_state == DecisionState.FAILED:
                row.decisions_failed += n
    for study_uid, counts in node.outbox.study_counts(uids).items():
        for outbox_state, n in counts.items():
            by_uid[study_uid].outbox[str(outbox_state)] += n
    for row in rows:
        row.state = _state(row)


def study_outbox(node: ConsoleNode, study_uid: str) -> list[OutboxItem]:
    return node.outbox.of_study(study_uid)


def _series_states(node: ConsoleNode, study_uid: str) -> dict[str, str]:
    assert node.assembly is not None
    states = node.assembly.series_states(study_uid)
    return {series: str(state) for (_, series), (state, _) in states.items()}


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
    decisions = node.decisions.recent(500, study_uid)
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
    found = [StudyRow(**r) for r in node.index.search(study_uid=study_uid, limit=1)]
    _annotate(node, found)
    return found
