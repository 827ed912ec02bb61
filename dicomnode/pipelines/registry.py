"""Pipelines declared in YAML files inside the package (``dicomnode/pipelines/*.yaml``).

A pipeline file::

    name: liver-ct
    version: "1.0"
    description: ...
    modalities: [CT]
    accepts: {pixels: ct, regions: [abdomen, chest]}   # input guards (dicomnode.imaging.guards)
    window: {center: 60, width: 400}          # for the enhanced series
    sr_features: [volume_ml, original_firstorder_Mean]   # measurements in the SR (default: volume +
                                                         # first-order statistics; names with SR codes)
    enhanced: enhanced                        # context name of the enhanced image (optional)
    steps:                                    # run in order on a context of named images
      - {id: work, use: grid.working, in: [image], params: {spacing_mm: 2.0}}
      - {id: liver, use: grid.to_source, in: [liver_work, image]}
      - {id: x, use: enhance.clahe, in: {image: image, mask: liver}}   # keyword inputs
    segments:
      - {from: liver, label: Liver, structure: liver, color: [221, 130, 101]}
      - {from: lungs, value: 1, label: Right lung, structure: lung-right}
      - {from: lesions, each: true, label: "Lesion {n}", structure: neoplasm, category: lesion}

The context starts with ``image`` (the source volume, float32 real units). Each step's ``id`` names
its output. Parameters can be overridden per job as ``<step id>.<param>`` (``liver.closing_mm=6``);
unknown keys are refused with the list of valid ones.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

import yaml

from dicomnode.errors import PipelineError
from dicomnode.imaging.guards import Accepts

PIPELINE_PACKAGE = "dicomnode.pipelines"


@dataclass(frozen=True)
class StepSpec:
    id: str
    use: str
    inputs: tuple[str, ...] = ()
    keyword_inputs: tuple[tuple[str, str], ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SegmentSpec:
    source: str  # context name of a mask or label map on the source grid
    label: str  # "Liver", "Lesion {n}"
    structure: str
    color: tuple[int, int, int] = (255, 0, 0)
    category: str = "organ"
    value: int | None = None  # one label of a label map
    each: bool = False  # one segment per label value (lesions)
    required: bool = True  # an empty required segment fails the job


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    version: str
    description: str
    steps: tuple[StepSpec, ...] = ()
    segments: tuple[SegmentSpec, ...] = ()
    modalities: tuple[str, ...] = ()
    window: tuple[float, float] | None = None  # (center, width)
    enhanced: str | None = None
    sr_features: tuple[str, ...] | None = None  # None = the result writer's default
    accepts: Accepts = field(default_factory=Accepts)  # input guards, checked before any step runs

    def parameters(self) -> dict[str, Any]:
        """Every overridable parameter with its default, as ``<step id>.<param>``."""
        return {f"{s.id}.{k}": v for s in self.steps for k, v in s.params.items()}

    def with_params(self, overrides: Mapping[str, Any]) -> PipelineSpec:
        """A copy with ``<step id>.<param>`` overrides applied (PipelineError for unknown keys)."""
        if not overrides:
            return self
        by_id = {s.id: s for s in self.steps}
        params = {s.id: dict(s.params) for s in self.steps}
        for key, value in overrides.items():
            step_id, _, name = str(key).rpartition(".")
            if step_id not in by_id:
                valid = ", ".join(sorted(self.parameters())) or "none"
                raise PipelineError(
                    f"Unknown parameter '{key}' for pipeline '{self.name}'; expected <step>.<param>, one of: "
                    f"{valid}."
                )
            params[step_id][name] = value
        steps = tuple(
            StepSpec(s.id, s.use, s.inputs, s.keyword_inputs, params[s.id]) for s in self.steps
        )
        return replace(self, steps=steps)


def _pipeline_files() -> dict[str, str]:
    folder = resources.files(PIPELINE_PACKAGE)
    return {
        entry.name: entry.read_text(encoding="utf-8")
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml")
    }


def _fail(source: str, message: str) -> PipelineError:
    return PipelineError(f"Pipeline file '{source}': {message}")


def parse_pipeline(text: str, source: str = "<string>") -> PipelineSpec:
    """Parse and validate one pipeline YAML document."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _fail(source, f"invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise _fail(source, "expected a mapping at the top level.")
    for key in ("name", "version", "description"):
        if not isinstance(data.get(key), str | int | float) or not str(data.get(key)).strip():
            raise _fail(source, f"'{key}' is missing or empty.")
    steps = []
    seen = {"image"}
    for i, raw in enumerate(data.get("steps") or []):
        if not isinstance(raw, dict) or "id" not in raw or "use" not in raw:
            raise _fail(source, f"step {i + 1} needs 'id' and 'use': {raw!r}.")
        inputs = raw.get("in", ["image"])
        positional: tuple[str, ...] = ()
        keyword: tuple[tuple[str, str], ...] = ()
        if isinstance(inputs, str):
            positional = (inputs,)
        elif isinstance(inputs, list):
            positional = tuple(str(x) for x in inputs)
        elif isinstance(inputs, dict):
            keyword = tuple((str(k), str(v)) for k, v in inputs.items())
        else:
            raise _fail(source, f"step '{raw['id']}': 'in' must be a name, list or mapping, got {inputs!r}.")
        for name in positional + tuple(v for _, v in keyword):
            if name not in seen:
                raise _fail(source, f"step '{raw['id']}' uses '{name}' before any step produces it.")
        params = raw.get("params") or {}
        if not isinstance(params, dict):
            raise _fail(source, f"step '{raw['id']}': 'params' must be a mapping, got {params!r}.")
        steps.append(StepSpec(str(raw["id"]), str(raw["use"]), positional, keyword, params))
        seen.add(str(raw["id"]))
    segments = []
    for raw in data.get("segments") or []:
        if not isinstance(raw, dict) or raw.get("from") not in seen:
            raise _fail(source, f"segment {raw!r} must name a step output in 'from'.")
        segments.append(
            SegmentSpec(
                source=str(raw["from"]),
                label=str(raw.get("label", raw["from"])),
                structure=str(raw.get("structure", raw["from"])),
                color=tuple(int(c) for c in raw.get("color", (255, 0, 0))),  # type: ignore[arg-type]
                category=str(raw.get("category", "organ")),
                value=int(raw["value"]) if raw.get("value") is not None else None,
                each=bool(raw.get("each", False)),
                required=bool(raw.get("required", not raw.get("each", False))),
            )
        )
    window = data.get("window")
    enhanced = data.get("enhanced")
    if enhanced is not None and enhanced not in seen:
        raise _fail(source, f"'enhanced' names '{enhanced}', which no step produces.")
    sr_features = data.get("sr_features")
    if sr_features is not None:
        from dicomnode.errors import OutputError
        from dicomnode.outputs.codes import feature_code

        if not isinstance(sr_features, list) or not sr_features:
            raise _fail(source, f"'sr_features' must be a non-empty list of names, got {sr_features!r}.")
        try:
            for name in sr_features:
                feature_code(str(name))
        except OutputError as exc:
            raise _fail(source, str(exc)) from exc
    modalities = tuple(str(m) for m in data.get("modalities") or ())
    accepts = data.get("accepts")
    if accepts is not None and not isinstance(accepts, dict):
        raise _fail(source, f"'accepts' must be a mapping, got {accepts!r}.")
    try:
        accepted = Accepts.parse(accepts, modalities)
    except (TypeError, ValueError) as exc:
        raise _fail(source, f"{exc}.") from exc
    return PipelineSpec(
        name=str(data["name"]),
        version=str(data["version"]),
        description=str(data["description"]).strip(),
        steps=tuple(steps),
        segments=tuple(segments),
        modalities=accepted.modalities,
        window=(float(window["center"]), float(window["width"])) if window else None,
        enhanced=str(enhanced) if enhanced else None,
        sr_features=tuple(str(n) for n in sr_features) if sr_features else None,
        accepts=accepted,
    )


