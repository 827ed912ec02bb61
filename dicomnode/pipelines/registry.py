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

Files are read and validated by :mod:`dicomnode.pipelines.spec` (strict pydantic models through the
node's YAML loader: unknown keys refused, every problem as ``file:line: key: reason``);
:func:`load_pipeline_file` reads any pipeline file, e.g. one of a site's own folder.
"""

from __future__ import annotations

import copy
from importlib import resources

from dicomnode.errors import PipelineError
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
    "check_steps", "get_pipeline", "load_pipeline_file", "load_pipelines", "parse_pipeline",
]

PIPELINE_PACKAGE = "dicomnode.pipelines"


def _pipeline_files() -> dict[str, str]:
    folder = resources.files(PIPELINE_PACKAGE)
    return {
        entry.name: entry.read_text(encoding="utf-8")
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml")
    }


def load_pipelines() -> dict[str, PipelineSpec]:
    """Every pipeline shipped in the package, by name."""
    found: dict[str, PipelineSpec] = {}
    for filename, text in sorted(_pipeline_files().items()):
        spec = parse_pipeline(text, filename)
        if spec.name in found:
            problem = f"name: pipeline name '{spec.name}' is already used by {found[spec.name].source}"
            raise PipelineFileError([PipelineIssue(filename, 1, problem)])
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
