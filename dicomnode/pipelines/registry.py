"""Pipelines declared in YAML files inside the package (``dicomnode/pipelines/*.yaml``).

A pipeline file::

    name: liver-ct
    version: "1.0"
    description: ...
    modalities: [CT]
    accepts: {pixels: ct, regions: [abdomen, chest]}   # input guards (dicomnode.imaging.guards)
    window: {center: 60, width: 400}          # for the enhanced series (or, several, ``windows``:)
    windows:                                  # VOI windows of the enhanced series, the default first;
      - {organ: liver, width: 150, explanation: LIVER}   # centre = the organ's median (width omitted:
      - {center: 40, width: 400, explanation: ABDOMEN}   # 1.2x the organ's 1-99 % range)
    enhanced_values: quantitative             # or display: non-linear values, RescaleType US
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

Files are read and validated by :mod:`dicomnode.pipelines.spec` (strict pydantic models through the
node's YAML loader: unknown keys refused, every problem as ``file:line: key: reason``);
:func:`load_pipeline_file` reads any pipeline file, e.g. one of a site's own folder.

Site pipelines: every ``*.yaml`` file of the site's pipelines folder (config ``pipelines.path``; default
``pipelines/`` beside the rules folder) is a pipeline in the same format, next to the shipped ones (a
name may not be declared twice). Relative model paths (``model.segment``'s ``model``) are resolved
against the folder of the pipeline file.
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import replace
from importlib import resources
from pathlib import Path

from dicomnode.errors import DicomNodeError, PipelineError
from dicomnode.pipelines.spec import (
    PipelineFileError,
    PipelineIssue,
    PipelineSpec,
    SegmentSpec,
    StepSpec,
    load_pipeline_file,
    parse_pipeline,
)

__all__ = [
    "PipelineFileError", "PipelineIssue", "PipelineSpec", "SegmentSpec", "StepSpec", "available_pipelines",
    "check_pipelines", "check_steps", "get_pipeline", "load_pipeline_file", "load_pipelines",
    "parse_pipeline", "site_pipeline_files",
]

log = logging.getLogger(__name__)

PIPELINE_PACKAGE = "dicomnode.pipelines"
MODEL_STEPS = frozenset({"model.segment"})  # steps whose 'model' parameter is a path


def _pipeline_files() -> dict[str, str]:
    folder = resources.files(PIPELINE_PACKAGE)
    return {
        entry.name: entry.read_text(encoding="utf-8")
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml")
    }


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
            problem = f"name: pipeline name '{spec.name}' is already used by {found[spec.name].source}"
            raise PipelineFileError([PipelineIssue(filename, 1, problem)])
        found[spec.name] = spec
    for path in site_pipeline_files(folder):
        try:
            spec = _with_model_paths(load_pipeline_file(path), path.parent)
        except PipelineFileError as exc:
            issues.extend(exc.issues)
            continue
        if spec.name in found:
            issues.append(PipelineIssue(str(path), 1, f"name: pipeline name '{spec.name}' is already used by "
                                                      f"{found[spec.name].source}"))
            continue
        found[spec.name] = replace(spec, site=True)
    return found, issues


def _with_model_paths(spec: PipelineSpec, base: Path) -> PipelineSpec:
    """Relative model paths of model steps resolved against ``base`` (the pipeline file's folder)."""
    steps = []
    for step in spec.steps:
        model = step.params.get("model")
        if step.use in MODEL_STEPS and isinstance(model, str) and not Path(model).is_absolute():
            step = replace(step, params={**step.params, "model": str((base / model).resolve())})
        steps.append(step)
    return replace(spec, steps=tuple(steps))


def load_pipelines(folder: Path | str | None = None, *, strict: bool = True) -> dict[str, PipelineSpec]:
    """Every pipeline shipped in the package and in the site's ``folder``, by name. An invalid site file
    raises :class:`PipelineFileError` (``strict``) or is left out with a logged warning."""
    found, issues = _collect(folder)
    if issues and strict:
        raise PipelineFileError(issues)
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
