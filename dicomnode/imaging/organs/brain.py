"""Brain extraction (skull stripping) on T1-like MR, by thresholds and mm-sized morphology.

Steps (``brain.*`` in ``brain-mr.yaml``), on the working grid:

* ``head`` — the head: above an Otsu threshold of the whole image (background noise vs tissue),
  largest component, holes filled. A head is 110–280 mm across in-plane; anything else (a breast or
  body MR, a cropped field of view) fails with a clear error instead of giving a meaningless mask.
* ``extract`` — brain: the smooth intensity bias (coil sensitivity, often ±30 % over a head) is
  estimated from the brain-like voxels themselves (normalised Gaussian over ``bias_mm``, iterated)
  and divided out. On the flattened image the brain's own intensities come from a sphere at the
  head's centre (brain on any head scan); the dark class (CSF, bone, air) lies below an Otsu threshold
  of the darker-than-brain voxels, the bright one (scalp fat on T1) above the central median plus
  ``max(4 MAD, bright_ratio × median)``.
  The remaining tissue is eroded by ``erosion_mm`` (cuts the bridges between brain and scalp, orbits
  and skull-base soft tissue), the component nearest the head's centre is kept, grown back by the same
  distance inside the tissue, closed by ``closing_mm`` in 3-D, holes filled in 3-D and slice by slice
  (ventricles, sulci, enhancing lesions belong to the brain), and its boundary refined to the nearer
  local mean. A brain of the whole head (not cut by the field of view) must measure
  ``min_volume_ml``–``max_volume_ml`` (0.9–2.2 L: the brain with its CSF spaces, up to the
  intracranial volume of a large adult on thick slices), a cut one at most ``max_volume_ml``, or the
  step fails (a mask leaking into the face or neck measures 2.4 L and more).
  Intensities are relative (Otsu, ratios), so any scanner scaling works.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from skimage.filters import threshold_otsu

from dicomnode.errors import ImagingError
from dicomnode.imaging.grid import array_of, image_like
from dicomnode.imaging.morphology import closing, dilate, erode, fill_holes, largest_components
from dicomnode.imaging.organs.common import refine_boundary
from dicomnode.imaging.step import step


def _sample(values: np.ndarray) -> np.ndarray:
    return values[:: max(1, values.size // 1_000_000)]


@step("brain.head")
def head(image: sitk.Image, *, min_width_mm: float = 110.0, max_width_mm: float = 280.0) -> sitk.Image:
    """The head (uint8): tissue above the background, largest component, holes filled; ImagingError
    when it is not head-sized in-plane (``min_width_mm``–``max_width_mm`` along both in-plane axes)."""
    array, spacing = array_of(image)
    if float(np.ptp(array)) <= 0:
        raise ImagingError("The image is constant; there is no head to find.")
    level = float(threshold_otsu(_sample(array.ravel())))
    tissue = largest_components(array > level * 0.5, 1, connectivity=6)
    mask = fill_holes(closing(tissue, 4.0, spacing), slicewise=True)
    widths = [float(np.ptp(ix) + 1) * s for ix, s in zip(np.nonzero(mask)[1:], spacing[1:], strict=True)]
    if not all(min_width_mm <= w <= max_width_mm for w in widths):
        raise ImagingError(
            f"The imaged object is {widths[1]:.0f} x {widths[0]:.0f} mm in-plane; a head measures "
            f"{min_width_mm:.0f}-{max_width_mm:.0f} mm: is this a brain MR covering the whole head?"
        )
    return image_like(mask, image, np.uint8)


def flatten_bias(
    array: np.ndarray, head_mask: np.ndarray, spacing, *, bias_mm: float = 25.0, iterations: int = 3  # noqa: ANN001
) -> np.ndarray:
    """``array`` with its smooth multiplicative bias divided out (scaled to the head centre's median).

    The bias is the normalised-Gaussian (``bias_mm``; along thick slices at least one slice) average of
    the voxels within ±30 % of the reference intensity in the head's interior (brain-like tissue), iterated
    so that a strong bias does not push half of the brain out of the ±30 % window."""
    centre_values = array[_central(head_mask, spacing, 0.25)]
    ref = float(np.median(centre_values)) if centre_values.size else float(np.median(array[head_mask]))
    if ref <= 0:
        raise ImagingError(f"The head's central intensity is {ref!r}; expected a positive MR signal.")
    interior = erode(head_mask, 10.0, spacing)
    if interior.sum() < 100:
        interior = head_mask
    sigma = [max(bias_mm, 1.0 * s) / s for s in spacing]
    field = np.full(array.shape, ref, dtype=np.float32)
    for _ in range(iterations):
        flat = array / field * ref
        weight = (interior & (np.abs(flat - ref) < 0.3 * ref)).astype(np.float32)
        num = ndimage.gaussian_filter(array * weight, sigma)
        den = ndimage.gaussian_filter(weight, sigma)
        field = np.where(den > 0.05, num / np.maximum(den, 1e-6), ref).astype(np.float32)
        field = np.maximum(field, 0.1 * ref)
    return (array / field * ref).astype(np.float32)


def _central(head_mask: np.ndarray, spacing, fraction: float) -> np.ndarray:  # noqa: ANN001
    """A sphere at the head's centre, of radius ``fraction`` × the head's smaller in-plane extent."""
    centre = np.array(ndimage.center_of_mass(head_mask))
    extent = np.array([np.ptp(ix) for ix in np.nonzero(head_mask)], dtype=float) * np.asarray(spacing)
    grid = np.ogrid[tuple(slice(0, n) for n in head_mask.shape)]
    radius = fraction * float(np.min(extent[1:]))
    distance2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing, strict=True))
    return head_mask & (distance2 <= radius**2)


@step("brain.extract")
def extract(
    image: sitk.Image,
    head_mask: sitk.Image,
    *,
    erosion_mm: float = 10.0,
    closing_mm: float = 6.0,
    bright_ratio: float = 0.35,
    refine_mm: float = 6.0,
    bias_mm: float = 25.0,
    min_volume_ml: float = 900.0,
    max_volume_ml: float = 2200.0,
) -> sitk.Image:
    """The brain (uint8) inside ``head_mask`` (see the module docstring)."""
    raw, spacing = array_of(image)
    inside = sitk.GetArrayFromImage(head_mask).astype(bool)
    if inside.sum() < 1000:
        raise ImagingError(f"The head mask holds only {int(inside.sum())} voxels; cannot extract a brain.")
    array = flatten_bias(raw, inside, spacing, bias_mm=bias_mm)
    central_values = array[_central(inside, spacing, 0.25)]
    median = float(np.median(central_values))
    below = array[inside & (array < median)]
    dark = float(threshold_otsu(_sample(below))) if below.size > 100 else 0.5 * median
    spread = 1.4826 * float(np.median(np.abs(central_values - median)))
    bright = median + max(4.0 * spread, bright_ratio * median)  # robust to bright vessels and lesions
    tissue = inside & (array > dark) & (array < bright)
    core = erode(tissue, erosion_mm, spacing)
    labels, n = ndimage.label(core)
    if n == 0:
        raise ImagingError(f"No brain tissue survives an erosion of {erosion_mm} mm.")
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    candidates = np.flatnonzero(sizes >= 0.05 * sizes.max())
    centre = np.array(ndimage.center_of_mass(inside))
    centres = ndimage.center_of_mass(core, labels, candidates)
    distance = [np.linalg.norm((np.array(c) - centre) * spacing) for c in centres]
    brain = labels == candidates[int(np.argmin(distance))]
    brain = dilate(brain, erosion_mm + 0.5 * min(spacing), spacing) & tissue
    brain = largest_components(brain, 1, connectivity=6)
    pad = [(int(np.ceil(closing_mm / s)) + 1,) * 2 for s in spacing]
    closed = closing(np.pad(brain, pad), closing_mm, spacing)[tuple(slice(p[0], -p[0]) for p in pad)]
    brain = fill_holes(closed | brain, slicewise=True)
    if refine_mm > 0:
        refined = refine_boundary(array, brain, spacing, scale_mm=refine_mm)
        brain = fill_holes(largest_components(refined, connectivity=6))
    brain &= inside
    _check_volume(brain, spacing, min_volume_ml, max_volume_ml)
    return image_like(brain, image, np.uint8)


def _check_volume(brain: np.ndarray, spacing, low_ml: float, high_ml: float) -> None:  # noqa: ANN001
    """ImagingError unless the brain's volume is plausible (the lower bound only for a whole brain)."""
    volume = float(brain.sum()) * float(np.prod(spacing)) / 1000.0
    areas = brain.sum(axis=(1, 2))
    whole = areas.size > 2 and max(areas[0], areas[-1]) < 0.25 * max(float(areas.max()), 1.0)
    if volume > high_ml or (whole and volume < low_ml):
        raise ImagingError(
            f"The brain mask measures {volume:.0f} ml, outside the plausible {low_ml:.0f}-{high_ml:.0f} ml: "
            "skull stripping failed (unusual contrast, strong artefacts or not a head scan)."
        )
