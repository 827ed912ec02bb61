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

Site pipelines: every ``*.yaml`` file of the site's pipelines folder (config ``pipelines.path``; default
``pipelines/`` beside the rules folder) is a pipeline in the same format, next to the shipped ones (a
name may not be declared twice). Relative model paths (``model.segment``'s ``model``) are resolved
against the folder of the pipeline file. Errors name ``file:line``; unknown keys are refused.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from dicomnode.errors import DicomNodeError, PipelineError
from dicomnode.imaging.guards import Accepts
from dicomnode.route.yamlsource import LineDict, LineList, load_yaml

log = logging.getLogger(__name__)

PIPELINE_PACKAGE = "dicomnode.pipelines"
PIPELINE_KEYS = frozenset({
    "name", "version", "description", "modalities", "accepts", "window", "enhanced", "sr_features", "steps",
    "segments",
})
STEP_KEYS = frozenset({"id", "use", "in", "params"})
SEGMENT_KEYS = frozenset({"from", "label", "structure", "color", "category", "value", "each", "required"})
WINDOW_KEYS = frozenset({"center", "width"})
MODEL_STEPS = frozenset({"model.segment"})  # steps whose 'model' parameter is a path


@dataclass(frozen=True)
class StepSpec:
    id: str
    use: str
    inputs: tuple[str, ...] = ()
    keyword_inputs: tuple[tuple[str, str], ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    line: int = field(default=0, compare=False)  # where the step is declared in its file


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
    source: str = field(default="", compare=False)  # the file it was read from
    site: bool = field(default=False, compare=False)  # from the site's pipelines folder

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
            StepSpec(s.id, s.use, s.inputs, s.keyword_inputs, params[s.id], s.line) for s in self.steps
        )
        return replace(self, steps=steps)


def _pipeline_files() -> dict[str, str]:
    folder = resources.files(PIPELINE_PACKAGE)
    return {
        entry.name: entry.read_text(encoding="utf-8")
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml")
    }


@dataclass(frozen=True)
class PipelineIssue:
    file: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}" if self.line else f"{self.file}: {self.reason}"


class PipelineSetError(PipelineError):
    """Site pipelines are invalid; ``issues`` lists every problem found."""

    def __init__(self, issues: Sequence[PipelineIssue]) -> None:
        self.issues = list(issues)
        count = len(self.issues)
        head = f"The pipelines are invalid ({count} problem{'s' if count != 1 else ''}):"
        super().__init__("\n  ".join([head, *map(str, self.issues)]))


class _FileError(PipelineError):
    def __init__(self, source: str, line: int | None, message: str) -> None:
        self.issue = PipelineIssue(source, line, message)
        super().__init__(f"Pipeline file '{source}{f':{line}' if line else ''}': {message}")


def _fail(source: str, message: str, line: int | None = None) -> PipelineError:
    return _FileError(source, line, message)


def _line(node: Any, key: Any = None) -> int | None:  # noqa: ANN401 - a LineDict or LineList
    if isinstance(node, LineDict):
        return node.key_lines.get(key, node.line) if key is not None else node.line
    if isinstance(node, LineList):
        return node.item_lines[key] if isinstance(key, int) and key < len(node.item_lines) else node.line
    return None


def _unknown(source: str, raw: Any, allowed: frozenset[str], where: str) -> None:  # noqa: ANN401
    for key in raw:
        if key not in allowed:
            raise _fail(source, f"unknown key '{key}' in {where}; allowed: {', '.join(sorted(allowed))}.",
                        _line(raw, key))


def _resolve_model(params: dict[str, Any], base_dir: Path | None) -> dict[str, Any]:
    model = params.get("model")
    if base_dir is not None and isinstance(model, str) and not Path(model).is_absolute():
        return {**params, "model": str((base_dir / model).resolve())}
    return params


