"""Artifact reduction: CT metal artifact reduction (LI-MAR) and slice-to-slice motion correction.

Conventions (shared by every step module, see ``dicomnode.imaging.preprocess``): steps take and
return ``SimpleITK.Image``; intensity images are float32 in real units (HU for CT); masks are
``sitk.sitkUInt8`` 0/1 on the image grid. Parameters are keyword-only with defaults; sizes in mm;
invalid parameters raise ``ImagingError`` quoting the value. Steps are declared ``@step("artifacts.<name>")``.

Metal artifact reduction (``reduce_metal_artifacts``) is sinogram inpainting, slice by slice and only
on slices that contain metal: metal is segmented by a high HU threshold; the slice with its metal
replaced by the surrounding tissue is forward-projected (skimage ``radon``); the metal trace (the
forward projection of the metal mask) is bridged by linear interpolation across detector bins (LI-MAR;
``nmar`` interpolates relative to a tissue-class prior, normalised MAR in additive form); the
difference between the projected and the inpainted sinograms — the streaks — is reconstructed by
filtered back projection (``iradon``, ramp filter) and subtracted; the metal is put back.
To stay tractable on 512 x 512 slices the projections use min(pi/2 x N, ``max_angles``) angles
(360: ~15 s per 512 x 512 metal slice on one core); slices without metal are skipped. The streak
image must be computed at full resolution: on a downsampled grid the thin streaks are not captured.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from skimage.transform import iradon, radon

from dicomnode.errors import ImagingError
from dicomnode.imaging.preprocess import like, require_choice, require_positive, to_float
from dicomnode.imaging.step import step

log = logging.getLogger(__name__)

DEFAULT_METAL_HU = 2500.0  # above cortical bone (< ~2000 HU); metal reconstructs at > 2500 HU


def metal_threshold(image: sitk.Image) -> float:
    """The metal threshold: 2500 HU, raised to the bone peak + 1000 HU on images whose bone (99.9th
    percentile below 2500 HU) is unusually bright (calibration offsets, contrast agents)."""
    values = sitk.GetArrayViewFromImage(image).ravel()
    if values.size > 2_000_000:
        values = values[:: values.size // 2_000_000]
    below = values[values < DEFAULT_METAL_HU]
    bone = float(np.percentile(below, 99.9)) if below.size else 0.0
    return max(DEFAULT_METAL_HU, bone + 1000.0)


@step("artifacts.metal_mask")
def metal_mask(image: sitk.Image, *, threshold: float | None = None, dilate_mm: float = 0.0) -> sitk.Image:
    """Metal: voxels above ``threshold`` HU (default :func:`metal_threshold`), dilated in-plane."""
    image = to_float(image)
    value = metal_threshold(image) if threshold is None else float(threshold)
    mask = sitk.Cast(image > value, sitk.sitkUInt8)
    dilate_mm = require_positive("dilate_mm", dilate_mm, allow_zero=True)
    if dilate_mm:
        from dicomnode.imaging.segment import dilate

        mask = dilate(mask, radius_mm=dilate_mm, slicewise=True)
    return mask


@step("artifacts.reduce_metal_artifacts")
def reduce_metal_artifacts(
    image: sitk.Image,
    *,
    method: str = "nmar",
    threshold: float | None = None,
    dilate_mm: float = 0.0,
    max_angles: int = 360,
) -> sitk.Image:
    """Sinogram-inpainting MAR on each axial slice that contains metal (see the module docstring).

    ``method``: ``li`` interpolates the projections across the metal trace; ``nmar`` (default)
    interpolates the difference to the projections of a tissue-class prior (air / soft tissue /
    bone, made from the LI result), which keeps bone edges that cross the trace and so avoids most
    of LI's secondary streaks. Slices without metal are returned bit-identical; metal voxels keep
    their original values.
    """
    require_choice("method", method, ("li", "nmar"))
    if not 16 <= int(max_angles) <= 4096:
        raise ImagingError(f"Parameter 'max_angles' must be between 16 and 4096, got {max_angles!r}.")
    image = to_float(image)
    metal = metal_mask(image, threshold=threshold)
    core = sitk.GetArrayFromImage(metal).astype(bool)
    wide = sitk.GetArrayFromImage(metal_mask(image, threshold=threshold, dilate_mm=dilate_mm)).astype(bool)
    array = sitk.GetArrayFromImage(image)
    volume = array if array.ndim == 3 else array[None]
    core3, wide3 = (core, wide) if array.ndim == 3 else (core[None], wide[None])
    slices = np.flatnonzero(core3.any(axis=(1, 2)))
    log.debug("metal found on %d of %d slices", slices.size, volume.shape[0])
    out = volume.copy()
    for k in slices:
        out[k] = _mar_slice(volume[k], wide3[k], method, int(max_angles))
        out[k][core3[k]] = volume[k][core3[k]]
    return like(out.reshape(array.shape), image)


class _Projector:
    """Forward/back projection of one square-padded slice (air maps to 0)."""

    def __init__(self, shape: tuple[int, int], angles: int) -> None:
        self.shape = shape
        self.size = max(shape)
        self.theta = np.linspace(0.0, 180.0, int(angles), endpoint=False)

    def project(self, image: np.ndarray) -> np.ndarray:
        square = np.zeros((self.size, self.size))
        square[: self.shape[0], : self.shape[1]] = image
        return radon(square, theta=self.theta, circle=False)

    def reconstruct(self, sinogram: np.ndarray) -> np.ndarray:
        recon = iradon(sinogram, theta=self.theta, circle=False, filter_name="ramp", output_size=self.size)
        return recon[: self.shape[0], : self.shape[1]]


def _interpolate_trace(sinogram: np.ndarray, trace: np.ndarray) -> np.ndarray:
    """Linear interpolation across the metal trace, detector bin by bin, for each projection angle."""
    out = sinogram.copy()
    bins = np.arange(sinogram.shape[0])
    for j in np.flatnonzero(trace.any(axis=0)):
        hole = trace[:, j]
        if not hole.all():
            out[hole, j] = np.interp(bins[hole], bins[~hole], sinogram[~hole, j])
    return out


def _mar_slice(hu: np.ndarray, metal: np.ndarray, method: str, max_angles: int) -> np.ndarray:
    projector = _Projector(hu.shape, min(int(max_angles), math.ceil(math.pi / 2 * max(hu.shape))))
    ring = ndimage.binary_dilation(metal, iterations=3) & ~metal
    tissue = float(np.median(hu[ring])) if ring.any() else 0.0
    base = np.where(metal, tissue, hu).astype(np.float64) + 1000.0  # metal -> tissue; air -> 0
    trace = projector.project(metal.astype(float)) > 1e-6
    sinogram = projector.project(base)
    corrected = base - projector.reconstruct(sinogram - _interpolate_trace(sinogram, trace))
    if method == "nmar":
        prior = _tissue_prior(corrected - 1000.0, metal, tissue) + 1000.0
        prior_sinogram = projector.project(prior)
        inpainted = prior_sinogram + _interpolate_trace(sinogram - prior_sinogram, trace)
        corrected = base - projector.reconstruct(sinogram - inpainted)
    return (corrected - 1000.0).astype(np.float32)


def _tissue_prior(hu: np.ndarray, metal: np.ndarray, tissue: float) -> np.ndarray:
    """Air (< -300 HU) -> -1000, soft tissue -> its median, bone (>= 300 HU) kept; metal -> tissue."""
    smooth = ndimage.gaussian_filter(hu, 1.0)
    soft = (smooth >= -300) & (smooth < 300)
    soft_value = float(np.median(smooth[soft])) if soft.any() else 0.0
    prior = np.where(smooth < -300, -1000.0, np.where(soft, soft_value, smooth))
    return np.where(metal, tissue, prior)


# -------------------------------------------------------------------------------- motion correction


def estimate_slice_motion(
    image: sitk.Image, *, reference_slice: int | None = None, levels: int = 3, iterations: int = 100
) -> list[sitk.Transform]:
    """2-D rigid transforms (one per axial slice) aligning each slice to its already-aligned neighbour,
    working outwards from ``reference_slice`` (default: the middle slice, whose transform is identity).

    Each transform maps points of the aligned slice into the acquired slice (Mattes MI, multi-res).
    """
    image = to_float(image)
    if image.GetDimension() != 3:
        raise ImagingError(f"Slice motion correction needs a 3-D image, got {image.GetDimension()}-D.")
    count = image.GetSize()[2]
    ref = count // 2 if reference_slice is None else int(reference_slice)
    if not 0 <= ref < count:
        raise ImagingError(
            f"Parameter 'reference_slice' must be between 0 and {count - 1}, got {reference_slice!r}."
        )
    if not 1 <= int(levels) <= 5:
        raise ImagingError(f"Parameter 'levels' must be between 1 and 5, got {levels!r}.")
    slices = [image[:, :, k] for k in range(count)]
    aligned: dict[int, sitk.Image] = {ref: slices[ref]}
    transforms: dict[int, sitk.Transform] = {ref: sitk.Euler2DTransform()}
    order = [*range(ref + 1, count), *range(ref - 1, -1, -1)]
    for k in order:
        neighbour = k - 1 if k > ref else k + 1
        transform = _register_slice(aligned[neighbour], slices[k], int(levels), int(iterations))
        transforms[k] = transform
        aligned[k] = sitk.Resample(slices[k], slices[k], transform, sitk.sitkLinear, _background(slices[k]))
    return [transforms[k] for k in range(count)]


@step("artifacts.correct_slice_motion")
def correct_slice_motion(
    image: sitk.Image, *, reference_slice: int | None = None, levels: int = 3, iterations: int = 100
) -> sitk.Image:
    """Slice-to-slice motion correction: each axial slice rigidly registered (2-D) to its neighbour."""
    image = to_float(image)
    transforms = estimate_slice_motion(
        image, reference_slice=reference_slice, levels=levels, iterations=iterations
    )
    out = []
    for k, transform in enumerate(transforms):
        plane = image[:, :, k]
        out.append(sitk.Resample(plane, plane, transform, sitk.sitkLinear, _background(plane)))
    volume = sitk.JoinSeries(out)
    volume.CopyInformation(image)
    return volume


def _background(image: sitk.Image) -> float:
    return float(np.min(sitk.GetArrayViewFromImage(image)))


def _register_slice(fixed: sitk.Image, moving: sitk.Image, levels: int, iterations: int) -> sitk.Transform:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    pixels = float(np.prod(fixed.GetSize()))
    shrink = [2**k for k in reversed(range(levels))]
    method.SetMetricSamplingPercentagePerLevel([min(0.5, 20_000 * f * f / pixels) for f in shrink], 7)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=iterations, gradientMagnitudeTolerance=1e-8
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(shrink)
    method.SetSmoothingSigmasPerLevel([s / 2 for s in shrink[:-1]] + [0])
    initial = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler2DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    method.SetInitialTransform(initial, inPlace=False)
    try:
        return method.Execute(fixed, moving)
    except RuntimeError as exc:
        raise ImagingError(f"Slice registration failed: {str(exc).strip().splitlines()[-1]}") from exc
