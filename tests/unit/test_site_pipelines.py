"""Site pipelines: YAML files (and their models) in the config's pipelines folder, beside the shipped ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dicomnode.config import load_config
from dicomnode.errors import PipelineError
from dicomnode.pipelines.registry import available_pipelines, check_pipelines, get_pipeline, load_pipelines
from dicomnode.route.ruleset import RuleSetError, load_for_config
from dicomnode.route.watcher import RuleBook, RuleWatcher
from tests import onnx_models
from tests.support import REPO_ROOT

pytest.importorskip("onnxruntime")

ABDOMEN = """\
name: abdomen
version: "1"
description: A site model
modalities: [CT]
steps:
  - id: organs
    use: model.segment
    params:
      model: models/abdomen.onnx
      axes: zyx
      orientation: LPS
      labels: {1: Liver, 2: Bone}
      patch: [16, 32, 32]
      postprocess: {largest_component: [Liver]}
segments:
  - {from: organs, value: 1, label: Liver, structure: liver}
  - {from: organs, value: 2, label: Bone, structure: bone, required: false}
"""

RULE = """\
- name: abdomen-model
  priority: 20
  when: {tag: Modality, equals: CT}
  then: {pipeline: abdomen, send_to: [pacs]}
"""


def site(tmp_path: Path, text: str = ABDOMEN, classes: int = 3) -> Path:
    """A node folder: config, rules/ with one rule, pipelines/ with abdomen.yaml and its model."""
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "abdomen.yaml").write_text(RULE)
    folder = tmp_path / "pipelines"
    coefficients = [(0, 0), (1, -40), (2, -440), (0, -1e6)][:classes]
    onnx_models.linear_classes(folder / "models" / "abdomen.onnx", coefficients)
    (folder / "abdomen.yaml").write_text(text)
    config = tmp_path / "dicomnode.yaml"
    config.write_text(yaml.safe_dump({
        "storage": {"path": str(tmp_path / "data")},
        "rules": {"path": str(tmp_path / "rules")},
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 4242}},
    }))
    return config


def dicomnode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomnode", *args], capture_output=True, text=True, cwd=REPO_ROOT,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)},
    )


def test_a_site_pipeline_beside_the_rules_is_loaded_with_its_model_path_resolved(tmp_path: Path) -> None:
    config = load_config(site(tmp_path))
    assert config.pipelines_folder == tmp_path / "pipelines"  # default: beside the rules folder
    assert "abdomen" in available_pipelines(config.pipelines_folder)
    assert "abdomen" not in available_pipelines()  # the package alone does not know it
    spec = get_pipeline("abdomen", config.pipelines_folder)
    assert spec.site and spec.source == str(tmp_path / "pipelines" / "abdomen.yaml")
    assert spec.steps[0].params["model"] == str(tmp_path / "pipelines" / "models" / "abdomen.onnx")
    assert spec.steps[0].line == 6
    found, issues = check_pipelines(config.pipelines_folder)
    assert issues == [] and {"abdomen", "liver-ct"} <= set(found)
    ruleset = load_for_config(config)
    assert [r.rule.then.pipeline for r in ruleset.rules] == ["abdomen"]


@pytest.mark.parametrize(
    ("edit", "line", "message"),
    [
        (("      patch", "      pach"), 6, "Unknown parameter(s) organs.pach for step 'organs'"),
        (("steps:", "stpes:"), 5, "stpes: unknown key 'stpes'"),
        (("  - {from: organs, value: 1,", "  - {from: organs, vale: 1,"), 16,
         "segments[0].vale: unknown key 'vale'"),
        (("labels: {1: Liver, 2: Bone}", "labels: {1: Liver, 2: Bone, 3: Spleen}"), 6,
         r"names channel(s) [3] but the model 'abdomen.onnx' returns 3 channels"),
        (("patch: [16, 32, 32]", "patch: [16, 32]"), 6, "'patch' must be three positive integers"),
        (("model: models/abdomen.onnx", "model: models/liver.onnx"), 6, "models/liver.onnx' does not exist"),
        (("name: abdomen", "name: liver-ct"), 1,
         "name: pipeline name 'liver-ct' is already used by liver-ct.yaml"),
    ],
)
def test_invalid_site_pipelines_are_refused_with_file_and_line(
    tmp_path: Path, edit: tuple[str, str], line: int, message: str
) -> None:
    assert edit[0] in ABDOMEN
    config = load_config(site(tmp_path, ABDOMEN.replace(*edit)))
    _, issues = check_pipelines(config.pipelines_folder)
    assert len(issues) == 1, issues
    assert issues[0].file == str(tmp_path / "pipelines" / "abdomen.yaml") and issues[0].line == line
    assert message in issues[0].reason
    with pytest.raises(RuleSetError, match="abdomen.yaml"):  # the rules referring to it are refused too
        load_for_config(config)
    if "unknown key" in message:  # a file that does not parse is refused by the strict loader too
        with pytest.raises(PipelineError, match="abdomen.yaml"):
            load_pipelines(config.pipelines_folder)


def test_pipelines_check_cli_reports_file_line_and_lists_the_site_pipelines(tmp_path: Path) -> None:
    config = site(tmp_path)
    ok = dicomnode("pipelines", "check", "--config", str(config))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"Pipelines OK: 5 pipelines, 1 from {tmp_path / 'pipelines'}.")
    listed = f"abdomen              1        {tmp_path / 'pipelines' / 'abdomen.yaml'}  (model.segment)"
    assert listed in ok.stdout
    rules = dicomnode("rules", "check", "--config", str(config))
    assert rules.returncode == 0, rules.stderr
    assert "abdomen-model" in rules.stdout and "abdomen" in rules.stdout
    bad_patch = ABDOMEN.replace("patch: [16, 32, 32]", "patch: [16, 0, 32]")
    (tmp_path / "pipelines" / "abdomen.yaml").write_text(bad_patch)
    bad = dicomnode("pipelines", "check", "--config", str(config))
    assert bad.returncode == 1
    assert f"dicomnode: error: {tmp_path / 'pipelines' / 'abdomen.yaml'}:6: Step 'organs'" in bad.stderr
    assert "'patch' must be three positive integers, got [16, 0, 32]" in bad.stderr
    rules = dicomnode("rules", "check", "--config", str(config))
    assert rules.returncode == 1 and "abdomen.yaml:6" in rules.stderr


def test_a_model_that_does_not_fit_is_refused_at_check_time(tmp_path: Path) -> None:
    config = load_config(site(tmp_path, classes=2))  # the model returns 2 channels, labels name channel 2
    _, issues = check_pipelines(config.pipelines_folder)
    assert [str(i) for i in issues] == [
        f"{tmp_path / 'pipelines' / 'abdomen.yaml'}:6: Step 'organs' (model.segment) of pipeline 'abdomen': "
        "'labels' names channel(s) [2] but the model 'abdomen.onnx' returns 2 channels (0..1)."
    ]


def test_pipelines_are_hot_reloaded_with_the_rules(tmp_path: Path) -> None:
    config = load_config(site(tmp_path))
    book = RuleBook.for_config(config)
    watcher = RuleWatcher(book)
    assert book.reload() and book.current is not None
    watcher._seen = watcher._fingerprint()
    good = book.current
    path = tmp_path / "pipelines" / "abdomen.yaml"
    path.write_text(ABDOMEN.replace("labels: {1: Liver, 2: Bone}", "labels: {1: Liver, 5: Bone}"))
    assert not watcher.poll()  # refused: the previous set stays in force
    assert book.current is good and "names channel(s) [5]" in book.last_error
    path.write_text(ABDOMEN)
    (tmp_path / "rules" / "abdomen.yaml").write_text(RULE.replace("abdomen-model", "abdomen-model-2"))
    assert watcher.poll() and book.current is not good and book.last_error == ""


def test_the_console_rules_page_lists_shipped_and_site_pipelines(tmp_path: Path) -> None:
    import html
    import re

    from fastapi.testclient import TestClient

    from dicomnode.console.app import create_app
    from tests.fixtures_console import fabricate

    fab = fabricate(tmp_path / "node")
    folder = fab.config.pipelines_folder
    onnx_models.linear_classes(folder / "models" / "abdomen.onnx", [(0, 0), (1, -40), (2, -440)])
    (folder / "abdomen.yaml").write_text(ABDOMEN)
    page = TestClient(create_app(fab.node)).get("/rules").text
    table = html.unescape(" ".join(re.sub(r"<[^>]+>", " ", page.split('id="pipelines"')[1]).split()))
    assert f"abdomen 1 {folder / 'abdomen.yaml'} model.segment" in table
    assert "liver-ct 2.4 shipped grid.working" in table
