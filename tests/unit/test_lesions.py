"""Lesion detection inside the liver: every phantom lesion of 10 mm or more is found, each on its own."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from dicomnode.errors import ImagingError
from dicomnode.imaging.lesions import describe, detect
from tests.phantoms import make_ct_phantom


@pytest.mark.parametrize(("phase", "spacing"), [("portal", (5.0, 2.8, 2.8)), ("native", (4.0, 2.5, 2.5))])
def test_every_lesion_of_10_mm_is_detected_as_its_own_component(phase, spacing) -> None:  # noqa: ANN001
    ct = make_ct_phantom(shape=(40, 128, 128), spacing=spacing, phase=phase, seed=7)
    labels = sitk.GetArrayFromImage(detect(ct.to_sitk(), ct.mask_sitk("liver")))
    found = describe(ct.to_sitk(), detect(ct.to_sitk(), ct.mask_sitk("liver")))
    assert [f.label for f in found] == list(range(1, len(found) + 1))
    hits = []
    for truth in ct.lesions:
        if truth.diameter_mm < 10:
            continue
        overlap = labels[ct.lesion_labels == truth.label]
        values, counts = np.unique(overlap[overlap > 0], return_counts=True)
        assert values.size, f"{truth.kind} lesion of {truth.diameter_mm} mm at {truth.centre_mm} missed"
        label = int(values[np.argmax(counts)])
        assert counts.max() >= 0.5 * overlap.size
        assert found[label - 1].kind == truth.kind
        hits.append(label)
    assert len(set(hits)) == len(hits)  # distinct lesions stay distinct components


def test_no_lesions_in_a_homogeneous_organ() -> None:
    ct = make_ct_phantom(shape=(30, 96, 96), spacing=(5.0, 3.2, 3.2), lesions=False, seed=8)
    liver_only = ct.image.copy()
    liver_only[ct.masks["portal-vein"]] = liver_only[ct.masks["liver"] & ~ct.masks["portal-vein"]].mean()
    labels = sitk.GetArrayFromImage(detect(ct.to_sitk(liver_only), ct.mask_sitk("liver")))
    assert labels.max() == 0


def test_invalid_kind_is_refused() -> None:
    ct = make_ct_phantom(shape=(10, 48, 48), spacing=(5.0, 6.0, 6.0), lesions=False)
    with pytest.raises(ImagingError, match="'kind'"):
        detect(ct.to_sitk(), ct.mask_sitk("liver"), kind="round")
