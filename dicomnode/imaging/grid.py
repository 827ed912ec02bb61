"""Voxel grids: arrays ⇄ images, bounding boxes and crop/paste, feathered blending, the working grid.

Arrays are numpy ``(z, y, x)``; spacings given with them are ``(z, y, x)`` in mm (SimpleITK's own order is
``(x, y, z)``: :func:`spacing_of` turns one into the other). An image made from an array takes the whole
geometry (origin, spacing, direction) of a reference image, so a result always lies on its input's grid.

* :func:`image_like` / :func:`array_of` — array ⇄ image on a reference grid.
* :func:`bounding_box` — the ``(z, y, x)`` slices around a mask grown by a margin in mm; :func:`crop`
  and :func:`paste` cut an image to a box and put a (processed) box back, so costs follow the organ.
* :func:`feather_weights` / :func:`blend` — weights 1 inside a mask falling to 0 at ``feather_mm``
  outside it (smoothstep), and the blend ``original + w·(processed − original)``: beyond the band the
  original voxels are returned bit-identical.
* :func:`to_working_grid` / :func:`mask_to_grid` — the organ chains' coarser grid and the way back
  (the steps ``grid.working`` and ``grid.to_source``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from dicomnode.errors import ImagingError
from dicomnode.imaging.step import step

Box = tuple[slice, ...]  # (z, y, x) slices of an array


def image_like(array: np.ndarray, reference: sitk.Image, dtype: type | np.dtype | None = None) -> sitk.Image:
    """An image from a ``(z, y, x)`` array with the geometry of ``reference`` (``dtype``: convert first;
    a boolean array becomes a uint8 0/1 mask)."""
    if dtype is None and array.dtype == bool:
        dtype = np.uint8
    data = np.ascontiguousarray(array, dtype=dtype) if dtype is not None else array
    if data.shape != tuple(reference.GetSize()[::-1]):
        grid = tuple(reference.GetSize()[::-1])
        raise ImagingError(f"An array of shape {data.shape} does not fit the (z, y, x) grid {grid}.")
    out = sitk.GetImageFromArray(data)
    out.CopyInformation(reference)
    return out


def array_of(image: sitk.Image) -> tuple[np.ndarray, tuple[float, float, float]]:
    """(z, y, x) float32 array and its (z, y, x) spacing."""
    return sitk.GetArrayFromImage(image).astype(np.float32, copy=False), spacing_of(image)


def mask_of(image: sitk.Image) -> np.ndarray:
    """A mask image as a boolean (z, y, x) array."""
    return sitk.GetArrayViewFromImage(image).astype(bool)


def spacing_of(image: sitk.Image) -> tuple[float, float, float]:
    """The (z, y, x) spacing of an image in mm."""
    return tuple(float(s) for s in image.GetSpacing()[::-1])  # type: ignore[return-value]


def bounding_box(mask: np.ndarray, spacing: Sequence[float], margin_mm: float = 0.0, extra: int = 0) -> Box:
    """The (z, y, x) slices around ``mask``'s voxels grown by ``margin_mm`` (rounded up) and ``extra``
    voxels, clipped to the array; ImagingError for an empty mask."""
    if not mask.any():
        raise ImagingError("The mask is empty: it has no bounding box.")
    box = []
    for axis, size in enumerate(spacing):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(mask.any(axis=others))
        pad = int(np.ceil(margin_mm / size)) + extra
        box.append(slice(max(0, int(present[0]) - pad), min(mask.shape[axis], int(present[-1]) + pad + 1)))
    return tuple(box)


def crop(image: sitk.Image, box: Box) -> sitk.Image:
    """The part of ``image`` inside ``box`` (a (z, y, x) box; the crop keeps its physical position)."""
    return image[tuple(slice(s.start, s.stop) for s in box[::-1])]


def paste(image: sitk.Image, part: sitk.Image, box: Box) -> sitk.Image:
    """A copy of ``image`` with ``part`` (a processed :func:`crop`) put back at ``box``."""
    return sitk.Paste(image, part, part.GetSize(), [0] * image.GetDimension(), [s.start for s in box[::-1]])


def feather_weights(mask: sitk.Image, *, feather_mm: float = 3.0) -> sitk.Image:
    """Blend weights (float32): 1 inside ``mask``, smoothstep down to 0 at ``feather_mm`` outside."""
    if feather_mm < 0:
        raise ImagingError(f"Parameter 'feather_mm' must be non-negative, got {feather_mm!r}.")
    binary = sitk.Cast(mask, sitk.sitkUInt8)
    if feather_mm == 0:
        return sitk.Cast(binary, sitk.sitkFloat32)
    distance = sitk.SignedMaurerDistanceMap(
        binary, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
    )
    t = np.clip(1.0 - sitk.GetArrayViewFromImage(distance) / feather_mm, 0.0, 1.0)
    weights = (t * t * (3.0 - 2.0 * t)).astype(np.float32)
    weights[sitk.GetArrayViewFromImage(binary) > 0] = 1.0
    return image_like(weights, mask)


def blend(original: np.ndarray, processed: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``original + w·(processed − original)`` where ``w > 0``; elsewhere ``original`` bit-identical."""
    return np.where(weights > 0, original + weights * (processed - original), original).astype(np.float32)


