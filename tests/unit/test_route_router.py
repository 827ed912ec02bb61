"""The router: decisions recorded in the database, callbacks called once per fired rule, failures kept as
decision states, hot reload (watcher and SIGHUP hook) refusing invalid sets, quiet-period overrides."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from dicomnode.config import Config
from dicomnode.database import Database
from dicomnode.events import SeriesReady, StudyReady
from dicomnode.route.decisions import format_decision, read_decisions
from dicomnode.route.router import Router
from dicomnode.route.ruleset import load_ruleset
from dicomnode.route.watcher import RuleBook, RuleWatcher
from tests.factories import ct_series, uid

RULES = """
- name: liver
  priority: 5
  when:
    all:
      - {tag: Modality, equals: CT}
      - {tag: SeriesDescription, regex: "(?i)liver"}
  then: {pipeline: liver-ct, params: {lesions.min_diameter_mm: 8}, send_to: [pacs], quiet_seconds: 7}
- name: archive
  when: {tag: SeriesDescription, regex: "(?i)liver"}
  then: {forward: true, send_to: [archive]}
- name: scouts
  priority: 100
  when: {tag: SeriesDescription, regex: "(?i)scout"}
  then: {discard: true, stop: true}
- name: catch-all
  fallback: true
  when: {tag: SeriesDescription, regex: "(?i)fallback"}
  then: {forward: true, send_to: [pacs]}
