"""Helpers shared by the organ chains: working grid, body mask, mm-sized morphology, components.

Organ steps follow the step-module conventions (see :mod:`dicomnode.imaging.preprocess`): they take a
float32 ``SimpleITK.Image`` in real units and return ``sitk.sitkUInt8`` 0/1 masks on the same grid;
sizes are in mm; intensities are estimated from the image. Internally they work on numpy arrays
``(z, y, x)`` with a spacing ``(z, y, x)`` in mm, on a coarser *working grid* (``working_spacing_mm``,
default 2 mm in-plane) so that a 512×512×300 CT stays within the time and memory budget; the final
mask is interpolated back onto the source grid (linear interpolation of the mask, 0.5 threshold).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from dicomnode.errors import ImagingError


def to_working_grid(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """Resample (linear) so no axis is finer than ``spacing_mm``; coarser axes are kept."""
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
    # a recursive Gaussian needs 4 samples along an axis: a volume of a few slices is not smoothed across
    residual = [r if n >= 4 else 0.0 for r, n in zip(residual, source.GetSize(), strict=True)]
    if any(r > 0.05 * t for r, t in zip(residual, target, strict=True)):
        source = gaussian_mm(source, residual)
    return sitk.Resample(
        source, size, sitk.Transform(), sitk.sitkLinear, tuple(origin), target, image.GetDirection(), low,
        sitk.sitkFloat32,
    )


def gaussian_mm(image: sitk.Image, sigma_mm: float | Sequence[float]) -> sitk.Image:
    """Gaussian smoothing with a physical sigma (per axis x, y, z or one for all), float32. ITK's recursive
    Gaussian needs four samples along every axis; a volume of a few slices is smoothed in-plane only."""
    sigmas = [float(sigma_mm)] * 3 if isinstance(sigma_mm, int | float) else [float(v) for v in sigma_mm]
    source = sitk.Cast(image, sitk.sitkFloat32)
    if min(source.GetSize()) >= 4:
        return sitk.SmoothingRecursiveGaussian(source, [max(v, 1e-3) for v in sigmas])
    sizes = zip(sigmas, source.GetSpacing(), source.GetSize(), strict=True)
    voxels = [v / sp if n >= 4 else 0.0 for v, sp, n in sizes]
    out = sitk.GetImageFromArray(ndimage.gaussian_filter(sitk.GetArrayFromImage(source), voxels[::-1]))
    out.CopyInformation(source)
    return out


def mask_to_grid(mask: np.ndarray, working: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """A working-grid boolean mask → uint8 mask on ``reference``'s grid (smooth 0.5 iso-surface).

    Only the mask's bounding box (plus one working voxel) is resampled, so the cost follows the mask."""
    img = sitk.GetImageFromArray(mask.astype(np.float32))
    img.CopyInformation(working)
    if working.GetSize() == reference.GetSize() and np.allclose(working.GetSpacing(), reference.GetSpacing()):
        out = sitk.Cast(img > 0.5, sitk.sitkUInt8)
        out.CopyInformation(reference)
        return out
    out = np.zeros(reference.GetSize()[::-1], dtype=np.uint8)
    if not mask.any():
        result = sitk.GetImageFromArray(out)
        result.CopyInformation(reference)
        return result
    idx = np.argwhere(mask)
    corners = [
        working.TransformContinuousIndexToPhysicalPoint([float(c[2]), float(c[1]), float(c[0])])
        for c in (idx.min(axis=0) - 1.5, idx.max(axis=0) + 1.5)
    ]
    ref_idx = np.array([reference.TransformPhysicalPointToContinuousIndex(c) for c in corners])
    lo = np.clip(np.floor(ref_idx.min(axis=0)), 0, np.array(reference.GetSize()) - 1).astype(int)
    hi = np.clip(np.ceil(ref_idx.max(axis=0)) + 1, 1, np.array(reference.GetSize())).astype(int)
    region = reference[int(lo[0]) : int(hi[0]), int(lo[1]) : int(hi[1]), int(lo[2]) : int(hi[2])]
    resampled = sitk.Resample(img, region, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    out[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]] = sitk.GetArrayViewFromImage(resampled) >= 0.5
    result = sitk.GetImageFromArray(out)
    result.CopyInformation(reference)
    return result


def array_of(image: sitk.Image) -> tuple[np.ndarray, tuple[float, float, float]]:
    """(z, y, x) float32 array and its (z, y, x) spacing."""
    return sitk.GetArrayFromImage(image).astype(np.float32, copy=False), tuple(image.GetSpacing()[::-1])


def ball(radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """An ellipsoidal structuring element of physical radius ``radius_mm`` (at least 1 voxel in-plane)."""
    radii = [max(0, int(math.floor(radius_mm / s))) for s in spacing]
    if not any(radii[1:]):
        radii[1:] = [1, 1]
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in radii)]
    dist = sum((g * s / max(radius_mm, 1e-6)) ** 2 for g, s in zip(grids, spacing, strict=False))
    return dist <= 1.0 + 1e-9


