"""Fusion of two co-registered series: weighted average, wavelet (PyWavelets) and PCA fusion.

Conventions (shared by every step module, see ``dicomnode.imaging.preprocess``): steps take and
return ``SimpleITK.Image``; intensity images are float32 in real units; parameters are keyword-only
with defaults; invalid parameters raise ``ImagingError`` quoting the value. Steps are declared
``@step("fuse.<name>")``.

Every step has the form ``step(image, *, other, match_intensity=True, **params)``. ``other`` must be
co-registered (same physical space, e.g. from ``preprocess.register``); when it lies on another grid
it is resampled onto ``image``'s grid (linear). With ``match_intensity`` the other series is first
mapped linearly onto ``image``'s intensity scale (its 1–99 % range onto image's), so the fused result
is in the units of ``image`` (HU for CT) even when ``other`` is, e.g., MR.
"""

from __future__ import annotations

import logging

import numpy as np
import pywt
import SimpleITK as sitk

from dicomnode.errors import ImagingError
from dicomnode.imaging.preprocess import like, resample_like, robust_range, to_float
from dicomnode.imaging.step import step

log = logging.getLogger(__name__)


def _pair(image: sitk.Image, other: sitk.Image, match_intensity: bool) -> tuple[np.ndarray, np.ndarray]:
    image, other = to_float(image), to_float(other)
    if image.GetDimension() != other.GetDimension():
        raise ImagingError(
            f"Cannot fuse a {image.GetDimension()}-D image with a {other.GetDimension()}-D image."
        )
    same = (
        image.GetSize() == other.GetSize()
        and np.allclose(image.GetSpacing(), other.GetSpacing(), atol=1e-4)
        and np.allclose(image.GetOrigin(), other.GetOrigin(), atol=1e-3)
        and np.allclose(image.GetDirection(), other.GetDirection(), atol=1e-4)
    )
    if not same:
        log.debug("resampling the second series onto the first one's grid")
        other = resample_like(other, reference=image)
    a = sitk.GetArrayFromImage(image).astype(np.float64)
    b = sitk.GetArrayFromImage(other).astype(np.float64)
    if match_intensity:
        a_low, a_high = robust_range(image)
        b_low, b_high = robust_range(other)
        b = a_low + (b - b_low) * (a_high - a_low) / max(b_high - b_low, 1e-6)
    return a, b


@step("fuse.weighted_average")
def weighted_average(
    image: sitk.Image, *, other: sitk.Image, weight: float = 0.5, match_intensity: bool = True
) -> sitk.Image:
    """(1 - weight) * image + weight * other."""
    if not 0.0 <= float(weight) <= 1.0:
        raise ImagingError(f"Parameter 'weight' must be between 0 and 1, got {weight!r}.")
    a, b = _pair(image, other, match_intensity)
    return like(((1.0 - float(weight)) * a + float(weight) * b).astype(np.float32), image)


@step("fuse.wavelet_fusion")
def wavelet_fusion(
    image: sitk.Image,
    *,
    other: sitk.Image,
    wavelet: str = "db2",
    levels: int = 3,
    slicewise: bool = True,
    match_intensity: bool = True,
) -> sitk.Image:
    """Wavelet fusion: mean of the approximations, maximum-absolute detail coefficients (PyWavelets).

    ``slicewise`` decomposes the in-plane axes only (each axial slice); otherwise all axes.
    """
    if wavelet not in pywt.wavelist(kind="discrete"):
        raise ImagingError(f"Parameter 'wavelet' must be a discrete PyWavelets wavelet, got {wavelet!r}.")
    if not 1 <= int(levels) <= 8:
        raise ImagingError(f"Parameter 'levels' must be between 1 and 8, got {levels!r}.")
    a, b = _pair(image, other, match_intensity)
    axes = tuple(range(a.ndim))[-2:] if slicewise else tuple(range(a.ndim))
    shortest = min(a.shape[axis] for axis in axes)
    level = max(1, min(int(levels), pywt.dwt_max_level(shortest, pywt.Wavelet(wavelet).dec_len)))
    ca = pywt.wavedecn(a, wavelet, level=level, axes=axes)
    cb = pywt.wavedecn(b, wavelet, level=level, axes=axes)
    fused = [(ca[0] + cb[0]) / 2.0]
    for da, db in zip(ca[1:], cb[1:], strict=True):
        fused.append({key: np.where(np.abs(da[key]) >= np.abs(db[key]), da[key], db[key]) for key in da})
    out = pywt.waverecn(fused, wavelet, axes=axes)
    out = out[tuple(slice(0, n) for n in a.shape)]
    return like(out.astype(np.float32), image)


def pca_weights(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Weights from the principal eigenvector of the 2 x 2 covariance of the two images."""
    sample = np.stack([a.ravel(), b.ravel()])
    if sample.shape[1] > 1_000_000:
        sample = sample[:, :: sample.shape[1] // 1_000_000]
    values, vectors = np.linalg.eigh(np.cov(sample))
    principal = np.abs(vectors[:, int(np.argmax(values))])
    total = float(principal.sum())
    if total <= 0:
        return 0.5, 0.5
    return float(principal[0] / total), float(principal[1] / total)


@step("fuse.pca_fusion")
def pca_fusion(image: sitk.Image, *, other: sitk.Image, match_intensity: bool = True) -> sitk.Image:
    """PCA fusion: weights from the principal component of the joint intensity covariance."""
    a, b = _pair(image, other, match_intensity)
    wa, wb = pca_weights(a, b)
    log.debug("PCA fusion weights %.3f / %.3f", wa, wb)
    return like((wa * a + wb * b).astype(np.float32), image)
