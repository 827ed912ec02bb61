"""Fusion of two co-registered series: the fused image carries the salient detail of both inputs."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from dicomnode.errors import ImagingError
from dicomnode.imaging import fuse
from dicomnode.pipelines.steps import step_registry

STEPS = step_registry()

SHAPE = (4, 96, 96)


def pair() -> tuple[sitk.Image, sitk.Image]:
    """A CT-like series (HU) with a bright insert X and an MR-like series (0..1) with a dark-rim insert Y."""
    zz, yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    body = ((xx - 48) ** 2 + (yy - 48) ** 2) < 40**2
    ct = np.where(body, 40.0, -1000.0)
    ct[:, 30:36, 30:36] = 400.0  # X: only visible on CT
    mr = np.where(body, 0.5, 0.0)
    mr[:, 60:66, 60:66] = 1.0  # Y: only visible on MR
    rng = np.random.default_rng(0)
    a = sitk.GetImageFromArray((ct + rng.normal(0, 5, SHAPE)).astype(np.float32))
    b = sitk.GetImageFromArray((mr + rng.normal(0, 0.01, SHAPE)).astype(np.float32))
    for image in (a, b):
        image.SetSpacing((1.0, 1.0, 3.0))
    return a, b


def feature_contrast(image: sitk.Image, box: tuple[slice, slice]) -> float:
    array = sitk.GetArrayViewFromImage(image)
    inside = array[:, box[0], box[1]].mean()
    ring = array[:, box[0].start - 6 : box[0].stop + 6, box[1].start - 6 : box[1].stop + 6].copy()
    ring[:, 6:-6, 6:-6] = np.nan
    return float(inside - np.nanmean(ring))


X = (slice(30, 36), slice(30, 36))
Y = (slice(60, 66), slice(60, 66))


@pytest.mark.parametrize(
    ("name", "minimum"), [("weighted_average", 0.4), ("pca_fusion", 0.3), ("wavelet_fusion", 0.7)]
)
def test_fused_image_carries_detail_of_both_inputs(name: str, minimum: float) -> None:
    a, b = pair()
    fused = STEPS[f"fuse.{name}"](a, other=b)
    assert fused.GetPixelID() == sitk.sitkFloat32 and fused.GetSize() == a.GetSize()
    # both features, measured on the CT scale (the MR feature on the intensity-matched MR)
    matched_b = fuse.weighted_average(a, other=b, weight=1.0)
    assert feature_contrast(fused, X) >= minimum * feature_contrast(a, X)
    assert feature_contrast(fused, Y) >= minimum * feature_contrast(matched_b, Y)
    # fused in the first series' units: body near 40 HU-ish scale, air stays strongly negative
    array = sitk.GetArrayViewFromImage(fused)
    assert array[:, 45:50, 80:85].mean() > array[:, 2:6, 2:6].mean() + 500


def test_wavelet_fusion_keeps_more_detail_than_averaging() -> None:
    a, b = pair()
    wavelet = fuse.wavelet_fusion(a, other=b)
    average = fuse.weighted_average(a, other=b)
    assert feature_contrast(wavelet, X) > feature_contrast(average, X)
    assert fuse.wavelet_fusion(a, other=b, slicewise=False).GetSize() == a.GetSize()


def test_pca_weights_favour_the_higher_variance_input() -> None:
    rng = np.random.default_rng(1)
    strong = rng.normal(0, 10, 10_000)
    weak = 0.1 * strong + rng.normal(0, 0.1, 10_000)
    wa, wb = fuse.pca_weights(strong, weak)
    assert wa > 0.85 and wa + wb == pytest.approx(1.0)


def test_other_grid_is_resampled_onto_the_first() -> None:
    a, b = pair()
    coarse = sitk.Resample(
        b,
        [48, 48, 4],
        sitk.Transform(),
        sitk.sitkLinear,
        b.GetOrigin(),
        (2.0, 2.0, 3.0),
        b.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )
    fused = fuse.weighted_average(a, other=coarse)
    assert fused.GetSize() == a.GetSize() and fused.GetSpacing() == a.GetSpacing()


def test_weight_zero_returns_the_first_image() -> None:
    a, b = pair()
    assert np.array_equal(
        sitk.GetArrayFromImage(fuse.weighted_average(a, other=b, weight=0.0)), sitk.GetArrayFromImage(a)
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda a, b: fuse.weighted_average(a, other=b, weight=1.5), "between 0 and 1, got 1.5"),
        (lambda a, b: fuse.wavelet_fusion(a, other=b, wavelet="morlet"), "got 'morlet'"),
        (lambda a, b: fuse.wavelet_fusion(a, other=b, levels=0), "between 1 and 8, got 0"),
        (lambda a, b: fuse.pca_fusion(a, other=b[:, :, 0]), "3-D image with a 2-D image"),
    ],
)
def test_invalid_parameters_raise_imaging_error(call, message: str) -> None:
    with pytest.raises(ImagingError, match=message):
        call(*pair())
