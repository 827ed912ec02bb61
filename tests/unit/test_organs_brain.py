"""Brain extraction on real MR: a whole, plausible brain that holds the labelled tumour; non-head MR and
implausible masks fail with a clear error."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import SimpleITK as sitk

from dicomnode.errors import ImagingError
from dicomnode.imaging.organs import brain
from dicomnode.pipelines.registry import get_pipeline
from dicomnode.pipelines.runner import execute
from tests.phantoms import make_mr_head_phantom
from tests.support import shared_data


def brain_of(image: sitk.Image, **params: float) -> np.ndarray:
    spec = get_pipeline("brain-mr").with_params({f"brain_work.{k}": v for k, v in params.items()})
    ids = [s.id for s in spec.steps]
    spec = dataclasses.replace(spec, steps=spec.steps[: ids.index("brain") + 1])
    return sitk.GetArrayFromImage(execute(spec, image).image("brain")) > 0


def read(name: str) -> tuple[sitk.Image, np.ndarray]:
    image = sitk.Cast(sitk.ReadImage(str(shared_data("radiomics", f"{name}_image.nrrd"))), sitk.sitkFloat32)
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_data("radiomics", f"{name}_label.nrrd")))) > 0
    return image, label


def test_real_brain_mr_with_strong_bias_gives_a_whole_brain_holding_the_tumour() -> None:
    image, tumour = read("brain1")  # 6.5 mm slices, strong bias field, an enhancing tumour at the cortex
    mask = brain_of(image)
    ml = float(np.prod(image.GetSpacing())) / 1000.0
    assert 900 <= mask.sum() * ml <= 2200
    assert (mask & tumour).sum() >= 0.9 * tumour.sum()  # the tumour lies inside the brain
    # no ragged holes: every slice of the mask is one solid region
    from scipy import ndimage

    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        filled = ndimage.binary_fill_holes(mask[k])
        assert (filled & ~mask[k]).sum() == 0, f"hole in slice {k}"
    # the brain is a compact body: per-slice areas grow and shrink without jumps (no leak into the face)
    areas = mask.sum(axis=(1, 2)).astype(float)
    assert np.abs(np.diff(areas)).max() <= 0.35 * areas.max()


def test_breast_mr_is_refused_clearly() -> None:
    image, _ = read("breast1")
    with pytest.raises(ImagingError, match=r"is this a brain MR"):
        brain_of(image)


def test_bias_flattening_removes_a_smooth_field() -> None:
    mr = make_mr_head_phantom(shape=(40, 80, 80), spacing=(4.0, 3.0, 3.0), noise_sd=0.0, bias=0.4, seed=2)
    wm = mr.clean == 0.75
    before = mr.image[wm]
    flat = brain.flatten_bias(mr.image, mr.masks["head"], mr.spacing)[wm]
    assert np.std(flat) / np.mean(flat) < 0.5 * np.std(before) / np.mean(before)


def test_implausible_brain_volume_fails_the_step() -> None:
    mr = make_mr_head_phantom(shape=(40, 80, 80), spacing=(4.0, 3.0, 3.0), bias=0.2, seed=2)
    with pytest.raises(ImagingError, match=r"brain mask measures \d+ ml, outside the plausible 100-1000 ml"):
        brain_of(mr.to_sitk(), min_volume_ml=100.0, max_volume_ml=1000.0)
