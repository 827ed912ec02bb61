"""Sliding-window inference with Gaussian-weighted blending (numpy; MONAI ``sliding_window_inference``
semantics).

A tensor ``(C, *spatial)`` too large for one forward pass is cut into windows of ``patch`` voxels. Along
each axis the windows start every ``int(patch * (1 - overlap))`` voxels (at least 1; one window when the
patch covers the axis) and the last one is shifted back so it ends at the border, as MONAI's
``dense_patch_slices`` does. Each window's output is weighted by a Gaussian importance map (sigma = 1/8
of the patch along each axis, peak 1, floored at its smallest positive value so no voxel gets weight 0)
and the weighted outputs are averaged: voxels near a window's centre, where a network sees the most
context, dominate those near its edges. Where the volume is smaller than the patch it is padded
symmetrically with ``pad_value`` (MONAI and nnU-Net pad with 0 after normalisation) and the padding is
cropped off the result.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence

import numpy as np

from dicomnode.errors import ImagingError

log = logging.getLogger(__name__)

SIGMA_SCALE = 0.125  # MONAI's and nnU-Net's default: sigma = patch / 8

Forward = Callable[[np.ndarray], np.ndarray]  # (1, C, *patch) float32 -> (1, K, *patch)


def gaussian_importance(patch: Sequence[int]) -> np.ndarray:
    """The blending weights of one window: a separable Gaussian centred on the window, peak 1."""
    weights = np.ones((), dtype=np.float64)
    for n in patch:
        t = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        sigma = max(n * SIGMA_SCALE, 1e-6)
        weights = np.multiply.outer(weights, np.exp(-0.5 * (t / sigma) ** 2))
    weights /= weights.max()
    weights = np.maximum(weights, weights[weights > 0].min())
    return weights.astype(np.float32)


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start index of every window along one axis (``size >= patch``)."""
    if patch >= size:
        return [0]
    interval = max(int(patch * (1.0 - overlap)), 1)
    count = -(-(size - patch) // interval) + 1  # ceil
    return sorted({min(i * interval, size - patch) for i in range(count)})


def sliding_window(
    tensor: np.ndarray,
    forward: Forward,
    patch: Sequence[int],
    overlap: float = 0.25,
    *,
    pad_value: float = 0.0,
) -> np.ndarray:
    """Run ``forward`` over ``tensor`` ``(C, *spatial)`` window by window; return ``(K, *spatial)`` float32.

    ``forward`` takes one batch of one window ``(1, C, *patch)`` and returns ``(1, K, *patch)``."""
    spatial = tensor.shape[1:]
    if len(patch) != len(spatial):
        raise ImagingError(
            f"The patch {list(patch)!r} has {len(patch)} axes but the image has {len(spatial)}."
        )
    if not 0.0 <= overlap < 1.0:
        raise ImagingError(f"Parameter 'overlap' must be in [0, 1), got {overlap!r}.")
    patch = tuple(int(p) for p in patch)
    # pad symmetrically where the volume is smaller than a window
    before = [max(p - s, 0) // 2 for p, s in zip(patch, spatial, strict=True)]
    after = [max(p - s, 0) - b for p, s, b in zip(patch, spatial, before, strict=True)]
    if any(before) or any(after):
        tensor = np.pad(tensor, [(0, 0), *zip(before, after, strict=True)], constant_values=pad_value)
    padded = tensor.shape[1:]
    importance = gaussian_importance(patch)
    starts = [window_starts(s, p, overlap) for s, p in zip(padded, patch, strict=True)]
    output: np.ndarray | None = None
    weight_sum = np.zeros(padded, dtype=np.float32)
    windows = list(itertools.product(*starts))
    log.debug("sliding window: %d windows of %s over %s", len(windows), patch, padded)
    for corner in windows:
        box = tuple(slice(c, c + p) for c, p in zip(corner, patch, strict=True))
        window = np.ascontiguousarray(tensor[(slice(None), *box)][None], dtype=np.float32)
        result = np.asarray(forward(window))
        if result.ndim != len(patch) + 2 or result.shape[0] != 1 or tuple(result.shape[2:]) != patch:
            raise ImagingError(
                f"The model returned an output of shape {list(result.shape)} for a window of shape "
                f"{list(window.shape)}; expected (1, K, {', '.join(map(str, patch))})."
            )
        if output is None:
            output = np.zeros((result.shape[1], *padded), dtype=np.float32)
        output[(slice(None), *box)] += result[0] * importance
        weight_sum[box] += importance
    assert output is not None  # at least one window
    output /= weight_sum
    crop = tuple(slice(b, b + s) for b, s in zip(before, spatial, strict=True))
    return np.ascontiguousarray(output[(slice(None), *crop)])
