"""No loops: the node's own outputs are recognised (provenance block, contributing equipment, series UIDs its
outbox queued) and never routed to a pipeline; the decision is recorded as ``ignored`` with the reason; only
series rules with ``own_outputs: forward`` forward them; the loader refuses every other use of the key."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from dicomnode.config import Config, OutboxConfig
from dicomnode.database import Database
from dicomnode.events import SeriesReady, StudyReady
from dicomnode.outputs.api import Provenance
from dicomnode.outputs.provenance import PRIVATE_CREATOR, PRIVATE_GROUP, apply_provenance
from dicomnode.outputs.uids import UID_PREFIX
from dicomnode.route.decisions import format_decision, read_decisions
from dicomnode.route.hooks import outbox_generated_by
from dicomnode.route.router import Router
from dicomnode.route.ruleset import RuleSetError, load_ruleset
from dicomnode.route.watcher import RuleBook
from dicomnode.send.outbox import Origin, Outbox
from tests.factories import ct_series, uid

RULES = """
- name: liver
  priority: 5
  when: {tag: Modality, equals: CT}
  then: {pipeline: liver-ct, send_to: [pacs]}
- name: archive
  when: {tag: Modality, equals: CT}
  then: {forward: true, send_to: [archive]}
- name: catch-all
  fallback: true
  then: {forward: true, send_to: [pacs]}
"""

FORWARD_OWN = """
- name: results-to-research
  own_outputs: forward
  when: {tag: "(0077,\\"DICOMNODE 1.0\\",02)", equals: liver-ct}
  then: {forward: true, send_to: [archive]}
"""

PROVENANCE = Provenance("liver-ct", "2.0", {}, "ab" * 32, "0.9.0", rule="liver", ruleset_hash="cd" * 32)


class Calls:
    def __init__(self) -> None:
        self.jobs: list[object] = []
        self.forwards: list[tuple[list[Path], list[str]]] = []

    def submit_job(self, spec, *, priority: int) -> None:
        self.jobs.append(spec)

    def forward(self, files, destinations, reason: str) -> None:
        self.forwards.append((list(files), list(destinations)))


def make_node(tmp_path: Path, rules_text: str = RULES):
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "site.yaml").write_text(rules_text)
    config = Config.model_validate({
        "storage": {"path": str(tmp_path / "data")},
        "rules": {"path": str(rules)},
        "destinations": {n: {"ae_title": n.upper(), "host": "127.0.0.1", "port": 104}
                         for n in ("pacs", "archive")},
    })
    db = Database(config.storage.database_path)
    book = RuleBook(rules, lambda: load_ruleset(rules, pipelines=["liver-ct"],
                                                destinations=["pacs", "archive"]))
    assert book.reload()
    calls = Calls()
    router = Router(config, db, book, submit_job=calls.submit_job, forward=calls.forward,
                    generated_by=outbox_generated_by(db, OutboxConfig()))
    return config, db, router, calls


@pytest.fixture
def node(tmp_path: Path):
    config, db, router, calls = make_node(tmp_path)
    yield config, db, router, calls
    db.close()


def spool(config: Config, *, number: int, mark=None, seed: str = "own") -> SeriesReady:  # noqa: ANN001
    """A CT series in the spool; ``mark(ds)`` turns it into (something like) a result of the node."""
    study_uid, series_uid = uid(seed, "study"), uid(seed, "series", number)
    folder = config.storage.spool_dir / study_uid / series_uid
    files = ct_series(folder, study_uid=study_uid, series_uid=series_uid, series_number=number, slices=3,
                      rows=8, cols=8)
    if mark is not None:
        for path in files:
            ds = pydicom.dcmread(path)
            mark(ds)
            ds.save_as(path)
    return SeriesReady(study_uid, series_uid, 3, 1, "quiet", folder)


def with_provenance(ds: pydicom.Dataset) -> None:
    apply_provenance(ds, PROVENANCE)


def equipment_only(ds: pydicom.Dataset) -> None:
    """As a PACS that strips private tags gives the node's result back: the standard attributes stay."""
    apply_provenance(ds, PROVENANCE)
    for elem in list(ds.group_dataset(PRIVATE_GROUP)):
        del ds[elem.tag]


def decisions(db: Database) -> list[dict]:
    return [dict(r) for r in db.conn.execute("SELECT * FROM route_decisions ORDER BY id")]


def test_original_series_is_routed_although_its_uids_share_the_node_uid_root(node) -> None:
    config, db, router, calls = node
    event = spool(config, number=1)
    assert event.series_uid.startswith(UID_PREFIX)  # pydicom's root: every pydicom tool uses it
    router.on_ready(event)
    assert [d["action"] for d in decisions(db)] == ["pipeline", "forward"]
    assert len(calls.jobs) == 1


@pytest.mark.parametrize("mark, evidence", [
    (with_provenance, "provenance block (pipeline liver-ct, pipeline_version 2.0, rule liver)"),
    (equipment_only,
     "ContributingEquipmentSequence names dicomnode as processing equipment (pipeline liver-ct)"),
])
def test_own_output_is_ignored_with_the_reason(node, mark, evidence: str) -> None:
    config, db, router, calls = node
    event = spool(config, number=2, mark=mark)
    recorded = router.on_ready(event)
    assert calls.jobs == [] and calls.forwards == []  # neither the pipeline nor the fallback forward
    (row,) = decisions(db)
    assert (row["action"], row["state"], row["rule"]) == ("ignored", "done", "")
    assert row["series_uid"] == event.series_uid
    assert evidence in row["explanation"]
    assert "rules whose conditions hold: liver, archive" in row["explanation"]
    assert [r.decision.action for r in recorded] == ["ignored"]
    line = format_decision(read_decisions(config.storage.database_path)[0])
    assert "ignored" in line and evidence in line and "Own outputs" not in line


