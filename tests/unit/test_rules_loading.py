"""Rule files: validation errors name file, line, rule and reason; a bad file applies nothing; the shipped
rules route the real scans in shared data."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.route.evaluate import EvalContext
from dicomnode.route.headers import HeaderCache, SeriesView, group_paths
from dicomnode.route.ruleset import RuleSetError, load_ruleset
from tests.support import REPO_ROOT, shared_data

GOOD = """\
- name: liver-ct
  priority: 10
  when:
    all:
      - {tag: Modality, equals: CT}
      - {tag: BodyPartExamined, in: [ABDOMEN, LIVER]}
  then: {pipeline: liver-ct, send_to: [pacs], quiet_seconds: 20}
"""


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def problems(folder: Path, **refs: list[str]) -> list[str]:
    with pytest.raises(RuleSetError) as info:
        load_ruleset(folder, **refs)
    return [str(issue) for issue in info.value.issues]


def test_a_valid_set_loads_with_a_content_hash(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", GOOD)
    ruleset = load_ruleset(tmp_path, pipelines=["liver-ct"], destinations=["pacs"])
    assert [r.name for r in ruleset.rules] == ["liver-ct"]
    assert ruleset.rules[0].line == 1 and ruleset.rules[0].rule.then.quiet_seconds == 20
    assert len(ruleset.sha256) == 64 and ruleset.version == ruleset.sha256[:12]
    assert load_ruleset(tmp_path).sha256 == ruleset.sha256  # deterministic
    (tmp_path / "a.yaml").write_text(GOOD.replace("priority: 10", "priority: 11"))
    assert load_ruleset(tmp_path).sha256 != ruleset.sha256
    write(tmp_path, "notes.txt", "not a rule file")  # only *.yaml / *.yml count
    write(tmp_path, "b.yml", "")  # an empty file holds no rules
    assert [r.name for r in load_ruleset(tmp_path).rules] == ["liver-ct"]


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, "bad.yaml", "- name: x\n  when: {tag: Modality, equals: CT\n  then: {discard: true}\n")
    (issue,) = problems(tmp_path)
    assert issue.startswith(f"{tmp_path / 'bad.yaml'}:3: invalid YAML")


def test_unknown_tag_and_key_and_wrong_type_name_line_rule_and_reason(tmp_path: Path) -> None:
    write(tmp_path, "site.yaml", """\
- name: ok
  then: {discard: true}
- name: typo-rule
  when:
    all:
      - {tag: Modality, equals: CT}
      - {tag: BodyPartExamnied, in: [ABDOMEN]}
      - {tag: SliceThickness, rnage: [1, 5]}
      - {tag: SliceThickness, range: [one, 5]}
  then:
    pipeline: liver-ct
    quiet_secs: 20
""")
    found = problems(tmp_path)
    where = str(tmp_path / "site.yaml")
    assert f"{where}:7: rule 'typo-rule': when.all[1].tag: unknown DICOM keyword 'BodyPartExamnied' " \
           "(did you mean 'BodyPartExamined'?)" in found
    assert f"{where}:8: rule 'typo-rule': when.all[2].rnage: unknown key 'rnage' (check the spelling; " \
           "see README 'Routing rules')" in found
    assert any(i.startswith(f"{where}:9: rule 'typo-rule': when.all[3].range") for i in found)
    assert f"{where}:12: rule 'typo-rule': then.quiet_secs: unknown key 'quiet_secs' (check the spelling; " \
           "see README 'Routing rules')" in found
    assert len(found) == 4


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("- {name: a}\n", "rule 'a': then: 'then' is required"),
        ("- then: {discard: true}\n", "rule '#1': name: 'name' is required"),
        ("- {name: 'bad name!', then: {discard: true}}\n", "rule name 'bad name!' may only"),
        ("- {name: a, then: {discard: true, pipeline: liver-ct}}\n", "discard cannot be combined"),
        ("- {name: a, then: {forward: true}}\n", "forward needs send_to"),
        ("- {name: a, then: {send_to: [pacs]}}\n", "send_to needs a pipeline"),
        ("- {name: a, then: {params: {x: 1}, discard: true}}\n", "params are given but no pipeline"),
        ("- {name: a, then: {}}\n", "an action needs at least one of"),
        ("- {name: a, level: patient, then: {discard: true}}\n", "level: should be 'series' or 'study'"),
        ("- {name: a, priority: high, then: {discard: true}}\n",
         "priority: should be a whole number (got 'high')"),
        ("- {name: a, then: {quiet_seconds: -1}}\n", "quiet_seconds: should be at least 0 (got -1)"),
        ("- {name: a, when: {tag: Modality, equals: NO}, then: {discard: true}}\n", None),  # YAML 1.2: 'NO'
        ("- {name: a, when: {time: {between: [18:00, 07:00]}}, then: {stop: true}}\n", None),  # not base 60
        ("- just a string\n", "rule '#1': a rule must be a mapping, not str"),
        ("name: a\nthen: {discard: true}\n", None),  # one rule as a mapping
        ("42\n", "a rule file must hold a list of rules"),
        ("- {name: a, then: {discard: true}}\n- {name: a, then: {discard: true}}\n",
         "rule 'a': the name is already used by the rule at"),
        ("- {name: a, then: {discard: true}, then: {stop: true}}\n", "found duplicate key 'then'"),
    ],
)
def test_rule_problems(tmp_path: Path, text: str, fragment: str | None) -> None:
    write(tmp_path, "r.yaml", text)
    if fragment is None:
        assert load_ruleset(tmp_path).rules
        return
    found = problems(tmp_path)
    assert any(fragment in issue for issue in found), found


def test_yaml_scalars_stay_dicom_values(tmp_path: Path) -> None:
    rule = "- {name: a, when: {tag: BurnedInAnnotation, equals: NO}, then: {stop: true}}\n"
    write(tmp_path, "r.yaml", rule)
    assert load_ruleset(tmp_path).rules[0].rule.when.equals == "NO"


def test_references_are_checked(tmp_path: Path) -> None:
    write(tmp_path, "r.yaml", GOOD.replace("liver-ct, send_to: [pacs]", "livr-ct, send_to: [pacs, archive]"))
    found = problems(tmp_path, pipelines=["liver-ct", "lung-ct"], destinations=["pacs"])
    assert found == [
        f"{tmp_path / 'r.yaml'}:7: rule 'liver-ct': then.pipeline: pipeline 'livr-ct' is not registered "
        "(registered: liver-ct, lung-ct)",
        f"{tmp_path / 'r.yaml'}:7: rule 'liver-ct': then.send_to: destination 'archive' is not configured "
        "(configured: pacs)",
    ]


def test_pipeline_parameters_are_checked(tmp_path: Path) -> None:
    rule = """\
