"""Segmentation steps: thresholds, region growing, watershed, clustering, edges, level sets, SLIC, morphology.

Conventions (shared by every step module, see ``dicomnode.imaging.preprocess``): steps take and
return ``SimpleITK.Image``; intensity images are float32 in real units (HU for CT); masks are
``sitk.sitkUInt8`` 0/1 on the image grid; label maps are UInt8 (0 = background, classes 1..K ordered
by mean intensity) or UInt32 for supervoxels. Parameters are keyword-only with defaults; sizes and
radii are in mm; thresholds are estimated from the image (Otsu, seed statistics) when not given.
Invalid parameters raise ``ImagingError`` quoting the value. Steps are declared ``@step("segment.<name>")``.

Seeds given explicitly are physical points (x, y, z) in mm (patient LPS for DICOM-derived images).
Automatic seeds are the deepest points (distance-transform maxima) of a thresholded region.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.cluster.vq import kmeans2, vq
from skimage.filters import threshold_multiotsu, threshold_otsu
from skimage.segmentation import slic

from dicomnode.errors import ImagingError
from dicomnode.imaging import morphology
from dicomnode.imaging.grid import spacing_of
from dicomnode.imaging.preprocess import (
    like,
    mm_to_radius,
    require_choice,
    require_positive,
    require_same_grid,
    robust_range,
    to_float,
)
from dicomnode.imaging.step import step

log = logging.getLogger(__name__)

Point = Sequence[float]
_SAMPLE = 300_000  # voxels sampled to fit histogram/cluster models


def _mask_array(mask: sitk.Image) -> np.ndarray:
    return sitk.GetArrayViewFromImage(mask).astype(bool)


def _as_mask(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    return like(np.asarray(array, dtype=np.uint8), reference, sitk.sitkUInt8)


def _sample(values: np.ndarray, seed: int = 0) -> np.ndarray:
    values = values.ravel()
    if values.size <= _SAMPLE:
        return values
    return np.random.default_rng(seed).choice(values, _SAMPLE, replace=False)


def _values(image: sitk.Image, mask: sitk.Image | None) -> np.ndarray:
    array = sitk.GetArrayViewFromImage(image)
    if mask is None:
        return array.ravel()
    require_same_grid(image, mask)
    values = array[_mask_array(mask)]
    if values.size == 0:
        raise ImagingError("The mask is empty: no intensities to estimate from.")
    return values


# ------------------------------------------------------------------------------------ thresholds


@step("segment.threshold")
def threshold(image: sitk.Image, *, lower: float | None = None, upper: float | None = None) -> sitk.Image:
    """Fixed-window threshold: 1 where ``lower <= value <= upper`` (either bound may be open)."""
    if lower is None and upper is None:
        raise ImagingError("Threshold needs 'lower', 'upper' or both; got neither.")
    low = -np.inf if lower is None else float(lower)
    high = np.inf if upper is None else float(upper)
    if low > high:
        raise ImagingError(f"Threshold 'lower' ({lower!r}) is above 'upper' ({upper!r}).")
    array = sitk.GetArrayViewFromImage(image)
    return _as_mask((array >= low) & (array <= high), image)


def otsu_threshold_value(image: sitk.Image, *, mask: sitk.Image | None = None, bins: int = 256) -> float:
    """Otsu's threshold of the image intensities (inside ``mask`` when given)."""
    return float(threshold_otsu(_sample(_values(image, mask)), nbins=int(bins)))


@step("segment.otsu")
def otsu(image: sitk.Image, *, mask: sitk.Image | None = None, bins: int = 256) -> sitk.Image:
    """Otsu threshold: 1 above the threshold (computed inside ``mask`` when given, applied there)."""
    if int(bins) < 2:
        raise ImagingError(f"Parameter 'bins' must be at least 2, got {bins!r}.")
    value = otsu_threshold_value(image, mask=mask, bins=bins)
    out = sitk.GetArrayViewFromImage(image) > value
    if mask is not None:
        out &= _mask_array(mask)
    return _as_mask(out, image)


