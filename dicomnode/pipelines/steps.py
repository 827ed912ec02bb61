"""The step registry: step names used in the pipeline YAML files → functions.

Steps come from the imaging step modules (each exposes ``STEPS``; the generic catalogue modules'
names are prefixed with the module name, e.g. ``preprocess.median``, ``segment.otsu``,
``enhance.clahe``), the organ chains (``liver.*``, ``lung.*``, ``brain.*``), lesion detection
(``lesions.detect``) and the small glue steps below (``grid.*``, ``body.mask``, ``labels.select``,
``guided.contrast``). Every step takes SimpleITK images and keyword parameters and returns an image.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from types import MappingProxyType

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from dicomnode.errors import ImagingError
from dicomnode.imaging.organs import common

log = logging.getLogger(__name__)

CATALOGUE_MODULES = ("preprocess", "segment", "enhance", "artifacts", "fuse", "model")


def working_grid(image: sitk.Image, *, spacing_mm: float = 2.0) -> sitk.Image:
    """Resample (anti-aliased) so no axis is finer than ``spacing_mm``: the organ chains' grid."""
    return common.to_working_grid(image, spacing_mm)


def to_source(mask: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """A working-grid mask (uint8) or label map back on the source grid of ``reference``."""
    arr = sitk.GetArrayFromImage(mask)
    if arr.max(initial=0) <= 1:
        return common.mask_to_grid(arr.astype(bool), mask, reference)
    out = np.zeros(reference.GetSize()[::-1], dtype=np.uint8)
    for value in np.unique(arr[arr > 0]):
        part = common.mask_to_grid(arr == value, mask, reference)
        out[sitk.GetArrayViewFromImage(part).astype(bool)] = value
    img = sitk.GetImageFromArray(out)
    img.CopyInformation(reference)
    return img


def body_mask(image: sitk.Image, *, air_hu: float = -400.0) -> sitk.Image:
    """The patient's body on CT (largest component above ``air_hu``, internal air filled)."""
    array, spacing = common.array_of(image)
    out = sitk.GetImageFromArray(common.body_mask(array, spacing, air_hu=air_hu).astype(np.uint8))
    out.CopyInformation(image)
    return out


def select_label(labels: sitk.Image, *, value: int = 1) -> sitk.Image:
    """One label of a label map as a uint8 mask."""
    return sitk.Cast(sitk.BinaryThreshold(labels, value, value, 1, 0), sitk.sitkUInt8)


def select_any(labels: sitk.Image) -> sitk.Image:
    """Every non-zero label of a label map as one uint8 mask."""
    return sitk.Cast(labels > 0, sitk.sitkUInt8)


def median(image: sitk.Image, *, radius_mm: float = 2.0) -> sitk.Image:
    """Median filter with a physical radius: at least one voxel along every axis whose spacing is at
    most 2.5 × the radius (thick slices are not filtered across)."""
    radius = [max(1, int(round(radius_mm / s))) if s <= 2.5 * radius_mm else 0 for s in image.GetSpacing()]
    return sitk.Median(sitk.Cast(image, sitk.sitkFloat32), radius)


def guided_contrast(
    image: sitk.Image,
    mask: sitk.Image,
    *,
    gain: float = 1.6,
    denoise_mm: float = 1.0,
    feather_mm: float = 5.0,
) -> sitk.Image:
    """Organ-guided enhancement: inside the mask, denoise (Gaussian ``denoise_mm``, normalised over the
    mask so nothing outside leaks in) and stretch the
    contrast around the organ's median by ``gain``; blend in over a feathered band of ``feather_mm``
    outside the mask. Voxels beyond the band are returned bit-identical."""
    if gain <= 0 or feather_mm < 0:
        raise ImagingError(f"Invalid enhancement parameters: gain={gain!r}, feather_mm={feather_mm!r}.")
    result = sitk.Cast(image, sitk.sitkFloat32)  # a copy: voxels outside the band stay bit-identical
    full_mask = sitk.GetArrayViewFromImage(mask)
    if not full_mask.any():
        return result
    spacing = tuple(image.GetSpacing()[::-1])
    # work in the mask's bounding box grown by the feather band (+ one voxel): cost follows the organ
    idx = np.argwhere(full_mask)
    grow = np.ceil(feather_mm / np.asarray(spacing)).astype(int) + 1
    lo = np.maximum(idx.min(axis=0) - grow, 0)
    hi = np.minimum(idx.max(axis=0) + grow + 1, full_mask.shape)
    del idx
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    crop = tuple(slice(int(a), int(b)) for a, b in zip(lo[::-1], hi[::-1], strict=True))  # x, y, z
    sub_image = result[crop]
    array = sitk.GetArrayFromImage(sub_image)
    inside = full_mask[box].astype(bool)
    distance = ndimage.distance_transform_edt(~inside, sampling=spacing).astype(np.float32)
    weight = np.clip(1.0 - distance / max(feather_mm, 1e-6), 0.0, 1.0)
    weight[distance > feather_mm] = 0.0
    del distance
    smooth = array
    if denoise_mm > 0:  # normalised convolution over the organ only: nothing from outside leaks in
        sigma = [denoise_mm / sp for sp in spacing]
        inside_f = inside.astype(np.float32)
        num = ndimage.gaussian_filter(array * inside_f, sigma)
        den = ndimage.gaussian_filter(inside_f, sigma)
        smooth = np.where(inside, num / np.maximum(den, 1e-3), array).astype(np.float32)
        del num, den, inside_f
    centre = float(np.median(array[inside]))
    blended = array + weight * (centre + gain * (smooth - centre) - array)
    band = weight > 0
    array[band] = blended[band]
    patch = sitk.GetImageFromArray(array)
    patch.CopyInformation(sub_image)
    return sitk.Paste(result, patch, patch.GetSize(), [0, 0, 0], [int(v) for v in lo[::-1]])


GLUE_STEPS: Mapping[str, Callable[..., sitk.Image]] = MappingProxyType(
    {
        "grid.working": working_grid,
        "grid.to_source": to_source,
        "body.mask": body_mask,
        "labels.select": select_label,
        "labels.select_any": select_any,
        "filter.median": median,
        "guided.contrast": guided_contrast,
    }
)


def step_registry() -> Mapping[str, Callable[..., sitk.Image]]:
    """All steps by name (the catalogue modules that are installed, organ chains, lesions, glue)."""
    from dicomnode.imaging import lesions
    from dicomnode.imaging.organs import abdomen, brain, liver, lung

    steps: dict[str, Callable[..., sitk.Image]] = {}
    for module_name in CATALOGUE_MODULES:
        try:
            module = importlib.import_module(f"dicomnode.imaging.{module_name}")
        except ImportError:
            log.debug("Step module dicomnode.imaging.%s is not available", module_name)
            continue
        for name, fn in getattr(module, "STEPS", {}).items():
            steps[name if "." in name else f"{module_name}.{name}"] = fn
    for table in (liver.STEPS, abdomen.STEPS, lung.STEPS, brain.STEPS, lesions.STEPS, GLUE_STEPS):
        steps.update(table)
    return MappingProxyType(steps)
