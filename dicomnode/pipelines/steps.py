"""The step registry: step names used in the pipeline YAML files → step functions.

Steps are declared where they are written, with :func:`dicomnode.imaging.step.step`
(``@step("liver.localise")``). The registry is built from the explicit list :data:`STEP_MODULES`:
a module that is not listed contributes nothing, and a step module that cannot be imported is an
error (the import fails loudly), never a missing step. A new step module is added to that list.

The small glue steps below (``body.mask``, ``labels.*``, ``filter.median``, ``guided.contrast``) are
declared here.
"""

from __future__ import annotations

import inspect
import logging
import sys
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType, ModuleType
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from dicomnode.errors import ImagingError, PipelineError
from dicomnode.imaging import artifacts, enhance, fuse, grid, lesions, model, morphology, preprocess, segment
from dicomnode.imaging.grid import array_of, bounding_box, crop, image_like, paste, spacing_of
from dicomnode.imaging.organs import abdomen, borders, brain, liver, lung
from dicomnode.imaging.step import StepOutput, StepValue, image_of, output_of, step, step_names

log = logging.getLogger(__name__)


def _accepts_output(annotation: object) -> bool:
    """Whether a parameter annotated ``annotation`` takes a :class:`StepOutput` (alone or in a union)."""
    return annotation is StepOutput or StepOutput in typing.get_args(annotation)


