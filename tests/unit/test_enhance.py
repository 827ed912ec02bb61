"""Segmentation-guided enhancement: measurable effect inside the organ, bit-identical outside the band."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from dicomnode.errors import ImagingError
from dicomnode.imaging import enhance
from dicomnode.pipelines.steps import step_registry
from tests.phantoms import make_ct_phantom

STEPS = step_registry()

FEATHER_MM = 4.0


def phantom(noise: float = 20.0, seed: int = 0):
    ct = make_ct_phantom(shape=(10, 96, 96), spacing=(5.0, 3.5, 3.5), noise_sd=noise, seed=seed)
    return ct, ct.to_sitk(), ct.mask_sitk("liver")


def regions(ct) -> tuple[sitk.Image, sitk.Image]:
    """The largest lesion and the liver parenchyma away from every lesion (as masks)."""
    lesion = ct.lesion_labels == 1
    away = ~ndimage.binary_dilation(ct.lesion_labels > 0, iterations=2)
    parenchyma = ndimage.binary_erosion(ct.masks["liver"], iterations=2) & away

    def as_mask(array: np.ndarray) -> sitk.Image:
        mask = sitk.GetImageFromArray(array.astype(np.uint8))
        mask.CopyInformation(ct.to_sitk())
        return mask

    return as_mask(lesion), as_mask(parenchyma)


def outside_band(ct) -> np.ndarray:
    spacing = ct.spacing
    distance = ndimage.distance_transform_edt(~ct.masks["liver"], sampling=spacing)
    return distance > FEATHER_MM + 1e-3


def contrast(image: sitk.Image, lesion: sitk.Image, parenchyma: sitk.Image) -> float:
    values = sitk.GetArrayViewFromImage(image)
    a = values[sitk.GetArrayViewFromImage(lesion) > 0].mean()
    b = values[sitk.GetArrayViewFromImage(parenchyma) > 0].mean()
    return float(abs(a - b))


def boundary_gradient(image: sitk.Image, ct) -> float:
    """Mean gradient magnitude on the voxels around the lesion boundaries (edge sharpness)."""
    lesions = ct.lesion_labels > 0
    edge = ndimage.binary_dilation(lesions) & ~ndimage.binary_erosion(lesions)
    grad = sitk.GetArrayFromImage(sitk.GradientMagnitude(image))
    return float(grad[edge].mean())


STEP_PARAMS = {
    "clahe": {},
    "contrast_stretch": {"gain": 1.6},
    "unsharp_mask": {"sigma_mm": 3.0, "amount": 1.0},
    "laplacian_sharpen": {"sigma_mm": 2.0, "amount": 1.0},
    "richardson_lucy": {"psf_sigma_mm": 2.0, "iterations": 10},
    "noise_reduction": {},
    "edge_preserving_smooth": {},
    "histogram_match": {},
}


@pytest.mark.parametrize("name", sorted(STEP_PARAMS))
def test_outside_the_feather_band_is_bit_identical(name: str) -> None:
    ct, image, liver = phantom()
    params = dict(STEP_PARAMS[name])
    if name == "histogram_match":
        params.update(reference=sitk.ShiftScale(image, 30.0, 1.2), reference_mask=liver)
    out = STEPS[f"enhance.{name}"](image, mask=liver, feather_mm=FEATHER_MM, **params)
    assert out.GetPixelID() == sitk.sitkFloat32
    assert out.GetSize() == image.GetSize() and out.GetOrigin() == image.GetOrigin()
    assert out.GetSpacing() == image.GetSpacing() and out.GetDirection() == image.GetDirection()
    before, after = sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(out)
    keep = outside_band(ct)
    assert np.array_equal(after[keep], before[keep]), name
    assert not np.array_equal(after[ct.masks["liver"]], before[ct.masks["liver"]]), name
    # real units: the liver's mean stays within a plausible HU range of the input
    assert abs(float(after[ct.masks["liver"]].mean()) - float(before[ct.masks["liver"]].mean())) < 60


def test_feather_is_a_smooth_transition() -> None:
    ct, image, liver = phantom()
    weights = sitk.GetArrayFromImage(enhance.feather_weights(liver, feather_mm=10.0))
    distance = ndimage.distance_transform_edt(~ct.masks["liver"], sampling=ct.spacing)
    assert (weights[ct.masks["liver"]] == 1).all()
    assert (weights[distance >= 10.0] == 0).all()
    band = (distance > 0) & (distance < 10.0)
    mid = band & (np.abs(distance - 5.0) < 0.5)
    assert 0.3 < weights[mid].mean() < 0.7
    # monotone: nearer voxels weigh more
    assert weights[band & (distance < 4)].min() > weights[band & (distance > 6)].max()


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("noise_reduction", {"method": "nl_means"}),
        ("noise_reduction", {"method": "gaussian", "sigma_mm": 2.0}),
        ("noise_reduction", {"method": "median", "sigma_mm": 3.5}),
        ("noise_reduction", {"method": "wavelet"}),
        ("edge_preserving_smooth", {"method": "anisotropic"}),
        ("edge_preserving_smooth", {"method": "bilateral", "domain_sigma_mm": 4.0}),
    ],
)
def test_cnr_inside_the_organ_improves_by_30_percent(name: str, params: dict) -> None:
    ct, image, liver = phantom()
    lesion, parenchyma = regions(ct)
    before = enhance.contrast_to_noise_ratio(image, lesion, parenchyma)
    out = STEPS[f"enhance.{name}"](image, mask=liver, **params)
    after = enhance.contrast_to_noise_ratio(out, lesion, parenchyma)
    assert after >= 1.3 * before, (before, after)


@pytest.mark.parametrize("name", ["clahe", "contrast_stretch"])
def test_contrast_steps_raise_lesion_contrast(name: str) -> None:
    ct, image, liver = phantom(noise=8.0)
    lesion, parenchyma = regions(ct)
    out = STEPS[f"enhance.{name}"](image, mask=liver, **STEP_PARAMS[name])
    assert contrast(out, lesion, parenchyma) >= 1.3 * contrast(image, lesion, parenchyma)


@pytest.mark.parametrize("name", ["unsharp_mask", "laplacian_sharpen", "richardson_lucy"])
def test_sharpening_steepens_lesion_edges(name: str) -> None:
    ct, image, liver = phantom(noise=2.0)
    smooth = sitk.SmoothingRecursiveGaussian(image, 2.0)  # a blurred acquisition
    out = STEPS[f"enhance.{name}"](smooth, mask=liver, **STEP_PARAMS[name])
    assert boundary_gradient(out, ct) >= 1.2 * boundary_gradient(smooth, ct)


def test_histogram_matching_moves_the_organ_distribution_to_the_reference() -> None:
    ct, image, liver = phantom(seed=0)
    # the reference: another scanner — liver brighter and with a wider spread
    ref_ct, ref_image, ref_liver = phantom(seed=1)
    reference = sitk.ShiftScale(ref_image, 25.0, 1.3)
    out = enhance.histogram_match(image, mask=liver, reference=reference, reference_mask=ref_liver)
    inside = ct.masks["liver"]
    ref_values = sitk.GetArrayViewFromImage(reference)[ref_ct.masks["liver"]]
    before = sitk.GetArrayViewFromImage(image)[inside]
    after = sitk.GetArrayViewFromImage(out)[inside]
    levels = [10, 25, 50, 75, 90]
    gap_before = np.abs(np.percentile(before, levels) - np.percentile(ref_values, levels)).max()
    gap_after = np.abs(np.percentile(after, levels) - np.percentile(ref_values, levels)).max()
    assert gap_before > 20
    assert gap_after < 3


def test_cnr_helper() -> None:
    ct, image, _ = phantom(noise=0.5)
    lesion, parenchyma = regions(ct)
    assert enhance.contrast_to_noise_ratio(image, lesion, parenchyma) > 10
    with pytest.raises(ImagingError, match="at least two voxels"):
        enhance.contrast_to_noise_ratio(image, lesion, sitk.Image(image.GetSize(), sitk.sitkUInt8))


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("clahe", {"clip_limit": 2}, "'clip_limit' must be in \\(0, 1\\], got 2"),
        ("clahe", {"low": 100, "high": 50}, "low=100.0 is not below high=50.0"),
        ("contrast_stretch", {"gain": -1}, "'gain' must be positive, got -1"),
        ("unsharp_mask", {"sigma_mm": 0}, "'sigma_mm' must be positive, got 0"),
        ("richardson_lucy", {"iterations": 500}, "between 1 and 200, got 500"),
        ("noise_reduction", {"method": "tv"}, "got 'tv'"),
        ("edge_preserving_smooth", {"method": "guided"}, "got 'guided'"),
        ("contrast_stretch", {"feather_mm": -3}, "'feather_mm' must be non-negative, got -3"),
    ],
)
def test_invalid_parameters_raise_imaging_error(name: str, params: dict, message: str) -> None:
    _, image, liver = phantom()
    with pytest.raises(ImagingError, match=message):
        STEPS[f"enhance.{name}"](image, mask=liver, **params)


def test_empty_mask_is_an_error() -> None:
    _, image, liver = phantom()
    with pytest.raises(ImagingError, match="mask is empty"):
        enhance.unsharp_mask(image, mask=liver * 0)
