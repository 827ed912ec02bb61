"""Per-segment quantification with pyradiomics, the field's reference implementation.

Features keep pyradiomics' names (``original_firstorder_Mean``, ``original_shape_Sphericity``,
``original_glcm_Contrast`` …) and two exact mask counts are added: ``voxel_count`` and ``volume_ml``
(voxel count × voxel volume / 1000). Intensities are in the image's real units (HU for CT).

Settings are pyradiomics' own (``binWidth``, ``resampledPixelSpacing``, ``normalize``, ``label`` …); the
defaults are pyradiomics' defaults (binWidth 25, original image, no resampling or normalisation), except
``additionalInfo`` (pyradiomics' diagnostics, which hash whole images and are dropped anyway) is off.

Speed on full-size CT: unless whole-image normalisation or resampling is asked for (both depend on the
image outside the region), image and mask are cropped to the label's bounding box (plus ``padDistance``)
before pyradiomics sees them. pyradiomics crops to that box itself before computing any feature, so the
values are the same; what is saved is its whole-volume loading, checks and conversions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import SimpleITK as sitk

from dicomnode.errors import QuantifyError

log = logging.getLogger(__name__)

FEATURE_CLASSES: tuple[str, ...] = ("firstorder", "shape", "glcm", "glrlm", "glszm", "gldm", "ngtdm")
#: pyradiomics settings keys dicomnode accepts (from the CLI's ``--setting k=v`` or a pipeline's config).
KNOWN_SETTINGS = frozenset({
    "binWidth", "binCount", "label", "label_channel", "resampledPixelSpacing", "interpolator", "padDistance",
    "normalize", "normalizeScale", "removeOutliers", "resegmentRange", "resegmentMode", "resegmentShape",
    "minimumROIDimensions", "minimumROISize", "geometryTolerance", "correctMask", "additionalInfo",
    "preCrop", "force2D", "force2Ddimension", "voxelArrayShift", "distances", "symmetricalGLCM",
    "weightingNorm", "gldm_a", "Kernel", "kernelRadius",
})
EXTRA_FEATURES = ("voxel_count", "volume_ml")


def feature_classes_for(names: Iterable[str]) -> tuple[str, ...]:
    """The pyradiomics classes needed to compute ``names`` (shape only when asked: O(surface²))."""
    needed: set[str] = set()
    for name in names:
        parts = name.split("_")
        if len(parts) >= 3 and parts[1] in FEATURE_CLASSES:
            needed.add(parts[1])
    return tuple(c for c in FEATURE_CLASSES if c in needed)


def _quiet_radiomics() -> None:
    """pyradiomics logs every step at INFO and some harmless notes at WARNING; keep only its errors
    unless dicomnode itself is being debugged."""
    level = logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.ERROR
    logging.getLogger("radiomics").setLevel(level)


def features_by_class(names: Iterable[str]) -> dict[str, list[str]]:
    """pyradiomics' ``enableFeaturesByName`` argument for ``original_<class>_<Feature>`` names (the
    deprecated StandardDeviation is computed from Variance, see :func:`quantify_images`)."""
    by_class: dict[str, set[str]] = {}
    for name in names:
        parts = name.split("_", 2)
        if len(parts) == 3 and parts[0] == "original" and parts[1] in FEATURE_CLASSES:
            feature = "Variance" if parts[1:] == ["firstorder", "StandardDeviation"] else parts[2]
            by_class.setdefault(parts[1], set()).add(feature)
    return {c: sorted(f) for c, f in by_class.items()}


def make_extractor(
    settings: Mapping[str, Any] | None = None,
    feature_classes: Iterable[str] | None = None,
    features: Iterable[str] | None = None,
):
    """A configured ``RadiomicsFeatureExtractor`` (original image type; the given classes, all features,
    or only ``features`` (pyradiomics names) in the classes they name)."""
    from radiomics import getFeatureClasses
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    _quiet_radiomics()
    settings = dict(settings or {})
    unknown = sorted(set(settings) - KNOWN_SETTINGS)
    if unknown:
        raise QuantifyError(
            f"Unknown pyradiomics setting(s) {', '.join(repr(u) for u in unknown)} "
            f"(known: {', '.join(sorted(KNOWN_SETTINGS))})."
        )
    classes = FEATURE_CLASSES if feature_classes is None else tuple(feature_classes)
    bad = [c for c in classes if c not in FEATURE_CLASSES]
    if bad:
        raise QuantifyError(f"Unknown feature class(es) {bad} (known: {', '.join(FEATURE_CLASSES)}).")
    extractor = RadiomicsFeatureExtractor(**settings)
    extractor.disableAllImageTypes()
    extractor.enableImageTypeByName("Original")
    extractor.disableAllFeatures()
    for name in classes:
        extractor.enableFeatureClassByName(name)
    if features is not None:
        wanted = {c: f for c, f in features_by_class(features).items() if c in classes}
        known = {c: set(getFeatureClasses()[c].getFeatureNames()) for c in wanted}
        unknown = sorted(f"original_{c}_{f}" for c, fs in wanted.items() for f in fs if f not in known[c])
        if unknown:
            raise QuantifyError(f"Unknown pyradiomics feature(s): {', '.join(unknown)}.")
        extractor.enableFeaturesByName(**wanted)
    return extractor


def _crop_allowed(settings: Mapping[str, Any]) -> bool:
    """Whether the features depend only on the region's bounding box (see the module docstring)."""
    return not settings.get("normalize", False) and settings.get("resampledPixelSpacing") is None