def _where(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


@dataclass(frozen=True)
class Step:
    """One registered step: its name, function and how its inputs are handed over."""

    name: str
    fn: Callable[..., StepValue]
    inputs: tuple[str, ...]  # names of the positional inputs, in order
    whole_inputs: frozenset[str]  # inputs annotated StepOutput: they receive the value with its estimates
    params: frozenset[str] | None  # keyword-only parameters; None when the step takes **kwargs

    @classmethod
    def of(cls, name: str, fn: Callable[..., StepValue]) -> Step:
        try:
            hints = typing.get_type_hints(fn)
        except (NameError, TypeError) as exc:
            raise PipelineError(f"Step '{name}' ({fn.__module__}.{fn.__qualname__}) has annotations that "
                                f"cannot be resolved: {exc}.") from exc
        parameters = inspect.signature(fn).parameters.values()
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        whole = frozenset(
            p.name for p in parameters
            if p.kind in positional and _accepts_output(hints.get(p.name))
        )
        open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
        return cls(
            name=name,
            fn=fn,
            inputs=tuple(p.name for p in parameters if p.kind in positional),
            whole_inputs=whole,
            params=None if open_ended else frozenset(
                p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY
            ),
        )

    def __call__(self, *args: Any, **kwargs: Any) -> StepValue:  # noqa: ANN401 - images and parameters
        """Call the step function as it is (inputs are passed unchanged)."""
        return self.fn(*args, **kwargs)

    def run(
        self, positional: Sequence[StepValue], keyword: Mapping[str, StepValue], params: Mapping[str, Any]
    ) -> StepValue:
        """Call the step on context values: inputs annotated :class:`StepOutput` receive the whole value,
        every other input just its image."""

        def hand_over(name: str | None, value: StepValue) -> StepValue:
            return output_of(value) if name in self.whole_inputs else image_of(value)

        names = [*self.inputs, *[None] * len(positional)]
        args = [hand_over(names[i], value) for i, value in enumerate(positional)]
        kwargs = {key: hand_over(key, value) for key, value in keyword.items()}
        return self.fn(*args, **kwargs, **dict(params))


class StepRegistry(Mapping[str, Step]):
    """Every step by name, built from step modules (see the module docstring); read-only."""

    def __init__(self, steps: Iterable[Step]) -> None:
        table: dict[str, Step] = {}
        for entry in steps:
            known = table.get(entry.name)
            if known is not None and known.fn is not entry.fn:
                raise PipelineError(
                    f"Step name '{entry.name}' is declared twice: by {_where(known.fn)} "
                    f"and by {_where(entry.fn)}."
                )
            table[entry.name] = entry
        self._steps = MappingProxyType(table)

    @classmethod
    def from_modules(cls, modules: Iterable[ModuleType]) -> StepRegistry:
        """The steps declared (``@step``) by functions defined in ``modules``."""
        found = []
        for module in modules:
            for value in vars(module).values():
                if callable(value) and getattr(value, "__module__", None) == module.__name__:
                    found.extend(Step.of(name, value) for name in step_names(value))
        return cls(found)

    def __getitem__(self, name: str) -> Step:
        return self._steps[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._steps)

    def __len__(self) -> int:
        return len(self._steps)


@step("body.mask")
def body_mask(image: sitk.Image, *, air_hu: float = -400.0) -> sitk.Image:
    """The patient's body on CT for the organ chains: above ``air_hu``, opened by 3 mm in 3-D, the
    largest 6-connected component, internal air filled (:func:`~dicomnode.imaging.morphology.body_mask`)."""
    array, spacing = array_of(image)
    body = morphology.body_mask(
        array, spacing, threshold=air_hu, opening_mm=3.0, slicewise=False, connectivity=6
    )
    return image_like(body, image)


@step("labels.select")
def select_label(labels: sitk.Image, *, value: int = 1) -> sitk.Image:
    """One label of a label map as a uint8 mask."""
    return sitk.Cast(sitk.BinaryThreshold(labels, value, value, 1, 0), sitk.sitkUInt8)


@step("labels.select_any")
def select_any(labels: sitk.Image) -> sitk.Image:
    """Every non-zero label of a label map as one uint8 mask."""
    return sitk.Cast(labels > 0, sitk.sitkUInt8)


@step("filter.median")
def median(image: sitk.Image, *, radius_mm: float = 2.0) -> sitk.Image:
    """Median filter with a physical radius: at least one voxel along every axis whose spacing is at
    most 2.5 × the radius (thick slices are not filtered across)."""
    radius = [max(1, int(round(radius_mm / s))) if s <= 2.5 * radius_mm else 0 for s in image.GetSpacing()]
    return sitk.Median(sitk.Cast(image, sitk.sitkFloat32), radius)


@step("guided.contrast")
def guided_contrast(
    image: sitk.Image,
    mask: sitk.Image,
    *,
    gain: float = 1.6,
    denoise_mm: float = 1.0,
    feather_mm: float = 5.0,
) -> sitk.Image:
    """Organ-guided enhancement: inside the mask, denoise (Gaussian ``denoise_mm``, normalised over the
    mask so nothing outside leaks in) and stretch the
    contrast around the organ's median by ``gain``; blend in over a feathered band of ``feather_mm``
    outside the mask. Voxels beyond the band are returned bit-identical."""
    if gain <= 0 or feather_mm < 0:
        raise ImagingError(f"Invalid enhancement parameters: gain={gain!r}, feather_mm={feather_mm!r}.")
    result = sitk.Cast(image, sitk.sitkFloat32)  # a copy: voxels outside the band stay bit-identical
    full_mask = sitk.GetArrayViewFromImage(mask)
    if not full_mask.any():
        return result
    spacing = spacing_of(image)
    # work in the mask's bounding box grown by the feather band (+ one voxel): cost follows the organ
    box = bounding_box(full_mask, spacing, feather_mm, extra=1)
    sub_image = crop(result, box)
    array = sitk.GetArrayFromImage(sub_image)
    inside = full_mask[box].astype(bool)
    distance = ndimage.distance_transform_edt(~inside, sampling=spacing).astype(np.float32)
    weight = np.clip(1.0 - distance / max(feather_mm, 1e-6), 0.0, 1.0)
    weight[distance > feather_mm] = 0.0
    del distance
    smooth = array
    if denoise_mm > 0:  # normalised convolution over the organ only: nothing from outside leaks in
        sigma = [denoise_mm / sp for sp in spacing]
        inside_f = inside.astype(np.float32)
        num = ndimage.gaussian_filter(array * inside_f, sigma)
        den = ndimage.gaussian_filter(inside_f, sigma)
        smooth = np.where(inside, num / np.maximum(den, 1e-3), array).astype(np.float32)
        del num, den, inside_f
    centre = float(np.median(array[inside]))
    blended = array + weight * (centre + gain * (smooth - centre) - array)
    band = weight > 0
    array[band] = blended[band]
    return paste(result, image_like(array, sub_image), box)


#: The modules whose ``@step`` functions make up the registry (a new step module is added here).
STEP_MODULES: tuple[ModuleType, ...] = (
    preprocess, segment, enhance, artifacts, fuse, model, grid, liver, abdomen, borders, lung, brain, lesions,
)


def step_registry() -> StepRegistry:
    """All steps by name: those of :data:`STEP_MODULES` and the glue steps of this module."""
    return StepRegistry.from_modules((*STEP_MODULES, sys.modules[__name__]))
