"""Which destinations are unreachable, from the outbox's record (``Outbox.contacts``), as
``destination_health`` and the ``dicomnode_destination_*`` gauges report it."""

from __future__ import annotations

from pathlib import Path

from dicomnode.config import Config, OutboxConfig
from dicomnode.database import Database
from dicomnode.observability.health import destination_health
from dicomnode.observability.metrics import Metrics, destination_health_from_database
from dicomnode.send.outbox import Outbox
from tests.unit.test_outbox import Clock, write_instance

THRESHOLD = 600.0


def _outbox(tmp_path: Path, clock: Clock) -> Outbox:
    return Outbox(Database(tmp_path / "data" / "dicomnode.sqlite3"), OutboxConfig(), clock=clock)


def _attempt(outbox: Outbox, clock: Clock, destination: str, path: Path, *, ok: bool,
             status: int | None = None) -> None:
    outbox.enqueue(destination, [path], "forward")
    items = outbox.claim_due(destination)
    clock.now += 5
    if ok:
        outbox.mark_sent([i.id for i in items])
    for item in items if not ok else ():
        outbox.mark_failed(item.id, "Cannot deliver to 'pacs': connection refused" if status is None
                           else "refused", status=status)


def test_a_destination_failing_unanswered_beyond_the_threshold_is_unreachable(tmp_path: Path) -> None:
    clock = Clock()
    outbox = _outbox(tmp_path, clock)
    start = clock.now
    _attempt(outbox, clock, "pacs", write_instance(tmp_path / "a.dcm"), ok=True)
    clock.now += 100
    failing_from = clock.now
    _attempt(outbox, clock, "pacs", write_instance(tmp_path / "b.dcm"), ok=False)
    clock.now += 200
    _attempt(outbox, clock, "pacs", write_instance(tmp_path / "c.dcm"), ok=False)
    contact = outbox.contacts()["pacs"]
    assert contact.last_success == start + 5 and contact.failing_since == failing_from
    assert "connection refused" in contact.last_error
    early = destination_health(outbox.contacts(), ["pacs", "archive"], THRESHOLD, now=failing_from + 599)
    assert [(h.destination, h.unreachable) for h in early] == [("archive", False), ("pacs", False)]
    assert early[1].failing_seconds == 599 and early[0].failing_seconds is None
    late = destination_health(outbox.contacts(), ["pacs"], THRESHOLD, now=failing_from + 601)[0]
    assert late.unreachable and late.seconds_since_success == failing_from + 601 - (start + 5)
    described = late.describe(THRESHOLD)
    assert "UNREACHABLE for 10 min" in described and "connection refused" in described
    clock.now += 1000  # the PACS is back: one delivery makes it reachable again
    _attempt(outbox, clock, "pacs", write_instance(tmp_path / "d.dcm"), ok=True)
    again = destination_health(outbox.contacts(), ["pacs"], THRESHOLD, now=clock.now + 10_000)[0]
    assert not again.unreachable and again.failing_seconds is None


def test_refusals_with_a_status_are_answers_not_unreachability(tmp_path: Path) -> None:
    clock = Clock()
    outbox = _outbox(tmp_path, clock)
    _attempt(outbox, clock, "pacs", write_instance(tmp_path / "a.dcm"), ok=False, status=0xA700)
    assert outbox.contacts()["pacs"].failing_since is None
    health = destination_health(outbox.contacts(), ["pacs"], THRESHOLD, now=clock.now + 86400)[0]
    assert not health.unreachable


def test_never_delivered_counts_from_the_first_failed_entry(tmp_path: Path) -> None:
    clock = Clock()
    outbox = _outbox(tmp_path, clock)
    created = clock.now
    _attempt(outbox, clock, "pacs", write_instance(tmp_path / "a.dcm"), ok=False)
    health = destination_health(outbox.contacts(), ["pacs"], THRESHOLD, now=created + THRESHOLD)[0]
    assert health.unreachable and health.seconds_since_success is None
    assert "never delivered to" in health.describe(THRESHOLD)


def test_a_retry_in_flight_keeps_the_destination_failing(tmp_path: Path) -> None:
    clock = Clock()
    outbox = _outbox(tmp_path, clock)
    created = clock.now
    _attempt(outbox, clock, "pacs", write_instance(tmp_path / "a.dcm"), ok=False)
    clock.now += 3600  # the retry is due and claimed: while it is in flight the PACS has not answered yet
    assert [i.state for i in outbox.claim_due("pacs")] == ["sending"]
    health = destination_health(outbox.contacts(), ["pacs"], THRESHOLD, now=clock.now)[0]
    assert health.unreachable and health.failing_seconds is not None and health.failing_seconds >= THRESHOLD
    assert outbox.contacts()["pacs"].failing_since == created


def test_gauges_per_configured_destination(tmp_path: Path) -> None:
    config = Config.model_validate({
        "storage": {"path": str(tmp_path / "data")},
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 4242},
                         "archive": {"ae_title": "ARCH", "host": "127.0.0.1", "port": 4243}},
        "health": {"destination_unreachable_minutes": 0.001},
    })
    clock = Clock()
    clock.now = 0.0  # epoch: every failure is long past the 60 ms threshold
    outbox = _outbox(tmp_path, clock)
    _attempt(outbox, clock, "pacs", write_instance(tmp_path / "a.dcm"), ok=False)
    _attempt(outbox, clock, "archive", write_instance(tmp_path / "b.dcm"), ok=True)
    metrics = Metrics(destination_health=destination_health_from_database(outbox.db, config))
    assert metrics.value("dicomnode_destination_unreachable", {"destination": "pacs"}) == 1
    assert metrics.value("dicomnode_destination_unreachable", {"destination": "archive"}) == 0
    assert metrics.value("dicomnode_destination_failing_seconds", {"destination": "pacs"}) > 1e9
    assert metrics.value("dicomnode_destination_seconds_since_success", {"destination": "pacs"}) is None
    assert metrics.value("dicomnode_destination_seconds_since_success", {"destination": "archive"}) > 1e9
    assert 'dicomnode_destination_unreachable{destination="pacs"} 1.0' in metrics.render().decode()