def to_working_grid(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """Resample (linear) so no axis is finer than ``spacing_mm``; coarser axes are kept. The result is laid
    out axially in the patient's frame (:func:`axial`), whatever the scanner's slice plane and the patient's
    position: the organ chains read their array axes as feet→head, anterior→posterior, right→left."""
    return axial(_resampled(image, spacing_mm))


def axial(image: sitk.Image) -> sitk.Image:
    """``image`` with its axes permuted and reversed (no interpolation) so the index axes run, as closely as
    the grid allows, along the patient's +x (left), +y (posterior), +z (head) — a coronal or sagittal
    stack, a prone or feet-first series become an axial head-first supine layout; the physical position
    of every voxel is kept, so a mask made on it goes back to the source grid through ``grid.to_source``."""
    if np.allclose(np.asarray(image.GetDirection()), np.eye(3).ravel(), atol=1e-6):
        return image
    return sitk.DICOMOrient(image, "LPS")


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    """Whether two images share size, spacing, direction and origin (a mask moves between them by copying)."""
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing())
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3))


def _resampled(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    if spacing_mm <= 0:
        raise ImagingError(f"Parameter 'working_spacing_mm' must be positive, got {spacing_mm!r}.")
    target = [max(float(s), float(spacing_mm)) for s in image.GetSpacing()]
    if np.allclose(target, image.GetSpacing()):
        return sitk.Cast(image, sitk.sitkFloat32)
    size = [
        max(1, int(round(n * s / t)))
        for n, s, t in zip(image.GetSize(), image.GetSpacing(), target, strict=True)
    ]
    shift = np.array(target) / 2 - np.array(image.GetSpacing()) / 2
    origin = np.array(image.GetOrigin()) + np.array(image.GetDirection()).reshape(3, 3) @ shift
    low = float(np.min(sitk.GetArrayViewFromImage(image)))
    # anti-aliasing: average integer blocks first (cheap, linear time), then a small residual Gaussian
    factors = [max(1, int(t // s)) for t, s in zip(target, image.GetSpacing(), strict=True)]
    source = sitk.Cast(image, sitk.sitkFloat32)
    if any(f > 1 for f in factors):
        source = sitk.BinShrink(source, factors)
    shrunk = source.GetSpacing()
    residual = [max(0.0, (t / 2.5) ** 2 - (s / 2.5) ** 2) ** 0.5 for t, s in zip(target, shrunk, strict=True)]
    if any(r > 0.05 * t for r, t in zip(residual, target, strict=True)):
        source = sitk.SmoothingRecursiveGaussian(source, [max(r, 1e-3) for r in residual])
    return sitk.Resample(
        source, size, sitk.Transform(), sitk.sitkLinear, tuple(origin), target, image.GetDirection(), low,
        sitk.sitkFloat32,
    )


def mask_to_grid(mask: np.ndarray, working: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """A working-grid boolean mask → uint8 mask on ``reference``'s grid (smooth 0.5 iso-surface).

    Only the mask's bounding box (plus one working voxel) is resampled, so the cost follows the mask."""
    if same_grid(working, reference):
        out = sitk.Cast(image_like(mask, working, np.float32) > 0.5, sitk.sitkUInt8)
        out.CopyInformation(reference)
        return out
    out = np.zeros(reference.GetSize()[::-1], dtype=np.uint8)
    placed = _mask_on_box(mask, working, reference)
    if placed is not None:
        box, inside = placed
        out[box] = inside
    return image_like(out, reference)


def _mask_on_box(
    mask: np.ndarray, working: sitk.Image, reference: sitk.Image
) -> tuple[Box, np.ndarray] | None:
    """(box on ``reference``'s grid, the resampled mask there as bool) of a working-grid boolean mask
    (None when it is empty): the part of ``reference``'s grid the mask's box covers, resampled on a
    geometry-only image (slicing ``reference`` would copy its pixels for nothing)."""
    if not mask.any():
        return None
    img = image_like(mask, working, np.float32)
    idx = np.argwhere(mask)
    corners = [
        working.TransformContinuousIndexToPhysicalPoint([float(c[2]), float(c[1]), float(c[0])])
        for c in (idx.min(axis=0) - 1.5, idx.max(axis=0) + 1.5)
    ]
    ref_idx = np.array([reference.TransformPhysicalPointToContinuousIndex(c) for c in corners])
    lo = np.clip(np.floor(ref_idx.min(axis=0)), 0, np.array(reference.GetSize()) - 1).astype(int)
    hi = np.clip(np.ceil(ref_idx.max(axis=0)) + 1, 1, np.array(reference.GetSize())).astype(int)
    region = sitk.Image([int(h - low) for low, h in zip(lo, hi, strict=True)], sitk.sitkUInt8)
    region.SetSpacing(reference.GetSpacing())
    region.SetDirection(reference.GetDirection())
    region.SetOrigin(reference.TransformIndexToPhysicalPoint([int(v) for v in lo]))
    resampled = sitk.Resample(img, region, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    box = (slice(int(lo[2]), int(hi[2])), slice(int(lo[1]), int(hi[1])), slice(int(lo[0]), int(hi[0])))
    return box, sitk.GetArrayViewFromImage(resampled) >= 0.5


@step("grid.working")
def working_grid(image: sitk.Image, *, spacing_mm: float = 2.0) -> sitk.Image:
    """Resample (anti-aliased) so no axis is finer than ``spacing_mm``: the organ chains' grid."""
    return to_working_grid(image, spacing_mm)


@step("grid.to_source")
def to_source(mask: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """A working-grid mask (uint8) or label map back on the source grid of ``reference``."""
    arr = sitk.GetArrayFromImage(mask)
    if arr.max(initial=0) <= 1:
        return mask_to_grid(arr.astype(bool), mask, reference)
    out = np.zeros(reference.GetSize()[::-1], dtype=np.uint8)
    copy = same_grid(mask, reference)
    for value in np.unique(arr[arr > 0]):
        if copy:
            part = mask_to_grid(arr == value, mask, reference)
            out[sitk.GetArrayViewFromImage(part).astype(bool)] = value
            continue
        placed = _mask_on_box(arr == value, mask, reference)  # later labels win, as over the whole grid
        if placed is not None:
            box, inside = placed
            out[box][inside] = value
    return image_like(out, reference)