@step("segment.multi_otsu")
def multi_otsu(
    image: sitk.Image, *, classes: int = 3, select: int | None = None, mask: sitk.Image | None = None
) -> sitk.Image:
    """Multi-Otsu: a label map 1..classes (ordered by intensity), or the mask of class ``select``
    (1-based; -1 = the brightest)."""
    if not 2 <= int(classes) <= 8:
        raise ImagingError(f"Parameter 'classes' must be between 2 and 8, got {classes!r}.")
    thresholds = threshold_multiotsu(_sample(_values(image, mask)), classes=int(classes))
    labels = np.digitize(sitk.GetArrayViewFromImage(image), thresholds).astype(np.uint8) + 1
    return _labels_or_class(labels, image, mask, int(classes), select)


def _labels_or_class(
    labels: np.ndarray, image: sitk.Image, mask: sitk.Image | None, classes: int, select: int | None
) -> sitk.Image:
    if mask is not None:
        labels = np.where(_mask_array(mask), labels, 0).astype(np.uint8)
    if select is None:
        return like(labels, image, sitk.sitkUInt8)
    index = int(select)
    if not (1 <= index <= classes or -classes <= index <= -1):
        raise ImagingError(
            f"Parameter 'select' must be a class 1..{classes} or -1..-{classes}, got {select!r}."
        )
    return _as_mask(labels == (index if index > 0 else classes + 1 + index), image)


# ----------------------------------------------------------------------------------------- seeds


def seeds_from_mask(mask: sitk.Image, *, count: int = 1) -> list[tuple[float, ...]]:
    """Physical points of the deepest voxels (distance-transform maxima) of the ``count`` largest regions.

    Each region is cropped to its bounding box (padded by one background voxel, so the image border
    counts as the region's edge) before its float32 distance map is computed.
    """
    components = sitk.RelabelComponent(
        sitk.ConnectedComponent(sitk.Cast(mask, sitk.sitkUInt8)), sortByObjectSize=True
    )
    shapes = sitk.LabelShapeStatisticsImageFilter()
    shapes.Execute(components)
    dim = mask.GetDimension()
    seeds = []
    for label in range(1, int(count) + 1):
        if not shapes.HasLabel(label):
            break
        box = shapes.GetBoundingBox(label)
        start, size = box[:dim], box[dim:]
        region = components[tuple(slice(b, b + n) for b, n in zip(start, size, strict=True))] == label
        padded = sitk.ConstantPad(region, [1] * dim, [1] * dim, 0)
        distance = sitk.SignedMaurerDistanceMap(
            padded, insideIsPositive=True, squaredDistance=False, useImageSpacing=True
        )
        depth = sitk.GetArrayViewFromImage(distance)
        deepest = np.unravel_index(int(np.argmax(depth)), depth.shape)[::-1]
        index = [int(b + i - 1) for b, i in zip(start, deepest, strict=True)]
        seeds.append(mask.TransformIndexToPhysicalPoint(index))
    if not seeds:
        raise ImagingError("No seed can be placed: the seed region is empty.")
    return seeds


def _seed_indices(image: sitk.Image, seeds_mm: Sequence[Point]) -> list[tuple[int, ...]]:
    indices = []
    for point in seeds_mm:
        if len(point) != image.GetDimension():
            raise ImagingError(f"Seed {tuple(point)!r} needs {image.GetDimension()} coordinates (mm).")
        index = image.TransformPhysicalPointToIndex([float(c) for c in point])
        if not all(0 <= i < n for i, n in zip(index, image.GetSize(), strict=True)):
            raise ImagingError(f"Seed {tuple(point)!r} mm lies outside the image.")
        indices.append(tuple(int(i) for i in index))
    return indices


