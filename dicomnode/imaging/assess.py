"""Quality control of a pipeline's segments: one :class:`~dicomnode.imaging.qc.SegmentQC` per segment from
evidence the image itself gives (the verdict contract is :mod:`dicomnode.imaging.qc`).

=====================  ======  ===========================================================================
flag                   status  evidence
=====================  ======  ===========================================================================
truncated              warn    the mask reaches the first/last slice, the image border or the edge of the
                               reconstructed field of view (padding below -1500 HU): the organ continues
                               outside the images; its volume is a lower bound
implausible_volume     fail    volume outside the organ's range for this body size (a truncated organ:
                               only above the upper bound)
implausible_intensity  fail    median HU of the organ outside its plausible range on any CT (CT only)
leak                   fail    the mask overlaps another organ segment by more than 1 % of the smaller one
metal                  warn    metal inside the body (> 2500 HU, at least 0.05 ml) within 30 mm of the
                               segment
leak (mixed tissue)    fail    an organ of uniform parenchyma (liver) whose voxels lie less than 65 % near
                               its own main attenuation (histogram mode ± 3 widths, on ~2 mm, lesion
                               segments left out): the contour holds much tissue of other attenuation
                               (fat, muscle, bowel; a steatotic liver near the fat's level)
vessel course          fail    a vessel (aorta, IVC) along the head-feet axis: a cross-section more than
                               1.8 × the median one (``leak``), one under 0.4 × it between normal ones
                               (``implausible_volume``: the contour lost the lumen there), or a slice
                               whose median differs from the vessel's by more than 40 HU
                               (``implausible_intensity``: another structure); its centre moving between
                               neighbouring slices by over half its width plus the slices' distance, or
                               slices missing inside its course (``implausible_volume``: it jumped to a
                               neighbouring vessel, or lost continuity)
vessel width           warn    a vessel under 7 pixels across (``low_contrast``): the partial volume at
                               its border makes its outline uncertain by a sixth or more of its section;
                               or under 10 pixels of the 2 mm grid the organs are found on (a child's
                               aorta): its course, branches and border were judged on that grid, the
                               source pixels only redraw the border within 2 mm of it
truncated (lung)       warn    a lesion in a lung bordering solid tissue inside the lung's convex outline
                               (on its slices, within 3 mm, away from the midline) that its contour leaves
                               out, more than 15 % of its volume: a juxtapleural nodule cut at the lung's
                               edge; its volume may be underestimated; or a lesion whose 1.5 mm border
                               runs, towards the other lung, more than 10 % along solid tissue outside
                               the lung, more than 60 % of all the tissue outside the lung around it
                               (against the mediastinum or hilum: its extent there is estimated)
low_contrast           warn    the segment's median differs from its 2-6 mm surroundings by less than
                               1.5 × the image noise inside it, or from an organ segment it touches
                               (over at least 2 cm²) by less than 1.5 × the noise: the border between
                               two organs of nearly equal attenuation (native phase) is uncertain (a
                               vessel's noise read inside its border: its rim's partial volume is none)
=====================  ======  ===========================================================================

Body size is the patient's median axial cross-section (equivalent diameter ``d``, from the image).
Adult ranges hold for ``d`` ≥ 22 cm; below (children) both bounds scale by ``(d / 22 cm)³``; above
27 cm (an average adult abdomen) the upper bound grows by ``(d / 27 cm)^1.5`` (a larger section is
mostly fat: organs grow less than the body).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from dicomnode.imaging.qc import QCFlag, QCReport, QCStatus, SegmentQC, worst

log = logging.getLogger(__name__)

FAIL_FLAGS = frozenset({QCFlag.IMPLAUSIBLE_VOLUME, QCFlag.IMPLAUSIBLE_INTENSITY, QCFlag.LEAK})
ADULT_DIAMETER_CM = 27.0  # equivalent diameter of an average adult's abdominal section (about 570 cm²)
CHILD_DIAMETER_CM = 22.0  # below this, organ ranges shrink with the body's volume
METAL_HU = 2500.0
METAL_MM = 30.0
EVIDENCE_MM = 2.0
SMALL_ML = 50.0
PADDING_HU = -1500.0
CONTACT_MM2 = 200.0  # two organs touching over 2 cm²
UNIFORM_FRACTION = 0.65  # of a uniform organ's voxels near its main attenuation (a true liver: >= 0.72)
PLEURA_RIM_MM = 3.0  # a lung lesion's surroundings searched for solid tissue its contour left out
PLEURA_WINDOW_MM = 30.0  # the lung beside a lesion whose outline carries the pleural line across it
PLEURA_CUT = 0.15  # of a lung lesion's volume: more solid tissue left out inside the outline is a cut
MEDIASTINUM_CUT = 0.1  # of a lung lesion's border: more solid tissue medially outside the lung is a cut
MEDIASTINUM_BAND_MM = 1.5  # the border a lung lesion's surroundings are read in
MEDIASTINUM_SHARE = 0.6  # ... and of all the solid tissue outside the lung around it (not the chest wall)
VESSEL_WIDER = 1.8  # a vessel's cross-section over this times its median one: a leak
VESSEL_NARROWER = 0.4  # under this between normal ones: the lumen lost
VESSEL_HU = 40.0  # a slice's median this far from the vessel's: another structure
# a vessel's centre moving between neighbouring slices by more than this fraction of its width (plus the
# slices' distance: a course at 45°) has jumped to another structure
VESSEL_JUMP = 0.5
# a vessel under this many pixels across: the partial volume at its border (half a pixel on either side)
# makes its outline uncertain by a sixth or more of its section
VESSEL_PIXELS = 7.0  # (misplacing a third of a pixel on average there costs a Dice of 0.1 at 7 pixels)
# the abdominal organs' working grid (liver-ct's grid.working) and the fewest of its pixels across a vessel
# whose contour it decides well: a child's aorta, 16 mm, is 8 (Dice 0.88 on the real child variant, where the
# adult's, 26 mm, is 0.91)
WORKING_GRID_MM = 2.0
VESSEL_WORKING_PIXELS = 10.0
# the stomach: its wall and contents with some gas on top; a contour mostly of gas holds its gas pocket only
STOMACH_GAS_FRACTION = 0.5
STOMACH_WALL_HU = (-30.0, 150.0)  # its wall (and water, food) between fat and oral contrast
STOMACH_WALL_FRACTION = 0.1  # of its voxels, at least: a wall round oral contrast
STOMACH_WALL_MM = 5.0  # its wall's depth inside its contour, where a neighbour's level is no spill
STOMACH_SPILL_ML = 5.0  # a neighbour organ's tissue deeper inside the contour than its wall: a spill
STOMACH_SPILL_FRACTION = 0.1  # (and this share of the contour)
# its border seen: fat or gas (below -30 HU) within this of its contour outside it; where none lies there its
# neighbour touches it without a plane and the border is drawn at the wall's thickness from the lumen
STOMACH_PLANE_MM = 5.0
STOMACH_UNSEEN_FRACTION = 0.3  # of its surface, at most, without such a plane before QC says so


@dataclass(frozen=True)
class OrganPrior:
    """What is plausible for an organ of an adult (body diameter 30 cm) on CT."""

    volume_ml: tuple[float, float] | None = None
    median_hu: tuple[float, float] | None = None  # any phase, any fat content
    uniform: bool = False  # parenchyma of one attenuation in every phase (lesions apart)
    vessel: bool = False  # a tube along the head-feet axis, of nearly constant section and attenuation
    # the median at least this many HU above (negative: at most this far below) that of another organ of
    # the same result, in any phase: (structure, HU). The spleen is never more than 10-20 HU darker than
    # the liver (native; brighter with contrast or a fatty liver): a 'spleen' 40 HU below the liver is
    # bowel or muscle. The organ chains search for the organ within the same bound.
    median_vs: tuple[str, float] | None = None
    # the longest head-feet extent (mm) of an adult's organ, disease included (hepatomegaly, a Riedel lobe
    # reaching the iliac crest): a contour spanning more has run on into the heart above or the muscle,
    # bowel and psoas below
    span_mm: float | None = None
    # a vessel's median cross-section (mm²) in an adult: smaller (a slit) or larger and the contour has lost
    # the lumen or taken in its surroundings (children: scaled with the body's section)
    section_mm2: tuple[float, float] | None = None
    # a vessel seen only by the contrast of its blood against what lies around it (the IVC in the liver's
    # bare area): where it does not stand out (``low_contrast``), its wall is not in the image and its
    # contour is the prior's guess: ``fail`` instead of ``warn``
    needs_contrast: bool = False
    # the median at most this many HU above that of another organ of the same result, in any phase:
    # (structure, HU). The IVC's blood is never far brighter than the aorta's (native: both blood; arterial:
    # only the renal return enhanced; portal and later: alike); a brighter 'IVC' is another vessel or bowel
    median_at_most_vs: tuple[str, float] | None = None
    # a vessel that runs along another organ's whole head-feet extent: (structure, the least fraction of that
    # organ's extent its own covers). The IVC passes the liver's bare area from below the liver up to the
    # right atrium at the dome: a contour that ends halfway up lost it
    along: tuple[str, float] | None = None


# the IVC: blood (unenhanced 30-50 HU, never below 20: anaemia; up to ~150 HU in the portal phase, more only
# as the renal return's jet in the arterial phase), 14-30 mm across (a collapsed IVC flattens to a slit,
# right heart failure widens it), found beside the right crus and through the liver's bare area
IVC_PRIOR = OrganPrior(None, (15.0, 350.0), vessel=True, section_mm2=(80.0, 900.0), needs_contrast=True,
                       median_at_most_vs=("aorta", 40.0), along=("liver", 0.5))
PRIORS: dict[str, OrganPrior] = {
    # (livers lie at -40..160 HU, steatosis to contrast; a contour's median reads up to 10 HU beyond that
    # through the partial volume at its border and the noise: a -40 HU liver's correct contour has -41)
    "liver": OrganPrior((600.0, 3200.0), (-50.0, 170.0), uniform=True, span_mm=260.0),
    "spleen": OrganPrior((30.0, 1500.0), (20.0, 190.0), median_vs=("liver", -40.0), span_mm=250.0),
    "kidney-left": OrganPrior((50.0, 450.0), (0.0, 320.0), span_mm=180.0),
    "kidney-right": OrganPrior((50.0, 450.0), (0.0, 320.0), span_mm=180.0),
    "kidney": OrganPrior((50.0, 450.0), (0.0, 320.0), span_mm=180.0),
    # the stomach is its wall and contents (water, food, oral contrast) with some gas on top: a contour on
    # the gas alone (median near -1000 HU; the gas pocket the competition seeds from, or colon gas below it)
    # is not the stomach
    # (an adult's stomach holds 20 ml collapsed to 2.5 l distended; see stomach_checks for its mixture)
    "stomach": OrganPrior((20.0, 2500.0), (-300.0, 400.0), span_mm=300.0),
    "aorta": OrganPrior(None, (10.0, 700.0), vessel=True),
    "ivc": IVC_PRIOR,
    "inferior-vena-cava": IVC_PRIOR,
    "lung-left": OrganPrior((350.0, 4500.0), (-1000.0, -450.0)),
    "lung-right": OrganPrior((400.0, 5000.0), (-1000.0, -450.0)),
    "lung": OrganPrior((800.0, 9000.0), (-1000.0, -450.0)),
    "brain": OrganPrior((800.0, 2300.0), None),
}


@dataclass(frozen=True)
class Evidence:
    """What :func:`assess` measured for one segment (also useful in benchmarks)."""

    volume_ml: float
    median: float
    edge_fraction: float  # of the mask's surface voxels lying on the FOV edge
    metal_mm: float  # distance to the nearest metal inside the body
    cnr: float


def body_diameter_cm(image: np.ndarray, spacing: Sequence[float], is_ct: bool, axial_axis: int | None = 0,
                     ) -> float:
    """Median equivalent diameter of the body's axial cross-section (CT: above -500 HU; else Otsu), the
    planes taken across ``axial_axis`` (the array axis along head-feet: a coronal or sagittal stack's planes
    are not cross-sections; ``None``, an oblique stack: axis 0)."""
    axis = axial_axis or 0
    if axis:
        image = np.moveaxis(image, axis, 0)
        spacing = [spacing[axis], *(s for a, s in enumerate(spacing) if a != axis)]
    step = max(1, int(3.0 // spacing[1]))
    sub = image[:, ::step, ::step]
    if is_ct:
        level = -500.0
    else:
        from skimage.filters import threshold_otsu

        level = float(threshold_otsu(sub[:: max(1, sub.shape[0] // 8)]))
    pixel_cm2 = spacing[1] * spacing[2] * step * step / 100.0
    areas = []
    for plane in sub:
        labels, n = ndimage.label(plane > level)
        if n:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            areas.append(float(ndimage.binary_fill_holes(labels == int(np.argmax(sizes))).sum()) * pixel_cm2)
    area = float(np.median(areas)) if areas else 0.0
    return 2.0 * float(np.sqrt(area / np.pi))


def _box(mask: np.ndarray, margin: Sequence[int]) -> tuple[slice, ...]:
    """The mask's bounding box grown by ``margin`` voxels per axis (from its projections: an index per
    voxel, as ``argwhere`` makes, takes seconds on an organ of a 512 x 512 x 300 series; the in-plane
    projections are taken over the occupied slices only)."""
    occupied = np.flatnonzero(mask.any(axis=tuple(range(1, mask.ndim))))
    first, last = int(occupied[0]), int(occupied[-1])
    slab = mask[first : last + 1]
    box = []
    for axis, pad in enumerate(margin):
        if axis == 0:
            low, high = first, last + 1
        else:
            present = np.flatnonzero(slab.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
            low, high = int(present[0]), int(present[-1]) + 1
        box.append(slice(max(low - int(pad), 0), min(high + int(pad), mask.shape[axis])))
    return tuple(box)


def edge_fraction(mask: np.ndarray, outside_fov: np.ndarray | None) -> float:
    """Fraction of the mask's boundary voxels that lie on the edge of the field of view."""
    box = _box(mask, (1, 1, 1))
    sub = mask[box]
    surface = sub & ~ndimage.binary_erosion(sub, border_value=0)
    total = int(surface.sum())
    if total == 0:
        return 0.0
    edge = np.zeros(sub.shape, dtype=bool)  # the image's outermost voxels, on the box only
    for axis, (part, size) in enumerate(zip(box, mask.shape, strict=True)):
        for index in {0, size - 1}:
            if part.start <= index < part.stop:
                edge[(slice(None),) * axis + (index - part.start,)] = True
    if outside_fov is not None:
        edge |= ndimage.binary_dilation(outside_fov[box])
    return float((sub & edge).sum()) / total


