"""The solid abdominal organs' border drawn again on the source pixels (step ``borders.solid_on_source``).

The organs compete on a median-smoothed 2 mm working grid (:mod:`dicomnode.imaging.organs.abdomen`); back on
a finer source grid their contour follows that grid's steps (the liver's outline shows 2 mm stairs in a
viewer) and a ring of one working voxel is 5-10 % of a kidney's or a child's spleen's volume. Here the
liver's, the spleen's and both kidneys' border is decided again, voxel by voxel on the source pixels, within
``reach_mm`` (one working voxel) of the working grid's contour:

* the organ's level beside each voxel is a Gaussian-weighted (``level_mm``) local mean of the organ's own
  voxels ``reach_mm``..``reach_mm + shell_mm`` inside its contour, those far from the organ's median (a
  lesion, a vessel) left out; the outside's level the same over the free voxels (label 0) as far outside
  it, their values clipped to the fat's level below (air beyond a layer of fat is not what touches the
  organ) and as far above the organ's — both estimated from the image, so any phase, a fatty liver, a
  child's organs alike;
* a voxel of the band belongs to the organ when its value (Gaussian ``smooth_mm``: the pixels' noise) is
  nearer the organ's level than the outside's: the border lies midway, where partial volume puts it;
* only where the two levels differ by ``contrast_sigmas`` × the noise of those smoothed pixels (and at
  least ``min_contrast_hu``): a native liver against muscle, an organ against bowel of its level keep the
  working grid's contour, as there is no border in the image to draw;
* the competition's labels arbitrate between organs: a voxel joins only from the free label 0, and an
  organ's voxel leaves (to 0) only where free voxels lie beyond it (the outside's level is estimated from
  them) — not at a contact with another organ; what the band keeps must be connected to the organ's
  core, and holes the band would open inside the organ are closed (a lesion inside the liver stays the
  liver's: the lesion search runs on that mask later).

Each organ is worked on in its bounding box (float32 only there), so the cost follows the organs' size.
"""

from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from dicomnode.imaging.grid import bounding_box, spacing_of
from dicomnode.imaging.organs.common import fat_level
from dicomnode.imaging.step import StepOutput, step

log = logging.getLogger(__name__)

#: The solid organs whose border is drawn again: label value (as in ``abdomen.LABELS``) → name.
SOLID_ORGANS: dict[int, str] = {1: "liver", 2: "spleen", 3: "kidney-right", 4: "kidney-left"}
#: The least Gaussian weight of a shell's voxels for a local level to count (else: no border drawn there).
SUPPORT = 0.03


@step("borders.solid_on_source")
def solid_on_source(
    labels: sitk.Image, image: sitk.Image, *, reach_mm: float = 2.0, shell_mm: float = 3.0,
    level_mm: float = 2.5, smooth_mm: float = 0.7, contrast_sigmas: float = 4.0,
    min_contrast_hu: float = 20.0,
) -> StepOutput:
    """Step ``borders.solid_on_source``: the organs' label map (on ``image``'s grid) with the liver's, the
    spleen's and the kidneys' border drawn again on the source pixels (see the module docstring).
    Estimates: per organ the share of its contour voxels that had a border in the image to draw
    (``<organ>.edge``) and the voxels it gained and lost (``<organ>.moved``)."""
    out = sitk.GetArrayFromImage(labels).astype(np.uint8, copy=False)
    pixels = sitk.GetArrayViewFromImage(image)
    spacing = spacing_of(image)
    estimates: dict[str, float | str] = {}
    for value, name in SOLID_ORGANS.items():
        result = redraw_border(
            out, pixels, value, spacing, reach_mm=reach_mm, shell_mm=shell_mm, level_mm=level_mm,
            smooth_mm=smooth_mm, contrast_sigmas=contrast_sigmas, min_contrast_hu=min_contrast_hu,
        )
        if result is not None:
            edge, gained, lost = result
            estimates[f"{name}.edge"] = round(edge, 3)
            estimates[f"{name}.moved"] = f"+{gained} -{lost}"
    result_image = sitk.GetImageFromArray(out)
    result_image.CopyInformation(labels)
    return StepOutput(result_image, estimates)


