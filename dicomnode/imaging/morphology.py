"""Binary morphology with radii in mm: one implementation for the step catalogue and the organ chains.

Semantics (exact Euclidean, whatever the radius — a distance map, linear in the number of voxels):

* ``dilate(mask, r)`` — every voxel whose centre lies within ``r`` mm of a mask voxel's centre;
* ``erode(mask, r)`` — every mask voxel whose centre lies farther than ``r`` mm from every background
  voxel's centre (outside the array is not background: the border does not erode);
* ``opening = dilate(erode(·))`` removes parts thinner than about ``2r``; ``closing = erode(dilate(·))``
  bridges gaps narrower than about ``2r`` (pad first when the closing must not stop at the border);
* ``slicewise=True`` measures distances within each axial slice only (a disc instead of a ball);
* ``fill_holes`` fills background regions not connected to the array border — per axial slice
  (4-connected; a 3-D cavity is a hole in each of its slices too) or in 3-D (6-connected);
* ``largest_components(mask, count)`` keeps the ``count`` largest connected components (26-connected
  by default, ``connectivity=6`` for face neighbours only; ITK's ranking by size);
* ``body_mask`` — the patient's body on CT (above a threshold, opened, largest component, holes filled).

Arrays are numpy ``(z, y, x)`` booleans with a ``(z, y, x)`` spacing in mm (:mod:`dicomnode.imaging.grid`
converts images). The image steps ``segment.dilate`` … ``segment.body_mask`` and ``body.mask`` wrap these.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from dicomnode.errors import ImagingError

_SLICEWISE_Z_MM = 1e6  # a slice spacing no distance crosses


def _within(mask: np.ndarray, spacing: Sequence[float], slicewise: bool, radius_mm: float) -> np.ndarray:
    """Voxels whose centre lies within ``radius_mm`` of a ``mask`` voxel's centre (all of ``mask``)."""
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    xyz = [float(s) for s in spacing[::-1]]
    if slicewise and mask.ndim == 3:
        xyz[2] = _SLICEWISE_Z_MM
    image.SetSpacing(xyz)
    distance = sitk.SignedMaurerDistanceMap(
        image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
    )
    return sitk.GetArrayViewFromImage(distance) <= radius_mm  # a new array; the view ends with ``distance``


def dilate(
    mask: np.ndarray, radius_mm: float, spacing: Sequence[float], *, slicewise: bool = False
) -> np.ndarray:
    """Voxels within ``radius_mm`` of the mask (see the module docstring)."""
    mask = np.asarray(mask, dtype=bool)
    if radius_mm <= 0 or not mask.any():
        return mask.copy()
    return _within(mask, spacing, slicewise, radius_mm)


def erode(
    mask: np.ndarray, radius_mm: float, spacing: Sequence[float], *, slicewise: bool = False
) -> np.ndarray:
    """Mask voxels farther than ``radius_mm`` from the background (see the module docstring)."""
    mask = np.asarray(mask, dtype=bool)
    if radius_mm <= 0 or mask.all():
        return mask.copy()
    return ~_within(~mask, spacing, slicewise, radius_mm)


def opening(
    mask: np.ndarray, radius_mm: float, spacing: Sequence[float], *, slicewise: bool = False
) -> np.ndarray:
    """Erosion then dilation by ``radius_mm``: parts thinner than about twice the radius vanish."""
    if radius_mm <= 0:
        return np.asarray(mask, dtype=bool).copy()
    eroded = erode(mask, radius_mm, spacing, slicewise=slicewise)
    return dilate(eroded, radius_mm, spacing, slicewise=slicewise)


def closing(
    mask: np.ndarray, radius_mm: float, spacing: Sequence[float], *, slicewise: bool = False
) -> np.ndarray:
    """Dilation then erosion by ``radius_mm``: gaps narrower than about twice the radius close."""
    if radius_mm <= 0:
        return np.asarray(mask, dtype=bool).copy()
    dilated = dilate(mask, radius_mm, spacing, slicewise=slicewise)
    return erode(dilated, radius_mm, spacing, slicewise=slicewise)


def fill_holes(mask: np.ndarray, *, slicewise: bool = True) -> np.ndarray:
    """Fill background regions not connected to the border: per axial slice or in 3-D."""
    mask = np.asarray(mask, dtype=bool)
    if slicewise and mask.ndim == 3:
        structure = np.zeros((3, 3, 3), bool)
        structure[1] = ndimage.generate_binary_structure(2, 1)  # no connectivity across slices
        return ndimage.binary_fill_holes(mask, structure=structure)
    return ndimage.binary_fill_holes(mask)


def largest_components(
    mask: np.ndarray, count: int = 1, *, min_voxels: int = 0, connectivity: int = 26
) -> np.ndarray:
    """The ``count`` largest connected components of at least ``min_voxels`` voxels."""
    image = sitk.GetImageFromArray(np.asarray(mask, dtype=np.uint8))
    kept = largest_components_image(image, count, min_voxels=min_voxels, connectivity=connectivity)
    return sitk.GetArrayViewFromImage(kept).astype(bool)  # a copy; the view ends with ``kept``


def largest_components_image(
    mask: sitk.Image, count: int = 1, *, min_voxels: int = 0, connectivity: int = 26
) -> sitk.Image:
    """:func:`largest_components` on a mask image (uint8 0/1 on the same grid): no array round trip."""
    if int(count) < 1:
        raise ImagingError(f"Parameter 'count' must be at least 1, got {count!r}.")
    if connectivity not in (6, 26):
        raise ImagingError(f"Parameter 'connectivity' must be 6 or 26, got {connectivity!r}.")
    components = sitk.ConnectedComponent(sitk.Cast(mask, sitk.sitkUInt8), connectivity == 26)
    ranked = sitk.RelabelComponent(components, minimumObjectSize=int(min_voxels), sortByObjectSize=True)
    return sitk.Cast(sitk.BinaryThreshold(ranked, 1, int(count), 1, 0), sitk.sitkUInt8)


def body_mask(
    array: np.ndarray,
    spacing: Sequence[float],
    *,
    threshold: float,
    opening_mm: float = 3.0,
    slicewise: bool = True,
    connectivity: int = 26,
) -> np.ndarray:
    """The patient's body on CT: voxels above ``threshold``, opened by ``opening_mm`` (detaches the table,
    cushions and thin blankets; per axial slice when ``slicewise``), the largest component (drops the
    table and arms apart from the trunk), internal air (lungs, bowel gas) filled per axial slice."""
    above = opening(array > threshold, opening_mm, spacing, slicewise=slicewise)
    if not above.any():
        raise ImagingError(
            f"No body found: no voxels above {threshold!r} survive an opening of {opening_mm} mm."
        )
    return fill_holes(largest_components(above, 1, connectivity=connectivity), slicewise=True)