def metal_points(image: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Coordinates (mm, z/y/x) of metal voxels inside the body (an empty array when there is no metal)."""
    metal = image > METAL_HU
    if not metal.any():
        return np.zeros((0, 3))
    inside = np.zeros_like(metal)
    for k in np.flatnonzero(metal.any(axis=(1, 2))):
        labels, n = ndimage.label(image[k] > -500.0)
        if n:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            body = ndimage.binary_fill_holes(labels == int(np.argmax(sizes)))
            inside[k] = metal[k] & body
    points = np.argwhere(inside) * np.asarray(spacing)
    if points.shape[0] * float(np.prod(spacing)) / 1000.0 < 0.05:
        return np.zeros((0, 3))
    return points[:: max(1, points.shape[0] // 5000)]


def metal_distance_mm(mask: np.ndarray, spacing: Sequence[float], points: np.ndarray) -> float:
    """Shortest distance (mm) from the mask's surface to a metal point (``inf`` without metal)."""
    if points.shape[0] == 0:
        return float("inf")
    from scipy.spatial import cKDTree

    box = _box(mask, (1, 1, 1))
    sub = mask[box]
    surface = np.argwhere(sub & ~ndimage.binary_erosion(sub, border_value=0))
    offset = np.array([b.start for b in box])
    tree = cKDTree((surface + offset) * np.asarray(spacing))
    return float(tree.query(points, k=1)[0].min())


def contrast_to_noise(image: np.ndarray, mask: np.ndarray, spacing: Sequence[float],
                      within: np.ndarray | Sequence[np.ndarray] | None = None) -> tuple[float, float]:
    """(median inside, CNR against the 2-6 mm shell around the mask, restricted to ``within``: a mask on
    ``image``'s grid, or several whose union is meant)."""
    margin = [int(np.ceil(7.0 / s)) + 1 for s in spacing]
    box = _box(mask, margin)
    sub, values = mask[box], image[box]
    inside = values[sub]
    median = float(np.median(inside))
    distance = ndimage.distance_transform_edt(~sub, sampling=spacing)
    shell = (distance > 2.0) & (distance <= 6.0)
    if isinstance(within, np.ndarray):
        shell &= within[box]
    elif within is not None:
        shell &= np.logical_or.reduce([w[box] for w in within]) if len(within) else False
    if shell.sum() < 10 or inside.size < 10:
        return median, float("inf")
    noise = 1.4826 * float(np.median(np.abs(inside - median)))
    return median, abs(median - float(np.median(values[shell]))) / max(noise, 1.0)


def _median_noise(values: np.ndarray) -> tuple[float, float]:
    """(median, 1.4826 × MAD) of ``values``."""
    median = float(np.median(values))
    return median, 1.4826 * float(np.median(np.abs(values - median)))


def _own_tissue(structure: str, values: np.ndarray) -> np.ndarray | None:
    """An organ's voxels that are tissue of its own: a stomach's without its gas (below -500 HU; its wall's
    contact with the liver read 97 HU 'under 1.5 × the noise' of a mixture of gas and water); ``None`` for a
    stomach half or more of gas (its gas pocket, which fails on its own: no border of it means anything)."""
    if structure == "stomach":
        tissue = values[values > -500.0]
        enough = tissue.size > (1.0 - STOMACH_GAS_FRACTION) * values.size and tissue.size >= 10
        return tissue if enough else None
    return values


def _equal_neighbours(segment, organs, sampled, image, spacing, stats=None):  # noqa: ANN001, ANN202
    """(label, HU step) of each organ segment touching ``segment`` over at least ``CONTACT_MM2`` whose
    median differs from it by less than 1.5 × the noise (1.4826 × MAD inside either; a stomach's without its
    gas, :func:`_own_tissue`). ``stats`` caches each organ's (median, noise) across calls."""
    stats = {} if stats is None else stats
    mask = sampled[segment.label]
    if np.count_nonzero(mask) < 10:
        return []
    own_prior = PRIORS.get(segment.structure, OrganPrior())
    if segment.label not in stats:
        tissue = _own_tissue(segment.structure, image[mask])
        stats[segment.label] = _median_noise(tissue) if tissue is not None else None
        if stats[segment.label] is not None and own_prior.vessel:
            # (a vessel's noise inside its border: the partial volume at its border with fat, a fifth of a
            # small vessel's voxels, is no noise; the IVC's 130 HU blood 20 HU above the liver was withheld
            # for a 'noise' of 15 HU where the image's is 12)
            box = _box(mask, (1,) * mask.ndim)
            inner = ndimage.binary_erosion(mask[box])
            if np.count_nonzero(inner) >= 10:
                stats[segment.label] = (stats[segment.label][0], _median_noise(image[box][inner])[1])
    if stats[segment.label] is None:
        return []
    median, noise = stats[segment.label]
    grown = None
    out = []
    face_mm2 = float(min(spacing[0] * spacing[1], spacing[1] * spacing[2]))
    for other in organs:
        if other.label == segment.label:
            continue
        if PRIORS.get(other.structure, OrganPrior()).needs_contrast and not own_prior.needs_contrast:
            continue  # (a vessel seen only by its contrast carries the doubt about that border itself)
        theirs = sampled[other.label]
        if theirs.shape != mask.shape or not theirs.any():
            continue
        if grown is None:  # the one-voxel dilation lies within the mask's box grown by one voxel
            box = _box(mask, (1,) * mask.ndim)
            grown = ndimage.binary_dilation(mask[box])
        contact = int(np.count_nonzero(grown & theirs[box]))
        if contact * face_mm2 < CONTACT_MM2:
            continue
        if other.label not in stats:
            tissue = _own_tissue(other.structure, image[theirs])
            stats[other.label] = _median_noise(tissue) if tissue is not None else None
        if stats[other.label] is None:
            continue
        other_median, other_noise = stats[other.label]
        step_hu = abs(median - other_median)
        if step_hu < 1.5 * max(noise, other_noise, 1.0):
            out.append((other.label, step_hu))
    return out


def _overlap(a: np.ndarray, b: np.ndarray, box_a: tuple[slice, ...] | None,
             box_b: tuple[slice, ...] | None) -> int:
    """Voxels in both masks, counted on the intersection of their bounding boxes (None: empty mask)."""
    if box_a is None or box_b is None:
        return 0
    box = tuple(slice(max(p.start, q.start), min(p.stop, q.stop)) for p, q in zip(box_a, box_b, strict=True))
    if any(part.start >= part.stop for part in box):
        return 0
    return int(np.count_nonzero(a[box] & b[box]))


def uniform_fraction(image: np.ndarray, mask: np.ndarray, excluded: np.ndarray | None = None
                     ) -> tuple[float, float, float]:
    """(fraction, mode, width): the share of the mask's voxels (less ``excluded``; each the mean of its 3 × 3
    in-plane neighbourhood) within ``max(3 × width, 15 HU)`` of the histogram's mode, ``width`` its
    half-maximum width / 2.355. A parenchyma of one attenuation gives about 0.7-0.9; a contour that took in
    fat or muscle beside it less."""
    box = _box(mask, (0, 1, 1))
    inside = mask[box] if excluded is None else mask[box] & ~excluded[box]
    values = ndimage.uniform_filter(image[box].astype(np.float32), size=(1, 3, 3))[inside]
    if values.size < 100:
        return 1.0, float(np.median(values)) if values.size else 0.0, 0.0
    low, high = np.percentile(values, [0.5, 99.5])
    edges = np.arange(float(low), float(high) + 4.0, 2.0)
    counts = ndimage.gaussian_filter1d(np.histogram(values, bins=edges)[0].astype(float), 2.0)
    peak = int(np.argmax(counts))
    above = counts >= counts[peak] / 2.0
    first, last = peak, peak
    while first > 0 and above[first - 1]:
        first -= 1
    while last < counts.size - 1 and above[last + 1]:
        last += 1
    width = float(edges[last + 1] - edges[first]) / 2.355
    mode = float(edges[peak]) + 1.0
    return float(np.mean(np.abs(values - mode) <= max(3.0 * width, 15.0))), mode, width


def vessel_course(
    label: str, image: np.ndarray, mask: np.ndarray, spacing: Sequence[float], axis: int,
    section: tuple[float, float] | None = None,
) -> list[tuple[QCFlag, str]]:
    """What is wrong along a vessel that runs along array ``axis`` (head-feet): sections far wider than its
    median (a leak), far narrower between normal ones (the lumen lost), a median section outside
    ``section`` (mm²: not this vessel's lumen) and slices whose median HU is not the vessel's (another
    structure followed)."""
    tube = np.moveaxis(mask, axis, 0)
    values = np.moveaxis(image, axis, 0)
    pixel_mm2 = float(np.prod([s for i, s in enumerate(spacing) if i != axis]))
    present = np.flatnonzero(tube.any(axis=(1, 2)))
    if present.size < 4:
        return []
    counts = tube[present].sum(axis=(1, 2))
    areas = counts * pixel_mm2
    typical = float(np.median(areas))
    found: list[tuple[QCFlag, str]] = []
    n = present.size
    if section is not None and not section[0] <= typical <= section[1]:
        found.append((QCFlag.IMPLAUSIBLE_VOLUME, (
            f"{label}'s median cross-section {typical:.0f} mm² is outside {section[0]:.0f}-{section[1]:.0f} "
            "mm², that of this vessel in a body of this size: the contour is not its lumen.")))
    wide = areas > VESSEL_WIDER * typical
    if wide.any():
        found.append((QCFlag.LEAK, (
            f"{label}'s cross-section reaches {areas.max():.0f} mm² on {int(wide.sum())} of its {n} slices, "
            f"over {VESSEL_WIDER:g} × its median {typical:.0f} mm² (a vessel's is nearly constant along its "
            "course): the contour spills into the tissue beside it; its volume is wrong.")))
    normal = np.flatnonzero(areas >= VESSEL_NARROWER * typical)
    narrow = np.zeros(n, dtype=bool)
    span = slice(int(normal[0]), int(normal[-1]) + 1)
    narrow[span] = areas[span] < VESSEL_NARROWER * typical
    if narrow.any():  # (a vessel that ends or divides at the end of its course narrows there: not counted)
        found.append((QCFlag.IMPLAUSIBLE_VOLUME, (
            f"{label}'s cross-section falls to {areas[narrow].min():.0f} mm² on {int(narrow.sum())} of its "
            f"{n} slices between normal ones, under {VESSEL_NARROWER:g} × its median {typical:.0f} mm²: the "
            "contour has lost the vessel there; its volume is wrong.")))
    width = 2.0 * np.sqrt(typical / np.pi)  # the median section's equivalent diameter (mm)
    in_plane = [float(s) for i, s in enumerate(spacing) if i != axis]
    step_mm = float(spacing[axis])
    centres = np.array([ndimage.center_of_mass(tube[k]) for k in present]) * np.asarray(in_plane)
    gaps = np.diff(present)
    moves = np.hypot(*(np.diff(centres, axis=0).T))
    jumps = moves > VESSEL_JUMP * width + step_mm * gaps
    if jumps.any():
        found.append((QCFlag.IMPLAUSIBLE_VOLUME, (
            f"{label}'s centre moves {moves[jumps].max():.0f} mm between neighbouring slices "
            f"({int(jumps.sum())} times along its {n} slices), over half its {width:.0f} mm width: a vessel "
            "runs on continuously, the contour has jumped to another structure (a neighbouring vessel) on "
            "part of its course.")))
    lost = int((gaps[gaps > 1] - 1).sum())
    if lost:
        found.append((QCFlag.IMPLAUSIBLE_VOLUME, (
            f"{label} is missing on {lost} slices between slices that hold it: a vessel runs on "
            "continuously, the contour lost it there; its volume is wrong.")))
    pixels = width / max(in_plane)
    working = width / WORKING_GRID_MM  # (on pixels as coarse as the working grid the rule above holds)
    if pixels < VESSEL_PIXELS:
        found.append((QCFlag.LOW_CONTRAST, (
            f"{label} is only {pixels:.1f} pixels across ({width:.0f} mm at {max(in_plane):.1f} mm pixels): "
            "the partial volume at its border leaves its outline uncertain by half a pixel on either side, "
            f"about {100 * (1 - (1 - 1 / pixels) ** 2):.0f} % of its section.")))
    elif max(in_plane) < WORKING_GRID_MM and working < VESSEL_WORKING_PIXELS:
        found.append((QCFlag.LOW_CONTRAST, (
            f"{label} is {width:.0f} mm across, only {working:.1f} pixels of the {WORKING_GRID_MM:g} mm grid "
            "the organs are found on: its course, its branches and what lies against it were judged on that "
            "grid (the source pixels only redraw its border within 2 mm of it), which leaves its outline "
            f"uncertain by about {100 * (1 - (1 - 1 / working) ** 2):.0f} % of its section.")))
    overall = float(np.median(values[tube]))
    medians = np.array([float(np.median(values[k][tube[k]])) if c >= 5 else overall
                        for k, c in zip(present, counts, strict=True)])
    off = np.abs(medians - overall) > VESSEL_HU
    if off.any():
        found.append((QCFlag.IMPLAUSIBLE_INTENSITY, (
            f"On {int(off.sum())} of its {n} slices {label}'s contour lies on tissue of "
            f"{medians[off].min():.0f} to {medians[off].max():.0f} HU, not the vessel's {overall:.0f} HU: "
            "it follows another structure there.")))
    return found


def stomach_checks(
    label: str, image: np.ndarray, mask: np.ndarray, spacing: Sequence[float],
    neighbours: Sequence[tuple[str, np.ndarray]],
) -> list[tuple[QCFlag, str]]:
    """What is wrong with a stomach's contour: mostly gas (its gas pocket, not its wall and contents:
    ``implausible_intensity``), no wall of soft tissue (:data:`STOMACH_WALL_HU`, under
    :data:`STOMACH_WALL_FRACTION` of it: a bright vessel or bone taken for oral contrast,
    ``implausible_intensity``), or a neighbour's tissue deeper inside it than its wall (liver, spleen:
    voxels of the neighbour's level, median ± 2 × its noise, more than :data:`STOMACH_WALL_MM` inside the
    contour and connected to the neighbour through such voxels, over :data:`STOMACH_SPILL_ML` and
    :data:`STOMACH_SPILL_FRACTION` of it: ``leak``)."""
    if not mask.any():
        return []
    found: list[tuple[QCFlag, str]] = []
    box = _box(mask, [int(np.ceil(STOMACH_WALL_MM / s)) + 1 for s in spacing])
    sub, values = mask[box], image[box]
    inside = values[sub]
    gas = float(np.mean(inside < -500.0))
    if gas >= STOMACH_GAS_FRACTION:
        found.append((QCFlag.IMPLAUSIBLE_INTENSITY, (
            f"{100 * gas:.0f} % of {label} is gas: the contour holds its gas pocket, not its wall and "
            "contents; its outline and volume are wrong.")))
    wall = float(np.mean((inside >= STOMACH_WALL_HU[0]) & (inside <= STOMACH_WALL_HU[1])))
    if wall < STOMACH_WALL_FRACTION:
        found.append((QCFlag.IMPLAUSIBLE_INTENSITY, (
            f"Only {100 * wall:.0f} % of {label} lies at {STOMACH_WALL_HU[0]:.0f} to "
            f"{STOMACH_WALL_HU[1]:.0f} HU: a stomach has a wall of soft tissue round its contents; the "
            "contour lies on something else (a vessel, bone, bowel gas).")))
    unseen, touching = _unseparated_surface(values, sub, spacing, [(o, t[box]) for o, t in neighbours
                                                                  if t.shape == mask.shape])
    log.debug("%s: %.0f %% of its surface without a fat or gas plane (%s)", label, 100 * unseen, touching)
    if unseen > STOMACH_UNSEEN_FRACTION:
        found.append((QCFlag.LOW_CONTRAST, (
            f"{100 * unseen:.0f} % of {label}'s surface has no fat or gas plane (below -30 HU within "
            f"{STOMACH_PLANE_MM:.0f} mm outside it) separating it from {touching}: its border there is not "
            "in the image and is drawn at its wall's thickness from its contents; its outline and volume "
            "are uncertain.")))
    voxel_ml = float(np.prod(spacing)) / 1000.0
    deep = ndimage.distance_transform_edt(sub, sampling=spacing) > STOMACH_WALL_MM
    for other, theirs in neighbours:
        organ = theirs[box]
        if theirs.shape != mask.shape or np.count_nonzero(organ) < 10:
            continue
        median, noise = _median_noise(image[theirs])
        level = np.abs(values - median) <= 2.0 * max(noise, 5.0)
        like = ((sub & level) | organ)
        parts, n = ndimage.label(like)
        if n == 0:
            continue
        joined = np.isin(parts, np.unique(parts[organ]))
        spill = int(np.count_nonzero(joined & deep & sub))
        if spill * voxel_ml > STOMACH_SPILL_ML and spill > STOMACH_SPILL_FRACTION * int(sub.sum()):
            found.append((QCFlag.LEAK, (
                f"{label} holds {spill * voxel_ml:.0f} ml of tissue of {other}'s attenuation "
                f"({median:.0f} HU) more than {STOMACH_WALL_MM:.0f} mm inside its contour, joined to "
                f"{other}: the contour has spilled into {other}; its outline and volume are wrong.")))
    return found


def _unseparated_surface(
    values: np.ndarray, mask: np.ndarray, spacing: Sequence[float],
    neighbours: Sequence[tuple[str, np.ndarray]],
) -> tuple[float, str]:
    """The share of ``mask``'s surface with no fat or gas (below -30 HU) within :data:`STOMACH_PLANE_MM`
    outside it, and what touches it there (the neighbours' names whose masks hold a tenth of what lies
    against that part; "the tissue around it" where they hold under half of it)."""
    surface = mask & ~ndimage.binary_erosion(mask)
    if not surface.any():
        return 0.0, ""
    beyond = ndimage.distance_transform_edt(~mask, sampling=spacing)
    plane = ~mask & (beyond <= STOMACH_PLANE_MM) & (values < -30.0)
    if plane.any():
        seen = ndimage.distance_transform_edt(~plane, sampling=spacing) <= STOMACH_PLANE_MM
    else:
        seen = np.zeros_like(mask)
    unseen = surface & ~seen
    fraction = float(np.count_nonzero(unseen)) / float(np.count_nonzero(surface))
    against = ndimage.binary_dilation(unseen) & ~mask
    total = max(np.count_nonzero(against), 1)
    names = [name for name, theirs in neighbours if np.count_nonzero(against & theirs) >= 0.1 * total]
    named = np.logical_or.reduce([theirs for _, theirs in neighbours]) if neighbours else np.zeros_like(mask)
    if np.count_nonzero(against & ~named) >= 0.5 * total:
        names.append("the tissue around it")
    return fraction, " and ".join(names)


def child_scale(diameter_cm: float) -> float | None:
    """A child's body size as a fraction of the smallest adult's (diameter below :data:`CHILD_DIAMETER_CM`,
    at least 5 cm): lengths scale with it, sections with its square, volumes with its cube; ``None`` for an
    adult."""
    if diameter_cm >= CHILD_DIAMETER_CM:
        return None
    return max(diameter_cm, 5.0) / CHILD_DIAMETER_CM


def section_range(prior: OrganPrior, diameter_cm: float) -> tuple[float, float] | None:
    """The prior's adult range of a vessel's cross-section, scaled with the body's section for children."""
    if prior.section_mm2 is None:
        return None
    low, high = prior.section_mm2
    child = child_scale(diameter_cm)
    return (low * child**2, high * child**2) if child is not None else (low, high)


def volume_range(prior: OrganPrior, diameter_cm: float) -> tuple[float, float] | None:
    """The prior's adult range scaled for the body size (children below, large bodies above)."""
    if prior.volume_ml is None:
        return None
    low, high = prior.volume_ml
    child = child_scale(diameter_cm)
    if child is not None:
        return low * child**3, high * child**3
    return low, high * max(1.0, diameter_cm / ADULT_DIAMETER_CM) ** 1.5


# an organ the pipeline declares but did not find, and the organs that then meet its territory without a
# border between them (the competition grows a neighbour over a kidney it has no seed for)
NEIGHBOURS_OF_ABSENT: dict[str, tuple[str, ...]] = {"kidney-left": ("spleen",), "kidney-right": ("liver",)}
ABSENT_NAMES = {"kidney-left": "left kidney", "kidney-right": "right kidney"}
ABSENT_MARGIN_MM = 40.0  # the images reach this far beyond the neighbour at both ends: the organ is in view


def span_limit_mm(prior: OrganPrior, diameter_cm: float) -> float | None:
    """The prior's longest head-feet extent scaled for the body size (a child's organs are shorter; a
    large body's a little longer)."""
    if prior.span_mm is None:
        return None
    child = child_scale(diameter_cm)
    if child is not None:
        return prior.span_mm * child
    return prior.span_mm * max(1.0, diameter_cm / ADULT_DIAMETER_CM) ** 0.5


def head_feet_extent_mm(box: tuple[slice, ...], shape: Sequence[int], spacing: Sequence[float],
                        axial_axis: int) -> tuple[float, float]:
    """(span, margin) in mm of a mask with bounding ``box`` on a grid of ``shape``: how far it reaches along
    the head-feet axis, and how far the images reach beyond it at the nearer of its two ends."""
    part, size = box[axial_axis], float(spacing[axial_axis])
    return (part.stop - part.start) * size, min(part.start, shape[axial_axis] - part.stop) * size


def assess(
    image: np.ndarray,
    spacing: Sequence[float],
    segments: Sequence,  # outputs.api.Segment
    *,
    is_ct: bool = True,
    axial_axis: int | None = 0,
    absent: Sequence[str] = (),
) -> tuple[QCReport, dict[str, Evidence]]:
    """Verdicts for ``segments`` (masks on ``image``'s grid) and the evidence behind them.

    ``axial_axis`` is the array axis along the patient's head-feet direction (vessels are followed along
    it; ``None``: not checked). ``absent``: structures the pipeline declares but did not find."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    spacing_full = tuple(spacing)
    image_full = image
    diameter = body_diameter_cm(image, spacing, is_ct, axial_axis)
    # the evidence beyond the volume is read on a grid of about EVIDENCE_MM (cost follows the organ's size
    # in mm, not the scanner's matrix)
    metal = metal_points(image, spacing) if is_ct else np.zeros((0, 3))  # full resolution: small clips
    step = tuple(max(1, int(EVIDENCE_MM // s)) for s in spacing)
    padded = is_ct and float(image.min()) < PADDING_HU
    grids = {
        "full": (image, tuple(spacing), (image < PADDING_HU) if padded else None),
        "coarse": (image[:: step[0], :: step[1], :: step[2]],
                   tuple(s * n for s, n in zip(spacing, step, strict=True)), None),
    }
    if padded:
        grids["coarse"] = (*grids["coarse"][:2], grids["coarse"][0] < PADDING_HU)
    organs = [s for s in segments if s.category != "lesion"]
    verdicts: dict[str, SegmentQC] = {}
    evidence: dict[str, Evidence] = {}
    # every count, box and overlap once per segment (a pass over a 512x512x300 mask costs ~0.1 s)
    counts = {s.label: int(np.count_nonzero(s.mask)) for s in segments}
    boxes = {s.label: _box(s.mask, (0, 0, 0)) if counts[s.label] else None for s in segments}
    # small segments (lesions) are read at full resolution, the others on the coarse grid
    small = {s.label: float(counts[s.label]) * voxel_ml < SMALL_ML for s in segments}
    coarse_masks = {o.label: np.ascontiguousarray(o.mask[:: step[0], :: step[1], :: step[2]]) for o in organs}
    sampled = {s.label: s.mask if small[s.label] else coarse_masks.get(s.label) for s in segments}
    for s in segments:
        if sampled[s.label] is None:
            sampled[s.label] = np.ascontiguousarray(s.mask[:: step[0], :: step[1], :: step[2]])
    soft_tissue: dict[str, np.ndarray] = {}  # per grid: inside the body (above -500 HU)
    neighbour_stats: dict[str, tuple[float, float] | None] = {}
    for segment in segments:
        volume = float(counts[segment.label]) * voxel_ml
        mask = sampled[segment.label]
        image, spacing, outside_fov = grids["full" if small[segment.label] else "coarse"]
        flags: list[QCFlag] = []
        reasons: list[str] = []
        if not mask.any():
            continue
        prior = PRIORS.get(segment.structure, OrganPrior())
        edge = edge_fraction(mask, outside_fov)
        truncated = edge >= 0.01
        if truncated:
            flags.append(QCFlag.TRUNCATED)
            reasons.append(f"{segment.label} reaches the edge of the field of view ({100 * edge:.0f} % of "
                           f"its surface): it continues outside the images; its volume {volume:.0f} ml is "
                           "a lower bound.")
        if is_ct and prior.uniform and segment.category != "lesion":
            lesions = [s.mask if small[segment.label] else s.mask[:: step[0], :: step[1], :: step[2]]
                       for s in segments if s.category == "lesion"]
            fraction, mode, width = uniform_fraction(image, mask, np.logical_or.reduce(lesions)
                                                     if lesions else None)
            if fraction < UNIFORM_FRACTION:
                flags.append(QCFlag.LEAK)
                reasons.append(f"Only {100 * fraction:.0f} % of {segment.label} has its own attenuation "
                               f"({mode:.0f} ± {max(3.0 * width, 15.0):.0f} HU; a {segment.structure} is "
                               "one tissue): the contour has taken in fat, muscle or bowel beside it "
                               f"(about {(1 - fraction) * volume:.0f} ml); its outline and volume are "
                               "wrong.")
        span = volume_range(prior, diameter)
        if span is not None:
            low, high = span
            if volume > high or (volume < low and not truncated):
                flags.append(QCFlag.IMPLAUSIBLE_VOLUME)
                reasons.append(f"{segment.label} volume {volume:.0f} ml is outside {low:.0f}-{high:.0f} ml, "
                               f"the plausible range for a body {diameter:.0f} cm across.")
        longest = span_limit_mm(prior, diameter) if axial_axis is not None else None
        if longest is not None and segment.category != "lesion":
            reach, _ = head_feet_extent_mm(boxes[segment.label], segment.mask.shape, spacing_full, axial_axis)
            if reach > longest:
                flags.append(QCFlag.LEAK)
                reasons.append(f"{segment.label} spans {reach:.0f} mm head to feet, more than the "
                               f"{longest:.0f} mm any {segment.structure} of a body {diameter:.0f} cm across "
                               "spans: the contour runs on into the tissue above or below it; its outline "
                               "and volume are wrong.")
        within: np.ndarray | list[np.ndarray] | None = None
        grid_name = "full" if small[segment.label] else "coarse"
        if segment.category == "lesion":  # a lesion against the organ it lies in (the union of its hosts)
            hosts = [o for o in organs
                     if _overlap(o.mask, segment.mask, boxes[o.label], boxes[segment.label]) > 0]
            within = [o.mask if small[segment.label] else coarse_masks[o.label] for o in hosts] or None
        elif is_ct:  # soft tissue around an organ, not the air outside the body
            if grid_name not in soft_tissue:
                soft_tissue[grid_name] = image > -500.0
            within = soft_tissue[grid_name]
        median, cnr = contrast_to_noise(image, mask, spacing, within)
        if is_ct and prior.median_hu is not None:
            lo_hu, hi_hu = prior.median_hu
            if not lo_hu <= median <= hi_hu:
                flags.append(QCFlag.IMPLAUSIBLE_INTENSITY)
                reasons.append(f"{segment.label} median {median:.0f} HU is outside {lo_hu:.0f}-{hi_hu:.0f} "
                               "HU, where this organ lies on CT in any phase.")
        for other in organs:
            if other is segment or segment.category == "lesion":
                continue
            overlap = _overlap(other.mask, segment.mask, boxes[other.label], boxes[segment.label])
            smaller = min(counts[segment.label], counts[other.label])
            if overlap > 0.01 * smaller:
                flags.append(QCFlag.LEAK)
                reasons.append(f"{segment.label} overlaps {other.label} by {overlap * voxel_ml:.1f} ml "
                               f"({100 * overlap / smaller:.0f} % of the smaller).")
        if is_ct and segment.structure == "stomach":
            neighbours = [(o.label, coarse_masks[o.label]) for o in organs
                          if o.structure in ("liver", "spleen") and o.label in coarse_masks]
            coarse_image, coarse_spacing, _ = grids["coarse"]
            for flag, reason in stomach_checks(segment.label, coarse_image, coarse_masks[segment.label],
                                               coarse_spacing, neighbours):
                flags.append(flag)
                reasons.append(reason)
        if is_ct and prior.vessel and axial_axis is not None:
            for flag, reason in vessel_course(segment.label, image, mask, spacing, axial_axis,
                                              section_range(prior, diameter)):
                flags.append(flag)
                reasons.append(reason)
        metal_mm = metal_distance_mm(mask, spacing, metal)
        if metal_mm <= METAL_MM:
            flags.append(QCFlag.METAL)
            reasons.append(f"Metal (above {METAL_HU:.0f} HU) lies {metal_mm:.0f} mm from {segment.label}: "
                           "streaks may distort its outline and intensities.")
        weak = cnr < 1.5  # the segment does not stand out from its surroundings or a neighbour organ
        if cnr < 1.5:
            flags.append(QCFlag.LOW_CONTRAST)
            reasons.append(f"{segment.label} differs from its surroundings by only {cnr:.1f} × the image "
                           "noise: its boundary is uncertain.")
        if is_ct and segment.category != "lesion":
            coarse_image, coarse_spacing, _ = grids["coarse"]
            for other, step_hu in _equal_neighbours(segment, organs, coarse_masks, coarse_image,
                                                    coarse_spacing, neighbour_stats):
                weak = True
                flags.append(QCFlag.LOW_CONTRAST)
                reasons.append(f"{segment.label} touches {other} and differs from it by only "
                               f"{step_hu:.0f} HU (under 1.5 × the noise): the border between them is "
                               "uncertain.")
        status = worst(QCStatus.FAIL if f in FAIL_FLAGS else QCStatus.WARN for f in flags)
        if prior.needs_contrast and weak:  # (not for a vessel only a few pixels across)
            status = QCStatus.FAIL
            reasons.append(f"{segment.label} is seen only by the contrast of its blood against what lies "
                           "around it: without it the vessel's wall is not in the image and its contour is a "
                           "guess from its usual position.")
        verdicts[segment.label] = SegmentQC(status, tuple(dict.fromkeys(flags)), tuple(reasons))
        evidence[segment.label] = Evidence(volume, median, edge, metal_mm, cnr)
        log.debug("QC %s: %s %s", segment.label, status, evidence[segment.label])
    if is_ct:
        _against_other_organs(organs, verdicts, evidence)
    if axial_axis is not None:
        _along_organs(organs, verdicts, boxes, spacing_full, axial_axis)
        _beside_absent_organs(organs, absent, verdicts, boxes, spacing_full, axial_axis)
    _inherit_host_failures(segments, organs, verdicts)
    if is_ct and axial_axis is not None:
        _lesions_cut_at_the_pleura(image_full, spacing_full, segments, organs, verdicts, axial_axis)
        _lesions_against_the_mediastinum(image_full, spacing_full, segments, organs, verdicts, axial_axis)
    return QCReport(verdicts), evidence


def _against_other_organs(organs: Sequence, verdicts: dict[str, SegmentQC],  # outputs.api.Segment
                          evidence: dict[str, Evidence]) -> None:
    """An organ whose median lies below the bound its prior sets against another organ's median
    (:attr:`OrganPrior.median_vs`) is another structure: e.g. a contour on 40 HU bowel or muscle beside a
    105 HU portal-venous liver is not a spleen; so is one above the bound :attr:`OrganPrior.median_at_most_vs`
    sets (an 'IVC' far brighter than the aorta). Judged only against an organ whose own verdict is not
    ``fail``."""
    for organ in organs:
        prior = PRIORS.get(organ.structure)
        if prior is None or organ.label not in evidence:
            continue
        for bound, above in ((prior.median_vs, False), (prior.median_at_most_vs, True)):
            if bound is None:
                continue
            structure, offset = bound
            references = [o for o in organs if o.structure == structure and o.label in evidence
                          and verdicts[o.label].status != QCStatus.FAIL]
            if not references:
                continue
            reference = evidence[references[0].label].median
            median = evidence[organ.label].median
            if above and median > reference + offset:
                reason = (f"{organ.label} median {median:.0f} HU is {median - reference:.0f} HU above the "
                          f"{structure}'s {reference:.0f} HU; a {organ.structure} is never more than "
                          f"{offset:.0f} HU brighter than the {structure} in any phase: the contour lies on "
                          "another structure.")
            elif not above and median < reference + offset:
                limit = (f"more than {-offset:.0f} HU darker than" if offset < 0
                         else f"less than {offset:.0f} HU brighter than")
                reason = (f"{organ.label} median {median:.0f} HU is {reference - median:.0f} HU below the "
                          f"{structure}'s {reference:.0f} HU; a {organ.structure} is never {limit} the "
                          f"{structure} in any phase: the contour lies on another structure.")
            else:
                continue
            verdicts[organ.label] = verdicts[organ.label].adding(
                QCStatus.FAIL, [QCFlag.IMPLAUSIBLE_INTENSITY], [reason])


def _along_organs(organs: Sequence, verdicts: dict[str, SegmentQC],  # outputs.api.Segment
                  boxes: dict[str, tuple[slice, ...] | None], spacing: Sequence[float],
                  axial_axis: int) -> None:
    """A vessel whose head-feet extent covers less than the fraction its prior sets
    (:attr:`OrganPrior.along`) of the organ it runs along (the IVC behind the liver) lost its course: it
    ``fail``s. Judged only against an organ whose own verdict is not ``fail``."""
    for organ in organs:
        prior = PRIORS.get(organ.structure)
        box = boxes.get(organ.label)
        if prior is None or prior.along is None or box is None or organ.label not in verdicts:
            continue
        structure, fraction = prior.along
        references = [o for o in organs if o.structure == structure and boxes.get(o.label) is not None
                      and o.label in verdicts and verdicts[o.label].status != QCStatus.FAIL]
        if not references:
            continue
        own, theirs = box[axial_axis], boxes[references[0].label][axial_axis]  # type: ignore[index]
        shared = max(0, min(own.stop, theirs.stop) - max(own.start, theirs.start))
        length = theirs.stop - theirs.start
        if shared < fraction * length:
            size = float(spacing[axial_axis])
            verdicts[organ.label] = verdicts[organ.label].adding(QCStatus.FAIL, [QCFlag.IMPLAUSIBLE_VOLUME], [
                f"{organ.label} runs along only {shared * size:.0f} mm of the {structure}'s "
                f"{length * size:.0f} mm head to feet, though it runs along at least {100 * fraction:.0f} % "
                "of it: the contour lost the vessel."])


def _beside_absent_organs(organs: Sequence, absent: Sequence[str],  # outputs.api.Segment
                          verdicts: dict[str, SegmentQC], boxes: dict[str, tuple[slice, ...] | None],
                          spacing: Sequence[float], axial_axis: int) -> None:
    """A neighbour of a declared organ that was not found, where the images reach well beyond the neighbour
    at both ends (so the missing organ lies in view), is at least `warn` `low_contrast`: without the organ's
    seed no border was drawn between them and the neighbour's contour may have taken it in (a native-phase
    spleen grown over the left kidney). So is one whose contour runs off the images at one end while they
    reach well beyond it at the other: a contour grown over the missing organ may run on to the edge (a
    native child's spleen down to the bottom of a 200 mm field); a neighbour cut at both ends (a short
    slab) says nothing of the organ."""
    for missing in absent:
        for organ in organs:
            box = boxes.get(organ.label)
            if organ.structure not in NEIGHBOURS_OF_ABSENT.get(missing, ()) or organ.label not in verdicts \
                    or box is None:
                continue
            part, size = box[axial_axis], float(spacing[axial_axis])
            near, far = sorted((part.start * size, (organ.mask.shape[axial_axis] - part.stop) * size))
            name = ABSENT_NAMES.get(missing, missing)
            if near >= ABSENT_MARGIN_MM:
                where = f"the images reach {near:.0f} mm beyond {organ.label} at both ends"
            elif near == 0.0 and far >= ABSENT_MARGIN_MM:
                where = (f"the images reach {far:.0f} mm beyond {organ.label} at one end and its contour "
                         "runs off them at the other")
            else:
                continue
            verdicts[organ.label] = verdicts[organ.label].adding(QCStatus.WARN, [QCFlag.LOW_CONTRAST], [
                f"The {name} was not found, though {where}: no border was drawn between them, and "
                f"{organ.label}'s contour may have taken in the {name}."])


def _inherit_host_failures(segments: Sequence, organs: Sequence,  # outputs.api.Segment
                           verdicts: dict[str, SegmentQC]) -> None:
    """A lesion inside an organ whose contour failed QC fails too: what the organ's contour took in (fat,
    muscle, bowel) is where a false lesion comes from, and the lesion's contrast is measured against it."""
    for lesion in (s for s in segments if s.category == "lesion"):
        failed = [o for o in organs if o.label in verdicts  # an empty segment gets no verdict
                  and verdicts[o.label].status == QCStatus.FAIL and (o.mask & lesion.mask).any()]
        if not failed:
            continue
        verdicts[lesion.label] = verdicts[lesion.label].adding(
            QCStatus.FAIL, [f for o in failed for f in verdicts[o.label].flags if f in FAIL_FLAGS],
            [f"{lesion.label} lies in {o.label}, whose contour failed QC: the lesion may be tissue that "
             "contour took in." for o in failed])


