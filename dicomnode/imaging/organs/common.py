"""Helpers shared by the organ chains: patient coordinates, histogram modes, boundary refinement.

Organ steps follow the step-module conventions (see :mod:`dicomnode.imaging.preprocess`): they take a
float32 ``SimpleITK.Image`` in real units and return ``sitk.sitkUInt8`` 0/1 masks on the same grid;
sizes are in mm; intensities are estimated from the image. Internally they work on numpy arrays
``(z, y, x)`` with a spacing ``(z, y, x)`` in mm, on a coarser *working grid* (``working_spacing_mm``,
default 2 mm in-plane) so that a 512×512×300 CT stays within the time and memory budget; the final
mask is interpolated back onto the source grid (linear interpolation of the mask, 0.5 threshold).
The working grid and the way back are in :mod:`dicomnode.imaging.grid`, the morphology (radii in mm)
in :mod:`dicomnode.imaging.morphology`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from dicomnode.errors import ImagingError


def physical_axes(image: sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LPS coordinates (x, y, z) of every voxel, as broadcastable (z, y, x) arrays."""
    nx, ny, nz = image.GetSize()
    d = np.array(image.GetDirection()).reshape(3, 3)
    s = np.array(image.GetSpacing())
    o = np.array(image.GetOrigin())
    k, j, i = np.ogrid[0:nz, 0:ny, 0:nx]
    coords = [o[a] + d[a, 0] * s[0] * i + d[a, 1] * s[1] * j + d[a, 2] * s[2] * k for a in range(3)]
    return coords[0], coords[1], coords[2]


#: CT fat's attenuation band (HU) in which :func:`fat_level` looks for the fat near an organ.
FAT_BAND_HU = (-200.0, -30.0)


def fat_level(values: np.ndarray, default: float = -100.0) -> float:
    """The fat's level among ``values`` (HU): the median of those within :data:`FAT_BAND_HU`, or ``default``
    where fewer than 50 lie there."""
    fatty = values[(values >= FAT_BAND_HU[0]) & (values <= FAT_BAND_HU[1])]
    return float(np.median(fatty)) if fatty.size >= 50 else default


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


def _valley(hist: np.ndarray, centres: np.ndarray, peak: int, step: int, rise: float = 1.05) -> float:
    """The first minimum from ``peak`` towards ``step`` beyond which the histogram rises again to at least
    ``rise`` × its height (a neighbouring tissue's peak: 6 % and more on the real and phantom cases); a
    shallower dip is a ripple on a plateau, the shoulder of a broad organ (the real CT's upper 20 mm: the
    liver's dome, a quarter of it 20-40 HU below its mode, rises 0.4 % past a dip at 73 HU), and the walk
    goes on past it.
    ``-inf``/``inf`` when the histogram falls to 5 % of the peak or reaches the end of the range first."""
    none = -math.inf if step < 0 else math.inf
    floor = 0.05 * hist[peak]
    i = peak
    while True:
        while 0 < i + step < len(hist) and hist[i + step] <= hist[i]:
            i += step
            if hist[i] < floor:
                return none
        if i + step <= 0 or i + step >= len(hist):
            return none
        top = i
        while 0 <= top + step < len(hist) and hist[top + step] >= hist[top]:
            top += step
        if hist[top] >= rise * hist[i]:
            return float(centres[i])
        i = top


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