@step("segment.region_growing")
def region_growing(
    image: sitk.Image,
    *,
    seeds_mm: Sequence[Point] | None = None,
    method: str = "connected",
    lower: float | None = None,
    upper: float | None = None,
    multiplier: float = 2.5,
    iterations: int = 3,
    neighbourhood_mm: float = 2.0,
    seed_region: sitk.Image | None = None,
) -> sitk.Image:
    """Region growing from seeds: ``connected`` (threshold window) or ``confidence`` connected.

    Without ``seeds_mm`` one seed is placed at the deepest point of ``seed_region`` (default: the
    largest component of the [lower, upper] window when one is given, else of the Otsu foreground).
    The ``connected`` window defaults to the seed neighbourhood's mean ± ``multiplier`` x std;
    ``confidence`` re-estimates it ``iterations`` times from the region.
    """
    require_choice("method", method, ("connected", "confidence"))
    multiplier = require_positive("multiplier", multiplier)
    neighbourhood_mm = require_positive("neighbourhood_mm", neighbourhood_mm)
    image = to_float(image)
    if seeds_mm is None:
        if seed_region is not None:
            region = seed_region
        elif lower is not None or upper is not None:
            region = largest_components(threshold(image, lower=lower, upper=upper))
        else:
            region = largest_components(otsu(image))
        seeds_mm = seeds_from_mask(region)
    seeds = _seed_indices(image, seeds_mm)
    radius = mm_to_radius(image, neighbourhood_mm, minimum=1)
    if method == "confidence":
        return sitk.ConfidenceConnected(
            image,
            seedList=seeds,
            numberOfIterations=int(iterations),
            multiplier=multiplier,
            initialNeighborhoodRadius=max(radius),
            replaceValue=1,
        )
    if lower is None or upper is None:
        stats = _neighbourhood_stats(image, seeds, radius)
        lower = stats[0] - multiplier * stats[1] if lower is None else lower
        upper = stats[0] + multiplier * stats[1] if upper is None else upper
    return sitk.ConnectedThreshold(
        image, seedList=seeds, lower=float(lower), upper=float(upper), replaceValue=1
    )


def _neighbourhood_stats(
    image: sitk.Image, seeds: list[tuple[int, ...]], radius: list[int]
) -> tuple[float, float]:
    array = sitk.GetArrayViewFromImage(image)
    values = []
    for seed in seeds:
        box = tuple(slice(max(0, c - r), c + r + 1) for c, r in zip(seed[::-1], radius[::-1], strict=True))
        values.append(array[box].ravel())
    joined = np.concatenate(values)
    return float(joined.mean()), float(max(joined.std(), 1e-3))


# ------------------------------------------------------------------------------------- watershed


@step("segment.watershed")
def watershed(
    image: sitk.Image,
    *,
    markers: sitk.Image | None = None,
    lower: float | None = None,
    upper: float | None = None,
    sigma_mm: float = 1.0,
    marker_margin_mm: float = 3.0,
) -> sitk.Image:
    """Marker-based watershed on the gradient magnitude (sigma in mm).

    With ``markers`` (a label map) the flooded label map is returned. Without, markers are derived
    from a rough foreground (the [lower, upper] window when given, else Otsu): its largest component
    and the background, each eroded by ``marker_margin_mm``; the result is then the foreground mask.
    """
    sigma_mm = require_positive("sigma_mm", sigma_mm)
    margin = require_positive("marker_margin_mm", marker_margin_mm)
    image = to_float(image)
    automatic = markers is None
    if automatic:
        fg = otsu(image) if lower is None and upper is None else threshold(image, lower=lower, upper=upper)
        inner = erode(largest_components(fg), radius_mm=margin)
        outer = erode(1 - fg, radius_mm=margin)
        if not sitk.GetArrayViewFromImage(inner).any():
            raise ImagingError(
                f"The foreground vanishes when eroded by marker_margin_mm={marker_margin_mm!r}."
            )
        markers = sitk.Cast(outer + 2 * inner, sitk.sitkUInt8)
    else:
        require_same_grid(image, markers, "marker image")
        markers = sitk.Cast(markers, sitk.sitkUInt8)
    gradient = sitk.GradientMagnitudeRecursiveGaussian(image, sigma_mm)
    flooded = sitk.MorphologicalWatershedFromMarkers(
        gradient, markers, markWatershedLine=False, fullyConnected=True
    )
    flooded = sitk.Cast(flooded, sitk.sitkUInt8)
    return sitk.Cast(flooded == 2, sitk.sitkUInt8) if automatic else flooded


# ------------------------------------------------------------------------------------ clustering