def parse_pipeline(text: str, source: str = "<string>", base_dir: Path | None = None) -> PipelineSpec:
    """Parse and validate one pipeline YAML document (``base_dir``: where relative model paths start)."""
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise _fail(source, f"invalid YAML: {exc}", mark.line + 1 if mark else None) from exc
    if not isinstance(data, dict):
        raise _fail(source, "expected a mapping at the top level.")
    _unknown(source, data, PIPELINE_KEYS, "the pipeline")
    for key in ("name", "version", "description"):
        if not isinstance(data.get(key), str | int | float) or not str(data.get(key)).strip():
            raise _fail(source, f"'{key}' is missing or empty.", _line(data, key))
    steps = []
    seen = {"image"}
    raw_steps = data.get("steps") or []
    if not isinstance(raw_steps, list):
        raise _fail(source, f"'steps' must be a list, got {raw_steps!r}.", _line(data, "steps"))
    for i, raw in enumerate(raw_steps):
        line = _line(raw_steps, i)
        if not isinstance(raw, dict) or "id" not in raw or "use" not in raw:
            raise _fail(source, f"step {i + 1} needs 'id' and 'use': {raw!r}.", line)
        _unknown(source, raw, STEP_KEYS, f"step '{raw['id']}'")
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
            raise _fail(source, f"step '{raw['id']}': 'in' must be a name, list or mapping, got {inputs!r}.",
                        _line(raw, "in"))
        for name in positional + tuple(v for _, v in keyword):
            if name not in seen:
                raise _fail(source, f"step '{raw['id']}' uses '{name}' before any step produces it.",
                            _line(raw, "in"))
        params = raw.get("params") or {}
        if not isinstance(params, dict):
            raise _fail(source, f"step '{raw['id']}': 'params' must be a mapping, got {params!r}.",
                        _line(raw, "params"))
        params = _plain(params)
        if str(raw["use"]) in MODEL_STEPS:
            params = _resolve_model(params, base_dir)
        steps.append(StepSpec(str(raw["id"]), str(raw["use"]), positional, keyword, params, line or 0))
        seen.add(str(raw["id"]))
    segments = []
    raw_segments = data.get("segments") or []
    for i, raw in enumerate(raw_segments if isinstance(raw_segments, list) else [raw_segments]):
        line = _line(raw_segments, i)
        if not isinstance(raw, dict) or raw.get("from") not in seen:
            raise _fail(source, f"segment {_plain(raw)!r} must name a step output in 'from'.", line)
        _unknown(source, raw, SEGMENT_KEYS, f"segment '{raw.get('label', raw['from'])}'")
        try:
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
        except (TypeError, ValueError) as exc:
            raise _fail(source, f"segment {_plain(raw)!r}: {exc}.", line) from exc
    window = data.get("window")
    if window is not None and (not isinstance(window, dict) or set(window) != WINDOW_KEYS):
        raise _fail(source, f"'window' must be {{center: C, width: W}}, got {_plain(window)!r}.",
                    _line(data, "window"))
    enhanced = data.get("enhanced")
    if enhanced is not None and enhanced not in seen:
        raise _fail(source, f"'enhanced' names '{enhanced}', which no step produces.",
                    _line(data, "enhanced"))
    sr_features = data.get("sr_features")
    if sr_features is not None:
        from dicomnode.errors import OutputError
        from dicomnode.outputs.codes import feature_code

        if not isinstance(sr_features, list) or not sr_features:
            raise _fail(source, f"'sr_features' must be a non-empty list of names, got {sr_features!r}.",
                        _line(data, "sr_features"))
        try:
            for name in sr_features:
                feature_code(str(name))
        except OutputError as exc:
            raise _fail(source, str(exc), _line(data, "sr_features")) from exc
    modalities = tuple(str(m) for m in data.get("modalities") or ())
    accepts = data.get("accepts")
    if accepts is not None and not isinstance(accepts, dict):
        raise _fail(source, f"'accepts' must be a mapping, got {accepts!r}.", _line(data, "accepts"))
    try:
        accepted = Accepts.parse(_plain(accepts) if accepts is not None else None, modalities)
    except (TypeError, ValueError) as exc:
        raise _fail(source, f"{exc}.", _line(data, "accepts")) from exc
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
        source=source,
    )


def _plain(value: Any) -> Any:  # noqa: ANN401
    """A YAML value as plain dicts and lists (parameters travel as JSON in job specs)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def site_pipeline_files(folder: Path | str | None) -> list[Path]:
    """The pipeline files of a site's pipelines folder (none when it does not exist)."""
    if folder is None or not Path(folder).is_dir():
        return []
    return sorted(p for p in Path(folder).iterdir()
                  if p.suffix in (".yaml", ".yml") and not p.name.startswith(".") and p.is_file())


