"""Real CT noise for enhancement tests: the shared abdominal CT with lesions inserted into its liver.

``../shared/data/ct-abdomen-20`` is a real portal-phase CT (0.98 x 0.98 x 2 mm): its noise is the scanner's
own (correlated, reconstruction-kernel texture) and its liver has real vessels and texture. Spherical lesions
of known contrast (hypo- and hyperdense, 10-20 mm) are added to the liver (reference label 5), smoothed by a
0.6 mm Gaussian like a scanner's point-spread function, at least 6 mm inside the liver and apart from each
other. What a filter does to them is measured against the same image without the filter:
mean shift, contrast kept (noise-free spread), CNR and the edge 10-90 % width.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from dicomnode.imaging import enhance
from dicomnode.imaging.preprocess import like

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ct-abdomen-20"
LESIONS = ((10.0, -40.0), (16.0, -60.0), (12.0, 30.0), (20.0, -30.0), (10.0, 40.0), (14.0, -40.0))


@dataclass(frozen=True)
class RealNoiseCase:
    image: sitk.Image  # real CT + inserted lesions, HU
    liver: sitk.Image  # uint8 reference liver
    lesions: tuple[tuple[np.ndarray, float], ...]  # (mask, contrast HU)
    spacing: tuple[float, float, float]  # (z, y, x) mm

    @property
    def array(self) -> np.ndarray:
        return sitk.GetArrayFromImage(self.image)


def available() -> bool:
    return (DATA / "dicom").is_dir() and (DATA / "reference-labels.nrrd").is_file()


def load_case(seed: int = 0, lesions: tuple[tuple[float, float], ...] = LESIONS) -> RealNoiseCase:
    from tests.variants import real_case

    image, labels = real_case()
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    liver = sitk.GetArrayFromImage(labels) == 5
    spacing = tuple(float(s) for s in reversed(image.GetSpacing()))
    depth = ndimage.distance_transform_edt(liver, sampling=spacing)
    zz, yy, xx = np.indices(array.shape, sparse=True)
    rng = np.random.default_rng(seed)
    placed: list[tuple[np.ndarray, float]] = []
    taken = np.zeros(array.shape, dtype=bool)
    for diameter, contrast in lesions:
        candidates = np.argwhere(depth > diameter / 2 + 6)
        for _ in range(500):
            c = candidates[rng.integers(len(candidates))]
            d = np.sqrt(((zz - c[0]) * spacing[0]) ** 2 + ((yy - c[1]) * spacing[1]) ** 2
                        + ((xx - c[2]) * spacing[2]) ** 2)
            if not (taken & (d <= diameter / 2 + 8)).any():
                mask = d <= diameter / 2
                taken |= mask
                placed.append((mask, contrast))
                break
    added = np.zeros(array.shape, dtype=np.float32)
    for mask, contrast in placed:
        added[mask] += contrast
    added = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(like(added, image), 0.6))
    return RealNoiseCase(like(array + added, image), like(liver.astype(np.uint8), image, sitk.sitkUInt8),
                         tuple(placed), spacing)  # type: ignore[arg-type]


@dataclass(frozen=True)
class LesionEffect:
    contrast_hu: float
    mean_shift: float  # lesion core mean, enhanced - source (HU)
    contrast_kept: float  # (lesion - ring) after / before
    cnr_before: float
    cnr_after: float
    edge_before_mm: float
    edge_after_mm: float


def lesion_effects(case: RealNoiseCase, enhanced: np.ndarray) -> list[LesionEffect]:
    effects = []
    for full_mask, contrast in case.lesions:
        box = _box(full_mask, case.spacing, 12.0)
        mask, source, enhanced_box = full_mask[box], case.array[box], enhanced[box]
        liver = (sitk.GetArrayViewFromImage(case.liver) > 0)[box]
        depth = ndimage.distance_transform_edt(mask, sampling=case.spacing)
        core = mask & (depth >= 1.5)
        outside = ndimage.distance_transform_edt(~mask, sampling=case.spacing)
        ring = (outside >= 3) & (outside <= 8) & liver

        def contrast_cnr(a: np.ndarray, core: np.ndarray = core, ring: np.ndarray = ring
                         ) -> tuple[float, float]:
            c = float(a[core].mean() - a[ring].mean())
            return c, abs(c) / float(np.sqrt((a[core].var() + a[ring].var()) / 2))

        c0, cnr0 = contrast_cnr(source)
        c1, cnr1 = contrast_cnr(enhanced_box)
        effects.append(LesionEffect(
            contrast, float(enhanced_box[core].mean() - source[core].mean()), c1 / c0, cnr0, cnr1,
            enhance.edge_width_mm(source, mask, case.spacing, within=liver),
            enhance.edge_width_mm(enhanced_box, mask, case.spacing, within=liver),
        ))
    return effects


def _box(mask: np.ndarray, spacing: tuple[float, float, float], margin_mm: float) -> tuple[slice, ...]:
    box = []
    for axis, step in enumerate(spacing):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        pad = int(np.ceil(margin_mm / step))
        box.append(slice(max(0, present[0] - pad), present[-1] + pad + 1))
    return tuple(box)
