"""Preprocessing steps: denoisers, resampling, windowing/normalisation, rigid registration."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from dicomnode.errors import ImagingError
from dicomnode.imaging import preprocess
from dicomnode.pipelines.steps import step_registry

STEPS = step_registry()

STEP_HU = 200.0
NOISE_HU = 25.0


def block_image(seed: int = 0) -> tuple[sitk.Image, np.ndarray]:
    """A noisy 96x96x6 CT-like volume (1 x 1 x 2.5 mm): a 200 HU block on 0 HU, noise sigma 25 HU."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((6, 96, 96), np.float32)
    truth[:, 24:72, 24:72] = STEP_HU
    noisy = truth + rng.normal(0, NOISE_HU, truth.shape).astype(np.float32)
    image = sitk.GetImageFromArray(noisy)
    image.SetSpacing((1.0, 1.0, 2.5))
    image.SetOrigin((-48.0, -48.0, 10.0))
    return image, truth


def flat_std(image: sitk.Image) -> float:
    array = sitk.GetArrayViewFromImage(image)
    return float(np.std(array[1:-1, 35:61, 35:61]))


def edge_step(image: sitk.Image) -> float:
    """Mean intensity 2 voxels inside the left edge minus 2 voxels outside it."""
    array = sitk.GetArrayViewFromImage(image)
    return float(array[1:-1, 30:66, 25:27].mean() - array[1:-1, 30:66, 21:23].mean())


DENOISERS = {
    "median": {"radius_mm": 1.5},
    "gaussian": {"sigma_mm": 1.0},
    "anisotropic_diffusion": {"iterations": 10},
    "bilateral": {"domain_sigma_mm": 1.5},
    "nl_means": {},
    "wavelet_denoise": {},
}


@pytest.mark.parametrize("name", sorted(DENOISERS))
def test_denoisers_reduce_flat_noise_and_keep_edges(name: str) -> None:
    image, _ = block_image()
    out = STEPS[f"preprocess.{name}"](image, **DENOISERS[name])
    assert out.GetPixelID() == sitk.sitkFloat32
    assert out.GetSize() == image.GetSize() and out.GetSpacing() == image.GetSpacing()
    assert out.GetOrigin() == image.GetOrigin()
    assert flat_std(out) < 0.6 * flat_std(image), name
    assert edge_step(out) > 0.8 * STEP_HU, name


def test_noise_estimate_is_close_to_truth() -> None:
    image, _ = block_image()
    assert preprocess.estimate_noise_sigma(image) == pytest.approx(NOISE_HU, rel=0.1)


def test_resample_to_isotropic_and_back_keeps_extent_and_values() -> None:
    image = preprocess.gaussian(block_image()[0], sigma_mm=2.0)
    iso = preprocess.resample(image)
    assert iso.GetSpacing() == pytest.approx((1.0, 1.0, 1.0))
    assert iso.GetSize() == (96, 96, 15)
    # same physical extent: first voxel corner unchanged
    corner_in = np.array(image.GetOrigin()) - np.array(image.GetSpacing()) / 2
    corner_out = np.array(iso.GetOrigin()) - np.array(iso.GetSpacing()) / 2
    assert np.allclose(corner_in, corner_out)
    back = preprocess.resample_like(iso, reference=image)
    assert back.GetSize() == image.GetSize() and back.GetOrigin() == image.GetOrigin()
    diff = sitk.GetArrayViewFromImage(back)[1:-1] - sitk.GetArrayViewFromImage(image)[1:-1]
    assert float(np.abs(diff).mean()) < 3.0


def test_resample_target_spacing_per_axis() -> None:
    image = block_image()[0]
    out = preprocess.resample(image, spacing_mm=(2.0, 2.0, 5.0), interpolator="nearest")
    assert out.GetSize() == (48, 48, 3)


def test_window_clamps_in_real_units_and_rescales() -> None:
    image = block_image()[0]
    out = sitk.GetArrayFromImage(preprocess.window(image, center=100, width=100))
    assert out.min() == pytest.approx(50) and out.max() == pytest.approx(150)
    scaled = sitk.GetArrayFromImage(preprocess.window(image, rescale=True))
    assert scaled.min() == pytest.approx(0) and scaled.max() == pytest.approx(1)


