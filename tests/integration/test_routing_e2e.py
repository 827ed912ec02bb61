"""End to end: storescu sends a three-series study to ``dicomnode serve``; each series is routed by the
expected rule (recorded decisions), and a rules edit during operation takes effect (hot reload) while an
invalid edit is refused and the previous set stays in force."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom.uid import MRImageStorage

from dicomnode.route.ruleset import load_ruleset
from tests.factories import ct_dataset, uid
from tests.support import REPO_ROOT, free_port, wait_until

pytestmark = pytest.mark.integration

RULES_V1 = """
- name: liver
  priority: 10
  when:
    all:
      - {tag: Modality, equals: CT}
      - {tag: BodyPartExamined, in: [ABDOMEN, LIVER]}
      - {tag: SeriesDescription, regex: "(?i)portal|venous"}
      - {instances: {min: 4}}
  then: {pipeline: liver-ct, params: {lesions.min_diameter_mm: 8}, send_to: [pacs]}
- name: lung
  priority: 10
  when:
    all:
      - {tag: Modality, equals: CT}
      - {tag: BodyPartExamined, equals: CHEST}
  then: {pipeline: lung-ct}
- name: brain
  when:
    all:
      - {tag: Modality, equals: MR}
      - {calling_ae: {in: [MODALITY1]}}
  then: {pipeline: brain-mr, quiet_seconds: 0.5}
- name: everything-else
  fallback: true
  then: {forward: true, send_to: [pacs]}