def _lesions_cut_at_the_pleura(image: np.ndarray, spacing: Sequence[float], segments: Sequence,
                               organs: Sequence, verdicts: dict[str, SegmentQC], axial_axis: int) -> None:
    """A lesion in a lung whose contour stops short of the pleural line is at least ``warn`` ``truncated``:
    on its axial slices, solid tissue (denser than halfway between the lung around it and the lesion)
    within :data:`PLEURA_RIM_MM` of it, outside the lung and the lesion but inside the convex outline of
    both (in a window of :data:`PLEURA_WINDOW_MM`: the pleural line carried across the lesion's base
    from either side), amounting to more than :data:`PLEURA_CUT` of its volume, is the rest of a
    juxtapleural nodule the lung contour cut off. Tissue towards the body's centre (within 60° of it,
    seen from the lung's centre on the slice: the hilum, heart and mediastinum) is not counted."""
    from skimage.morphology import convex_hull_image

    lungs = [o for o in organs if o.structure.startswith("lung")]
    if not lungs:
        return
    order = (axial_axis, *(a for a in range(3) if a != axial_axis))
    vol = np.transpose(image, order)
    sp = tuple(float(spacing[a]) for a in order)
    voxel_ml = float(np.prod(sp)) / 1000.0
    pad = [int(np.ceil(PLEURA_WINDOW_MM / v)) for v in sp[1:]]
    for lesion in (s for s in segments if s.category == "lesion" and s.label in verdicts):
        mask = np.transpose(lesion.mask, order)
        hosts = [np.transpose(o.mask, order) for o in lungs if (o.mask & lesion.mask).any()]
        if not hosts or not mask.any():
            continue
        host = np.logical_or.reduce(hosts)
        cut = 0
        level = None
        for k in np.flatnonzero(mask.any(axis=(1, 2))):
            rr, cc = np.nonzero(mask[k])
            crop = (slice(max(0, rr.min() - pad[0]), rr.max() + pad[0] + 1),
                    slice(max(0, cc.min() - pad[1]), cc.max() + pad[1] + 1))
            lung, les, values = host[k][crop] & ~mask[k][crop], mask[k][crop], vol[k][crop]
            if not lung.any():
                continue
            if level is None:
                level = (float(np.median(vol[mask])) + float(np.median(values[lung]))) / 2.0
            near = ndimage.distance_transform_edt(~les, sampling=sp[1:]) <= PLEURA_RIM_MM
            outside = (values > level) & convex_hull_image(lung | les) & ~lung & ~les & near
            if not outside.any():
                continue
            # not towards the body's centre as seen from the lung's centre on this slice
            body = vol[k] > -500.0
            lung_c = np.argwhere(host[k]).mean(axis=0) * sp[1:]
            to_body = np.argwhere(body).mean(axis=0) * sp[1:] - lung_c
            rows, cols = np.nonzero(outside)
            points = (np.stack([rows + crop[0].start, cols + crop[1].start], axis=1) * sp[1:]) - lung_c
            cosine = points @ to_body / np.maximum(np.linalg.norm(points, axis=1) * np.linalg.norm(to_body),
                                                   1e-6)
            outside[rows[cosine > 0.5], cols[cosine > 0.5]] = False
            parts, _ = ndimage.label(outside | les)
            touching = np.unique(parts[les])
            cut += int((np.isin(parts, touching[touching > 0]) & outside).sum())
        volume = float(mask.sum()) * voxel_ml
        if cut * voxel_ml > PLEURA_CUT * volume:
            verdicts[lesion.label] = verdicts[lesion.label].adding(QCStatus.WARN, [QCFlag.TRUNCATED], [
                f"{lesion.label} borders {cut * voxel_ml:.2f} ml of solid tissue inside the lung's outline "
                f"that its contour leaves out ({100 * cut * voxel_ml / volume:.0f} % of its "
                f"{volume:.2f} ml, within {PLEURA_RIM_MM:.0f} mm of it): it continues beyond the lung "
                "contour (a nodule against the pleura cut at the lung's edge); its volume may be "
                "underestimated."])


