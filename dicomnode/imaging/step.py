"""The contract of a pipeline step: the ``@step`` declaration and the typed value a step may return.

A step is a function that takes SimpleITK images (positional or keyword inputs, named in the pipeline
YAML's ``in``) and keyword-only parameters, and returns either an image or a :class:`StepOutput` — the
image plus what the step estimated from it (a threshold, an intensity band, counts of rejected
candidates). Estimates travel in the pipeline context as typed values, never as strings in image
metadata: a later step that needs them annotates its input as :class:`StepOutput` and receives the
whole value; every other step receives just the image. The runner reports every estimate in the job
summary (``result.json``'s ``estimates``, ``"<step id>.<name>"`` → text, see :func:`format_estimate`).

Declaring a step::

    @step("liver.threshold")
    def threshold(image: sitk.Image, region: sitk.Image, *, band_sigmas: float = 2.5) -> StepOutput:
        ...
        return StepOutput(mask, {"band": (low, high), "mode": mode})

``@step`` only marks the function (``__dicomnode_steps__``); nothing is registered anywhere when a
module is imported. :mod:`dicomnode.pipelines.steps` builds the registry from an explicit list of step
modules.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar, Union

from dicomnode.errors import ImagingError

if TYPE_CHECKING:  # SimpleITK is imported by the step modules; the runner does not need it to start
    import SimpleITK as sitk

STEP_ATTRIBUTE = "__dicomnode_steps__"

#: A value a step estimated: a number, a tuple of numbers (a band), or counts by reason.
Estimate = Union[float, int, str, tuple[float, ...], Mapping[str, int]]  # noqa: UP007 - runtime alias

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class StepOutput:
    """An image and what the step estimated while making it (see the module docstring)."""

    image: sitk.Image
    estimates: Mapping[str, Estimate] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "estimates", MappingProxyType(dict(self.estimates)))

    def estimate(self, name: str, needed_by: str = "this step") -> Estimate:
        """The estimate ``name``; ImagingError naming the missing value otherwise."""
        if name not in self.estimates:
            have = ", ".join(sorted(self.estimates)) or "none"
            raise ImagingError(f"The input of {needed_by} carries no estimate '{name}' (it carries: {have}).")
        return self.estimates[name]


#: What a step returns and what the pipeline context holds for each step id.
StepValue = Union["sitk.Image", StepOutput]  # noqa: UP007 - runtime alias (resolved where sitk is imported)


def image_of(value: StepValue) -> sitk.Image:
    """The image of a step's value (the value itself when it is an image)."""
    return value.image if isinstance(value, StepOutput) else value


def output_of(value: StepValue) -> StepOutput:
    """A step's value as a :class:`StepOutput` (an image carries no estimates)."""
    return value if isinstance(value, StepOutput) else StepOutput(value)


def format_estimate(value: Estimate) -> str:
    """The text of an estimate in the job summary: numbers with one decimal, bands as ``low,high``,
    counts as ``reason:n,...`` (sorted by reason)."""
    if isinstance(value, Mapping):
        return ",".join(f"{k}:{v}" for k, v in sorted(value.items()))
    if isinstance(value, tuple):
        return ",".join(format_estimate(v) for v in value)
    if isinstance(value, bool | str):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{float(value):.1f}"


def step(name: str) -> Callable[[F], F]:
    """Declare the decorated function as the pipeline step ``name`` (``<group>.<name>``, e.g.
    ``liver.threshold``); may be stacked to give one function several names."""
    group, _, short = name.partition(".")
    if not group or not short or any(not part.replace("_", "").isalnum() for part in name.split(".")):
        raise ValueError(f"Step name '{name}' is not '<group>.<name>' (letters, digits, underscores).")

    def mark(fn: F) -> F:
        names = (*getattr(fn, STEP_ATTRIBUTE, ()), name)
        setattr(fn, STEP_ATTRIBUTE, names)
        return fn

    return mark


def step_names(fn: Callable[..., Any]) -> tuple[str, ...]:
    """The step names ``fn`` was declared under (empty when it is no step)."""
    names = getattr(fn, STEP_ATTRIBUTE, ())
    return tuple(names) if isinstance(names, tuple) else ()