def _pad(settings: Mapping[str, Any]) -> int:
    return max(int(settings.get("padDistance", 5) or 0), 1)


def label_box(selected: np.ndarray, pad: int) -> tuple[slice, ...]:
    """The bounding box of a non-empty bool array as slices, ``pad`` voxels wider, clipped to the array."""
    box = []
    for axis in range(selected.ndim):
        others = tuple(a for a in range(selected.ndim) if a != axis)
        hits = np.flatnonzero(selected.any(axis=others))
        box.append(slice(max(int(hits[0]) - pad, 0), min(int(hits[-1]) + 1 + pad, selected.shape[axis])))
    return tuple(box)


def _same_grid(image: sitk.Image, mask: sitk.Image) -> bool:
    return (
        image.GetSize() == mask.GetSize()
        and np.allclose(image.GetSpacing(), mask.GetSpacing(), rtol=0, atol=1e-6)
        and np.allclose(image.GetOrigin(), mask.GetOrigin(), rtol=0, atol=1e-4)
        and np.allclose(image.GetDirection(), mask.GetDirection(), rtol=0, atol=1e-6)
    )


def _crop_images(
    image: sitk.Image, mask: sitk.Image, selected: np.ndarray, pad: int
) -> tuple[sitk.Image, sitk.Image]:
    """Image and mask cut to the bounding box of ``selected`` (the mask's (z, y, x) label voxels); the
    physical grid (origin, spacing, direction) of the kept voxels is unchanged."""
    box = label_box(selected, pad)
    if all(b.stop - b.start == n for b, n in zip(box, selected.shape, strict=True)):
        return image, mask
    index = [int(b.start) for b in reversed(box)]
    size = [int(b.stop - b.start) for b in reversed(box)]
    return sitk.RegionOfInterest(image, size, index), sitk.RegionOfInterest(mask, size, index)


def _scalar(value: Any) -> float:
    array = np.asarray(value)
    if array.size != 1:
        raise QuantifyError(f"pyradiomics returned a non-scalar feature value {value!r}.")
    return float(array.reshape(()))


