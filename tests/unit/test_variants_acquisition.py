"""The acquisition, phase, size and storage variants of the real CT (tests/variants.py) are what a scanner
would write: intensities, noise and sizes change as claimed, the labels follow the pixels, and the DICOM
storages give back the same HU through the node's loader (or, with a wrong intercept, pixels the input guard
refuses). The table of what the pipeline makes of them is ``benchmarks/accuracy.py``."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from dicomnode.imaging.guards import pixel_evidence
from dicomnode.imaging.volume import load_series
from tests import variants

LIVER, SPLEEN, AORTA = 5, 1, 52


@pytest.fixture(scope="module")
def real_case() -> tuple[sitk.Image, sitk.Image]:
    return variants.real_case()


def _ml(labels: sitk.Image, value: int) -> float:
    return float((sitk.GetArrayViewFromImage(labels) == value).sum() * np.prod(labels.GetSpacing()) / 1000.0)


def _median(image: sitk.Image, labels: sitk.Image, value: int) -> float:
    inner = ndimage.binary_erosion(sitk.GetArrayViewFromImage(labels) == value, iterations=2)
    return float(np.median(sitk.GetArrayViewFromImage(image)[inner]))


def test_low_dose_and_kernels_change_the_noise_not_the_levels(real_case) -> None:  # noqa: ANN001
    image, labels = real_case
    sd = variants.noise_sd(image)
    low, _ = variants.low_dose(image, labels, factor=2.5)
    sharp, _ = variants.kernel(image, labels, "sharp")
    smooth, _ = variants.kernel(image, labels, "smooth")
    assert 2.1 < variants.noise_sd(low) / sd < 2.9
    assert variants.noise_sd(sharp) > 1.5 * sd and variants.noise_sd(smooth) < 0.7 * sd
    for other in (low, sharp, smooth):
        assert abs(_median(other, labels, LIVER) - _median(image, labels, LIVER)) < 4.0


def test_grids_and_the_child_keep_sizes_in_mm(real_case) -> None:  # noqa: ANN001
    image, labels = real_case
    liver = _ml(labels, LIVER)
    coarse, coarse_labels = variants.matrix(image, labels, pixel_mm=1.95)
    fine, fine_labels = variants.matrix(image, labels, pixel_mm=0.7)
    assert coarse.GetSize()[:2] == (256, 256) and fine.GetSpacing()[0] == pytest.approx(0.7)
    assert _ml(coarse_labels, LIVER) == pytest.approx(liver, rel=0.04)
    assert _ml(fine_labels, LIVER) == pytest.approx(liver, rel=0.04)
    small, small_labels = variants.child(image, labels, scale=0.6)
    assert _ml(small_labels, LIVER) == pytest.approx(liver * 0.6**3, rel=0.06)
    assert _median(small, small_labels, LIVER) == pytest.approx(_median(image, labels, LIVER), abs=4.0)


def test_arterial_and_delayed_phases(real_case) -> None:  # noqa: ANN001
    image, labels = real_case
    arterial, _ = variants.arterial_phase(image, labels)
    assert _median(arterial, labels, AORTA) == pytest.approx(300.0, abs=30.0)
    assert _median(arterial, labels, LIVER) == pytest.approx(70.0, abs=6.0)
    spleen = ndimage.binary_erosion(sitk.GetArrayViewFromImage(labels) == SPLEEN, iterations=2)
    spread = float(np.std(sitk.GetArrayViewFromImage(arterial)[spleen]))
    assert spread > 1.5 * float(np.std(sitk.GetArrayViewFromImage(image)[spleen]))  # mottled
    delayed, _ = variants.delayed_phase(image, labels)
    assert abs(_median(delayed, labels, LIVER) - _median(delayed, labels, SPLEEN)) < 8.0


def test_filtered_back_projection_reconstructs_a_disc() -> None:
    """The metal variant's projector and FBP: a 80 mm water disc comes back at water's μ, zero outside."""
    n, px = 128, 2.0
    yy, xx = np.ogrid[0:n, 0:n]
    disc = (((yy - 64) ** 2 + (xx - 50) ** 2) < 20**2) * variants.MU_WATER
    theta = np.linspace(0.0, np.pi, 2 * n, endpoint=False)
    bins = np.arange(-np.hypot(n, n) / 2 - 2, np.hypot(n, n) / 2 + 2) * px
    back = variants._back_project(variants._project(disc, px, theta, bins), (n, n), px, theta, bins)
    assert back[64, 50] == pytest.approx(variants.MU_WATER, rel=0.03)
    assert abs(back[64, 110]) < 0.03 * variants.MU_WATER


@pytest.mark.parametrize("storage", [{"unsigned": True, "intercept": -1024.0},
                                     {"unsigned": True, "intercept": -1024.0, "slope": 0.5}])
def test_storages_give_back_the_same_hu(real_case, tmp_path, storage: dict) -> None:  # noqa: ANN001
    image, _ = real_case
    volume = load_series(variants.write_series(image, tmp_path, **storage))
    original = sitk.GetArrayViewFromImage(image)
    assert volume.array.shape == original.shape
    assert float(np.abs(volume.array - original).max()) <= 0.5


def test_a_missing_intercept_gives_pixels_the_guard_refuses(real_case, tmp_path) -> None:  # noqa: ANN001
    """Unsigned pixels stored with −1024 but a header saying 0: every value 1024 HU too high — no air."""
    image, _ = real_case
    volume = load_series(variants.write_series(image + 1024.0, tmp_path, unsigned=True, intercept=0.0))
    ok, reason = pixel_evidence(volume.array).looks_like_ct()
    assert not ok and "-1000 HU" in reason