def load_pipelines() -> dict[str, PipelineSpec]:
    """Every pipeline shipped in the package, by name."""
    found: dict[str, PipelineSpec] = {}
    for filename, text in sorted(_pipeline_files().items()):
        spec = parse_pipeline(text, filename)
        if spec.name in found:
            raise _fail(filename, f"pipeline name '{spec.name}' is declared twice.")
        found[spec.name] = spec
    return found


def get_pipeline(name: str) -> PipelineSpec:
    pipelines = load_pipelines()
    if name not in pipelines:
        raise PipelineError(f"Unknown pipeline '{name}'; available: {', '.join(sorted(pipelines))}.")
    return copy.deepcopy(pipelines[name])


def check_steps(spec: PipelineSpec) -> None:
    """PipelineError when a step name is not in the step registry."""
    from dicomnode.pipelines.steps import step_registry

    registry = step_registry()
    missing = [s.use for s in spec.steps if s.use not in registry]
    if missing:
        raise PipelineError(
            f"Pipeline '{spec.name}' uses unknown step(s) {', '.join(repr(m) for m in missing)}; "
            f"known steps: {', '.join(sorted(registry))}."
        )
    for step in spec.steps:
        accepted = registry[step.use].params
        if accepted is None:  # the step takes any keyword parameter
            continue
        unknown = sorted(set(step.params) - accepted)
        if unknown:
            raise PipelineError(
                f"Unknown parameter(s) {', '.join(f'{step.id}.{u}' for u in unknown)} for step '{step.id}' "
                f"({step.use}) of pipeline '{spec.name}'; it accepts: "
                f"{', '.join(f'{step.id}.{a}' for a in sorted(accepted)) or 'none'}."
            )


def available_pipelines() -> list[str]:
    """Names of the pipelines rules may refer to."""
    return sorted(load_pipelines())