def quantify_images(
    image: sitk.Image,
    mask: sitk.Image,
    *,
    label: int = 1,
    settings: Mapping[str, Any] | None = None,
    feature_classes: Iterable[str] | None = None,
    features: Iterable[str] | None = None,
) -> dict[str, float]:
    """Features of the region ``mask == label`` of ``image`` (both SimpleITK images on the same grid);
    ``features`` (pyradiomics names) limits the classes' features to those (faster on large regions)."""
    settings = dict(settings or {})
    label = int(settings.pop("label", label))
    settings.setdefault("additionalInfo", False)
    mask_array = sitk.GetArrayViewFromImage(mask)
    selected = mask_array == label
    count = int(np.count_nonzero(selected))
    if count == 0:
        present = sorted(int(v) for v in np.unique(mask_array) if v != 0)
        raise QuantifyError(
            f"The mask has no voxel with label {label} (labels present: {present or 'none'})."
        )
    spacing = mask.GetSpacing()
    classes = None if feature_classes is None else tuple(feature_classes)
    values: dict[str, float] = {}
    if classes != ():  # an empty selection asks for the exact counts only
        if _crop_allowed(settings) and _same_grid(image, mask):
            image, mask = _crop_images(image, mask, selected, _pad(settings))
        del selected, mask_array
        extractor = make_extractor(settings, classes, features)
        try:
            result = extractor.execute(image, mask, label=label)
        except (ValueError, RuntimeError, IndexError) as exc:
            raise QuantifyError(f"pyradiomics failed for label {label}: {exc}") from exc
        values = {k: _scalar(v) for k, v in result.items() if not k.startswith("diagnostics_")}
    for prefix in {k.rsplit("_", 1)[0] for k in values if k.endswith("_firstorder_Variance")}:
        # pyradiomics marks StandardDeviation deprecated (= sqrt(Variance)) and leaves it out; keep it.
        values.setdefault(f"{prefix}_StandardDeviation", math.sqrt(max(values[f"{prefix}_Variance"], 0)))
    values["voxel_count"] = float(count)
    values["volume_ml"] = count * math.prod(spacing) / 1000.0
    return values


def array_image(
    array: np.ndarray, spacing: tuple[float, float, float], offset: tuple[int, int, int] = (0, 0, 0)
) -> sitk.Image:
    """A SimpleITK image from a (slices, rows, columns) array and (slice, row, column) spacing in mm;
    ``offset`` is the (slice, row, column) index of ``array[0, 0, 0]`` in a larger grid with origin 0."""
    if array.ndim != 3:
        raise QuantifyError(f"Expected a 3-D (slices, rows, columns) array, got shape {array.shape}.")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing((float(spacing[2]), float(spacing[1]), float(spacing[0])))
    if any(offset):
        image.SetOrigin(tuple(float(o * s) for o, s in zip(offset[::-1], spacing[::-1], strict=True)))
    return image


def quantify_arrays(
    image: np.ndarray,
    mask: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    label: int = 1,
    settings: Mapping[str, Any] | None = None,
    feature_classes: Iterable[str] | None = None,
    features: Iterable[str] | None = None,
) -> dict[str, float]:
    """Like :func:`quantify_images` for (slices, rows, columns) arrays with (slice, row, col) spacing."""
    if image.shape != mask.shape:
        raise QuantifyError(f"Image shape {image.shape} and mask shape {mask.shape} differ.")
    offset = (0, 0, 0)
    wanted = int((settings or {}).get("label", label))
    selected = mask if mask.dtype == bool else mask == wanted
    if _crop_allowed(settings or {}) and mask.ndim == 3 and selected.any():
        # cut before converting: the full-size float/label copies are what costs on a 512x512x300 series
        box = label_box(selected, _pad(settings or {}))
        image, mask = image[box], mask[box]
        offset = tuple(int(b.start) for b in box)  # type: ignore[assignment]
    del selected
    mask_array = mask.astype(np.uint8) * label if mask.dtype == bool else mask.astype(np.int32)
    return quantify_images(
        array_image(image.astype(np.float32, copy=False), spacing, offset),
        array_image(mask_array, spacing, offset),
        label=label,
        settings=settings,
        feature_classes=feature_classes,
        features=features,
    )


def quantify_files(
    image_path: str,
    mask_path: str,
    *,
    label: int = 1,
    settings: Mapping[str, Any] | None = None,
    feature_classes: Iterable[str] | None = None,
) -> dict[str, float]:
    """Features from an image and a mask file that SimpleITK reads (NRRD, NIfTI, MHA …)."""
    try:
        image = sitk.ReadImage(str(image_path))
        mask = sitk.ReadImage(str(mask_path))
    except RuntimeError as exc:
        raise QuantifyError(f"Cannot read image/mask '{image_path}', '{mask_path}': {exc}") from exc
    return quantify_images(image, mask, label=label, settings=settings, feature_classes=feature_classes)
