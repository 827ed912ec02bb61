"""Findings of one time point (volume, mean intensity, longest axial diameter, centroid in patient
coordinates) and their matching across time points.

Organs match by label. Lesions match by position: the prior is registered rigidly onto the current study
(Mattes mutual information, :func:`dicomnode.imaging.preprocess.register`), each prior lesion's centroid is
carried into the current patient coordinates, and the nearest unmatched current lesion within
``max(10 mm, 0.75 × the larger diameter)`` is the same lesion. Unmatched current lesions are ``new``,
unmatched prior ones ``gone``; matched ones are ``grown`` / ``shrunk`` when their volume changed by more than
25 % (and by more than 0.1 ml, the partial-volume noise of a small lesion), else ``stable``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

GROWTH = 0.25  # relative volume change that counts as growth or shrinkage
MIN_CHANGE_ML = 0.1
MATCH_MM = 10.0


@dataclass(frozen=True)
class Finding:
    label: str  # "Liver", "Lesion 2"
    category: str  # organ | lesion | tissue
    volume_ml: float
    mean: float | None  # mean intensity in the image's units (HU on CT)
    longest_diameter_mm: float
    centroid: tuple[float, float, float]  # patient coordinates (x, y, z), mm


def longest_axial_diameter(mask: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """The longest in-plane extent (mm) over the slices of ``mask`` (slices, rows, columns)."""
    from skimage.measure import regionprops

    best = 0.0
    row_mm, col_mm = spacing[1], spacing[2]
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        for region in regionprops(ndimage.label(mask[k])[0]):
            coords = region.coords * np.array([row_mm, col_mm])
            if len(coords) == 1:
                best = max(best, min(row_mm, col_mm))
                continue
            hull = coords
            if len(coords) > 400:  # the extreme points of a dense region: its convex hull's vertices
                from scipy.spatial import ConvexHull, QhullError

                with contextlib.suppress(QhullError):  # degenerate (collinear) region: all points
                    hull = coords[ConvexHull(coords).vertices]
            d = np.sqrt(((hull[:, None, :] - hull[None, :, :]) ** 2).sum(-1)).max()
            best = max(best, float(d) + min(row_mm, col_mm))
    return best


def measure(label: str, category: str, mask: np.ndarray, image: np.ndarray | None,
            spacing: tuple[float, float, float], index_to_patient) -> Finding:  # noqa: ANN001
    """A finding from its mask on a volume; ``index_to_patient(k, j, i)`` maps voxel indices to mm."""
    count = int(np.count_nonzero(mask))
    volume = count * math.prod(spacing) / 1000.0
    mean = float(image[mask].mean()) if image is not None and count else None
    centre = ndimage.center_of_mass(mask) if count else (0.0, 0.0, 0.0)
    return Finding(label, category, volume, mean, longest_axial_diameter(mask, spacing),
                   tuple(float(v) for v in index_to_patient(*centre)))


@dataclass(frozen=True)
class Match:
    label: str  # the current label (the prior's for a gone lesion)
    prior: Finding | None
    current: Finding | None
    status: str  # organs: "compared"; lesions: new | stable | grown | shrunk | gone


def lesion_status(prior: Finding, current: Finding) -> str:
    change = current.volume_ml - prior.volume_ml
    if abs(change) > MIN_CHANGE_ML and prior.volume_ml > 0 and abs(change) / prior.volume_ml > GROWTH:
        return "grown" if change > 0 else "shrunk"
    return "stable"


def match_findings(prior: Sequence[Finding], current: Sequence[Finding],
                   prior_to_current: Mapping[str, tuple[float, float, float]] | None = None) -> list[Match]:
    """Pair findings of two time points. ``prior_to_current`` gives each prior lesion's centroid in the
    current patient coordinates (after registration); without it the prior centroids are used as they are."""
    matches: list[Match] = []
    current_organs = {f.label: f for f in current if f.category != "lesion"}
    for f in prior:
        if f.category != "lesion" and f.label in current_organs:
            matches.append(Match(f.label, f, current_organs.pop(f.label), "compared"))
    matches.extend(Match(label, None, f, "compared") for label, f in current_organs.items())
    mapped = dict(prior_to_current or {})
    prior_lesions = [f for f in prior if f.category == "lesion"]
    free = [f for f in current if f.category == "lesion"]
    pairs = []
    for p in prior_lesions:
        at = np.array(mapped.get(p.label, p.centroid))
        for c in free:
            distance = float(np.linalg.norm(at - np.array(c.centroid)))
            reach = max(MATCH_MM, 0.75 * max(p.longest_diameter_mm, c.longest_diameter_mm))
            if distance <= reach:
                pairs.append((distance, p.label, c.label))
    used_p: set[str] = set()
    used_c: set[str] = set()
    by_label_p = {f.label: f for f in prior_lesions}
    by_label_c = {f.label: f for f in free}
    for _, pl, cl in sorted(pairs):
        if pl in used_p or cl in used_c:
            continue
        used_p.add(pl)
        used_c.add(cl)
        before, after = by_label_p[pl], by_label_c[cl]
        matches.append(Match(cl, before, after, lesion_status(before, after)))
    matches.extend(Match(c.label, None, c, "new") for c in free if c.label not in used_c)
    matches.extend(Match(f"{p.label} (prior)", p, None, "gone")
                   for p in prior_lesions if p.label not in used_p)
    return matches
