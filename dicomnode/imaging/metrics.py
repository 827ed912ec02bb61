"""Overlap and distance metrics between two binary masks on one grid (spacing in mm).

``compare(a, b, spacing)`` returns a :class:`MaskComparison` with Dice, Jaccard, the 95th-percentile
symmetric Hausdorff distance (mm, over both surfaces' voxel distances, computed with Euclidean distance
transforms so anisotropic spacing is exact) and the volume difference (ml and % of the reference).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from dicomnode.errors import ImagingError


@dataclass(frozen=True)
class MaskComparison:
    dice: float
    jaccard: float
    hd95_mm: float  # inf when exactly one mask is empty, 0 when both are
    volume_ml: float  # of the evaluated mask
    reference_volume_ml: float
    volume_difference_ml: float  # evaluated − reference
    volume_difference_percent: float  # relative to the reference (inf for an empty reference)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _check(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if a.shape != b.shape:
        raise ImagingError(f"Mask shapes differ: {a.shape} vs {b.shape}; resample onto one grid first.")
    return a.astype(bool, copy=False), b.astype(bool, copy=False)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = _check(a, b)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    a, b = _check(a, b)
    union = int(np.logical_or(a, b).sum())
    return 1.0 if union == 0 else int(np.logical_and(a, b).sum()) / union


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hausdorff95(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> float:
    """95th percentile of the symmetric surface-to-surface distances in mm."""
    a, b = _check(a, b)
    if not a.any() and not b.any():
        return 0.0
    if not a.any() or not b.any():
        return math.inf
    # crop to the union's bounding box (plus one voxel) to keep the distance transforms small
    idx = np.argwhere(a | b)
    lo = np.maximum(idx.min(axis=0) - 1, 0)
    hi = idx.max(axis=0) + 2
    box = tuple(slice(int(x), int(y)) for x, y in zip(lo, hi, strict=True))
    a, b = a[box], b[box]
    sa, sb = _surface(a), _surface(b)
    to_b = ndimage.distance_transform_edt(~sb, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~sa, sampling=spacing)
    distances = np.concatenate([to_b[sa], to_a[sb]])
    return float(np.percentile(distances, 95))


def volume_ml(mask: np.ndarray, spacing: Sequence[float]) -> float:
    return float(np.count_nonzero(mask)) * float(np.prod(spacing)) / 1000.0


def compare(mask: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> MaskComparison:
    """All metrics of ``mask`` against ``reference`` (spacing in mm, in the arrays' axis order)."""
    mask, reference = _check(mask, reference)
    if len(spacing) != mask.ndim:
        raise ImagingError(f"Spacing {tuple(spacing)} does not match a {mask.ndim}-D mask.")
    vol, ref_vol = volume_ml(mask, spacing), volume_ml(reference, spacing)
    diff = vol - ref_vol
    relative = (100.0 * diff / ref_vol) if ref_vol > 0 else (0.0 if vol == 0 else math.inf)
    return MaskComparison(
        dice=dice(mask, reference),
        jaccard=jaccard(mask, reference),
        hd95_mm=hausdorff95(mask, reference, spacing),
        volume_ml=vol,
        reference_volume_ml=ref_vol,
        volume_difference_ml=diff,
        volume_difference_percent=relative,
    )