def _features(image: sitk.Image, feature_sigma_mm: float | None, inside: np.ndarray | None) -> np.ndarray:
    """Voxel features (intensity, optionally smoothed intensity), standardised over ``inside``."""
    columns = [sitk.GetArrayViewFromImage(image).ravel()]
    if feature_sigma_mm:
        smooth = sitk.SmoothingRecursiveGaussian(
            image, require_positive("feature_sigma_mm", feature_sigma_mm)
        )
        columns.append(sitk.GetArrayFromImage(smooth).ravel())
    features = np.stack(columns, axis=1).astype(np.float32)
    train = features if inside is None else features[inside]
    scale = train.std(axis=0, dtype=np.float64)
    features -= train.mean(axis=0, dtype=np.float64).astype(np.float32)
    features /= np.where(scale > 0, scale, 1).astype(np.float32)
    return features


def _chunked(function: Callable[[np.ndarray], np.ndarray], features: np.ndarray) -> np.ndarray:
    """Apply a row-wise function in chunks (bounded memory on 512x512x300 volumes)."""
    step = 1_000_000
    return np.concatenate([function(features[i : i + step]) for i in range(0, features.shape[0], step)])


def _order_by_intensity(assignment: np.ndarray, centres: np.ndarray) -> np.ndarray:
    order = np.argsort(np.argsort(centres[:, 0]))  # cluster -> rank by (standardised) intensity
    return (order[assignment] + 1).astype(np.uint8)


@step("segment.kmeans")
def kmeans(
    image: sitk.Image,
    *,
    clusters: int = 3,
    select: int | None = None,
    mask: sitk.Image | None = None,
    feature_sigma_mm: float | None = None,
    seed: int = 0,
) -> sitk.Image:
    """k-means on intensity (plus Gaussian-smoothed intensity when ``feature_sigma_mm``): labels 1..K.

    Clusters are ordered by mean intensity; ``select`` returns one class as a mask (-1 = brightest).
    """
    if not 2 <= int(clusters) <= 12:
        raise ImagingError(f"Parameter 'clusters' must be between 2 and 12, got {clusters!r}.")
    image = to_float(image)
    if mask is not None:
        require_same_grid(image, mask)
    inside = None if mask is None else _mask_array(mask).ravel()
    features = _features(image, feature_sigma_mm, inside)
    train = features if inside is None else features[inside]
    if train.shape[0] > _SAMPLE:
        train = train[np.random.default_rng(seed).choice(train.shape[0], _SAMPLE, replace=False)]
    centres, _ = kmeans2(train, int(clusters), minit="++", seed=int(seed))
    assignment = _chunked(lambda rows: vq(rows, centres.astype(np.float32))[0], features)
    labels = _order_by_intensity(assignment, centres).reshape(sitk.GetArrayViewFromImage(image).shape)
    return _labels_or_class(labels, image, mask, int(clusters), select)


