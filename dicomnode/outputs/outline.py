"""Key-slice geometry of a segment: the largest axial cross-section, its outline and its diameters.

Shared by the SR (TID 1410 planar groups) and the burned-in capture series. Outline points are in DICOM
SCOORD pixel coordinates: (column, row), with (0, 0) the top-left corner of the top-left pixel, so the
centre of pixel (r, c) is (c + 0.5, r + 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.measure import approximate_polygon, find_contours

from dicomnode.errors import OutputError


@dataclass(frozen=True)
class KeySlice:
    index: int  # slice index in the sorted source series
    outline: np.ndarray  # (N, 2) float32 SCOORD (column, row) points, closed: first point == last point
    area_mm2: float  # mask cross-section area on this slice (pixel count × pixel area)
    outline_area_mm2: float  # area enclosed by the outline polygon
    long_axis_mm: float  # largest in-plane diameter of the outlined region
    short_axis_mm: float  # its extent perpendicular to the long axis


def key_slice_index(mask: np.ndarray) -> int:
    """Index of the slice with the largest cross-section (the first one on ties)."""
    areas = np.count_nonzero(mask.reshape(mask.shape[0], -1), axis=1)  # a bool sum is ~10x slower
    if not areas.any():
        raise OutputError("The mask is empty: it has no key slice.")
    return int(np.argmax(areas))


def polygon_area(points: np.ndarray, pixel_spacing: tuple[float, float]) -> float:
    """Shoelace area in mm² of (column, row) points with (row, column) pixel spacing."""
    x = points[:, 0] * pixel_spacing[1]
    y = points[:, 1] * pixel_spacing[0]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def outline_of(slice_mask: np.ndarray, tolerance: float = 0.5) -> np.ndarray:
    """Closed outline (column, row) of the largest connected region of a 2-D mask, holes ignored."""
    labels, count = ndimage.label(slice_mask)
    if count == 0:
        raise OutputError("The slice mask is empty: it has no outline.")
    sizes = ndimage.sum_labels(slice_mask, labels, index=np.arange(1, count + 1))
    region = ndimage.binary_fill_holes(labels == (int(np.argmax(sizes)) + 1))
    padded = np.pad(region.astype(np.float32), 1)
    contours = find_contours(padded, 0.5)
    contour = max(contours, key=len)  # the outer boundary is the longest once holes are filled
    contour = approximate_polygon(contour, tolerance=tolerance)
    points = np.stack([contour[:, 1] - 1 + 0.5, contour[:, 0] - 1 + 0.5], axis=1)
    if not np.allclose(points[0], points[-1]):
        points = np.vstack([points, points[:1]])
    return points.astype(np.float32)


def diameters(points: np.ndarray, pixel_spacing: tuple[float, float]) -> tuple[float, float]:
    """(long axis, short axis) in mm: the largest distance between outline points, and the outline's
    extent perpendicular to that direction."""
    mm = np.stack([points[:, 0] * pixel_spacing[1], points[:, 1] * pixel_spacing[0]], axis=1).astype(float)
    if len(mm) < 2:
        return 0.0, 0.0
    diff = mm[:, None, :] - mm[None, :, :]
    dist = np.sqrt((diff**2).sum(axis=-1))
    i, j = np.unravel_index(int(np.argmax(dist)), dist.shape)
    long_axis = float(dist[i, j])
    if long_axis == 0:
        return 0.0, 0.0
    direction = (mm[j] - mm[i]) / long_axis
    normal = np.array([-direction[1], direction[0]])
    projection = mm @ normal
    return long_axis, float(projection.max() - projection.min())


def key_slice(mask: np.ndarray, pixel_spacing: tuple[float, float]) -> KeySlice:
    """The key slice of a (slices, rows, columns) mask with (row, column) pixel spacing in mm."""
    index = key_slice_index(mask)
    plane = np.asarray(mask[index], dtype=bool)
    points = outline_of(plane)
    long_axis, short_axis = diameters(points, pixel_spacing)
    return KeySlice(
        index=index,
        outline=points,
        area_mm2=float(plane.sum()) * pixel_spacing[0] * pixel_spacing[1],
        outline_area_mm2=polygon_area(points[:-1], pixel_spacing),
        long_axis_mm=long_axis,
        short_axis_mm=short_axis,
    )
