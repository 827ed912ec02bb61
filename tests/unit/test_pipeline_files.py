"""Pipeline files are read like rule files: strict models, every problem as file:line: key: reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.pipelines.registry import (
    PipelineFileError,
    get_pipeline,
    load_pipeline_file,
    load_pipelines,
    parse_pipeline,
)

HEAD = "name: x\nversion: 1\ndescription: d\n"


def problems(text: str) -> list[str]:
    with pytest.raises(PipelineFileError) as info:
        parse_pipeline(text, "p.yaml")
    return [str(issue) for issue in info.value.issues]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (HEAD + "window: {width: 400}\n", "p.yaml:4: window.center: 'center' is required"),
        (HEAD + "window: {center: 60, width: 0}\n",
         "p.yaml:4: window.width: should be greater than 0 (got 0)"),
        (HEAD + "windwo: {center: 60, width: 400}\n",
         "p.yaml:4: windwo: unknown key 'windwo' (check the spelling; see README 'Pipelines')"),
        (HEAD + "steps:\n  - {id: a, use: grid.working}\n  - {id: b, use: grid.working, parms: {x: 1}}\n",
         "p.yaml:6: steps[1].parms: unknown key 'parms' (check the spelling; see README 'Pipelines')"),
        (HEAD + "steps:\n  - {id: a, use: grid.working, in: 5}\n",
         "p.yaml:5: steps[0].in: should be text, a list or a mapping (got 5)"),
        (HEAD + "steps:\n  - {id: a, use: grid.working}\n  - {id: b, use: lesions.detect, in: [a, mask]}\n",
         "p.yaml:6: steps[1].in: step 'b' uses 'mask' before any step produces it"),
        (HEAD + "steps:\n  - {id: a, use: grid.working}\nsegments:\n  - {from: b, color: [1, 2, 300]}\n",
         "p.yaml:7: segments[0].color[2]: should be at most 255 (got 300)"),
        (HEAD + "steps:\n  - {id: a, use: grid.working}\nsegments:\n  - {from: b}\n",
         "p.yaml:7: segments[0].from: no step produces 'b'"),
        (HEAD + "enhanced: e\n", "p.yaml:4: enhanced: 'e' is not produced by any step"),
        (HEAD + "accepts: {pixels: weird}\n",
         "p.yaml:4: accepts: 'accepts.pixels' must be one of ct, mr, any, got 'weird'"),
        (HEAD + "description: e\n", "p.yaml:4: invalid YAML: found duplicate key 'description'"),
        ("- a\n", "p.yaml:1: a pipeline file must hold a mapping, not a list"),
    ],
)
def test_problems_name_file_line_key_and_reason(text: str, expected: str) -> None:
    assert expected in problems(text)


def test_every_problem_of_a_file_is_reported_at_once() -> None:
    found = problems("name: x\nversion: 1\nwindow: {center: a, width: 1}\nfoo: 1\n")
    assert found == [
        "p.yaml:1: description: 'description' is required",
        "p.yaml:3: window.center: should be a number (got 'a')",
        "p.yaml:4: foo: unknown key 'foo' (check the spelling; see README 'Pipelines')",
    ]


def test_a_file_on_disk_loads_with_its_path_in_the_spec_and_in_its_problems(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(
        HEAD + "modalities: [CT]\nsteps:\n  - {id: work, use: grid.working, params: {spacing_mm: 2}}\n"
    )
    spec = load_pipeline_file(path)
    assert (spec.name, spec.version, spec.modalities, spec.source) == ("x", "1", ("CT",), str(path))
    assert spec.steps[0].line == 6 and spec.steps[0].inputs == ("image",)
    path.write_text(HEAD + "modalites: [CT]\n")
    with pytest.raises(PipelineFileError, match=rf"{path}:4: modalites: unknown key"):
        load_pipeline_file(path)
    with pytest.raises(PipelineFileError, match="cannot be read"):
        load_pipeline_file(tmp_path / "missing.yaml")


def test_the_shipped_pipelines_read_as_before() -> None:
    assert sorted(load_pipelines()) == ["brain-mr", "forward", "liver-ct", "lung-ct"]
    liver = get_pipeline("liver-ct")
    assert liver.version == "2.4" and liver.modalities == ("CT",) and liver.enhanced == "enhanced"
    segments = [(s.source, s.each, s.required) for s in liver.segments]
    organs = [("organs", False, False)] * 6  # spleen, kidneys, stomach, aorta, IVC (abdomen.organs): if found
    assert segments == [("liver", False, True), *organs, ("lesions", True, False)]
    lesions = next(s for s in liver.steps if s.id == "lesions")
    assert lesions.inputs == ("metal_reduced", "liver") and lesions.params["exclude_below"] == -30.0
    metal = next(s for s in liver.steps if s.id == "metal_reduced")  # lesions are looked for after MAR
    assert metal.use == "artifacts.reduce_metal_artifacts"
    assert metal.keyword_inputs == (("image", "image"), ("mask", "liver"))
    enhanced = next(s for s in liver.steps if s.id == "enhanced")
    assert enhanced.keyword_inputs == (("image", "image"), ("mask", "liver"))