"""


class Calls:
    def __init__(self) -> None:
        self.jobs: list[tuple[object, int]] = []
        self.forwards: list[tuple[list[Path], list[str], str]] = []
        self.fail_jobs: BaseException | None = None

    def submit_job(self, spec, *, priority: int) -> None:
        if self.fail_jobs is not None:
            raise self.fail_jobs
        self.jobs.append((spec, priority))

    def forward(self, files, destinations, reason: str) -> None:
        self.forwards.append((list(files), list(destinations), reason))


@pytest.fixture
def node(tmp_path: Path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "site.yaml").write_text(RULES)
    config = Config.model_validate({
        "storage": {"path": str(tmp_path / "data")},
        "rules": {"path": str(rules)},
        "destinations": {name: {"ae_title": name.upper(), "host": "127.0.0.1", "port": 104}
                         for name in ("pacs", "archive")},
    })
    db = Database(config.storage.database_path)
    destinations = ["pacs", "archive"]
    book = RuleBook(rules, lambda: load_ruleset(rules, pipelines=["liver-ct"], destinations=destinations))
    assert book.reload()
    calls = Calls()
    router = Router(config, db, book, submit_job=calls.submit_job, forward=calls.forward)
    yield config, db, book, router, calls
    db.close()


def spool_series(
    config: Config, description: str, *, number: int = 1, slices: int = 3, seed: str = "s"
) -> SeriesReady:
    study_uid = uid(seed, "study")
    series_uid = uid(seed, "series", number)
    folder = config.storage.spool_dir / study_uid / series_uid
    files = ct_series(folder, study_uid=study_uid, series_uid=series_uid, series_number=number, slices=slices,
                      rows=8, cols=8)
    import pydicom

    for path in files:
        ds = pydicom.dcmread(path)
        ds.SeriesDescription = description
        ds.save_as(path)
    return SeriesReady(study_uid, series_uid, slices, 1, "quiet", folder)


def rows(db: Database) -> list[dict]:
    return [dict(r) for r in db.conn.execute("SELECT * FROM route_decisions ORDER BY id")]


def test_matching_rules_fire_once_each_and_are_recorded(node) -> None:
    config, db, book, router, calls = node
    event = spool_series(config, "CT Liver portal venous")
    recorded = router.on_ready(event)
    assert [r.decision.rule for r in recorded] == ["liver", "archive"]

    (spec, priority), = calls.jobs
    assert (spec.pipeline, spec.params, spec.rule, spec.destinations, priority) == (
        "liver-ct", {"lesions.min_diameter_mm": 8}, "liver", ("pacs",), 5
    )
    assert sorted(spec.input_files) == sorted(str(p) for p in event.series_dir.glob("*.dcm"))
    assert spec.output_dir == str(config.storage.jobs_dir / spec.job_id)
    assert (spec.study_uid, spec.series_uid, spec.ruleset_hash) == (event.study_uid, event.series_uid,
                                                                    book.current.sha256)
    (files, destinations, reason), = calls.forwards
    assert len(files) == 3 and destinations == ["archive"] and "rule archive" in reason

    table = rows(db)
    assert [(r["rule"], r["action"], r["state"], r["generation"]) for r in table] == [
        ("liver", "pipeline", "done", 1), ("archive", "forward", "done", 1)
    ]
    assert json.loads(table[0]["destinations"]) == ["pacs"] and table[0]["job_id"] == spec.job_id
    assert "✓ SeriesDescription regex /(?i)liver/" in table[0]["explanation"]
    assert table[0]["ruleset_hash"] == book.current.sha256 and table[0]["instance_count"] == 3

    # the same event delivered again (restart): nothing runs twice
    assert router.on_ready(event) == []
    assert len(calls.jobs) == 1 and len(calls.forwards) == 1 and len(rows(db)) == 2
    # a new generation (late instances) is a new decision
    again = SeriesReady(event.study_uid, event.series_uid, 3, 2, "quiet", event.series_dir)
    assert [r.decision.generation for r in router.on_ready(again)] == [2, 2]
    assert len(calls.jobs) == 2


def test_discard_stop_fallback_and_unrouted(node) -> None:
    config, db, _, router, calls = node
    router.on_ready(spool_series(config, "Scout liver", seed="a"))  # discard + stop: archive not reached
    router.on_ready(spool_series(config, "fallback me", seed="b"))
    router.on_ready(spool_series(config, "something else", seed="c"))
    assert [(r["rule"], r["action"], r["state"]) for r in rows(db)] == [
        ("scouts", "discard", "done"), ("catch-all", "forward", "done"), ("", "unrouted", "done"),
    ]
    assert calls.jobs == [] and [f[1] for f in calls.forwards] == [["pacs"]]


def test_a_failing_action_is_recorded_and_others_still_run(node) -> None:
    config, db, _, router, calls = node
    calls.fail_jobs = RuntimeError("executor queue is full")
    router.on_ready(spool_series(config, "liver"))
    table = rows(db)
    assert (table[0]["rule"], table[0]["state"]) == ("liver", "failed")
    assert table[0]["error"] == "RuntimeError: executor queue is full"
    assert (table[1]["rule"], table[1]["state"]) == ("archive", "done")
    assert "failed: RuntimeError: executor queue is full" in format_decision(read_decisions(
        config.storage.database_path)[-1])


def test_a_crash_before_the_action_completes_reruns_it_on_redelivery(node) -> None:
    config, db, _, router, calls = node
    event = spool_series(config, "liver")
    calls.fail_jobs = SystemExit(1)  # the process dies inside submit_job
    with pytest.raises(SystemExit):
        router.on_ready(event)
    assert [r["state"] for r in rows(db)] == ["pending", "pending"]
    calls.fail_jobs = None
    router.on_ready(SeriesReady(event.study_uid, event.series_uid, 3, 1, "recovered", event.series_dir))
    assert [r["state"] for r in rows(db)] == ["done", "done"]
    assert len(calls.jobs) == 1 and len(calls.forwards) == 1


def test_unreadable_instance_is_recorded_as_failed_with_the_file(node) -> None:
    config, db, _, router, calls = node
    event = spool_series(config, "liver")
    broken = event.series_dir / "broken.dcm"
    broken.write_bytes(b"not dicom at all")
    router.on_ready(event)
    (row,) = rows(db)
    assert row["action"] == "unrouted" and row["state"] == "failed"
    assert "broken.dcm" in row["error"] and "not a readable DICOM file" in row["error"]
    assert calls.jobs == []


def test_without_a_valid_rule_set_series_are_recorded_unrouted(tmp_path: Path, node) -> None:
    config, db, _, _, calls = node
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "r.yaml").write_text("- {name: x, then: {explode: true}}\n")
    book = RuleBook(tmp_path / "bad", lambda: load_ruleset(tmp_path / "bad"))
    assert book.reload() is False and book.current is None
    router = Router(config, db, book, submit_job=calls.submit_job, forward=calls.forward)
    router.on_ready(spool_series(config, "liver"))
    (row,) = rows(db)
    assert row["action"] == "unrouted" and row["state"] == "failed"
    assert "no valid rule set is loaded" in row["error"]


def test_study_rules_and_context(tmp_path: Path, node) -> None:
    config, db, book, _, calls = node
    (tmp_path / "rules" / "study.yaml").write_text("""
- name: whole-study
  level: study
  when:
    all:
      - {series_in_study: {min: 2}}
      - {instances: {equals: 5}}
      - {study_has_series: {tag: SeriesDescription, regex: "(?i)scout"}}
  then: {forward: true, send_to: [archive]}
""")
    assert book.reload()
    router = Router(config, db, book, submit_job=calls.submit_job, forward=calls.forward)
    first = spool_series(config, "body", number=1, slices=3)
    second = spool_series(config, "scout", number=2, slices=2)
    recorded = router.on_ready(StudyReady(first.study_uid, (first.series_uid, second.series_uid), 1,
                                          first.series_dir.parent))
    assert [(r.decision.level, r.decision.rule, r.decision.series_uid) for r in recorded] == [
        ("study", "whole-study", "")
    ]
    (files, destinations, _), = calls.forwards
    assert len(files) == 5 and destinations == ["archive"]


def test_calling_ae_and_receive_time_come_from_the_spool_index(tmp_path: Path, node) -> None:
    config, db, book, _, calls = node
    from dicomnode.spool.header import InstanceHeader
    from dicomnode.spool.index import SpoolIndex

    (tmp_path / "rules" / "site.yaml").write_text("""