def test_series_uid_queued_by_the_outbox_is_recognised_without_any_header_evidence(node, tmp_path) -> None:
    config, db, router, calls = node
    event = spool(config, number=3)
    first_file = sorted(event.series_dir.glob("*.dcm"))[:1]
    Outbox(db, OutboxConfig()).enqueue("pacs", first_file, Origin.RESULT, "job-42")
    router.on_ready(event)
    (row,) = decisions(db)
    assert row["action"] == "ignored" and "generated by this node (job job-42)" in row["explanation"]
    assert calls.jobs == []

    other = spool(config, number=4)  # forwarded originals are not the node's outputs
    Outbox(db, OutboxConfig()).enqueue("pacs", sorted(other.series_dir.glob("*.dcm")), Origin.FORWARD)
    router.on_ready(other)
    assert len(calls.jobs) == 1


def test_a_rule_that_asks_explicitly_forwards_own_outputs(tmp_path: Path) -> None:
    config, db, router, calls = make_node(tmp_path, RULES + FORWARD_OWN)
    try:
        router.on_ready(spool(config, number=5, mark=equipment_only))  # no private block: rule does not hold
        assert [d["action"] for d in decisions(db)] == ["ignored"] and calls.forwards == []
        event = spool(config, number=6, mark=with_provenance)
        router.on_ready(event)
        row = decisions(db)[-1]
        assert (row["rule"], row["action"], row["state"]) == ("results-to-research", "forward", "done")
        assert row["explanation"].startswith("own output forwarded as the rule asks (own_outputs: forward)")
        assert calls.jobs == []
        ((files, destinations),) = calls.forwards
        assert destinations == ["archive"] and sorted(files) == sorted(event.series_dir.glob("*.dcm"))
    finally:
        db.close()


STUDY_RULES = """
- name: study-pipeline
  level: study
  when: {tag: Modality, equals: CT}
  then: {pipeline: liver-ct, send_to: [pacs]}
"""


def test_study_rules_never_see_own_outputs(tmp_path: Path) -> None:
    config, db, router, calls = make_node(tmp_path, STUDY_RULES)
    try:
        original = spool(config, number=1)
        study_dir = original.series_dir.parent
        router.on_ready(StudyReady(original.study_uid, (original.series_uid,), 1, study_dir))
        assert len(calls.jobs) == 1 and len(calls.jobs[0].input_files) == 3
        own = spool(config, number=2, mark=with_provenance)  # the results come back: generation 2
        router.on_ready(StudyReady(original.study_uid, (original.series_uid, own.series_uid), 2, study_dir))
        assert len(calls.jobs) == 1
        row = decisions(db)[-1]
        assert (row["action"], row["generation"], row["instance_count"]) == ("ignored", 2, 3)
        assert "changed only by 1 series of this node's own outputs" in row["explanation"]
        new = spool(config, number=3)  # a new series: the study is routed again, without own outputs
        router.on_ready(StudyReady(original.study_uid, (original.series_uid, own.series_uid, new.series_uid),
                                   3, study_dir))
        assert len(calls.jobs) == 2 and len(calls.jobs[1].input_files) == 6
        assert not any(own.series_uid in f for f in calls.jobs[1].input_files)
    finally:
        db.close()


@pytest.mark.parametrize("rule, problem", [
    ("{name: a, own_outputs: forward, then: {pipeline: liver-ct, forward: true, send_to: [pacs]}}",
     "own_outputs: forward cannot run pipeline 'liver-ct' on the node's own outputs"),
    ("{name: a, own_outputs: forward, then: {discard: true}}",
     "own_outputs: forward needs then.forward: true"),
    ("{name: a, level: study, own_outputs: forward, then: {forward: true, send_to: [pacs]}}",
     "own_outputs: forward is only for series rules"),
    ("{name: a, own_outputs: yes, then: {forward: true, send_to: [pacs]}}", "'ignore' or 'forward'"),
])
def test_loader_refuses_own_outputs_except_on_forward_only_series_rules(tmp_path: Path, rule: str,
                                                                         problem: str) -> None:
    (tmp_path / "r.yaml").write_text(f"- {rule}\n")
    with pytest.raises(RuleSetError) as err:
        load_ruleset(tmp_path, pipelines=["liver-ct"], destinations=["pacs"])
    assert problem in str(err.value) and "r.yaml:1" in str(err.value)


def test_private_block_is_what_the_result_writers_write() -> None:
    ds = pydicom.Dataset()
    apply_provenance(ds, PROVENANCE)
    assert ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)[0x02].value == "liver-ct"


def test_console_shows_a_study_of_own_outputs_only_as_ignored() -> None:
    from collections import Counter

    from dicomnode.console.studies import StudyRow, _state

    row = StudyRow("1.2", "P", "ID", "20240101", "SEG", 1, 1, 0.0, "complete", Counter({"ignored": 2}))
    assert _state(row) == "ignored"
    row.decisions = Counter({"ignored": 1, "pipeline": 1})
    assert _state(row) == "routed"
