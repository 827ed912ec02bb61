"""Lungs on CT: air inside the body, airways removed, split into left and right.

Steps (``lung.*`` in ``lung-ct.yaml``), on the working grid (float32 HU, uint8 masks):

* ``air`` — voxels darker than an air/tissue threshold estimated by Otsu on the body's histogram
  (clamped to −1000…200 HU, so the result is typically −450…−350 HU), inside the body; components
  smaller than ``min_volume_ml`` (bowel gas) are dropped.
* ``airways`` — trachea and main bronchi: grown from the small midline air regions of the most cranial
  slices with a strict lumen threshold (−950 HU first; stricter when the growth leaks into the lung);
  dilated by ``margin_mm``. Empty when no trachea is in the field of view.
* ``split`` — lungs minus airways, split into right (label 1) and left (label 2) lungs by connected
  components, eroding step by step (up to ``max_erosion_mm``) when the lungs touch at the anterior
  junction, then growing the two seeds back over the whole lung mask (patient right = −x in LPS).
"""

from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.segmentation import watershed

from dicomnode.errors import ImagingError
from dicomnode.imaging.grid import array_of, image_like
from dicomnode.imaging.morphology import dilate, erode
from dicomnode.imaging.organs.common import physical_axes
from dicomnode.imaging.step import StepOutput, step

log = logging.getLogger(__name__)



@step("lung.air")
def air(image: sitk.Image, body: sitk.Image, *, min_volume_ml: float = 50.0) -> StepOutput:
    """Large air-filled regions inside the body (lungs + airways), with the estimate ``air_threshold``."""
    array, spacing = array_of(image)
    inside = sitk.GetArrayFromImage(body).astype(bool)
    values = np.clip(array[inside], -1000, 200)
    if values.size < 100:
        raise ImagingError("The body mask is (nearly) empty; no lungs can be found.")
    level = float(threshold_otsu(values[:: max(1, values.size // 1_000_000)]))
    level = min(max(level, -700.0), -250.0)
    candidate = (array < level) & inside
    labels, n = ndimage.label(candidate)
    sizes = np.bincount(labels.ravel()) * float(np.prod(spacing)) / 1000.0
    sizes[0] = 0
    keep = np.flatnonzero(sizes >= min_volume_ml)
    if keep.size == 0:
        raise ImagingError(
            f"No air region of at least {min_volume_ml} ml inside the body (threshold {level:.0f} HU)."
        )
    return StepOutput(image_like(np.isin(labels, keep), image, np.uint8), {"air_threshold": level})


@step("lung.airways")
def airways(
    image: sitk.Image,
    lungs: sitk.Image,
    *,
    max_area_cm2: float = 6.0,
    midline_mm: float = 30.0,
    bronchus_mm: float = 45.0,
    lumen_hu: float = -950.0,
    margin_mm: float = 2.0,
) -> sitk.Image:
    """Trachea and main bronchi (uint8); empty when no trachea is in the cranial slices.

    The trachea is tracked slice by slice from the most cranial slice down: a small (≤ ``max_area_cm2``)
    air region near the midline, overlapping the one above, until it joins the lungs (the carina).
    The main bronchi are then grown from there through lumen-dark air (< ``lumen_hu``) within
    ``bronchus_mm`` of the carina.
    """
    array, spacing = array_of(image)
    lung = sitk.GetArrayFromImage(lungs).astype(bool)
    empty = image_like(np.zeros_like(lung), image, np.uint8)
    slices = np.flatnonzero(lung.any(axis=(1, 2)))
    if slices.size == 0:
        return empty
    x, _, z = physical_axes(image)
    xx_all = np.broadcast_to(x, lung.shape)
    lung_x = xx_all[lung]
    cx = float(lung_x.min() + lung_x.max()) / 2.0  # midline between the lungs' lateral borders
    pixel_cm2 = spacing[1] * spacing[2] / 100.0
    z_axis = np.broadcast_to(z, lung.shape)[:, 0, 0]
    order = slices[::-1] if z_axis[-1] > z_axis[0] else slices  # cranial first
    trachea = np.zeros_like(lung)
    previous: np.ndarray | None = None
    carina: int | None = None
    for k in order:
        labels, n = ndimage.label(lung[k])
        found, best = None, midline_mm
        for i in range(1, n + 1):
            comp = labels == i
            area = comp.sum() * pixel_cm2
            offset = abs(float(np.mean(xx_all[k][comp])) - cx)
            touches = previous is None or bool((comp & previous).any())
            if touches and offset < best and area <= max_area_cm2:
                found, best = comp, offset
            elif touches and previous is not None and area > max_area_cm2:
                carina = int(k)
        if found is None:
            break
        trachea[k] = found
        previous = ndimage.binary_dilation(found, iterations=2)
        if carina is not None:
            break
    if not trachea.any():
        return empty
    grown = trachea
    if carina is not None:
        ks, js, is_ = np.nonzero(trachea)
        centre = np.array([ks.mean() * spacing[0], js.mean() * spacing[1], is_.mean() * spacing[2]])
        grid = np.ogrid[tuple(slice(0, n) for n in lung.shape)]
        near = sum((g * s - c) ** 2 for g, s, c in zip(grid, spacing, centre, strict=True)) <= bronchus_mm**2
        lumen = (((array < lumen_hu) & lung) & near) | trachea
        labels, _ = ndimage.label(lumen)
        ids = np.unique(labels[trachea])
        grown = np.isin(labels, ids[ids > 0])
    return image_like(dilate(grown, margin_mm, spacing) & lung, image, np.uint8)


@step("lung.split")
def split(
    lungs: sitk.Image,
    airway: sitk.Image | None = None,
    *,
    max_erosion_mm: float = 12.0,
    min_ratio: float = 0.15,
) -> sitk.Image:
    """Lungs without airways as a label map: 1 = right lung, 2 = left lung (uint8)."""
    spacing = tuple(lungs.GetSpacing()[::-1])
    lung = sitk.GetArrayFromImage(lungs).astype(bool)
    if airway is not None:
        lung &= ~sitk.GetArrayFromImage(airway).astype(bool)
    x, _, _ = physical_axes(lungs)
    xx = np.broadcast_to(x, lung.shape)
    markers = None
    radius = 0.0
    while radius <= max_erosion_mm:
        core = erode(lung, radius, spacing) if radius > 0 else lung
        labels, n = ndimage.label(core)
        if n >= 2:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            a, b = np.argsort(sizes)[::-1][:2]
            if sizes[b] >= min_ratio * sizes[a]:
                markers = np.zeros(lung.shape, dtype=np.int32)
                xa, xb = float(np.mean(xx[labels == a])), float(np.mean(xx[labels == b]))
                right, left = (a, b) if xa < xb else (b, a)
                markers[labels == right] = 1
                markers[labels == left] = 2
                break
        radius += max(spacing[1], 2.0)
    if markers is None:
        log.info("Lungs could not be separated by erosion; splitting at the body midline.")
        cx = float(np.median(xx[lung])) if lung.any() else 0.0
        out = np.where(lung, np.where(xx < cx, 1, 2), 0)
        return image_like(out, lungs, np.uint8)
    distance = ndimage.distance_transform_edt(lung, sampling=spacing)
    out = watershed(-distance, markers, mask=lung)
    return image_like(out, lungs, np.uint8)
