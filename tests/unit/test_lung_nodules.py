"""lung-ct finds tumours: the lung envelope holds what lies inside the pleura and nodules/masses >= 4 mm
become ``Lesion N`` segments. Real data: lung1 (pyradiomics) with its reference tumour; a realistic
variant of it with a broad-based juxtapleural nodule inserted against the left chest wall; the abdomen
phantom (lung bases on the liver dome, no lung nodule) reports none."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from dicomnode.imaging.volume import Volume, load_series
from dicomnode.jobs import JobSpec
from dicomnode.pipelines.registry import get_pipeline
from dicomnode.pipelines.runner import process_volume
from tests.phantoms import make_ct_phantom
from tests.support import shared_data


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def juxtapleural(volume: Volume, slice_index: int, radius_mm: float, seed: int = 0,
                 ) -> tuple[Volume, np.ndarray]:
    """``volume`` with a solid nodule (40 HU, noise 15 HU, partial volume over 2.5 mm) centred 2 mm inside the
    left lung's lateral pleura on ``slice_index``: it indents the lung broadly. Returns it and the truth
    (the sphere's part that replaced lung)."""
    array = volume.array
    sp = np.asarray(volume.spacing)
    labels, _ = ndimage.label(array[slice_index] > -400)
    body = ndimage.binary_fill_holes(labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    air = (array[slice_index] < -400) & body
    half = array.shape[2] // 2  # patient left is +x: the right half of the image
    edge = int(np.flatnonzero(air[:, half:].any(axis=0)).max()) + half  # the left lung's most lateral column
    row = int(np.flatnonzero(air[:, edge - 3:edge + 1].any(axis=1)).mean())
    centre = np.array([slice_index * sp[0], row * sp[1], edge * sp[2] - 2.0])
    zz, yy, xx = np.ogrid[0:array.shape[0], 0:array.shape[1], 0:array.shape[2]]
    distance = np.sqrt((zz * sp[0] - centre[0]) ** 2 + (yy * sp[1] - centre[1]) ** 2
                       + (xx * sp[2] - centre[2]) ** 2) - radius_mm
    lung = array < -300
    weight = np.where(lung, np.clip(0.5 - distance / 2.5, 0.0, 1.0), 0.0).astype(np.float32)
    noise = np.random.default_rng(seed).normal(40.0, 15.0, array.shape).astype(np.float32)
    out = (array * (1 - weight) + noise * weight).astype(np.float32)
    return replace(volume, array=out), (distance <= 0) & lung


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
