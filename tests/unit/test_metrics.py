"""Overlap and distance metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dicomnode.errors import ImagingError
from dicomnode.imaging.metrics import compare, dice, hausdorff95, jaccard


def cube(shape, start, size) -> np.ndarray:  # noqa: ANN001
    out = np.zeros(shape, dtype=bool)
    out[tuple(slice(s, s + size) for s in start)] = True
    return out


def test_overlap_of_shifted_cubes() -> None:
    a = cube((20, 20, 20), (5, 5, 5), 10)
    b = cube((20, 20, 20), (5, 5, 7), 10)  # shifted by 2 voxels along x: overlap 10*10*8
    assert dice(a, b) == pytest.approx(2 * 800 / 2000)
    assert jaccard(a, b) == pytest.approx(800 / 1200)
    assert dice(a, a) == 1.0 and jaccard(a, a) == 1.0


def test_hausdorff_uses_the_spacing() -> None:
    a = cube((20, 20, 20), (5, 5, 5), 10)
    b = cube((20, 20, 20), (5, 5, 7), 10)
    assert hausdorff95(a, b, (1.0, 1.0, 1.0)) == pytest.approx(2.0)
    assert hausdorff95(a, b, (5.0, 1.0, 0.5)) == pytest.approx(1.0)  # the shift is along x (0.5 mm)
    shifted_z = cube((20, 20, 20), (7, 5, 5), 10)
    assert hausdorff95(a, shifted_z, (5.0, 1.0, 0.5)) == pytest.approx(10.0)


def test_volume_difference_and_empty_masks() -> None:
    a = cube((10, 10, 10), (0, 0, 0), 5)  # 125 voxels
    b = cube((10, 10, 10), (0, 0, 0), 4)  # 64 voxels
    result = compare(a, b, (2.0, 1.0, 1.0))
    assert result.volume_ml == pytest.approx(0.25) and result.reference_volume_ml == pytest.approx(0.128)
    assert result.volume_difference_percent == pytest.approx(100 * (250 - 128) / 128)
    empty = np.zeros_like(a)
    assert math.isinf(compare(a, empty, (1, 1, 1)).hd95_mm)
    assert compare(empty, empty, (1, 1, 1)).dice == 1.0
    with pytest.raises(ImagingError, match="shapes differ"):
        dice(a, a[:5])