"""
RULES_V2 = RULES_V1.replace("- name: lung\n", "- name: lung-v2\n").replace(
    "then: {pipeline: lung-ct}", "then: {discard: true, stop: true}"
)
BROKEN = "- name: broken\n  when: {tag: Modalty, equals: CT}\n  then: {discard: true}\n"


def write_series(
    folder: Path, study_uid: str, number: int, *, modality: str, desc: str, part: str, count: int = 4
) -> str:
    series_uid = uid(study_uid, "series", number)
    folder.mkdir(parents=True)
    for index in range(count):
        ds = ct_dataset(
            study_uid=study_uid, series_uid=series_uid, sop_uid=uid(series_uid, index), index=index,
            slices=count, rows=16, cols=16, series_number=number,
        )
        ds.Modality, ds.SeriesDescription, ds.BodyPartExamined = modality, desc, part
        if modality == "MR":
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.save_as(folder / f"{index:03d}.dcm", enforce_file_format=True)
    return series_uid



def decisions_for(node, series_uid: str) -> list[dict]:
    return node.query("SELECT * FROM route_decisions WHERE series_uid = ? ORDER BY id", (series_uid,))


def test_three_series_routed_and_hot_reload(dicomnode_node, tmp_path: Path) -> None:
    from tests.fixtures_node import storescu

    node = dicomnode_node(
        start=False,
        rules={"watch": True},
        completion={"series_quiet_seconds": 1, "study_quiet_seconds": 2, "check_interval_seconds": 0.2},
        destinations={"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": free_port()}},
    )
    rules_dir = node.root / "rules"
    (rules_dir / "site.yaml").write_text(RULES_V1)
    v1 = load_ruleset(rules_dir).sha256
    node.start()

    study_uid = uid("routing-e2e", "study")
    expected = {
        write_series(tmp_path / "s1", study_uid, 1, modality="CT", desc="Abdomen portal venous 3mm",
                     part="ABDOMEN"): ("liver", "pipeline", "liver-ct", ["pacs"]),
        write_series(tmp_path / "s2", study_uid, 2, modality="CT", desc="Thorax 1mm",
                     part="CHEST"): ("lung", "pipeline", "lung-ct", []),
        # an MR from a sender the brain rule does not name: nothing matches, the fallback forwards it
        write_series(tmp_path / "s3", study_uid, 3, modality="MR", desc="T1 sag",
                     part="HEAD"): ("everything-else", "forward", None, ["pacs"]),
    }
    for folder in ("s1", "s2", "s3"):
        result = storescu(node, tmp_path / folder)
        assert result.returncode == 0, result.stderr

    for series_uid, (rule, action, pipeline, destinations) in expected.items():
        # a decision is recorded 'pending' before its action runs: wait for the action's outcome
        rows = wait_until(lambda s=series_uid: [r for r in decisions_for(node, s) if r["state"] != "pending"],
                          f"decision for {series_uid}", timeout=30, log=node.log_text)
        assert [(r["rule"], r["action"], r["pipeline"], json.loads(r["destinations"])) for r in rows] == [
            (rule, action, pipeline, destinations)
        ]
        assert rows[0]["ruleset_hash"] == v1 and rows[0]["state"] == "done" and rows[0]["generation"] == 1
        assert rows[0]["instance_count"] == 4 and rows[0]["study_uid"] == study_uid
    liver = decisions_for(node, next(iter(expected)))[0]
    assert json.loads(liver["params"]) == {"lesions.min_diameter_mm": 8} and liver["job_id"]
    forwarded = node.query("SELECT destination, series_uid FROM outbox WHERE origin = 'forward'")
    assert {(r["destination"], r["series_uid"]) for r in forwarded} == {("pacs", list(expected)[2])}

    # The same sender as MODALITY1: the brain rule (calling AE context) applies.
    mr = write_series(tmp_path / "s4", study_uid, 4, modality="MR", desc="T1 3D", part="HEAD")
    assert storescu(node, tmp_path / "s4", calling="MODALITY1").returncode == 0
    rows = wait_until(lambda: decisions_for(node, mr), "decision for the MODALITY1 series",
                      timeout=30, log=node.log_text)
    assert [(r["rule"], r["pipeline"]) for r in rows] == [("brain", "brain-mr")]

    # Hot reload: the lung rule is replaced by a discard rule; the next chest series follows it.
    (rules_dir / "site.yaml").write_text(RULES_V2)
    v2 = load_ruleset(rules_dir).sha256
    wait_until(lambda: f"version {v2[:12]} in force" in node.log_text(), "reload of the edited rules",
               timeout=30, log=node.log_text)
    chest2 = write_series(tmp_path / "s5", study_uid, 5, modality="CT", desc="Thorax", part="CHEST")
    assert storescu(node, tmp_path / "s5").returncode == 0
    rows = wait_until(lambda: decisions_for(node, chest2), "decision after reload",
                      timeout=30, log=node.log_text)
    assert [(r["rule"], r["action"], r["ruleset_hash"]) for r in rows] == [("lung-v2", "discard", v2)]

    # An invalid file is refused with a logged error naming file, line and reason; v2 stays in force.
    (rules_dir / "broken.yaml").write_text(BROKEN)
    refused = f"refused; keeping version {v2[:12]}"
    wait_until(lambda: refused in node.log_text(), "refusal of the broken rules",
               timeout=30, log=node.log_text)
    refusal = next(r for r in node.log_records() if "refused; keeping version" in r.get("message", ""))
    assert refusal["level"] == "ERROR"
    text = json.dumps(refusal)
    assert "broken.yaml:2" in text and "Modalty" in text and "Modality" in text
    chest3 = write_series(tmp_path / "s6", study_uid, 6, modality="CT", desc="Thorax", part="CHEST")
    assert storescu(node, tmp_path / "s6").returncode == 0
    rows = wait_until(lambda: decisions_for(node, chest3), "decision with the broken file present",
                      timeout=30, log=node.log_text)
    assert [(r["rule"], r["ruleset_hash"]) for r in rows] == [("lung-v2", v2)]

    status = subprocess.run(
        [sys.executable, "-m", "dicomnode", "status", "--config", str(node.config_path), "--json"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=60,
    )
    assert status.returncode == 0, status.stderr
    shown = {(d["series_uid"], d["rule"]) for d in json.loads(status.stdout)["decisions"]}
    assert (chest3, "lung-v2") in shown and (mr, "brain") in shown

    # Dry run against what the node stored (the broken file removed again): explains per rule.
    (rules_dir / "broken.yaml").unlink()
    dry = subprocess.run(
        [sys.executable, "-m", "dicomnode", "rules", "test", "--study", study_uid, "--config",
         str(node.config_path)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=60,
    )
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("=> liver") == 1 and "calling AE in ['MODALITY1'] (is 'MODALITY1')" in dry.stdout
    assert node.stop() == 0


def test_sighup_reloads_the_rules(dicomnode_node) -> None:
    import os
    import signal

    node = dicomnode_node(start=False, rules={"watch": False})
    rules_dir = node.root / "rules"
    (rules_dir / "a.yaml").write_text("- {name: one, then: {discard: true}}\n")
    v1 = load_ruleset(rules_dir).version
    node.start()
    wait_until(lambda: f"version {v1} in force" in node.log_text(), "the initial rule set",
               timeout=30, log=node.log_text)

    (rules_dir / "a.yaml").write_text("- {name: two, then: {discard: true}}\n")
    v2 = load_ruleset(rules_dir).version
    time.sleep(1.5)  # no watcher: nothing happens until SIGHUP
    assert f"version {v2} in force" not in node.log_text()
    os.kill(node.proc.pid, signal.SIGHUP)
    wait_until(lambda: f"version {v2} in force" in node.log_text(), "reload on SIGHUP",
               timeout=30, log=node.log_text)

    (rules_dir / "a.yaml").write_text("- {name: three, then: {discrad: true}}\n")
    os.kill(node.proc.pid, signal.SIGHUP)
    wait_until(lambda: f"keeping version {v2}" in node.log_text(), "refusal on SIGHUP",
               timeout=30, log=node.log_text)
    assert "unknown key 'discrad'" in node.log_text()
    assert node.echo() and node.stop() == 0