- name: liver
  then:
    pipeline: liver-ct
    params: {lesions: true, lesions.min_diameter_mm: 8}
"""
    write(tmp_path, "r.yaml", rule)
    (issue,) = problems(tmp_path, pipelines=["liver-ct"], destinations=[])
    where = f"{tmp_path / 'r.yaml'}:4: rule 'liver'"
    assert issue.startswith(f"{where}: then.params: Unknown parameter 'lesions'")
    write(tmp_path, "r.yaml", rule.replace("lesions: true, ", "").replace("min_diameter_mm", "min_diam"))
    (issue,) = problems(tmp_path, pipelines=["liver-ct"], destinations=[])
    assert "lesions.min_diam" in issue
    write(tmp_path, "r.yaml", rule.replace("lesions: true, ", ""))
    assert load_ruleset(tmp_path, pipelines=["liver-ct"], destinations=[]).rules


def test_one_bad_file_invalidates_the_whole_set(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", GOOD)
    write(tmp_path, "b.yaml", "- {name: b, then: {discrad: true}}\n")
    with pytest.raises(RuleSetError, match=r"The rule set is invalid \(1 problem\)"):
        load_ruleset(tmp_path)


def test_missing_folder(tmp_path: Path) -> None:
    assert problems(tmp_path / "nope") == [f"{tmp_path / 'nope'}: the rules folder does not exist"]


def test_evaluation_order_priority_fallback_and_stop(tmp_path: Path) -> None:
    write(tmp_path, "b.yaml", """\
- {name: low, priority: 1, then: {stop: true}}
- {name: never, priority: 0, then: {discard: true}}
- {name: fallback, fallback: true, then: {discard: true}}
""")
    write(tmp_path, "a.yaml", """\
- {name: high, priority: 5, then: {pipeline: p}}
- {name: off, priority: 9, enabled: false, then: {discard: true}}
- {name: nomatch, priority: 3, when: {tag: Modality, equals: MR}, then: {discard: true}}
""")
    ruleset = load_ruleset(tmp_path)
    order = ["off", "high", "nomatch", "low", "never", "fallback"]
    assert [r.name for r in ruleset.ordered("series")] == order
    view = SeriesView("1.2", "1.2.3", (), ())
    evaluation = ruleset.evaluate("series", EvalContext(view))
    assert [r.name for r in evaluation.fired] == ["high", "low"]
    skipped = {r.loaded.name: r.skipped for r in evaluation.results}
    assert skipped["off"] == "disabled" and "stop" in skipped["never"] and skipped["fallback"]
    # nothing ordinary matches → the fallback fires
    write(tmp_path, "a.yaml", "- {name: x, when: {tag: Modality, equals: MR}, then: {discard: true}}\n")
    write(tmp_path, "b.yaml", "- {name: fallback, fallback: true, then: {discard: true}}\n")
    evaluation = load_ruleset(tmp_path).evaluate("series", EvalContext(view))
    assert [r.name for r in evaluation.fired] == ["fallback"] and evaluation.fallback_used


def routed_by_shipped_rules(*parts: str) -> list[list[str]]:
    pipelines = ["liver-ct", "lung-ct", "brain-mr"]
    ruleset = load_ruleset(REPO_ROOT / "rules", pipelines=pipelines, destinations=["pacs"])
    cache = HeaderCache()
    out = []
    for (_, _), files in group_paths([shared_data(*parts)], cache).items():
        view = SeriesView.from_files(files, cache)
        out.append([r.name for r in ruleset.evaluate("series", EvalContext(view)).fired])
    return out


def test_shipped_rules_route_the_real_abdominal_ct_to_liver() -> None:
    assert routed_by_shipped_rules("ct-abdomen-20", "dicom") == [["liver-ct"]]


def test_shipped_rules_route_the_real_chest_ct_to_lung() -> None:
    assert routed_by_shipped_rules("radiomics", "lung1-dicom") == [["lung-ct"]]


def test_shipped_rules_forward_a_short_unknown_series() -> None:
    routed = routed_by_shipped_rules("ct-3slice")
    assert ["fallback-forward"] in routed and all(r == ["fallback-forward"] for r in routed)


def test_shipped_rules_are_valid_against_the_shipped_config() -> None:
    from dicomnode.config import load_config
    from dicomnode.route.ruleset import load_for_config

    config = load_config(REPO_ROOT / "conf" / "dicomnode.yaml", environ={})
    ruleset = load_for_config(config.model_copy(update={"rules": config.rules.model_copy(
        update={"path": REPO_ROOT / "rules"})}))
    names = {r.name for r in ruleset.rules}
    assert names == {"liver-ct", "lung-ct", "brain-mr", "qa-phantom", "fallback-forward"}
