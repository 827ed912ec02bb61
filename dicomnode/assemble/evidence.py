"""Content evidence that a series is complete before its quiet period has passed (conservative).

Two kinds, in decreasing strength:

``declared``
    Every instance declares the same ImagesInAcquisition (or NumberOfSlices, for NM/PET) value N, they
    all belong to one acquisition, and N distinct instances have arrived. The series completes at the
    next check.
``contiguous``
    At least ``MIN_CONTIGUOUS`` instances whose InstanceNumbers are exactly 1..N, and whose slice
    positions, in InstanceNumber order, step by one constant non-zero spacing. This does not prove that
    no slice N+1 is coming, so it only shortens the wait to ``completion.content_quiet_seconds``.

Anything else (gaps, repeated positions, uneven spacing, missing geometry) is no evidence: the quiet
period decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import median

DECLARED = "declared"
CONTIGUOUS = "contiguous"
MIN_CONTIGUOUS = 3
SPACING_TOLERANCE = 0.01  # relative deviation of any step from the median step
SPACING_ABS_TOLERANCE_MM = 0.01


@dataclass(frozen=True)
class InstanceFacts:
    instance_number: int | None
    acquisition_number: int | None
    images_in_acquisition: int | None
    number_of_slices: int | None
    slice_position: float | None


def _declared(facts: Sequence[InstanceFacts]) -> bool:
    for attribute in ("images_in_acquisition", "number_of_slices"):
        values = {getattr(f, attribute) for f in facts}
        if len(values) != 1:
            continue
        (declared,) = values
        if declared is None or declared < 1:
            continue
        acquisitions = {f.acquisition_number for f in facts}
        if len(acquisitions) == 1 and len(facts) == declared:
            return True
    return False


def _contiguous(facts: Sequence[InstanceFacts]) -> bool:
    if len(facts) < MIN_CONTIGUOUS:
        return False
    numbers = [f.instance_number for f in facts]
    if any(n is None for n in numbers) or sorted(numbers) != list(range(1, len(facts) + 1)):  # type: ignore[type-var]
        return False
    ordered = sorted(facts, key=lambda f: f.instance_number or 0)
    positions = [f.slice_position for f in ordered]
    if any(p is None for p in positions):
        return False
    steps = [b - a for a, b in zip(positions, positions[1:], strict=False)]  # type: ignore[operator]
    step = median(steps)
    if abs(step) < SPACING_ABS_TOLERANCE_MM:
        return False
    tolerance = max(SPACING_ABS_TOLERANCE_MM, abs(step) * SPACING_TOLERANCE)
    return all(abs(s - step) <= tolerance for s in steps)


def content_evidence(facts: Sequence[InstanceFacts]) -> str | None:
    """``DECLARED``, ``CONTIGUOUS`` or ``None`` for one series' instances."""
    if not facts:
        return None
    if _declared(facts):
        return DECLARED
    if _contiguous(facts):
        return CONTIGUOUS
    return None