def _collect(folder: Path | str | None) -> tuple[dict[str, PipelineSpec], list[PipelineIssue]]:
    found: dict[str, PipelineSpec] = {}
    issues: list[PipelineIssue] = []
    for filename, text in sorted(_pipeline_files().items()):
        spec = parse_pipeline(text, filename)  # shipped: a failure is a bug of the package
        if spec.name in found:
            raise _fail(filename, f"pipeline name '{spec.name}' is declared twice.")
        found[spec.name] = spec
    for path in site_pipeline_files(folder):
        try:
            spec = parse_pipeline(path.read_text(encoding="utf-8"), str(path), path.parent)
        except _FileError as exc:
            issues.append(exc.issue)
            continue
        except (OSError, UnicodeDecodeError) as exc:
            issues.append(PipelineIssue(str(path), None, f"cannot read the file: {exc}"))
            continue
        if spec.name in found:
            issues.append(PipelineIssue(str(path), 1, f"pipeline name '{spec.name}' is already declared by "
                                                      f"{found[spec.name].source}."))
            continue
        found[spec.name] = replace(spec, site=True)
    return found, issues


def load_pipelines(folder: Path | str | None = None, *, strict: bool = True) -> dict[str, PipelineSpec]:
    """Every pipeline shipped in the package and in the site's ``folder``, by name. An invalid site file
    raises :class:`PipelineSetError` (``strict``) or is left out with a logged warning."""
    found, issues = _collect(folder)
    if issues and strict:
        raise PipelineSetError(issues)
    for issue in issues:
        log.warning("Pipeline file left out: %s", issue)
    return found


def get_pipeline(name: str, folder: Path | str | None = None) -> PipelineSpec:
    """One pipeline by name; invalid site files other than the one asked for do not stop it."""
    pipelines, issues = _collect(folder)
    if name not in pipelines:
        broken = f" (invalid: {'; '.join(map(str, issues))})" if issues else ""
        raise PipelineError(f"Unknown pipeline '{name}'; available: {', '.join(sorted(pipelines))}{broken}.")
    return copy.deepcopy(pipelines[name])


def check_steps(spec: PipelineSpec, *, models: bool = False) -> None:
    """PipelineError when a step name is not in the step registry or is given parameters it does not
    take; with ``models``, also when a model step's model does not fit its parameters."""
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
        if step.use in MODEL_STEPS:
            _check_model_step(spec, step, models)


def _check_model_step(spec: PipelineSpec, step: StepSpec, run_model: bool) -> None:
    from dicomnode.imaging.model import check_model, model_params

    try:
        params = model_params(**dict(step.params))
        if run_model:
            check_model(params)
    except TypeError as exc:  # a required parameter (model, labels) is missing
        raise PipelineError(f"Step '{step.id}' ({step.use}) of pipeline '{spec.name}': {exc}.") from exc
    except DicomNodeError as exc:
        raise PipelineError(f"Step '{step.id}' ({step.use}) of pipeline '{spec.name}': {exc}") from exc


def check_pipelines(folder: Path | str | None) -> tuple[dict[str, PipelineSpec], list[PipelineIssue]]:
    """Every pipeline with every problem of the site's files (format, steps, parameters, models), each
    naming ``file:line``; what ``dicomnode pipelines check`` and the rule loader report."""
    found, issues = _collect(folder)
    for spec in found.values():
        if not spec.site:
            continue
        try:
            check_steps(spec, models=True)
        except PipelineError as exc:
            line = next((s.line for s in spec.steps if re.search(rf"[Ss]tep '{re.escape(s.id)}'", str(exc))),
                        None)
            issues.append(PipelineIssue(spec.source, line or 1, str(exc)))
    issues.sort(key=lambda i: (i.file, i.line or 0))
    broken = {i.file for i in issues}
    return {name: spec for name, spec in found.items() if spec.source not in broken}, issues


def available_pipelines(folder: Path | str | None = None) -> list[str]:
    """Names of the pipelines rules may refer to (shipped and the site's valid ones)."""
    return sorted(load_pipelines(folder, strict=False))
