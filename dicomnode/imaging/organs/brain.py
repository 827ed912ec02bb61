"""Brain extraction (skull stripping) on T1-like MR, by thresholds and mm-sized morphology.

Steps (``brain.*`` in ``brain-mr.yaml``), on the working grid:

* ``head`` — the head: above an Otsu threshold of the whole image (background noise vs tissue),
  largest component, holes filled.
* ``extract`` — brain: three-class Otsu inside the head gives the dark class (CSF, bone, air);
  the remaining tissue is eroded by ``erosion_mm`` (cuts the thin bridges between brain and scalp
  through the dark skull/CSF layer), the component nearest the head's centre is kept, grown back
  by the same distance inside the tissue mask, closed and hole-filled (ventricles belong to the brain),
  and its boundary refined to the nearer local mean. Intensities are relative (Otsu), so any scanner
  scaling works; a smooth bias field is tolerated because the classes are well separated.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from skimage.filters import threshold_multiotsu, threshold_otsu

from dicomnode.errors import ImagingError
from dicomnode.imaging.organs.common import (
    array_of,
    close_mm,
    dilate_mm,
    erode_mm,
    fill_holes,
    largest_components,
    refine_boundary,
)


def _mask(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray(array.astype(np.uint8))
    out.CopyInformation(reference)
    return out


def _sample(values: np.ndarray) -> np.ndarray:
    return values[:: max(1, values.size // 1_000_000)]


def head(image: sitk.Image) -> sitk.Image:
    """The head (uint8): tissue above the background, largest component, holes filled."""
    array, spacing = array_of(image)
    if float(np.ptp(array)) <= 0:
        raise ImagingError("The image is constant; there is no head to find.")
    level = float(threshold_otsu(_sample(array.ravel())))
    tissue = largest_components(array > level * 0.5, 1)
    return _mask(fill_holes(close_mm(tissue, 4.0, spacing), slicewise=True), image)


def extract(
    image: sitk.Image,
    head_mask: sitk.Image,
    *,
    erosion_mm: float = 6.0,
    closing_mm: float = 4.0,
    bright_margin: float = 0.15,
    refine_mm: float = 6.0,
) -> sitk.Image:
    """The brain (uint8) inside ``head_mask``."""
    array, spacing = array_of(image)
    inside = sitk.GetArrayFromImage(head_mask).astype(bool)
    values = array[inside]
    if values.size < 1000:
        raise ImagingError(f"The head mask holds only {values.size} voxels; cannot extract a brain.")
    dark, _ = threshold_multiotsu(_sample(values), classes=3)
    # the brain's own intensities: a sphere at the head's centre is brain on any head scan; voxels
    # much brighter than that (scalp fat on T1) are not brain
    centre = np.array(ndimage.center_of_mass(inside))
    extent = np.array([np.ptp(ix) for ix in np.nonzero(inside)], dtype=float) * np.asarray(spacing)
    grid = np.ogrid[tuple(slice(0, n) for n in array.shape)]
    radius = 0.2 * float(np.min(extent[1:]))
    central = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing, strict=True)) <= radius**2
    central_values = array[central & inside & (array > dark)]
    bright = np.inf
    if central_values.size > 100:
        low_c, high_c = np.percentile(central_values, [5, 99])
        bright = float(high_c + bright_margin * (high_c - low_c))
    tissue = inside & (array > dark) & (array < bright)
    core = erode_mm(tissue, erosion_mm, spacing)
    labels, n = ndimage.label(core)
    if n == 0:
        raise ImagingError(f"No brain tissue survives an erosion of {erosion_mm} mm.")
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    candidates = np.flatnonzero(sizes >= 0.05 * sizes.max())
    centres = ndimage.center_of_mass(core, labels, candidates)
    distance = [np.linalg.norm((np.array(c) - centre) * spacing) for c in centres]
    brain = labels == candidates[int(np.argmin(distance))]
    brain = dilate_mm(brain, erosion_mm + 0.5 * min(spacing), spacing) & tissue
    brain = largest_components(brain, 1)
    pad = [(int(np.ceil(closing_mm / s)) + 1,) * 2 for s in spacing]
    closed = close_mm(np.pad(brain, pad), closing_mm, spacing)[tuple(slice(p[0], -p[0]) for p in pad)]
    brain = fill_holes(closed | brain, slicewise=True)
    if refine_mm > 0:
        brain = fill_holes(largest_components(refine_boundary(array, brain, spacing, scale_mm=refine_mm)))
    return _mask(brain & inside, image)



STEPS = {"brain.head": head, "brain.extract": extract}
