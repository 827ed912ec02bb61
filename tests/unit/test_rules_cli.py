"""``dicomnode rules check`` and ``dicomnode rules test`` as an administrator runs them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support import REPO_ROOT, shared_data


def dicomnode(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomnode", *args], capture_output=True, text=True, cwd=cwd, timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)},
    )


def config_file(tmp_path: Path, rules: Path, **extra: object) -> Path:
    path = tmp_path / "dicomnode.yaml"
    data = {
        "storage": {"path": str(tmp_path / "data")},
        "rules": {"path": str(rules)},
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 4242}},
        **extra,
    }
    path.write_text(yaml.safe_dump(data))
    return path


def test_check_lists_the_shipped_rules_in_evaluation_order() -> None:
    result = dicomnode("rules", "check", "--config", "conf/dicomnode.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Rules OK: 5 rules in 5 files of rules (version ")
    names = [line.split()[2] for line in result.stdout.splitlines()[1:]]
    assert names == ["qa-phantom", "brain-mr", "liver-ct", "lung-ct", "fallback-forward"]


def test_check_names_every_problem_and_exits_non_zero(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "site.yaml").write_text(
        "- name: liver\n"
        "  when: {tag: BodyPartExamnied, equals: LIVER}\n"
        "  then: {pipeline: liver-ct, send_to: [pacs, archive]}\n"
        "- name: lung\n"
        "  then: {pipeline: lung-ctt}\n"
    )
    result = dicomnode("rules", "check", "--config", str(config_file(tmp_path, rules)))
    assert result.returncode == 1
    site = rules / "site.yaml"
    lines = result.stderr.splitlines()
    assert lines[0] == (
        f"dicomnode: error: {site}:2: rule 'liver': when.tag: unknown DICOM keyword 'BodyPartExamnied' "
        "(did you mean 'BodyPartExamined'?)"
    )
    assert lines[1].startswith(
        f"dicomnode: error: {site}:5: rule 'lung': then.pipeline: pipeline 'lung-ctt' is not registered "
        "(registered: "
    )
    summary = f"dicomnode: error: the rules in '{rules}' are invalid (2 problems); nothing was applied."
    assert lines[2:] == [summary]
    assert result.stdout == ""


def test_check_reports_an_unknown_destination(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "r.yml").write_text("- {name: fwd, fallback: true, then: {forward: true, send_to: [archive]}}\n")
    result = dicomnode("rules", "check", "--config", str(config_file(tmp_path, rules)))
    assert result.returncode == 1
    assert f"{rules / 'r.yml'}:1: rule 'fwd': then.send_to: destination 'archive' is not configured " \
           "(configured: pacs)" in result.stderr


def test_dry_run_on_real_scans_explains_each_rule() -> None:
    result = dicomnode(
        "rules", "test", str(shared_data("ct-abdomen-20", "dicom")),
        str(shared_data("radiomics", "lung1-dicom")), "--config", "conf/dicomnode.yaml",
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "CT series 1.2.826.0.1.3680043.8.498.94654539561153138516847163825951779885 'CT Body 3.0' " \
           "(20 instances)" in out
    assert "  MATCH liver-ct [priority 10] → pipeline liver-ct → pacs" in out
    assert "✓ BodyPartExamined in [" in out and "(first instance: 'PARTIALBODY')" in out
    assert "✓ ContrastBolusAgent empty: false (first instance: 'APPLIED')" in out
    assert "✗ Modality equals 'MR' (first instance: 'CT')" in out
    assert "  => liver-ct (pipeline liver-ct → pacs)" in out
    assert "  => lung-ct (pipeline lung-ct → pacs)" in out
    assert "fallback not needed" in out


def test_dry_run_on_a_stored_study_walks_the_spool(tmp_path: Path) -> None:
    source = shared_data("radiomics", "lung1-dicom")
    import pydicom

    first = pydicom.dcmread(sorted(source.glob("*.dcm"))[0], stop_before_pixels=True)
    series_dir = tmp_path / "data" / "spool" / first.StudyInstanceUID / first.SeriesInstanceUID
    series_dir.mkdir(parents=True)
    for path in sorted(source.glob("*.dcm"))[:12]:
        shutil.copy(path, series_dir / f"{path.stem}.dcm")
    config = config_file(tmp_path, REPO_ROOT / "rules")
    result = dicomnode("rules", "test", "--study", first.StudyInstanceUID, "--config", str(config),
                       "--calling-ae", "CT_WARD", "--at", "2024-01-06 23:15")
    assert result.returncode == 0, result.stderr
    assert "(12 instances)" in result.stdout and "=> lung-ct" in result.stdout

    missing = dicomnode("rules", "test", "--study", "1.2.3.4", "--config", str(config))
    assert missing.returncode == 2
    expected = f"dicomnode: error: Study '1.2.3.4' is not stored in {tmp_path / 'data'}."
    assert missing.stderr.strip() == expected


def test_dry_run_usage_errors(tmp_path: Path) -> None:
    assert dicomnode("rules", "test", "--config", "conf/dicomnode.yaml").returncode != 0
    result = dicomnode("rules", "test", str(tmp_path / "nothing"), "--config", "conf/dicomnode.yaml")
    assert result.returncode == 2 and f"'{tmp_path / 'nothing'}' does not exist." in result.stderr
    (tmp_path / "x.txt").write_text("hello")
    result = dicomnode("rules", "test", str(tmp_path / "x.txt"), "--config", "conf/dicomnode.yaml")
    assert result.returncode == 2 and "is not a readable DICOM file" in result.stderr


def test_dry_run_says_the_nodes_own_output_is_ignored(tmp_path: Path) -> None:
    import pydicom

    from dicomnode.outputs.api import Provenance
    from dicomnode.outputs.provenance import apply_provenance

    ds = pydicom.dcmread(sorted(shared_data("ct-abdomen-20", "dicom").glob("*.dcm"))[0])
    apply_provenance(ds, Provenance("liver-ct", "2.0", {}, "0" * 64, "0.9.0"))
    ds.save_as(tmp_path / "derived.dcm")
    result = dicomnode("rules", "test", str(tmp_path / "derived.dcm"), "--config", "conf/dicomnode.yaml")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "  skip  liver-ct [priority 10] → pipeline liver-ct → pacs" in out
    assert "own output, not routed: CT series" in out and "provenance block (pipeline liver-ct" in out
    assert "  => ignored: the node's own output is never routed to a pipeline" in out


def test_check_marks_a_rule_that_forwards_the_nodes_own_outputs(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "site.yaml").write_text(
        "- name: results-out\n  own_outputs: forward\n  when: {tag: Modality, equals: SEG}\n"
        "  then: {forward: true, send_to: [pacs]}\n")
    result = dicomnode("rules", "check", "--config", str(config_file(tmp_path, rules)))
    assert result.returncode == 0, result.stderr
    assert "results-out              own-outputs forward originals → pacs" in result.stdout
