"""Artifact reduction: metal artifact reduction (LI / NMAR) and slice-to-slice motion correction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from skimage.transform import iradon, radon

from dicomnode.errors import ImagingError
from dicomnode.imaging import artifacts
from tests.phantoms import make_ct_phantom


def streak_energy(image: np.ndarray, reference: np.ndarray, region: np.ndarray) -> float:
    return float(((image - reference)[region] ** 2).sum())


def test_nmar_halves_streak_energy_on_the_ct_phantom_and_keeps_the_metal() -> None:
    shape, spacing = (4, 160, 160), (5.0, 2.24, 2.24)
    ct = make_ct_phantom(shape=shape, spacing=spacing, metal=True, noise_sd=10.0)
    # the same phantom (same noise) without the rod: streak-free reference away from the metal
    reference = make_ct_phantom(shape=shape, spacing=spacing, metal=False, noise_sd=10.0).image
    metal = ct.masks["metal"]
    on_metal = metal.any(axis=(1, 2))
    assert on_metal.sum() >= 2 and not on_metal.all()
    out = sitk.GetArrayFromImage(artifacts.reduce_metal_artifacts(ct.to_sitk()))
    region = ct.masks["body"] & ~ndimage.binary_dilation(metal, iterations=3) & on_metal[:, None, None]
    before = streak_energy(ct.image, reference, region)
    after = streak_energy(out, reference, region)
    assert after <= 0.5 * before, after / before
    assert np.array_equal(out[metal], ct.image[metal])  # the metal itself is preserved
    assert np.array_equal(out[~on_metal], ct.image[~on_metal])  # slices without metal untouched


def water_with_rods(corrupt: bool, n: int = 128) -> np.ndarray:
    """Physics simulation: a water disc with two steel rods; projections through the metal are
    beam-hardened (line integrals saturate) and photon-starved, then reconstructed by FBP (HU)."""
    yy, xx = np.mgrid[:n, :n]
    mu_water = 0.02 * 2.0  # per pixel of 2 mm
    hu = np.where((xx - n / 2) ** 2 + (yy - n / 2) ** 2 < (0.42 * n) ** 2, 0.0, -1000.0)
    rods = ((xx - 0.35 * n) ** 2 + (yy - n / 2) ** 2 < 16) | ((xx - 0.65 * n) ** 2 + (yy - n / 2) ** 2 < 16)
    hu[rods] = 3000.0
    theta = np.linspace(0.0, 180.0, 180, endpoint=False)
    sinogram = radon((hu + 1000.0) / 1000.0 * mu_water, theta=theta, circle=False)
    if corrupt:
        path = radon(rods.astype(float), theta=theta, circle=False) * mu_water * 3.0
        rng = np.random.default_rng(0)
        sinogram = sinogram - 0.3 * path**2 + rng.normal(0, 1, sinogram.shape) * 0.05 * path
    recon = iradon(sinogram, theta=theta, circle=False, filter_name="ramp", output_size=n)
    return (recon / mu_water * 1000.0 - 1000.0).astype(np.float32)


@pytest.mark.parametrize("method", ["li", "nmar"])
def test_sinogram_inpainting_on_a_simulated_water_phantom(method: str) -> None:
    corrupted, clean = water_with_rods(True), water_with_rods(False)
    image = sitk.GetImageFromArray(corrupted[None])
    image.SetSpacing((2.0, 2.0, 3.0))
    # hardened metal reconstructs below the default 2500 HU: the threshold is a parameter
    out = sitk.GetArrayFromImage(artifacts.reduce_metal_artifacts(image, method=method, threshold=1500))[0]
    metal = corrupted > 1500
    yy, xx = np.mgrid[:128, :128]
    region = ((xx - 64) ** 2 + (yy - 64) ** 2 < 50**2) & ~ndimage.binary_dilation(metal, iterations=3)
    assert streak_energy(out, clean, region) <= 0.5 * streak_energy(corrupted, clean, region)
    assert np.array_equal(out[metal], corrupted[metal])


def test_metal_threshold_follows_unusually_bright_bone() -> None:
    array = np.zeros((2, 32, 32), np.float32)
    array[:, 5:15, 5:15] = 2200.0  # very dense bone / contrast
    array[:, 20, 20] = 4000.0
    image = sitk.GetImageFromArray(array)
    assert artifacts.metal_threshold(image) == pytest.approx(3200.0)
    mask = sitk.GetArrayFromImage(artifacts.metal_mask(image))
    assert mask.sum() == 2 and mask[:, 20, 20].all()


def shifted_volume() -> tuple[sitk.Image, sitk.Image, list[tuple[float, float, float]]]:
    """A textured 2-D slab repeated over 7 slices (slowly varying), each slice moved rigidly."""
    rng = np.random.default_rng(5)
    base = ndimage.gaussian_filter(rng.normal(0, 1, (96, 96)), 3.0)
    yy, xx = np.mgrid[:96, :96]
    body = ((xx - 48) / 38.0) ** 2 + ((yy - 48) / 30.0) ** 2 < 1
    motions = [
        (2.0, -3.0, 2.0),
        (-2.5, 1.0, -1.5),
        (1.5, 2.0, 1.0),
        (0.0, 0.0, 0.0),
        (3.0, -1.0, 2.5),
        (-1.0, 3.0, -2.0),
        (2.5, 2.5, 1.5),
    ]  # (tx mm, ty mm, rotation deg)
    truth_slices, moved_slices = [], []
    for k, (tx, ty, angle) in enumerate(motions):
        plane = np.where(body, 40 + 400 * base + 3 * k, -1000).astype(np.float32)
        slice_image = sitk.GetImageFromArray(plane)
        slice_image.SetSpacing((1.2, 1.2))
        centre = slice_image.TransformContinuousIndexToPhysicalPoint((47.5, 47.5))
        transform = sitk.Euler2DTransform(centre, math.radians(angle), (tx, ty))
        truth_slices.append(slice_image)
        moved_slices.append(sitk.Resample(slice_image, slice_image, transform, sitk.sitkLinear, -1000.0))
    truth, moved = sitk.JoinSeries(truth_slices), sitk.JoinSeries(moved_slices)
    for volume in (truth, moved):
        volume.SetSpacing((1.2, 1.2, 3.0))
    return truth, moved, motions


def test_slice_motion_correction_realigns_slices() -> None:
    truth, moved, _ = shifted_volume()
    corrected = artifacts.correct_slice_motion(moved)
    assert corrected.GetSize() == moved.GetSize() and corrected.GetSpacing() == moved.GetSpacing()
    inner = (slice(None), slice(20, 76), slice(20, 76))
    error_before = np.abs(sitk.GetArrayViewFromImage(moved)[inner] - sitk.GetArrayViewFromImage(truth)[inner])
    error_after = np.abs(
        sitk.GetArrayViewFromImage(corrected)[inner] - sitk.GetArrayViewFromImage(truth)[inner]
    )
    assert error_after.mean() < 0.3 * error_before.mean()


def test_estimated_slice_motion_matches_the_applied_motion() -> None:
    truth, moved, motions = shifted_volume()
    transforms = artifacts.estimate_slice_motion(moved)
    plane = truth[:, :, 0]
    centre = plane.TransformContinuousIndexToPhysicalPoint((47.5, 47.5))
    for transform, (tx, ty, angle) in zip(transforms, motions, strict=True):
        applied = sitk.Euler2DTransform(centre, math.radians(angle), (tx, ty))
        for point in [(30.0, 30.0), (80.0, 40.0), (50.0, 80.0)]:
            recovered = np.array(transform.TransformPoint(point))
            expected = np.array(applied.GetInverse().TransformPoint(point))
            assert np.linalg.norm(recovered - expected) < 1.0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda img: artifacts.reduce_metal_artifacts(img, method="nmar2"), "got 'nmar2'"),
        (lambda img: artifacts.reduce_metal_artifacts(img, max_angles=4), "between 16 and 4096, got 4"),
        (lambda img: artifacts.metal_mask(img, dilate_mm=-1), "'dilate_mm' must be non-negative, got -1"),
        (lambda img: artifacts.correct_slice_motion(img, reference_slice=99), "between 0 and 6, got 99"),
        (lambda img: artifacts.correct_slice_motion(img[:, :, 0]), "needs a 3-D image, got 2-D"),
    ],
)
def test_invalid_parameters_raise_imaging_error(call, message: str) -> None:
    with pytest.raises(ImagingError, match=message):
        call(shifted_volume()[1])


def test_without_metal_the_image_itself_is_returned() -> None:
    ct = make_ct_phantom(shape=(4, 64, 64), spacing=(5.0, 5.0, 5.0), metal=False)
    image = ct.to_sitk()
    assert artifacts.reduce_metal_artifacts(image) is image  # no copy, no cost: liver-ct runs it on every CT


def test_mar_only_on_the_slices_of_the_mask() -> None:
    shape, spacing = (4, 160, 160), (5.0, 2.24, 2.24)
    ct = make_ct_phantom(shape=shape, spacing=spacing, metal=True, noise_sd=10.0)
    reference = make_ct_phantom(shape=shape, spacing=spacing, metal=False, noise_sd=10.0).image
    metal = ct.masks["metal"]
    on_metal = np.flatnonzero(metal.any(axis=(1, 2)))
    organ = np.zeros(shape, dtype=np.uint8)
    organ[on_metal[0]] = 1  # an organ present on the first metal slice only
    out = sitk.GetArrayFromImage(artifacts.reduce_metal_artifacts(ct.to_sitk(), mask=ct.to_sitk(organ)))
    k = on_metal[0]
    region = ct.masks["body"][k] & ~ndimage.binary_dilation(metal[k], iterations=3)
    before = streak_energy(ct.image[k], reference[k], region)
    assert streak_energy(out[k], reference[k], region) <= 0.5 * before
    assert np.array_equal(out[metal], ct.image[metal])
    others = np.ones(shape[0], dtype=bool)
    others[k] = False
    assert np.array_equal(out[others], ct.image[others])  # other metal slices: not the organ's, untouched


def test_streaks_estimated_on_a_working_grid_are_reduced_there() -> None:
    """working_spacing_mm: the streaks are estimated on block-averaged slices (the lesion step's grid) and
    interpolated back; on that grid they are weaker, the metal is kept and no slice without metal changes."""
    shape, spacing = (4, 384, 384), (5.0, 0.9, 0.9)
    ct = make_ct_phantom(shape=shape, spacing=spacing, metal=True, noise_sd=10.0)
    reference = make_ct_phantom(shape=shape, spacing=spacing, metal=False, noise_sd=10.0).image
    metal = ct.masks["metal"]
    out = sitk.GetArrayFromImage(artifacts.reduce_metal_artifacts(ct.to_sitk(), working_spacing_mm=1.8))
    k = int(np.flatnonzero(metal.any(axis=(1, 2)))[0])
    coarse = artifacts._block_mean  # the 1.8 mm grid
    region = coarse((ct.masks["body"][k] & ~ndimage.binary_dilation(metal[k], iterations=6))[None]
                    .astype(np.float32), 2)[0] == 1
    def energy(a: np.ndarray) -> float:
        return float(((coarse(a[k][None], 2)[0] - coarse(reference[k][None], 2)[0])[region] ** 2).sum())
    assert energy(out) <= 0.8 * energy(ct.image)
    assert np.array_equal(out[metal], ct.image[metal])
    assert np.array_equal(out[~metal.any(axis=(1, 2))], ct.image[~metal.any(axis=(1, 2))])