def open_mm(mask: np.ndarray, radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """Morphological opening by distance transforms (exact Euclidean, linear time, any radius)."""
    if radius_mm <= 0:
        return mask
    inner = ndimage.distance_transform_edt(mask, sampling=spacing) > radius_mm
    return ndimage.distance_transform_edt(~inner, sampling=spacing) <= radius_mm


def close_mm(mask: np.ndarray, radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    if radius_mm <= 0:
        return mask
    grown = ndimage.distance_transform_edt(~mask, sampling=spacing) <= radius_mm
    return ndimage.distance_transform_edt(grown, sampling=spacing) > radius_mm


def erode_mm(mask: np.ndarray, radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    return ndimage.distance_transform_edt(mask, sampling=spacing) > radius_mm


def dilate_mm(mask: np.ndarray, radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    return ndimage.distance_transform_edt(~mask, sampling=spacing) <= radius_mm


def fill_holes(mask: np.ndarray, *, slicewise: bool = True) -> np.ndarray:
    """3-D hole filling, then per axial slice (closes vessels/lesions open towards another slice)."""
    out = ndimage.binary_fill_holes(mask)
    if slicewise:
        for k in range(out.shape[0]):
            out[k] = ndimage.binary_fill_holes(out[k])
    return out


def largest_components(mask: np.ndarray, count: int = 1) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= count:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = np.argsort(sizes)[::-1][:count]
    return np.isin(labels, keep)


def body_mask(array: np.ndarray, spacing: Sequence[float], *, air_hu: float = -400.0) -> np.ndarray:
    """The patient's body on CT: above ``air_hu``, largest 3-D component (drops table and, when they
    are apart from the trunk, arms), internal air (lungs, bowel gas) filled slice by slice."""
    above = array > air_hu
    above = open_mm(above, 3.0, spacing)  # detach table/cushions and thin blankets
    body = largest_components(above, 1)
    if not body.any():
        raise ImagingError(f"No body found: no voxels above {air_hu} HU.")
    return fill_holes(body, slicewise=True)


def physical_axes(image: sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LPS coordinates (x, y, z) of every voxel, as broadcastable (z, y, x) arrays."""
    nx, ny, nz = image.GetSize()
    d = np.array(image.GetDirection()).reshape(3, 3)
    s = np.array(image.GetSpacing())
    o = np.array(image.GetOrigin())
    k, j, i = np.ogrid[0:nz, 0:ny, 0:nx]
    coords = [o[a] + d[a, 0] * s[0] * i + d[a, 1] * s[1] * j + d[a, 2] * s[2] * k for a in range(3)]
    return coords[0], coords[1], coords[2]


def histogram_mode(
    values: np.ndarray, low: float, high: float, bin_width: float = 2.0
) -> tuple[float, float, float, float]:
    """The main mode of ``values`` in [low, high]: ``(mode, spread, valley_below, valley_above)``.

    ``spread`` is the half width at half maximum / 1.177 (a Gaussian's sigma); the valleys are the
    histogram minima separating the mode from the neighbouring tissue peaks (``-inf``/``inf`` when the
    histogram falls to 5 % of the peak without rising again, i.e. no neighbouring tissue).
    """
    values = values[(values >= low) & (values <= high)]
    if values.size < 50:
        raise ImagingError(f"Too few voxels ({values.size}) between {low} and {high} to estimate a mode.")
    bins = np.arange(low, high + bin_width, bin_width)
    hist, edges = np.histogram(values, bins=bins)
    hist = ndimage.gaussian_filter1d(hist.astype(float), 2.0)
    centres = (edges[:-1] + edges[1:]) / 2
    peak = int(np.argmax(hist))
    half = hist[peak] / 2
    left = peak
    while left > 0 and hist[left] > half:
        left -= 1
    right = peak
    while right < len(hist) - 1 and hist[right] > half:
        right += 1
    sigma = max(bin_width, (right - left) * bin_width / 2 / 1.1774)
    return float(centres[peak]), sigma, _valley(hist, centres, peak, -1), _valley(hist, centres, peak, 1)


def _valley(hist: np.ndarray, centres: np.ndarray, peak: int, step: int) -> float:
    i = peak
    floor = 0.05 * hist[peak]
    while 0 < i + step < len(hist) and hist[i + step] <= hist[i]:
        i += step
        if hist[i] < floor:
            return -math.inf if step < 0 else math.inf
    if i + step <= 0 or i + step >= len(hist):
        return -math.inf if step < 0 else math.inf
    return float(centres[i])


def refine_boundary(
    array: np.ndarray,
    mask: np.ndarray,
    spacing: Sequence[float],
    *,
    scale_mm: float = 6.0,
    iterations: int = 2,
) -> np.ndarray:
    """Move the boundary by at most one voxel per iteration towards the nearer local mean.

    A voxel of the one-voxel shell on either side of the boundary belongs to the mask when its value is
    closer to the local mean inside than to the local mean outside (Gaussian-weighted over
    ``scale_mm``): a local, edge-driven correction of partial-volume shrinkage or growth.
    """
    sigma = [scale_mm / s for s in spacing]
    data = array.astype(np.float32, copy=False)
    out = mask.copy()
    for _ in range(iterations):
        inside = out.astype(np.float32)
        w_in = ndimage.gaussian_filter(inside, sigma)
        w_out = ndimage.gaussian_filter(1.0 - inside, sigma)
        m_in = ndimage.gaussian_filter(data * inside, sigma) / np.maximum(w_in, 1e-3)
        m_out = ndimage.gaussian_filter(data * (1.0 - inside), sigma) / np.maximum(w_out, 1e-3)
        shell = ndimage.binary_dilation(out) & ~ndimage.binary_erosion(out)
        closer = np.abs(data - m_in) < np.abs(data - m_out)
        updated = out.copy()
        updated[shell] = closer[shell]
        if np.array_equal(updated, out):
            break
        out = updated
    return out
