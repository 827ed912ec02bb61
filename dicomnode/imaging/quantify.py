"""Per-segment quantification with pyradiomics, the field's reference implementation.

Features keep pyradiomics' names (``original_firstorder_Mean``, ``original_shape_Sphericity``,
``original_glcm_Contrast`` …) and two exact mask counts are added: ``voxel_count`` and ``volume_ml``
(voxel count × voxel volume / 1000). Intensities are in the image's real units (HU for CT).

Settings are pyradiomics' own (``binWidth``, ``resampledPixelSpacing``, ``normalize``, ``label`` …); the
defaults are pyradiomics' defaults (binWidth 25, original image, no resampling or normalisation).
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


def make_extractor(settings: Mapping[str, Any] | None = None, feature_classes: Iterable[str] | None = None):
    """A configured ``RadiomicsFeatureExtractor`` (original image type; the given classes, all features)."""
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
    return extractor


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
) -> dict[str, float]:
    """Features of the region ``mask == label`` of ``image`` (both SimpleITK images on the same grid)."""
    settings = dict(settings or {})
    label = int(settings.pop("label", label))
    mask_array = sitk.GetArrayViewFromImage(mask)
    count = int(np.count_nonzero(mask_array == label))
    if count == 0:
        present = sorted(int(v) for v in np.unique(mask_array) if v != 0)
        raise QuantifyError(
            f"The mask has no voxel with label {label} (labels present: {present or 'none'})."
        )
    classes = None if feature_classes is None else tuple(feature_classes)
    features: dict[str, float] = {}
    if classes != ():  # an empty selection asks for the exact counts only
        extractor = make_extractor(settings, classes)
        try:
            result = extractor.execute(image, mask, label=label)
        except (ValueError, RuntimeError, IndexError) as exc:
            raise QuantifyError(f"pyradiomics failed for label {label}: {exc}") from exc
        features = {k: _scalar(v) for k, v in result.items() if not k.startswith("diagnostics_")}
    for prefix in {k.rsplit("_", 1)[0] for k in features if k.endswith("_firstorder_Variance")}:
        # pyradiomics marks StandardDeviation deprecated (= sqrt(Variance)) and leaves it out; keep it.
        features.setdefault(f"{prefix}_StandardDeviation", math.sqrt(max(features[f"{prefix}_Variance"], 0)))
    spacing = mask.GetSpacing()
    features["voxel_count"] = float(count)
    features["volume_ml"] = count * math.prod(spacing) / 1000.0
    return features


def array_image(array: np.ndarray, spacing: tuple[float, float, float]) -> sitk.Image:
    """A SimpleITK image from a (slices, rows, columns) array and (slice, row, column) spacing in mm."""
    if array.ndim != 3:
        raise QuantifyError(f"Expected a 3-D (slices, rows, columns) array, got shape {array.shape}.")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing((float(spacing[2]), float(spacing[1]), float(spacing[0])))
    return image


def quantify_arrays(
    image: np.ndarray,
    mask: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    label: int = 1,
    settings: Mapping[str, Any] | None = None,
    feature_classes: Iterable[str] | None = None,
) -> dict[str, float]:
    """Like :func:`quantify_images` for (slices, rows, columns) arrays with (slice, row, col) spacing."""
    if image.shape != mask.shape:
        raise QuantifyError(f"Image shape {image.shape} and mask shape {mask.shape} differ.")
    mask_array = mask.astype(np.uint8) * label if mask.dtype == bool else mask.astype(np.int32)
    return quantify_images(
        array_image(image.astype(np.float32, copy=False), spacing),
        array_image(mask_array, spacing),
        label=label,
        settings=settings,
        feature_classes=feature_classes,
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
