"""The step registry: steps declared with ``@step`` in an explicit list of modules, typed step outputs
handed from step to step in the pipeline context, their estimates in the job summary."""

from __future__ import annotations

import importlib
import sys
import types

import numpy as np
import pytest
import SimpleITK as sitk

import dicomnode.imaging
from dicomnode.errors import PipelineError
from dicomnode.imaging.step import StepOutput, step
from dicomnode.pipelines.registry import available_pipelines, check_steps, get_pipeline, parse_pipeline
from dicomnode.pipelines.runner import execute
from dicomnode.pipelines.steps import StepRegistry, step_registry
from tests.phantoms import make_ct_phantom


def _module(name: str, **functions: object) -> types.ModuleType:
    module = types.ModuleType(name)
    for key, fn in functions.items():
        fn.__module__ = name  # type: ignore[attr-defined]
        setattr(module, key, fn)
    return module


@step("demo.level")
def _level(image: sitk.Image, *, at: float = 10.0) -> StepOutput:
    return StepOutput(sitk.Cast(image > at, sitk.sitkUInt8), {"level": at, "band": (at - 5.0, at + 5.0)})


@step("demo.use_level")
def _use_level(image: sitk.Image, mask: StepOutput) -> sitk.Image:
    low, high = mask.estimate("band")  # type: ignore[misc]
    return sitk.Cast((image >= low) & (image <= high) & (mask.image > 0), sitk.sitkUInt8)


@step("demo.count")
def _count(mask: sitk.Image) -> sitk.Image:
    assert isinstance(mask, sitk.Image)  # a plain input receives the image, not the StepOutput
    return mask


def test_the_shipped_registry_has_every_step_the_pipelines_use_and_is_read_only() -> None:
    registry = step_registry()
    for name in available_pipelines():
        check_steps(get_pipeline(name))
    expected = {"liver.threshold", "lesions.detect", "grid.to_source", "preprocess.median", "enhance.clahe"}
    assert expected <= set(registry)
    with pytest.raises(TypeError):
        registry["demo.x"] = registry["preprocess.median"]  # type: ignore[index]


def test_a_step_module_that_fails_to_import_is_an_error_not_a_missing_step(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setitem(sys.modules, "dicomnode.imaging.fuse", None)
    monkeypatch.delattr(dicomnode.imaging, "fuse")
    monkeypatch.delitem(sys.modules, "dicomnode.pipelines.steps")
    with pytest.raises(ImportError):
        importlib.import_module("dicomnode.pipelines.steps")


def test_one_name_declared_by_two_functions_is_refused() -> None:
    @step("demo.level")
    def other(image: sitk.Image) -> sitk.Image:
        return image

    with pytest.raises(PipelineError, match="'demo.level' is declared twice"):
        StepRegistry.from_modules([_module("demo_a", level=_level), _module("demo_b", other=other)])


def test_step_outputs_reach_the_steps_that_ask_for_them_and_their_estimates_the_summary() -> None:
    registry = StepRegistry.from_modules([_module("demo", a=_level, b=_use_level, c=_count)])
    spec = parse_pipeline(
        """
name: demo
version: "1"
description: typed outputs
steps:
  - {id: mask, use: demo.level, in: [image], params: {at: 20.0}}
  - {id: counted, use: demo.count, in: {mask: mask}}
  - {id: banded, use: demo.use_level, in: [image, mask]}
segments: []
"""
    )
    array = np.arange(40, dtype=np.float32).reshape(1, 1, 40)
    run = execute(spec, sitk.GetImageFromArray(array), registry)
    assert np.flatnonzero(sitk.GetArrayFromImage(run.image("banded"))).tolist() == list(range(21, 26))
    assert run.estimates == {"mask.level": "20.0", "mask.band": "15.0,25.0"}


def test_the_liver_band_travels_as_a_typed_value_and_is_reported() -> None:
    ct = make_ct_phantom(shape=(30, 96, 96), spacing=(5.0, 3.2, 3.2), phase="portal", seed=7)
    spec = get_pipeline("liver-ct")
    ids = [s.id for s in spec.steps]
    run = execute(type(spec)(**{**spec.__dict__, "steps": spec.steps[: ids.index("supervoxels") + 1]}),
                  ct.to_sitk())
    selected = run.context["supervoxels"]
    assert isinstance(selected, StepOutput)
    low, high = selected.estimates["band"]  # type: ignore[misc]
    assert low < 100.0 < high  # the phantom's portal-venous liver is ~100 HU
    assert run.estimates["candidate.band"] == f"{low:.1f},{high:.1f}" == run.estimates["supervoxels.band"]
    assert float(run.estimates["candidate.mode"]) == pytest.approx(100.0, abs=20.0)