@step("segment.fuzzy_cmeans")
def fuzzy_cmeans(
    image: sitk.Image,
    *,
    clusters: int = 3,
    fuzziness: float = 2.0,
    select: int | None = None,
    membership: float | None = None,
    mask: sitk.Image | None = None,
    feature_sigma_mm: float | None = None,
    iterations: int = 100,
    seed: int = 0,
) -> sitk.Image:
    """Fuzzy c-means (numpy): hard labels 1..K by maximum membership, ordered by intensity.

    With ``select`` and ``membership`` the mask is membership(select) >= ``membership``.
    """
    if not 2 <= int(clusters) <= 12:
        raise ImagingError(f"Parameter 'clusters' must be between 2 and 12, got {clusters!r}.")
    if float(fuzziness) <= 1.0:
        raise ImagingError(f"Parameter 'fuzziness' must be greater than 1, got {fuzziness!r}.")
    if membership is not None and not 0 < float(membership) < 1:
        raise ImagingError(f"Parameter 'membership' must be in (0, 1), got {membership!r}.")
    image = to_float(image)
    if mask is not None:
        require_same_grid(image, mask)
    inside = None if mask is None else _mask_array(mask).ravel()
    features = _features(image, feature_sigma_mm, inside)
    train = features if inside is None else features[inside]
    if train.shape[0] > _SAMPLE // 6:  # FCM iterates on a 50k-voxel sample; all voxels are then assigned
        train = train[np.random.default_rng(seed).choice(train.shape[0], _SAMPLE // 6, replace=False)]
    # initialised by k-means (k-means++ seeding): FCM from random seeds often splits the largest class
    centres, _ = kmeans2(train, int(clusters), minit="++", seed=int(seed))
    centres = centres.astype(np.float64) + np.random.default_rng(seed).normal(0, 1e-3, centres.shape)
    for _ in range(int(iterations)):
        weights = _memberships(train, centres, fuzziness) ** fuzziness
        updated = (weights.T @ train) / weights.sum(axis=0)[:, None]
        shift = float(np.abs(updated - centres).max())
        centres = updated
        if shift < 1e-5:
            break
    shape = sitk.GetArrayViewFromImage(image).shape
    ranks = np.argsort(np.argsort(centres[:, 0]))
    if select is not None and membership is not None:
        index = int(select)
        if not (1 <= index <= clusters or -clusters <= index <= -1):
            raise ImagingError(
                f"Parameter 'select' must be a class 1..{clusters} or -1..-{clusters}, got {select!r}."
            )
        rank = index - 1 if index > 0 else int(clusters) + index
        column = int(np.flatnonzero(ranks == rank)[0])
        chosen = _chunked(lambda rows: _memberships(rows, centres, fuzziness)[:, column], features)
        chosen = chosen >= float(membership)
        chosen = chosen.reshape(shape)
        if mask is not None:
            chosen &= _mask_array(mask)
        return _as_mask(chosen, image)
    assignment = _chunked(lambda rows: np.argmax(_memberships(rows, centres, fuzziness), axis=1), features)
    labels = (ranks[assignment] + 1).astype(np.uint8).reshape(shape)
    return _labels_or_class(labels, image, mask, int(clusters), select)


def _memberships(points: np.ndarray, centres: np.ndarray, fuzziness: float) -> np.ndarray:
    distance = np.linalg.norm(points[:, None, :] - centres[None, :, :], axis=2) + 1e-12
    inverse = distance ** (-2.0 / (fuzziness - 1.0))
    return inverse / inverse.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------ edges


@step("segment.sobel")
def sobel(image: sitk.Image, *, sigma_mm: float | None = None) -> sitk.Image:
    """Sobel gradient magnitude (float32 edge map), optionally after Gaussian smoothing in mm."""
    image = to_float(image)
    if sigma_mm:
        image = sitk.SmoothingRecursiveGaussian(image, require_positive("sigma_mm", sigma_mm))
    return sitk.SobelEdgeDetection(image)


@step("segment.laplacian_of_gaussian")
def laplacian_of_gaussian(image: sitk.Image, *, sigma_mm: float = 1.0) -> sitk.Image:
    """Scale-normalised Laplacian of Gaussian response (float32; negative inside bright blobs)."""
    sigma_mm = require_positive("sigma_mm", sigma_mm)
    return sitk.LaplacianRecursiveGaussian(to_float(image), sigma=sigma_mm, normalizeAcrossScale=True)


def _per_slice(
    image: sitk.Image, function: Callable[[sitk.Image], sitk.Image], slicewise: bool
) -> sitk.Image:
    if not slicewise or image.GetDimension() == 2:
        return function(image)
    out = sitk.JoinSeries([function(image[:, :, k]) for k in range(image.GetSize()[2])])
    out.CopyInformation(image)
    return out


@step("segment.canny")
def canny(
    image: sitk.Image,
    *,
    sigma_mm: float = 1.0,
    lower: float | None = None,
    upper: float | None = None,
    slicewise: bool = True,
) -> sitk.Image:
    """Canny edge mask (thin edges, 1). Thresholds on the gradient magnitude default to Otsu of it
    (``upper``) and half that (``lower``). ``slicewise`` runs 2-D Canny on each axial slice."""
    sigma_mm = require_positive("sigma_mm", sigma_mm)
    image = to_float(image)
    if upper is None:
        gradient = sitk.GradientMagnitudeRecursiveGaussian(image, sigma_mm)
        upper = otsu_threshold_value(gradient)
    lower = float(upper) / 2 if lower is None else float(lower)
    if lower > float(upper):
        raise ImagingError(f"Canny 'lower' ({lower!r}) is above 'upper' ({upper!r}).")

    def run(img: sitk.Image) -> sitk.Image:
        edges = sitk.CannyEdgeDetection(
            img,
            lowerThreshold=lower,
            upperThreshold=float(upper),
            variance=[sigma_mm**2] * img.GetDimension(),
        )
        return sitk.Cast(edges > 0, sitk.sitkUInt8)

    return _per_slice(image, run, slicewise)


@step("segment.edge_region")
def edge_region(
    image: sitk.Image,
    *,
    detector: str = "canny",
    sigma_mm: float = 1.0,
    clean_mm: float = 1.0,
) -> sitk.Image:
    """Regions enclosed by edges found slice by slice: ``canny``, ``sobel`` (Otsu-thresholded
    magnitude) or ``log`` (zero crossings of the LoG where the gradient is significant).

    Holes enclosed by edges are filled per slice; each edge voxel is then given to the side (inside
    or the 2 mm ring outside) whose mean intensity it is closer to, and an opening by ``clean_mm``
    removes edge fragments that enclose nothing.
    """
    require_choice("detector", detector, ("canny", "sobel", "log"))
    sigma_mm = require_positive("sigma_mm", sigma_mm)
    image = to_float(image)
    if detector == "canny":
        edges = canny(image, sigma_mm=sigma_mm)
    elif detector == "sobel":
        magnitude = _per_slice(image, lambda img: sobel(img, sigma_mm=sigma_mm), True)
        edges = sitk.Cast(magnitude > otsu_threshold_value(magnitude), sitk.sitkUInt8)
    else:
        log_image = _per_slice(image, lambda img: laplacian_of_gaussian(img, sigma_mm=sigma_mm), True)
        crossings = sitk.ZeroCrossing(log_image, foregroundValue=1, backgroundValue=0)
        gradient = _per_slice(image, lambda img: sitk.GradientMagnitudeRecursiveGaussian(img, sigma_mm), True)
        strong = gradient > otsu_threshold_value(gradient)
        edges = sitk.Cast(crossings * sitk.Cast(strong, crossings.GetPixelID()), sitk.sitkUInt8)
    filled = fill_holes(edges, slicewise=True)
    region = _split_edge_band(image, filled, edges)
    return opening(region, radius_mm=clean_mm, slicewise=True) if clean_mm else region


def _split_edge_band(image: sitk.Image, filled: sitk.Image, edges: sitk.Image) -> sitk.Image:
    values = sitk.GetArrayViewFromImage(image)
    inside = _mask_array(filled)
    band = inside & _mask_array(edges)
    core = inside & ~band
    ring = _mask_array(dilate(filled, radius_mm=2.0, slicewise=True)) & ~inside
    if not core.any() or not ring.any():
        return filled
    inner, outer = float(values[core].mean()), float(values[ring].mean())
    keep = core | (band & (np.abs(values - inner) <= np.abs(values - outer)))
    return _as_mask(keep, image)


@step("segment.geodesic_active_contour")
def geodesic_active_contour(
    image: sitk.Image,
    *,
    initial: sitk.Image,
    sigma_mm: float = 1.0,
    propagation: float = 1.0,
    curvature: float = 1.0,
    advection: float = 1.0,
    iterations: int = 300,
    max_rms_error: float = 0.002,
) -> sitk.Image:
    """Refine an initial mask with a geodesic active contour level set (ITK).

    The speed image is a sigmoid of the gradient magnitude (sigma in mm) whose midpoint lies between
    the gradient inside the initial mask (median) and the Otsu edge level, so it is ~1 in flat
    regions and ~0 on edges. Positive ``propagation`` inflates, negative deflates the contour.
    """
    sigma_mm = require_positive("sigma_mm", sigma_mm)
    if int(iterations) < 1:
        raise ImagingError(f"Parameter 'iterations' must be at least 1, got {iterations!r}.")
    image = to_float(image)
    require_same_grid(image, initial, "initial mask")
    gradient = sitk.GradientMagnitudeRecursiveGaussian(image, sigma_mm)
    flat = float(np.median(_values(gradient, initial)))
    edge = otsu_threshold_value(gradient)
    edge = max(edge, flat + 1e-3)
    speed = sitk.Sigmoid(
        gradient, alpha=-(edge - flat) / 6.0, beta=(edge + flat) / 2.0, outputMaximum=1.0, outputMinimum=0.0
    )
    level = sitk.SignedMaurerDistanceMap(
        sitk.Cast(initial, sitk.sitkUInt8),
        insideIsPositive=False,
        squaredDistance=False,
        useImageSpacing=True,
    )
    result = sitk.GeodesicActiveContourLevelSet(
        sitk.Cast(level, sitk.sitkFloat32),
        speed,
        maximumRMSError=float(max_rms_error),
        propagationScaling=float(propagation),
        curvatureScaling=float(curvature),
        advectionScaling=float(advection),
        numberOfIterations=int(iterations),
    )
    return sitk.Cast(result < 0, sitk.sitkUInt8)


# ------------------------------------------------------------------------------------ supervoxels


@step("segment.supervoxels")
def supervoxels(
    image: sitk.Image, *, size_mm: float = 10.0, compactness: float = 0.1, mask: sitk.Image | None = None
) -> sitk.Image:
    """SLIC supervoxels (skimage, spacing-aware) of about ``size_mm`` edge: a UInt32 label map (0 = outside).

    Intensities are mapped to [0, 1] by their 1–99 % range first, so ``compactness`` is
    scanner-independent. With ``mask`` only its bounding box is processed (seeded on a regular grid)
    and labels outside the mask are 0.
    """
    size_mm = require_positive("size_mm", size_mm)
    compactness = require_positive("compactness", compactness)
    image = to_float(image)
    array = sitk.GetArrayViewFromImage(image)
    box = tuple(slice(0, n) for n in array.shape)
    inside = None
    if mask is not None:
        require_same_grid(image, mask)
        inside = _mask_array(mask)
        if not inside.any():
            raise ImagingError("The mask is empty: no supervoxels to compute.")
        box = ndimage.find_objects(inside.astype(np.uint8))[0]
        inside = inside[box]
    low, high = robust_range(image, mask=mask)
    crop = np.clip((array[box] - low) / max(high - low, 1e-6), 0, 1)
    spacing = np.array(image.GetSpacing()[::-1])
    volume = float(np.prod(np.array(crop.shape) * spacing))
    segments = max(2, int(round(volume / size_mm ** image.GetDimension())))
    labels = slic(
        crop,
        n_segments=segments,
        compactness=compactness,
        spacing=spacing,
        channel_axis=None,
        start_label=1,
        enforce_connectivity=True,
    )
    if inside is not None:
        # grid seeding on the box, then cut to the mask (skimage's own mask seeding runs k-means on
        # every mask voxel, which does not finish on organ-sized masks)
        labels = np.where(inside, labels, 0).ravel()
        _, compact = np.unique(np.concatenate([[0], labels]), return_inverse=True)  # 0 stays 0
        labels = compact[1:].reshape(inside.shape)
    out = np.zeros(array.shape, np.uint32)
    out[box] = labels
    return like(out, image, sitk.sitkUInt32)


@step("segment.supervoxel_mask")
def supervoxel_mask(
    image: sitk.Image,
    *,
    lower: float | None = None,
    upper: float | None = None,
    reference: sitk.Image | None = None,
    fraction: float = 0.5,
    size_mm: float = 10.0,
    compactness: float = 0.1,
    mask: sitk.Image | None = None,
) -> sitk.Image:
    """Union of the supervoxels whose mean intensity lies in [lower, upper] and/or that overlap
    ``reference`` (a coarse mask) by at least ``fraction``. Without any criterion, supervoxels whose
    mean is above the Otsu threshold are kept."""
    if not 0 < float(fraction) <= 1:
        raise ImagingError(f"Parameter 'fraction' must be in (0, 1], got {fraction!r}.")
    labels_image = supervoxels(image, size_mm=size_mm, compactness=compactness, mask=mask)
    labels = sitk.GetArrayViewFromImage(labels_image)
    count = int(labels.max())
    index = np.arange(1, count + 1)
    keep = np.ones(count, bool)
    if lower is None and upper is None and reference is None:
        lower = otsu_threshold_value(image, mask=mask)
    if lower is not None or upper is not None:
        means = np.asarray(ndimage.mean(sitk.GetArrayViewFromImage(image), labels, index))
        keep &= (means >= (-np.inf if lower is None else float(lower))) & (
            means <= (np.inf if upper is None else float(upper))
        )
    if reference is not None:
        require_same_grid(image, reference, "reference mask")
        overlap = np.asarray(ndimage.mean(_mask_array(reference), labels, index))
        keep &= overlap >= float(fraction)
    lookup = np.concatenate([[False], keep])
    return _as_mask(lookup[labels], image)


# ------------------------------------------------------------------------------------- morphology


def _radius(radius_mm: float) -> float:
    radius_mm = require_positive("radius_mm", radius_mm)
    if radius_mm > 1e4:
        raise ImagingError(f"Parameter 'radius_mm' must be at most 10000 mm, got {radius_mm!r}.")
    return radius_mm


def _morphology(
    operation: Callable[..., np.ndarray], mask: sitk.Image, radius_mm: float, slicewise: bool
) -> sitk.Image:
    array = operation(_mask_array(mask), _radius(radius_mm), spacing_of(mask), slicewise=slicewise)
    return _as_mask(array, mask)


@step("segment.dilate")
def dilate(mask: sitk.Image, *, radius_mm: float = 1.0, slicewise: bool = False) -> sitk.Image:
    """Binary dilation by a ball of ``radius_mm`` (a disc per axial slice when ``slicewise``); see
    :mod:`dicomnode.imaging.morphology` for the semantics of every morphology step."""
    return _morphology(morphology.dilate, mask, radius_mm, slicewise)


@step("segment.erode")
def erode(mask: sitk.Image, *, radius_mm: float = 1.0, slicewise: bool = False) -> sitk.Image:
    """Binary erosion by a ball of ``radius_mm`` (the image border does not erode)."""
    return _morphology(morphology.erode, mask, radius_mm, slicewise)


@step("segment.opening")
def opening(mask: sitk.Image, *, radius_mm: float = 1.0, slicewise: bool = False) -> sitk.Image:
    """Binary opening (removes structures thinner than ~2 x ``radius_mm``)."""
    return _morphology(morphology.opening, mask, radius_mm, slicewise)


@step("segment.closing")
def closing(mask: sitk.Image, *, radius_mm: float = 1.0, slicewise: bool = False) -> sitk.Image:
    """Binary closing (bridges gaps narrower than ~2 x ``radius_mm``)."""
    return _morphology(morphology.closing, mask, radius_mm, slicewise)


@step("segment.fill_holes")
def fill_holes(mask: sitk.Image, *, slicewise: bool = True) -> sitk.Image:
    """Fill holes: background regions not connected to the border, per axial slice or in 3-D."""
    return _as_mask(morphology.fill_holes(_mask_array(mask), slicewise=slicewise), mask)


@step("segment.largest_components")
def largest_components(mask: sitk.Image, *, count: int = 1, min_size_mm3: float = 0.0) -> sitk.Image:
    """Keep the ``count`` largest connected components (26-connected) of at least ``min_size_mm3``."""
    if int(count) < 1:
        raise ImagingError(f"Parameter 'count' must be at least 1, got {count!r}.")
    min_size_mm3 = require_positive("min_size_mm3", min_size_mm3, allow_zero=True)
    min_voxels = int(np.ceil(min_size_mm3 / float(np.prod(mask.GetSpacing()))))
    return morphology.largest_components_image(mask, int(count), min_voxels=min_voxels)


@step("segment.body_mask")
def body_mask(image: sitk.Image, *, threshold: float | None = None, opening_mm: float = 3.0) -> sitk.Image:
    """The patient's body: above ``threshold`` (default Otsu, ~-500 HU on CT), opened by
    ``opening_mm`` per axial slice to detach the table, largest component, holes (lungs, bowel gas)
    filled per slice (:func:`dicomnode.imaging.morphology.body_mask`)."""
    image = to_float(image)
    value = otsu_threshold_value(image) if threshold is None else float(threshold)
    opening_mm = require_positive("opening_mm", opening_mm, allow_zero=True)
    body = morphology.body_mask(
        sitk.GetArrayViewFromImage(image), spacing_of(image), threshold=value, opening_mm=opening_mm
    )
    return _as_mask(body, image)
