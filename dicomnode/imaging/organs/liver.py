"""The liver chain on CT (the paper's chain): localise, threshold, morphology, supervoxels, select, fill.

Each function is a pipeline step (``liver.*`` in ``liver-ct.yaml``) on the *working grid* (see
:mod:`dicomnode.imaging.organs.common`); the image is a smoothed float32 HU image and masks are uint8.

* ``localise`` — coarse localisation: the right upper abdomen inside the body. Right = patient's right
  (−x in LPS, whatever the image orientation). Upper = from the base of the right lung down
  ``extent_mm`` (whole volume when no lung is in the field of view). The body wall (``wall_mm``) and
  the posterior third (spine, kidneys, back muscles) are left out of the region used for statistics.
* ``threshold`` — the liver's intensity band estimated from the image: the soft-tissue mode of the
  histogram inside the localisation region (robust to native ≈ 55 HU vs portal-venous ≈ 90–110 HU, and to
  steatosis down to −40 HU: the search starts at ``search_low_hu`` = −60 HU, above the fat's mode) ±
  ``band_sigmas`` × its spread (at least ``min_half_width_hu``). The step returns the mask with the
  estimates ``band`` (``(low, high)`` HU) and ``mode``; they travel with the mask to the next steps and
  end up in the job summary.
* ``select_region`` — after opening, the connected component that overlaps the localisation region most.
* ``supervoxel_refine`` — SLIC supervoxels (scikit-image) over the dilated region; a supervoxel is kept
  when its mean lies in the band and most of it is in the region: the boundary follows image edges.
* ``finish`` — largest component, closing and hole filling (vessels and lesions belong to the liver).
"""

from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from skimage.segmentation import slic

from dicomnode.errors import ImagingError
from dicomnode.imaging.grid import array_of, image_like, mask_of
from dicomnode.imaging.morphology import closing, dilate, erode, fill_holes, largest_components, opening
from dicomnode.imaging.organs.common import histogram_mode, physical_axes, refine_boundary
from dicomnode.imaging.step import StepOutput, step

log = logging.getLogger(__name__)




def lung_air(array: np.ndarray, body: np.ndarray, spacing, air_hu: float = -500.0) -> np.ndarray:
    """Large air regions inside the body (lungs), bowel gas pockets removed by size (> 20 ml)."""
    air = (array < air_hu) & body
    labels, n = ndimage.label(air)
    if n == 0:
        return air
    sizes = np.bincount(labels.ravel()) * float(np.prod(spacing)) / 1000.0
    sizes[0] = 0
    return np.isin(labels, np.flatnonzero(sizes > 20.0))


@step("liver.localise")
def localise(
    image: sitk.Image, body: sitk.Image, *, extent_mm: float = 220.0, wall_mm: float = 12.0
) -> sitk.Image:
    """Coarse right-upper-abdomen region (uint8) inside the body."""
    array, spacing = array_of(image)
    body_arr = mask_of(body)
    if not body_arr.any():
        raise ImagingError("The body mask is empty; cannot localise the liver.")
    x, y, z = physical_axes(image)
    xb = np.broadcast_to(x, array.shape)[body_arr]
    yb = np.broadcast_to(y, array.shape)[body_arr]
    cx, _cy = float(np.median(xb)), float(np.median(yb))
    y_lo, y_hi = np.percentile(yb, [1, 99])
    right = x < cx + 0.05 * float(np.ptp(xb))  # patient's right (−x), a little past the midline
    not_back = y < y_lo + 0.70 * (y_hi - y_lo)
    region = body_arr & right & not_back & erode(body_arr, wall_mm, spacing)
    lungs = lung_air(array, body_arr, spacing)
    zz = np.broadcast_to(z, array.shape)
    if lungs.any():
        right_lung = lungs & np.broadcast_to(x < cx, array.shape)
        if right_lung.any():
            base = float(np.min(zz[right_lung]))
            region &= (zz >= base - extent_mm) & ~dilate(lungs, 3.0, spacing)
    if region.sum() < 100:
        raise ImagingError("The right upper abdomen region is empty; is this an abdominal CT?")
    return image_like(region, image, np.uint8)


@step("liver.threshold")
def threshold(
    image: sitk.Image,
    region: sitk.Image,
    *,
    band_sigmas: float = 2.5,
    min_half_width_hu: float = 25.0,
    low_extra_hu: float = 15.0,
    search_low_hu: float = -60.0,
    search_high_hu: float = 220.0,
) -> StepOutput:
    """Voxels in the liver's intensity band (estimated inside ``region``)."""
    array, _ = array_of(image)
    values = array[mask_of(region)]
    mode, sigma, valley_low, valley_high = liver_mode(values, search_low_hu, search_high_hu)
    half = max(band_sigmas * sigma, min_half_width_hu)
    # the band stops at a histogram valley that separates the liver from a neighbouring tissue
    low = max(mode - half - low_extra_hu, valley_low)
    high = min(mode + half, valley_high)
    log.debug("liver band %.1f..%.1f HU (mode %.1f, spread %.1f)", low, high, mode, sigma)
    band = image_like((array >= low) & (array <= high), image, np.uint8)
    return StepOutput(band, {"band": (low, high), "mode": mode})