def _lesions_against_the_mediastinum(image: np.ndarray, spacing: Sequence[float], segments: Sequence,
                                     organs: Sequence, verdicts: dict[str, SegmentQC],
                                     axial_axis: int) -> None:
    """A lesion in a lung whose border, on its medial side, runs along solid tissue outside the lung is
    at least ``warn`` ``truncated``: on its axial slices, the band within :data:`MEDIASTINUM_BAND_MM` around
    it holds, within 60° of the direction of the other lung (seen from the lesion's centre), tissue denser
    than halfway between the lung's parenchyma and soft tissue outside the lung, more than
    :data:`MEDIASTINUM_CUT` of the band and more than :data:`MEDIASTINUM_SHARE` of all the tissue outside
    the lung in it (a juxtapleural nodule's base against the chest wall lies all round, not medially;
    lung1's juxtapleural nodules: at most 0.41, hilar and paramediastinal ones 0.71-0.94). The lung's
    envelope stops at its medial border (the hilum and mediastinum are never repaired into it), so there
    the lesion's contour is cut or estimated (a paramediastinal or hilar nodule): its volume may be
    wrong. Needs both lungs (their centres give the
    direction of the midline in any orientation)."""
    from dicomnode.imaging.morphology import dilate

    lungs = [o for o in organs if o.structure.startswith("lung") and o.mask.any()]
    if len(lungs) != 2:
        return
    order = (axial_axis, *(a for a in range(3) if a != axial_axis))
    vol = np.transpose(image, order)
    sp = tuple(float(spacing[a]) for a in order)
    masks = [np.transpose(o.mask, order) for o in lungs]
    centres = [np.argwhere(m[::4, ::4, ::4]).mean(axis=0)[1:] * 4 * np.asarray(sp[1:]) for m in masks]
    for lesion in (s for s in segments if s.category == "lesion" and s.label in verdicts):
        mask = np.transpose(lesion.mask, order)
        hosts = [i for i, m in enumerate(masks) if (m & mask).any()]
        if len(hosts) != 1 or not mask.any():
            continue
        host = masks[hosts[0]]
        medial = centres[1 - hosts[0]] - centres[hosts[0]]
        air = vol[host & (vol < -500.0)]
        if air.size < 100:
            continue
        level = (float(np.median(air)) + 40.0) / 2.0
        band_total = cut_total = outside_total = 0
        for k in np.flatnonzero(mask.any(axis=(1, 2))):
            rr, cc = np.nonzero(mask[k])
            pad = [int(np.ceil(MEDIASTINUM_BAND_MM / v)) + 1 for v in sp[1:]]
            crop = (slice(max(0, rr.min() - pad[0]), rr.max() + pad[0] + 1),
                    slice(max(0, cc.min() - pad[1]), cc.max() + pad[1] + 1))
            les = mask[k][crop]
            band = dilate(les[None], MEDIASTINUM_BAND_MM, (1.0, *sp[1:]), slicewise=True)[0] & ~les
            rows, cols = np.nonzero(band)
            points = np.stack([rows, cols], axis=1) * sp[1:] - np.argwhere(les).mean(axis=0) * sp[1:]
            norms = np.linalg.norm(points, axis=1) * np.linalg.norm(medial)
            cosine = points @ medial / np.maximum(norms, 1e-6)
            outside = ~host[k][crop][rows, cols] & (vol[k][crop][rows, cols] > level)
            band_total += int(band.sum())
            outside_total += int(outside.sum())
            cut_total += int((outside & (cosine > 0.5)).sum())
        # mostly medial: a juxtapleural nodule carried out to the chest wall has its wall all round its base
        if band_total and cut_total > MEDIASTINUM_CUT * band_total \
                and cut_total > MEDIASTINUM_SHARE * outside_total:
            verdicts[lesion.label] = verdicts[lesion.label].adding(QCStatus.WARN, [QCFlag.TRUNCATED], [
                f"{lesion.label} lies against the mediastinum or hilum: {100 * cut_total / band_total:.0f} % "
                "of its border runs along solid tissue outside the lung on its medial side, where the lung's "
                "contour stops; its extent there is cut or estimated and its volume may be wrong."])


def head_feet_axis(direction: Sequence[float]) -> int | None:
    """The array axis (slices, rows, columns) that runs closest to the patient's head-feet direction, given
    SimpleITK's row-major direction cosines; ``None`` when none is within 30° of it (an oblique stack)."""
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)
    along = np.abs(matrix[2])  # the z (S) component of each index axis (x, y, z)
    index_axis = int(np.argmax(along))
    return 2 - index_axis if along[index_axis] >= np.cos(np.radians(30.0)) else None
