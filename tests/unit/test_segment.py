"""Segmentation steps: every method reaches Dice >= 0.9 on a synthetic object it suits."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from dicomnode.errors import ImagingError
from dicomnode.imaging import segment

SPACING = (1.0, 1.0, 2.0)
SHAPE = (16, 64, 64)  # z, y, x


def grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    zz, yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]].astype(np.float32)
    return zz * SPACING[2], yy * SPACING[1], xx * SPACING[0]


def make(array: np.ndarray, pixel=sitk.sitkFloat32) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.uint8 if pixel == sitk.sitkUInt8 else np.float32))
    image.SetSpacing(SPACING)
    image.SetOrigin((-30.0, 12.5, 100.0))
    return image


def organ_phantom(noise: float = 15.0, seed: int = 0) -> tuple[sitk.Image, np.ndarray]:
    """A 150 HU ellipsoid (radii 20/14/11 mm) in a 40 HU body with a -100 HU fat layer, in air."""
    z, y, x = grid()
    organ = ((x - 34) / 20) ** 2 + ((y - 30) / 14) ** 2 + ((z - 15) / 11) ** 2 < 1
    body = ((x - 32) / 30) ** 2 + ((y - 32) / 29) ** 2 < 1
    fat = body & ~(((x - 32) / 26) ** 2 + ((y - 32) / 25) ** 2 < 1)
    array = np.full(SHAPE, -1000.0, np.float32)
    array[body] = 40
    array[fat] = -100
    array[organ] = 150
    array += np.random.default_rng(seed).normal(0, noise, SHAPE).astype(np.float32)
    return make(array), organ


def dice(mask: sitk.Image, truth: np.ndarray) -> float:
    array = sitk.GetArrayViewFromImage(mask).astype(bool)
    return 2 * float((array & truth).sum()) / float(array.sum() + truth.sum())


def inside_body(image: sitk.Image) -> sitk.Image:
    return segment.body_mask(image)


METHODS = {
    "threshold": lambda img: segment.threshold(img, lower=95, upper=400),
    "otsu_inside_fat": lambda img: segment.otsu(
        img, mask=segment.erode(inside_body(img), radius_mm=6.0, slicewise=True)
    ),
    "multi_otsu": lambda img: segment.multi_otsu(img, classes=4, select=-1),
    "region_growing_connected": lambda img: segment.region_growing(img, lower=95, upper=300),
    "region_growing_estimated_window": lambda img: segment.region_growing(
        img, seed_region=segment.threshold(img, lower=95), multiplier=3.5
    ),
    "region_growing_confidence": lambda img: segment.region_growing(
        img, method="confidence", seed_region=segment.threshold(img, lower=95)
    ),
    "region_growing_physical_seed": lambda img: segment.region_growing(img, seeds_mm=[(4.0, 42.5, 115.0)]),
    "watershed": lambda img: segment.watershed(img, lower=95),
    "kmeans": lambda img: segment.kmeans(img, clusters=4, select=-1),
    "kmeans_features_in_body": lambda img: segment.kmeans(
        img, clusters=3, select=-1, feature_sigma_mm=1.5, mask=inside_body(img)
    ),
    "fuzzy_cmeans": lambda img: segment.fuzzy_cmeans(img, clusters=4, select=-1),
    "fuzzy_cmeans_membership": lambda img: segment.fuzzy_cmeans(
        img, clusters=3, select=-1, membership=0.5, mask=inside_body(img)
    ),
    "supervoxel_mask": lambda img: segment.supervoxel_mask(img, lower=95, size_mm=6.0),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_segments_the_organ(name: str) -> None:
    image, truth = organ_phantom()
    mask = METHODS[name](image)
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert mask.GetOrigin() == image.GetOrigin() and mask.GetSpacing() == image.GetSpacing()
    assert set(np.unique(sitk.GetArrayViewFromImage(mask))) <= {0, 1}
    assert dice(mask, truth) >= 0.9, name


def object_on_body(noise: float = 10.0) -> tuple[sitk.Image, np.ndarray]:
    """The organ on a uniform 40 HU background (no air): edge detectors see one closed contour."""
    z, y, x = grid()
    organ = ((x - 34) / 20) ** 2 + ((y - 30) / 14) ** 2 + ((z - 15) / 11) ** 2 < 1
    array = np.where(organ, 150.0, 40.0) + np.random.default_rng(1).normal(0, noise, SHAPE)
    return make(array), organ


@pytest.mark.parametrize("detector", ["canny", "sobel", "log"])
def test_edge_based_regions(detector: str) -> None:
    image, truth = object_on_body()
    assert dice(segment.edge_region(image, detector=detector, sigma_mm=1.0), truth) >= 0.9


def test_edge_maps_peak_on_the_boundary() -> None:
    image, truth = object_on_body()
    boundary = truth & ~sitk.GetArrayViewFromImage(
        segment.erode(make(truth, sitk.sitkUInt8), radius_mm=1.0, slicewise=True)
    ).astype(bool)
    flat = sitk.GetArrayFromImage(segment.erode(make(truth, sitk.sitkUInt8), radius_mm=5.0)).astype(bool)
    sob = sitk.GetArrayFromImage(segment.sobel(image, sigma_mm=1.0))
    assert sob[boundary].mean() > 5 * sob[flat].mean()
    log_response = sitk.GetArrayFromImage(segment.laplacian_of_gaussian(image, sigma_mm=2.0))
    assert log_response[boundary].mean() < 0 < log_response[~truth].max()
    edges = sitk.GetArrayFromImage(segment.canny(image)).astype(bool)
    assert edges[flat].mean() < 0.01 and edges.sum() > 0


def test_geodesic_active_contour_refines_a_coarse_mask() -> None:
    image, truth = object_on_body()
    initial = segment.erode(make(truth, sitk.sitkUInt8), radius_mm=5.0, slicewise=True)
    assert dice(initial, truth) < 0.8
    refined = segment.geodesic_active_contour(image, initial=initial, propagation=1.0, iterations=400)
    assert dice(refined, truth) >= 0.9


def test_marker_watershed_with_given_markers_returns_labels() -> None:
    image, truth = object_on_body()
    markers = np.zeros(SHAPE, np.uint8)
    markers[:, 2, 2] = 1
    markers[7, 30, 34] = 2
    labels = segment.watershed(image, markers=make(markers, sitk.sitkUInt8))
    assert dice(make(sitk.GetArrayFromImage(labels) == 2, sitk.sitkUInt8), truth) >= 0.9


def test_multi_otsu_label_map_orders_classes_by_intensity() -> None:
    image, truth = organ_phantom()
    labels = sitk.GetArrayFromImage(segment.multi_otsu(image, classes=4))
    assert labels[truth].mean() > 3.9
    assert np.bincount(labels.ravel()).argmax() in (1, 3)


def test_supervoxels_are_spacing_aware_labels() -> None:
    image, truth = organ_phantom()
    labels = segment.supervoxels(image, size_mm=8.0, mask=inside_body(image))
    assert labels.GetPixelID() == sitk.sitkUInt32
    array = sitk.GetArrayViewFromImage(labels)
    assert 30 < len(np.unique(array)) < 400
    assert (array[sitk.GetArrayFromImage(inside_body(image)) == 0] == 0).all()


def test_supervoxel_selection_by_overlap_with_a_coarse_mask() -> None:
    image, truth = organ_phantom()
    coarse = segment.dilate(make(truth, sitk.sitkUInt8), radius_mm=2.0)
    mask = segment.supervoxel_mask(image, reference=coarse, fraction=0.6, size_mm=6.0)
    assert dice(mask, truth) >= 0.9


def test_morphology_in_mm() -> None:
    z, y, x = grid()
    disc = ((x - 32) ** 2 + (y - 32) ** 2) < 15**2
    noisy = disc.copy()
    noisy[:, 5, 5] = True  # a speck
    noisy[:, 32, 20:25] = False  # a hole inside
    noisy[:, 10:54, 32] = False  # a 1 mm cut through the disc
    mask = make(noisy, sitk.sitkUInt8)
    opened = sitk.GetArrayFromImage(segment.opening(mask, radius_mm=2.0, slicewise=True))
    assert not opened[:, 5, 5].any()
    closed = sitk.GetArrayFromImage(segment.closing(mask, radius_mm=2.0, slicewise=True))
    assert closed[:, 30, 32].all()
    filled = sitk.GetArrayFromImage(segment.fill_holes(mask))
    assert filled[:, 32, 22].all() and not filled[:, 5, 6].any()
    dilated = sitk.GetArrayFromImage(segment.dilate(make(disc, sitk.sitkUInt8), radius_mm=3.0))
    assert dilated[8, 32, 32 + 17] and not dilated[8, 32, 32 + 19]
    # 3 mm ball: 1 slice (2 mm) up and down, not 2
    point = np.zeros(SHAPE, bool)
    point[8, 32, 32] = True
    ball = sitk.GetArrayFromImage(segment.dilate(make(point, sitk.sitkUInt8), radius_mm=3.0))
    assert ball[7, 32, 32] and ball[9, 32, 32] and not ball[6, 32, 32]


def test_fill_holes_slicewise_versus_3d() -> None:
    tube = np.zeros(SHAPE, bool)
    z, y, x = grid()
    ring = ((x - 32) ** 2 + (y - 32) ** 2 < 10**2) & ((x - 32) ** 2 + (y - 32) ** 2 >= 6**2)
    tube[2:14] = ring[2:14]  # open-ended tube: its lumen is a hole per slice but not in 3-D
    tube[2] |= (x[2] - 32) ** 2 + (y[2] - 32) ** 2 < 10**2  # close one end only
    mask = make(tube, sitk.sitkUInt8)
    assert sitk.GetArrayFromImage(segment.fill_holes(mask, slicewise=True))[8, 32, 32] == 1
    assert sitk.GetArrayFromImage(segment.fill_holes(mask, slicewise=False))[8, 32, 32] == 0


def test_largest_components_and_min_size() -> None:
    array = np.zeros(SHAPE, bool)
    array[2:10, 5:25, 5:25] = True  # 3200 voxels
    array[2:10, 40:50, 40:50] = True  # 800
    array[12:14, 40:43, 5:8] = True  # 18 voxels = 36 mm3
    mask = make(array, sitk.sitkUInt8)
    one = sitk.GetArrayFromImage(segment.largest_components(mask))
    assert one.sum() == 3200
    two = sitk.GetArrayFromImage(segment.largest_components(mask, count=5, min_size_mm3=100))
    assert two.sum() == 4000


def test_body_mask_covers_body_including_internal_air() -> None:
    image, _ = organ_phantom()
    z, y, x = grid()
    array = sitk.GetArrayFromImage(image)
    gas = ((x - 32) ** 2 + (y - 48) ** 2) < 4**2
    array[gas] = -950
    array[:, 62:64, :] = 200  # a table under the patient, touching the body only through noise
    body_truth = ((x - 32) / 30) ** 2 + ((y - 32) / 29) ** 2 < 1
    mask = segment.body_mask(make(array))
    assert dice(mask, body_truth) >= 0.97


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda img: segment.threshold(img), "got neither"),
        (lambda img: segment.threshold(img, lower=5, upper=1), r"'lower' \(5\) is above 'upper' \(1\)"),
        (lambda img: segment.multi_otsu(img, classes=12), "between 2 and 8, got 12"),
        (lambda img: segment.multi_otsu(img, classes=3, select=4), "got 4"),
        (lambda img: segment.region_growing(img, method="flood"), "got 'flood'"),
        (lambda img: segment.region_growing(img, seeds_mm=[(1e4, 0.0, 0.0)]), r"Seed \(10000.0, 0.0, 0.0\)"),
        (lambda img: segment.kmeans(img, clusters=1), "got 1"),
        (lambda img: segment.fuzzy_cmeans(img, fuzziness=1.0), "greater than 1, got 1.0"),
        (lambda img: segment.edge_region(img, detector="prewitt"), "got 'prewitt'"),
        (lambda img: segment.opening(segment.otsu(img), radius_mm=-2), "got -2"),
        (lambda img: segment.largest_components(segment.otsu(img), count=0), "at least 1, got 0"),
        (lambda img: segment.supervoxels(img, size_mm=0), "'size_mm' must be positive, got 0"),
        (lambda img: segment.watershed(img, marker_margin_mm=500), "marker_margin_mm=500"),
    ],
)
def test_invalid_parameters_raise_imaging_error(call, message: str) -> None:
    with pytest.raises(ImagingError, match=message):
        call(organ_phantom()[0])


def test_mask_on_another_grid_is_rejected() -> None:
    image, _ = organ_phantom()
    other = sitk.Image(10, 10, 10, sitk.sitkUInt8)
    with pytest.raises(ImagingError, match="not on the image grid"):
        segment.otsu(image, mask=other)