def liver_mode(values: np.ndarray, low: float, high: float) -> tuple[float, float, float, float]:
    """The liver's mode among ``values`` (HU) between ``low`` and ``high``, as
    :func:`~dicomnode.imaging.organs.common.histogram_mode` returns it.

    ``low`` lies below the steatotic liver (−40 HU on any CT) and above the fat's mode (−100 ± 20 HU): a
    "mode" at that edge is the tail of the fat below it, not a peak, and the search starts again above it."""
    for _ in range(3):
        mode, sigma, valley_low, valley_high = histogram_mode(values, low, high)
        if mode > low + 6.0:
            break
        log.debug("the histogram's maximum at %.0f HU is the edge of the search (fat's tail)", mode)
        low = mode + 10.0
    return mode, sigma, valley_low, valley_high


def band_of(mask: StepOutput) -> tuple[float, float]:
    """The liver's intensity band a mask carries (estimated by ``liver.threshold``)."""
    if "band" not in mask.estimates:
        raise ImagingError("The candidate mask carries no intensity band (run liver.threshold first).")
    low, high = mask.estimates["band"]  # type: ignore[misc]
    return float(low), float(high)


@step("liver.select_region")
def select_region(candidate: StepOutput, region: sitk.Image, *, opening_mm: float = 5.0) -> StepOutput:
    """Open by ``opening_mm`` (cuts bridges to neighbours), keep the component overlapping ``region`` most;
    the candidate's estimates (the band) carry over."""
    cand = mask_of(candidate.image)
    spacing = tuple(candidate.image.GetSpacing()[::-1])
    opened = opening(cand, opening_mm, spacing)
    labels, n = ndimage.label(opened)
    if n == 0:
        raise ImagingError(f"No liver candidate survives an opening of {opening_mm} mm.")
    overlap = np.bincount(labels[mask_of(region)], minlength=n + 1)
    overlap[0] = 0
    if overlap.max() == 0:
        raise ImagingError("No liver candidate overlaps the right upper abdomen.")
    selected = image_like(labels == int(np.argmax(overlap)), candidate.image, np.uint8)
    return StepOutput(selected, candidate.estimates)


@step("liver.supervoxel_refine")
def supervoxel_refine(
    image: sitk.Image,
    selected: StepOutput,
    *,
    supervoxel_mm: float = 10.0,
    compactness: float = 0.2,
    margin_mm: float = 6.0,
    keep_fraction: float = 0.5,
) -> StepOutput:
    """SLIC supervoxels around the selection; keep those in the band and mostly inside the selection."""
    array, spacing = array_of(image)
    sel = mask_of(selected.image)
    low, high = band_of(selected)
    zone = dilate(sel, margin_mm, spacing)
    idx = np.argwhere(zone)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=False))
    sub, sub_zone, sub_sel = array[box], zone[box], sel[box]
    voxel_ml = float(np.prod(spacing))
    norm = np.clip((sub - low) / max(high - low, 1.0), -1.0, 2.0)
    norm[~sub_zone] = -1.0  # outside the zone: one flat value (slic's own mask seeding is very slow)
    n_segments = max(2, int(sub.size * voxel_ml / supervoxel_mm**3))
    labels = slic(
        norm,
        n_segments=n_segments,
        compactness=compactness,
        spacing=np.asarray(spacing),
        channel_axis=None,
        start_label=0,
        max_num_iter=5,
        enforce_connectivity=False,
    )
    n = int(labels.max()) + 1
    counts = np.bincount(labels.ravel(), minlength=n).astype(float)
    means = np.bincount(labels.ravel(), weights=sub.ravel(), minlength=n) / np.maximum(counts, 1)
    selected_counts = np.bincount(labels.ravel(), weights=sub_sel.ravel().astype(float), minlength=n)
    inside = selected_counts / np.maximum(counts, 1)
    keep = (means >= low) & (means <= high) & (inside >= keep_fraction)
    refined = np.zeros_like(sel)
    refined[box] = keep[labels] & sub_zone
    return StepOutput(image_like(refined, image, np.uint8), {"band": (low, high)})


@step("liver.finish")
def finish(
    mask: sitk.Image, image: sitk.Image | None = None, *, closing_mm: float = 8.0, refine_mm: float = 6.0
) -> sitk.Image:
    """Largest component, closing by ``closing_mm``, hole filling (3-D, then slice by slice) and,
    given the image, a local boundary refinement (partial-volume voxels to the nearer local mean)."""
    full = largest_components(mask_of(mask), 1, connectivity=6)
    spacing = tuple(mask.GetSpacing()[::-1])
    if not full.any():
        raise ImagingError("The liver mask is empty.")
    # work in the bounding box grown by the closing radius, the refinement scale and one voxel
    idx = np.argwhere(full)
    grow = np.ceil((closing_mm + 3 * refine_mm) / np.asarray(spacing)).astype(int) + 1
    lo = np.maximum(idx.min(axis=0) - grow, 0)
    hi = np.minimum(idx.max(axis=0) + grow + 1, full.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    arr = full[box]
    pad = [(int(np.ceil(closing_mm / s)) + 1,) * 2 for s in spacing]
    padded = np.pad(arr, pad)
    closed = closing(padded, closing_mm, spacing)[tuple(slice(p[0], -p[0]) for p in pad)]
    filled = fill_holes(closed | arr, slicewise=True)
    if image is not None and refine_mm > 0:
        filled = refine_boundary(array_of(image)[0][box], filled, spacing, scale_mm=refine_mm)
        filled = fill_holes(largest_components(filled, 1, connectivity=6), slicewise=True)
    out = np.zeros_like(full)
    out[box] = filled
    return image_like(out, mask, np.uint8)