@pytest.mark.parametrize("method", ["zscore", "minmax", "percentile"])
def test_normalize(method: str) -> None:
    image = block_image()[0]
    out = sitk.GetArrayFromImage(preprocess.normalize(image, method=method))
    if method == "zscore":
        assert abs(out.mean()) < 1e-3 and out.std() == pytest.approx(1, rel=1e-3)
    elif method == "minmax":
        assert out.min() == pytest.approx(0) and out.max() == pytest.approx(1)
    else:
        assert np.percentile(out, 1) == pytest.approx(0, abs=1e-3)
        assert np.percentile(out, 99) == pytest.approx(1, abs=1e-2)


def textured_volume() -> sitk.Image:
    """A smooth, asymmetric 64x64x40 volume (1.5 mm iso) with blobs of varied size."""
    rng = np.random.default_rng(3)
    array = rng.normal(0, 1, (40, 64, 64)).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.5, 1.5, 1.5))
    smooth = sitk.SmoothingRecursiveGaussian(image, 4.0)
    zz, yy, xx = np.mgrid[:40, :64, :64]
    body = (((xx - 30) / 26.0) ** 2 + ((yy - 34) / 22.0) ** 2 + ((zz - 20) / 17.0) ** 2) < 1
    array = np.where(body, 300 * sitk.GetArrayViewFromImage(smooth) / 0.05 + 40, -1000).astype(np.float32)
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


def test_rigid_registration_recovers_known_transform() -> None:
    fixed = textured_volume()
    centre = fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()])
    truth = sitk.Euler3DTransform(
        centre, math.radians(4), math.radians(-3), math.radians(5), (4.0, -3.0, 2.5)
    )
    moving = sitk.Resample(fixed, fixed, truth, sitk.sitkLinear, -1000.0)
    result = preprocess.register(fixed, moving)
    # result maps fixed -> moving space, truth maps moving-grid points -> fixed: composition ~ identity
    points = [
        fixed.TransformContinuousIndexToPhysicalPoint(p)
        for p in [(16, 16, 10), (48, 16, 10), (16, 48, 30), (48, 48, 30), (32, 32, 20)]
    ]
    errors = [
        np.linalg.norm(np.array(truth.TransformPoint(result.transform.TransformPoint(p))) - p) for p in points
    ]
    assert max(errors) < 1.0, errors
    composed = sitk.CompositeTransform([truth, result.transform])
    x0 = np.array(composed.TransformPoint(centre))
    axes = np.array(
        [np.array(composed.TransformPoint(tuple(np.array(centre) + e))) - x0 for e in np.eye(3) * 10]
    )
    cos = np.clip((np.trace(axes / 10) - 1) / 2, -1, 1)
    assert math.degrees(math.acos(cos)) < 1.0
    assert result.image.GetSize() == fixed.GetSize()
    step = STEPS["preprocess.register"](moving, fixed=fixed)
    assert step.GetOrigin() == fixed.GetOrigin()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda img: preprocess.median(img, radius_mm=-1), "'radius_mm' must be positive, got -1"),
        (lambda img: preprocess.gaussian(img, sigma_mm="wide"), "'sigma_mm' must be a number, got 'wide'"),
        (lambda img: preprocess.resample(img, spacing_mm=(1, 1)), "needs 3 values"),
        (lambda img: preprocess.resample(img, interpolator="cubic"), "got 'cubic'"),
        (lambda img: preprocess.window(img, center=0, width=0), "'width' must be positive, got 0"),
        (lambda img: preprocess.normalize(img, method="robust"), "got 'robust'"),
        (lambda img: preprocess.anisotropic_diffusion(img, iterations=0), "at least 1, got 0"),
        (lambda img: preprocess.register(img, img, transform="bspline"), "got 'bspline'"),
        (lambda img: preprocess.wavelet_denoise(img, wavelet="nope"), "'nope'"),
    ],
)
def test_invalid_parameters_raise_imaging_error(call, message: str) -> None:
    with pytest.raises(ImagingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call(block_image()[0])