- name: from-ct1
  when:
    all:
      - {calling_ae: CT1}
      - {time: {between: ["00:00", "23:59"]}}
  then: {discard: true}
""")
    assert book.reload()
    event = spool_series(config, "x")
    index = SpoolIndex(db, config.storage.spool_dir)
    for n, path in enumerate(sorted(event.series_dir.glob("*.dcm"))):
        header = InstanceHeader(f"1.2.3.{n}", "1.2.840.10008.5.1.4.1.1.2", event.study_uid, event.series_uid)
        index.add(header, path=path, size=1, transfer_syntax="", calling_aet="CT1",
                  received_at=time.mktime((2024, 1, 3, 12, 0, 0, 0, 0, -1)))
    router = Router(config, db, book, submit_job=calls.submit_job, forward=calls.forward)
    (recorded,) = router.on_ready(event)
    assert recorded.decision.rule == "from-ct1"
    assert "calling AE equals 'CT1' (is 'CT1')" in recorded.decision.explanation
    assert "(at Wed 12:00)" in recorded.decision.explanation


def test_quiet_seconds_override(node) -> None:
    config, _, book, router, _ = node
    liver = spool_series(config, "liver", seed="q1")
    other = spool_series(config, "other", seed="q2")
    assert router.quiet_seconds_for(liver.study_uid, liver.series_uid) == 7
    assert router.quiet_seconds_for(other.study_uid, other.series_uid) is None
    assert router.quiet_seconds_for("1.2.3", "1.2.3.4") is None  # nothing received yet


def test_reload_refuses_an_invalid_set_and_keeps_the_previous(tmp_path: Path, node, caplog) -> None:
    config, _, book, router, _ = node
    before = book.current
    (tmp_path / "rules" / "site.yaml").write_text(RULES.replace("regex:", "regx:", 1))
    with caplog.at_level(logging.ERROR, logger="dicomnode.route.watcher"):
        assert book.reload() is False
    assert book.current is before
    message = caplog.records[-1].getMessage()
    assert f"keeping version {before.version}" in message
    assert "site.yaml:7: rule 'liver': when.all[1].regx: unknown key 'regx'" in message
    assert book.reload() is False  # still invalid: still refused, still the previous set
    (tmp_path / "rules" / "site.yaml").write_text(RULES.replace("priority: 5", "priority: 6"))
    assert book.reload() is True and book.current.sha256 != before.sha256
    assert book.reload() is False  # unchanged content: nothing to do


def test_watcher_reloads_on_change(tmp_path: Path, node) -> None:
    _, _, book, _, _ = node
    watcher = RuleWatcher(book, interval=0.05)
    watcher.start()
    try:
        first = book.current
        (tmp_path / "rules" / "extra.yml").write_text("- {name: extra, then: {discard: true}}\n")
        deadline = time.monotonic() + 5
        while book.current is first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "extra" in {r.name for r in book.current.rules}
    finally:
        watcher.stop()
    assert watcher.poll() is False  # nothing changed since


def test_build_service_wires_router_resolver_reload_watcher_metrics_and_audit(tmp_path: Path) -> None:
    from dicomnode.observability.audit import AuditTrail
    from dicomnode.observability.completion import CompletionRecorder
    from dicomnode.route.hooks import ObservedRouting
    from dicomnode.runtime.wiring import build_service

    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "r.yaml").write_text("- {name: a, then: {quiet_seconds: 3}}\n")
    config = Config.model_validate(
        {"storage": {"path": str(tmp_path / "data")}, "rules": {"path": str(rules)}, "node": {"port": 1}}
    )
    service = build_service(config)
    try:
        recorder, routing = service.dispatcher.handlers  # completion (metrics, audit), then the router
        assert isinstance(recorder, CompletionRecorder) and isinstance(routing, ObservedRouting)
        routing(SeriesReady("1.2.3", "1.2.3.4", 0, 1, "quiet", tmp_path / "empty"))
        (decision,) = read_decisions(config.storage.database_path, study_uid="1.2.3")
        assert decision["action"] == "unrouted" and "no instances" in decision["explanation"]
        assert [e["stage"] for e in AuditTrail(service.database).events("1.2.3")] == ["routed"]
        assert service.assembler.quiet_resolver == routing.router.quiet_seconds_for
        assert any(isinstance(c, RuleWatcher) for c in service._components)
        (rules / "r.yaml").write_text("- {name: b, then: {quiet_seconds: 3}}\n")
        service.reload()  # what SIGHUP does
        assert [r.name for r in routing.router.book.current.rules] == ["b"]
    finally:
        service.database.close()
