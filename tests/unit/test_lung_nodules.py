"""lung-ct finds tumours: the lung envelope holds what lies inside the pleura and nodules/masses >= 4 mm
become ``Lesion N`` segments. Real data: lung1 (pyradiomics) with its reference tumour; a realistic
variant of it with a broad-based juxtapleural nodule inserted against the left chest wall; the abdomen
phantom (lung bases on the liver dome, no lung nodule) reports none."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk

from dicomnode.imaging.volume import Volume, load_series
from dicomnode.jobs import JobSpec
from dicomnode.pipelines.registry import get_pipeline
from dicomnode.pipelines.runner import process_volume
from tests import variants
from tests.phantoms import make_ct_phantom
from tests.support import shared_data


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def juxtapleural(volume: Volume, slice_index: int, radius_mm: float, seed: int = 0,
                 ) -> tuple[Volume, np.ndarray]:
    """``volume`` with a juxtapleural nodule inserted (:func:`tests.variants.juxtapleural`) and its truth."""
    array, truth = variants.juxtapleural(volume.array, volume.spacing, slice_index=slice_index,
                                         radius_mm=radius_mm, seed=seed)
    return replace(volume, array=array), truth


@pytest.fixture(scope="module")
def lung1() -> tuple[Volume, np.ndarray]:
    volume = load_series(sorted(shared_data("radiomics", "lung1-dicom").glob("*.dcm")))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_data("radiomics", "lung1_label.nrrd")))) > 0
    return volume, label


def test_lung1_tumour_and_a_juxtapleural_nodule_are_lesions_inside_the_lungs(lung1) -> None:  # noqa: ANN001
    volume, tumour = lung1
    variant, inserted = juxtapleural(volume, 20, 9.0)
    spec = JobSpec("t", "lung-ct", {}, (), "o")
    processed, summary = process_volume(get_pipeline("lung-ct"), variant, spec)
    lungs = np.logical_or.reduce([s.mask for s in processed.segments if s.category == "organ"])
    lesions = [s for s in processed.segments if s.category == "lesion"]
    assert [s.label for s in lesions] == ["Lesion 1", "Lesion 2"]  # nothing else: no vessel, no bronchus
    assert all(s.structure == "neoplasm" for s in lesions)
    assert float((lungs & tumour).sum()) / tumour.sum() > 0.95  # was 24 % before the envelope
    assert max(dice(s.mask, tumour) for s in lesions) >= 0.7
    assert max(dice(s.mask, inserted) for s in lesions) >= 0.7
    assert float((lungs & inserted).sum()) / inserted.sum() > 0.6  # the pleural indentation is repaired
    assert summary["segments"]["Lesion 1"]["volume_ml"] == pytest.approx(1.36, rel=0.35)
    assert summary["qc"]["segments"]["Lesion 1"]["status"] in ("pass", "warn")


def test_no_lung_lesion_in_a_lesion_free_chest() -> None:
    for seed, shape, spacing in ((4, (40, 128, 128), (5.0, 2.8, 2.8)), (13, (30, 96, 96), (5.0, 3.2, 3.2))):
        ct = make_ct_phantom(shape=shape, spacing=spacing, seed=seed)  # liver lesions only
        volume = Volume(array=ct.image, spacing=ct.spacing, origin=ct.origin, direction=ct.direction,
                        modality="CT", units="HU")
        processed, _ = process_volume(get_pipeline("lung-ct"), volume, JobSpec("t", "lung-ct", {}, (), "o"))
        assert [s.label for s in processed.segments] == ["Right lung", "Left lung"]
        right = next(s.mask for s in processed.segments if s.label == "Right lung")
        assert dice(right, ct.masks["lung-right"]) > 0.97  # the liver dome stays outside the lung