def _distance(mask: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Signed distance in mm to the surface of ``mask`` (negative inside), float32."""
    img = sitk.GetImageFromArray(mask.astype(np.uint8))
    img.SetSpacing([float(s) for s in spacing[::-1]])
    dist = sitk.SignedMaurerDistanceMap(
        img, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
    )
    return sitk.GetArrayFromImage(dist)


def _local_mean(values: np.ndarray, weights: np.ndarray, sigma: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-weighted mean of ``values`` over ``weights`` (normalised convolution; the band's far side
    lies up to two reaches from the shell, where the nearest of its voxels dominate) and where it is
    supported at all."""
    weight = ndimage.gaussian_filter(weights.astype(np.float32), sigma, mode="nearest", truncate=3.0)
    mean = ndimage.gaussian_filter(np.where(weights, values, np.float32(0.0)), sigma, mode="nearest",
                                   truncate=3.0)
    np.divide(mean, np.maximum(weight, np.float32(1e-6)), out=mean)
    return mean, weight >= SUPPORT


def _sigma(mm: float, spacing: tuple[float, float, float]) -> list[float]:
    """A Gaussian's sigma in voxels per axis (none along an axis whose spacing exceeds 2.5 sigma)."""
    return [mm / s if s <= 2.5 * mm else 0.0 for s in spacing]


def redraw_border(
    labels: np.ndarray, pixels: np.ndarray, value: int, spacing: tuple[float, float, float], *,
    reach_mm: float = 2.0, shell_mm: float = 3.0, level_mm: float = 2.5, smooth_mm: float = 0.7,
    contrast_sigmas: float = 4.0, min_contrast_hu: float = 20.0,
) -> tuple[float, int, int] | None:
    """The border of label ``value`` drawn again, in place on ``labels`` (see the module docstring):
    (share of its band with a border to draw, voxels gained, voxels lost), or None when it is absent
    or too small to estimate its levels."""
    present = labels == value
    if not present.any():
        return None
    box = bounding_box(present, spacing, margin_mm=reach_mm + shell_mm + level_mm, extra=1)
    del present
    sub = labels[box]  # a view: written in place
    own = sub == value
    free = sub == 0
    dist = _distance(own, spacing)
    inner = own & (dist < -reach_mm) & (dist >= -(reach_mm + shell_mm))
    outer = free & (dist > reach_mm) & (dist <= reach_mm + shell_mm)
    if inner.sum() < 50 or outer.sum() < 50:
        return None
    values = pixels[box].astype(np.float32)
    organ = values[inner]
    median = float(np.median(organ))
    spread = 1.4826 * float(np.median(np.abs(organ - median)))
    typical = inner & (np.abs(values - median) <= max(3.0 * spread, 30.0))  # not a lesion, not a vessel
    sigma = _sigma(level_mm, spacing)
    level_in, in_ok = _local_mean(values, typical, sigma)
    del typical
    smoothed = ndimage.gaussian_filter(values, _sigma(smooth_mm, spacing), mode="nearest")
    # noise of the smoothed pixels the decision is made on: their spread about the organ's local level
    deep = inner & in_ok
    residual = smoothed[deep] - level_in[deep]
    if residual.size < 50:
        return None
    noise = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
    del values, residual, deep
    # air (a lung base) and bone beyond a thin layer of fat or muscle would pull the outside's level far
    # from what touches the organ: the outside's values are clipped to the fat's level below and as far
    # above the organ's level
    fat = fat_level(smoothed[outer])
    clipped = np.clip(smoothed, fat, 2.0 * median - fat)
    level_out, out_ok = _local_mean(clipped, outer, sigma)
    del clipped
    del outer, inner
    band = np.abs(dist) <= reach_mm
    contrast = np.abs(level_in - level_out)
    edge = band & in_ok & out_ok & (contrast >= max(contrast_sigmas * noise, min_contrast_hu))
    del contrast, in_ok, out_ok
    nearer = np.abs(smoothed - level_in) < np.abs(smoothed - level_out)
    del level_in, level_out, smoothed
    # an organ's voxel leaves only where free voxels lie beyond it (the outside's level needs them: at a
    # broad contact with another organ there is none, and the competition's label stands); it leaves to 0
    join = edge & free & nearer
    leave = edge & own & ~nearer
    share = float(edge[own & band].mean()) if (own & band).any() else 0.0
    del nearer, edge
    new = (own & ~leave) | join
    core = own & (dist < -reach_mm)
    if core.any():  # what the band keeps must hang on the organ's core
        parts, count = ndimage.label(new)
        keep = np.zeros(count + 1, dtype=bool)
        keep[parts[core]] = True
        keep[0] = False
        new = keep[parts]
        del parts
    del core
    # no hole opened inside the organ (a lesion near its surface stays its own): what the organ left that
    # is not connected to the free voxels beyond the band goes back to it
    left = ~new & (dist >= -reach_mm)
    parts, count = ndimage.label(left)
    open_ = np.zeros(count + 1, dtype=bool)
    open_[parts[left & (dist > reach_mm)]] = True
    new |= own & ~open_[parts]
    del parts, left
    gained = int((new & ~own).sum())
    lost = int((own & ~new).sum())
    sub[own & ~new] = 0
    sub[new & free] = value
    log.debug("Border of label %d on the source grid: %.0f %% of the band with an edge, noise %.1f HU, "
              "+%d -%d voxels.", value, 100 * share, noise, gained, lost)
    return share, gained, lost
