"""Lesion detection inside an organ mask, relative to the organ's own statistics.

``detect(image, organ)`` returns a label map (``sitk.sitkUInt16``, 0 = background, 1..N one lesion each,
ordered by decreasing volume) of hypo- and/or hyper-dense regions:

1. The image is smoothed (Gaussian, ``smoothing_mm``); the organ's intensity centre and spread are its
   median and MAD-based sigma inside the organ eroded by ``margin_mm`` (no partial volume).
2. The organ's slowly varying background (Gaussian ``background_mm``, normalised over the organ
   without the obvious outliers) is subtracted; candidates differ from it by more than
   ``max(k_sigma × sigma, min_contrast)`` (dark for ``hypo``, bright for ``hyper``), inside the eroded
   organ; they are then grown back into the
   whole organ through voxels that still pass the threshold (lesions at the organ's edge keep their size).
3. Each connected component is one lesion; components whose equivalent-sphere diameter is below
   ``min_diameter_mm``, that lie mostly in the organ's edge band (partial volume) or that are tubular
   (elongation above ``max_elongation``: vessels) are dropped.

:func:`describe` gives each lesion's volume, diameter, centre (LPS mm), mean value and kind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from dicomnode.errors import ImagingError
from dicomnode.imaging.organs.common import dilate_mm, erode_mm, to_working_grid


@dataclass(frozen=True)
class Lesion:
    label: int
    kind: str  # hypo | hyper
    volume_ml: float
    diameter_mm: float  # of the sphere with the same volume
    centre_mm: tuple[float, float, float]  # LPS
    mean: float  # real units (HU)
    contrast: float  # mean − organ median


def detect(
    image: sitk.Image,
    organ: sitk.Image,
    *,
    kind: str = "both",
    k_sigma: float = 3.0,
    min_contrast: float = 20.0,
    min_diameter_mm: float = 7.0,
    smoothing_mm: float = 1.5,
    margin_mm: float = 3.0,
    max_elongation: float = 3.0,
    background_mm: float = 25.0,
    working_spacing_mm: float = 1.5,
) -> sitk.Image:
    """A label map of lesions inside ``organ`` (see the module docstring); works on the organ's
    bounding box (plus a margin), so its cost follows the organ's size, not the volume's, and on a
    grid no finer than ``working_spacing_mm`` (default 1.5 mm; 0 keeps the source grid)."""
    if organ.GetSize() != image.GetSize():
        raise ImagingError("The organ mask is not on the image grid.")
    inside = sitk.GetArrayViewFromImage(organ)
    if not inside.any():
        return _empty(image)
    idx = np.argwhere(inside)
    spacing = np.asarray(image.GetSpacing()[::-1])
    params = {
        "kind": kind, "k_sigma": k_sigma, "min_contrast": min_contrast, "min_diameter_mm": min_diameter_mm,
        "smoothing_mm": smoothing_mm, "margin_mm": margin_mm, "max_elongation": max_elongation,
        "background_mm": background_mm,
    }
    margin = np.ceil((3.0 * smoothing_mm + 2.0) / spacing).astype(int)
    lo = np.maximum(idx.min(axis=0) - margin, 0)
    hi = np.minimum(idx.max(axis=0) + margin + 1, inside.shape)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(lo[::-1], hi[::-1], strict=True))  # x, y, z
    region_image, region_organ = image[crop], organ[crop]
    working_mm = float(working_spacing_mm)
    if working_mm > 0 and min(image.GetSpacing()) < working_mm:  # fine grids: detect on a coarser one
        coarse = to_working_grid(region_image, working_mm)
        coarse_organ = sitk.Resample(region_organ, coarse, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        coarse_labels = detect_in_region(coarse, coarse_organ, **params)  # type: ignore[arg-type]
        labels = sitk.Resample(coarse_labels, region_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        labels = sitk.Mask(labels, sitk.Cast(region_organ > 0, sitk.sitkUInt8))
        for key in coarse_labels.GetMetaDataKeys():
            labels.SetMetaData(key, coarse_labels.GetMetaData(key))
    else:
        labels = detect_in_region(region_image, region_organ, **params)  # type: ignore[arg-type]
    out = np.zeros(inside.shape, dtype=np.uint16)
    out[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))] = sitk.GetArrayFromImage(labels)
    result = sitk.GetImageFromArray(out)
    result.CopyInformation(image)
    for key in labels.GetMetaDataKeys():
        result.SetMetaData(key, labels.GetMetaData(key))
    return result


def detect_in_region(
    image: sitk.Image,
    organ: sitk.Image,
    *,
    kind: str = "both",
    k_sigma: float = 3.0,
    min_contrast: float = 20.0,
    min_diameter_mm: float = 7.0,
    smoothing_mm: float = 1.5,
    margin_mm: float = 3.0,
    max_elongation: float = 3.0,
    background_mm: float = 25.0,
) -> sitk.Image:
    """:func:`detect` on a region (the whole grid is processed)."""
    if kind not in ("hypo", "hyper", "both"):
        raise ImagingError(f"Parameter 'kind' must be hypo, hyper or both; got {kind!r}.")
    if min_diameter_mm < 0 or k_sigma <= 0:
        raise ImagingError(
            f"Invalid lesion parameters: k_sigma={k_sigma!r}, min_diameter_mm={min_diameter_mm!r}."
        )
    spacing = tuple(image.GetSpacing()[::-1])
    organ_arr = sitk.GetArrayFromImage(organ).astype(bool)
    if organ_arr.shape != tuple(image.GetSize()[::-1]):
        raise ImagingError("The organ mask is not on the image grid.")
    smoothed = sitk.SmoothingRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), smoothing_mm)
    smooth = sitk.GetArrayFromImage(smoothed)
    # at least one voxel deep along every axis: thick slices carry partial volume at the organ's top/bottom
    depth = max(margin_mm, 1.01 * max(spacing))
    core = erode_mm(organ_arr, depth, spacing)
    if core.sum() < 50:
        core = organ_arr
    values = smooth[core]
    if values.size < 10:
        return _empty(image)
    centre = float(np.median(values))
    sigma = 1.4826 * float(np.median(np.abs(values - centre)))
    # pass 1 against the organ's median finds obvious outliers; the organ's slowly varying background
    # (contrast gradients, beam hardening) is then estimated without them, and pass 2 thresholds the
    # residual against that local background
    outliers = organ_arr & (np.abs(smooth - centre) > max(k_sigma * sigma, min_contrast))
    weight = (organ_arr & ~dilate_mm(outliers, 2 * smoothing_mm, spacing)).astype(np.float32)
    bg_sigma = [background_mm / s for s in spacing]
    background = ndimage.gaussian_filter(smooth * weight, bg_sigma) / np.maximum(
        ndimage.gaussian_filter(weight, bg_sigma), 1e-3
    )
    background = np.where(ndimage.gaussian_filter(weight, bg_sigma) > 0.05, background, centre)
    residual = smooth - background
    sigma = 1.4826 * float(np.median(np.abs(residual[core] - np.median(residual[core]))))
    delta = max(k_sigma * sigma, min_contrast)
    candidates = np.zeros_like(organ_arr)
    passes = np.zeros_like(organ_arr)
    if kind in ("hypo", "both"):
        passes |= residual < -delta
    if kind in ("hyper", "both"):
        passes |= residual > delta
    passes &= organ_arr
    candidates = passes & core
    grown = candidates | (dilate_mm(candidates, depth + max(spacing), spacing) & passes)
    labels, n = ndimage.label(grown)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    kept: list[tuple[float, int]] = []
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        comp = labels[box] == i
        vol = comp.sum() * voxel_ml
        diameter = (6.0 * vol * 1000.0 / math.pi) ** (1.0 / 3.0)
        deep = float(core[box][comp].mean())  # mostly at the edge: partial volume, not a lesion
        if diameter < min_diameter_mm or deep < 0.5 or _elongation(comp, spacing) > max_elongation:
            continue
        kept.append((vol, i))
    out = np.zeros(labels.shape, dtype=np.uint16)
    for new, (_, old) in enumerate(sorted(kept, reverse=True), start=1):
        out[labels == old] = new
    result = sitk.GetImageFromArray(out)
    result.CopyInformation(image)
    result.SetMetaData("dicomnode.organ_median", f"{centre:.1f}")
    result.SetMetaData("dicomnode.organ_sigma", f"{sigma:.1f}")
    return result


def _elongation(comp: np.ndarray, spacing) -> float:  # noqa: ANN001
    points = np.argwhere(comp) * np.asarray(spacing)
    if len(points) < 5:
        return 1.0
    eig = np.sort(np.linalg.eigvalsh(np.cov(points.T)))[::-1]
    # a component flat in one axis (thick slices) has a ~0 minor axis: compare the two largest axes
    return float(math.sqrt(max(eig[0], 1e-9) / max(eig[1], 1e-9)))


def _empty(image: sitk.Image) -> sitk.Image:
    out = sitk.Image(image.GetSize(), sitk.sitkUInt16)
    out.CopyInformation(image)
    return out


def describe(image: sitk.Image, labels: sitk.Image) -> list[Lesion]:
    """Per lesion: kind, volume, equivalent diameter, centre (LPS) and mean value."""
    lab = sitk.GetArrayFromImage(labels)
    arr = sitk.GetArrayFromImage(image)
    median = float(labels.GetMetaData("dicomnode.organ_median")) if labels.HasMetaDataKey(
        "dicomnode.organ_median"
    ) else float("nan")
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    out = []
    for i in range(1, int(lab.max()) + 1):
        comp = lab == i
        if not comp.any():
            continue
        vol = float(comp.sum()) * voxel_ml
        k, j, x = (float(v) for v in ndimage.center_of_mass(comp))
        centre = image.TransformContinuousIndexToPhysicalPoint((x, j, k))
        mean = float(arr[comp].mean())
        out.append(
            Lesion(
                label=i,
                kind="hypo" if mean < median else "hyper",
                volume_ml=vol,
                diameter_mm=(6.0 * vol * 1000.0 / math.pi) ** (1.0 / 3.0),
                centre_mm=tuple(float(c) for c in centre),  # type: ignore[arg-type]
                mean=mean,
                contrast=mean - median,
            )
        )
    return out


STEPS = {"lesions.detect": detect}
