"""liver-ct's enhancement on real CT noise (the shared abdominal CT with inserted lesions, real_noise.py):
the HU-declaring derived series keeps region means within 3 HU and lesion contrast within 15 %, raises CNR
and widens edges (10-90 % width) by 0.5 mm in the median (10-90 % width)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from dicomnode.pipelines.registry import get_pipeline
from dicomnode.pipelines.steps import step_registry
from tests import real_noise

pytestmark = pytest.mark.skipif(not real_noise.available(), reason="../shared/data/ct-abdomen-20 is missing")


def test_liver_ct_enhancement_on_real_ct_noise_keeps_hu_and_edges() -> None:
    case = real_noise.load_case(seed=0)
    spec = get_pipeline("liver-ct")
    (step,) = [s for s in spec.steps if s.use.startswith("enhance.")]
    out = step_registry()[step.use](image=case.image, mask=case.liver, **dict(step.params))
    enhanced = sitk.GetArrayFromImage(out)
    liver = sitk.GetArrayViewFromImage(case.liver) > 0
    assert abs(float(enhanced[liver].mean() - case.array[liver].mean())) < 3.0
    effects = real_noise.lesion_effects(case, enhanced)
    assert len(effects) == len(real_noise.LESIONS)
    for e in effects:
        assert abs(e.mean_shift) < 3.0, e
        assert abs(e.contrast_kept - 1.0) < 0.15, e
        assert e.cnr_after >= 1.2 * e.cnr_before, e
        assert e.edge_after_mm <= e.edge_before_mm + 1.5, e  # faint (30-40 HU) edges widen most
    assert np.median([e.cnr_after / e.cnr_before for e in effects]) >= 1.3
    # a 1 mm Gaussian widens these edges by 1.5-2.6 mm (median 1.6): the bilateral filter by ~0.5
    assert np.median([e.edge_after_mm - e.edge_before_mm for e in effects]) <= 0.8


def test_edge_width_measures_blur_not_noise() -> None:
    case = real_noise.load_case(seed=1, lesions=((16.0, -60.0),))
    blurred = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(case.image, 2.0))
    (same,) = real_noise.lesion_effects(case, case.array)
    (effect,) = real_noise.lesion_effects(case, blurred)
    sharp, wide = same.edge_after_mm, effect.edge_after_mm
    assert same.edge_before_mm == sharp
    assert 1.0 < sharp < 4.5  # the inserted 0.6 mm PSF, partial volume and the scanner's own blur
    assert wide > sharp + 2.0  # a 2 mm Gaussian adds ~2.563 * 2 mm in quadrature
