"""Abdominal organs on CT segmented together, in competition (step ``abdomen.organs``).

Organs of equal density are told apart by where they are and what they touch, not by a threshold.
On an LPS-oriented copy of the working grid (:mod:`dicomnode.imaging.organs.landmarks`):

1. **Landmarks** — body, vertebral body (centre line and anterior edge per slice), lungs and the level
   of each lung base, subcutaneous fat and soft-tissue levels, the trunk's size (priors scale with it).
2. **Seeds from priors, intensities from the image** — each organ's prior territory is written in mm
   relative to those landmarks (liver: right, below the right lung base; spleen: left posterolateral,
   below the left lung base; kidneys: paravertebral; aorta: a round bright/thick structure just in
   front of the vertebral body, slightly left; IVC: right of it, one continuous course of discs that differ
   from their surroundings on every side, brighter or darker; stomach: its lumen of gas, water or oral
   contrast left anterior under the left hemidiaphragm, see :func:`_stomach`). Inside the territory the
   organ's attenuation is the histogram mode of the soft tissue there (−80..250 HU, so a fatty liver
   darker than the spleen is found as well), and the seed is the eroded, connected part of the territory
   close to that mode.
3. **Competition** — a marker-based watershed (scikit-image) on the gradient magnitude from all seeds
   at once, inside a soft-tissue band estimated from the image (between the fat and the organs' levels,
   below bone); everything outside the band and the muscles of the body wall and around the spine are
   *background* markers, so a flood stops where another structure explains the voxel better.
4. **Shape** — aorta and IVC are kept within a tube around their centre track; every organ keeps the
   connected part that holds its seed, voxels far from its attenuation are given back, and the freed
   voxels are flooded again by their neighbours.

The result is a label map (uint8) on the input grid: see :data:`LABELS`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from skimage.morphology import convex_hull_image
from skimage.segmentation import watershed

from dicomnode.errors import ImagingError
from dicomnode.imaging.assess import PRIORS, STOMACH_GAS_FRACTION
from dicomnode.imaging.grid import spacing_of
from dicomnode.imaging.morphology import closing, fill_holes, largest_components
from dicomnode.imaging.morphology import dilate as dilate_mm
from dicomnode.imaging.morphology import erode as erode_mm
from dicomnode.imaging.organs.common import fat_level, histogram_mode, refine_boundary
from dicomnode.imaging.organs.landmarks import Landmarks, find_landmarks, to_lps
from dicomnode.imaging.step import step

log = logging.getLogger(__name__)

LABELS: dict[str, int] = {
    "liver": 1,
    "spleen": 2,
    "kidney-right": 3,
    "kidney-left": 4,
    "stomach": 5,
    "aorta": 6,
    "ivc": 7,
    # the brightest round vessel in front of the IVC at the liver's hilum (the portal vein, in the portal
    # phase): it competes so that the liver does not take it, and is not an output (0 in the label map)
    "hilar-vessel": 9,
}
BACKGROUND = 8
VESSELS = ("aorta", "ivc", "hilar-vessel")


@dataclass(frozen=True)
class OrganModel:
    name: str
    seed: np.ndarray  # bool
    hu: float
    spread: float


def _mode_near(values: np.ndarray, low: float, high: float) -> tuple[float, float]:
    mode, sigma, _, _ = histogram_mode(values, low, high)
    return mode, max(sigma, 8.0)


def _territory_seed(
    array: np.ndarray, territory: np.ndarray, low: float, spacing, *, erode: float = 3.0, k: float = 1.5
) -> OrganModel | None:
    values = array[territory]
    if values.size < 200:
        return None
    try:
        hu, spread = _mode_near(values, low, 260.0)
    except ImagingError:
        return None
    near = territory & (np.abs(array - hu) <= max(k * spread, 15.0))
    near = ndimage.binary_opening(near, iterations=1)
    seed = largest_components(_ribbons_cut(erode_mm(near, erode, spacing), spacing), 1)
    if seed.sum() < 20:
        seed = largest_components(near, 1)
    if seed.sum() < 20:
        return None
    return OrganModel("", seed, hu, spread)


def _ribbons_cut(mask: np.ndarray, spacing, radius_mm: float = 4.0) -> np.ndarray:
    """``mask`` less its parts thinner than about ``2 × radius_mm`` (an in-plane opening): a seed that runs
    along a layer of similar tissue (the body wall's muscle, bowel) stops where the organ ends."""
    out = np.zeros_like(mask)
    if not mask.any():
        return out
    pad = [0] + [int(np.ceil(radius_mm / s)) + 1 for s in spacing[1:]]
    box = _box(mask, pad)
    core = erode_mm(mask[box], radius_mm, spacing, slicewise=True)
    out[box] = dilate_mm(core, radius_mm, spacing, slicewise=True) & mask[box]
    return out


def _opened(mask: np.ndarray, iterations: int) -> np.ndarray:
    """A binary opening (``iterations`` voxels) that does not erode from the array's border: a structure
    the field of view cuts (a kidney at the end of a slab) keeps its cut face instead of losing its widest
    slices there."""
    eroded = ndimage.binary_erosion(mask, iterations=iterations, border_value=1)
    return ndimage.binary_dilation(eroded, iterations=iterations)


def _box(mask: np.ndarray, pad) -> tuple[slice, ...]:  # noqa: ANN001
    """The bounding box of ``mask`` grown by ``pad`` voxels per axis (clipped to the array)."""
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(axis=0) - np.asarray(pad), 0)
    hi = np.minimum(idx.max(axis=0) + np.asarray(pad) + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


#: A vessel's disc scoring this (:func:`_disc_scores` with sectors, HU) stands out clearly from around it.
DISTINCT_SCORE = 20.0


def _disc_scores(
    array: np.ndarray,
    window: np.ndarray,
    radius_mm: float,
    spacing,
    excluded: np.ndarray | None = None,
    tissue_hu: float = 60.0,
    sectors: bool = False,
    floor: float = -np.inf,
):  # noqa: ANN001, ANN202 - yields (slice, row offset, column offset, scores, disc means)
    """Per slice holding ``window``, the score of a disc of ``radius_mm`` centred at each voxel of the
    window's bounding box (``-inf`` outside the window): its mean (HU clipped to −100..400) less half the
    mean of the ring 3–8 mm around it (HU clipped to −100..``tissue_hu`` + 60), and the disc's mean.
    With ``sectors`` the score is instead the smallest difference (either sign) between the disc's mean
    and the mean of each quarter of the ring: a vessel differs from what lies around it on every side,
    brighter or darker (a native IVC in the liver), an organ's edge or corner on one or two; less 1.5 × the
    spread inside the disc (a lumen is uniform, a mix of fat and tissue is not). A disc whose mean is
    below ``floor`` (fat, not blood) scores ``-inf``."""
    _, sy, sx = spacing
    clipped = np.clip(array, -100.0, 400.0)
    around = np.minimum(clipped, tissue_hu + 60.0)
    if excluded is not None and sectors:  # no disc centred there (the disc and ring keep their HU)
        window = window & ~excluded
    elif excluded is not None:  # no disc there (the ring may lie there)
        clipped = np.where(excluded, -100.0, clipped)
    outer = radius_mm + 8.0
    ry, rx = max(1, int(round(outer / sy))), max(1, int(round(outer / sx)))
    yy, xx = np.ogrid[-ry : ry + 1, -rx : rx + 1]
    d2 = (yy * sy) ** 2 + (xx * sx) ** 2
    disc = (d2 <= radius_mm**2).astype(np.float32)
    disc /= disc.sum()
    ring = ((d2 > (radius_mm + 3.0) ** 2) & (d2 <= outer**2)).astype(np.float32)
    ring_mask = ring > 0
    ring /= max(ring.sum(), 1.0)
    quarters = []
    if sectors:
        for quarter in ((yy >= 0) & (xx > 0), (yy > 0) & (xx <= 0), (yy <= 0) & (xx < 0),
                        (yy < 0) & (xx >= 0)):
            kernel = (ring_mask & quarter).astype(np.float32)
            quarters.append(kernel / max(float(kernel.sum()), 1.0))
    for k in range(array.shape[0]):
        if not window[k].any():
            continue
        r0, r1 = np.flatnonzero(window[k].any(axis=1))[[0, -1]]
        c0, c1 = np.flatnonzero(window[k].any(axis=0))[[0, -1]]
        lo_r, lo_c = max(0, r0 - ry), max(0, c0 - rx)
        plane = clipped[k, lo_r : r1 + ry + 1, lo_c : c1 + rx + 1]
        means = ndimage.convolve(plane, disc, mode="nearest")
        if sectors:
            sub = np.min([np.abs(means - ndimage.convolve(plane, q, mode="nearest")) for q in quarters],
                         axis=0)
            spread = ndimage.convolve(plane * plane, disc, mode="nearest") - means * means
            sub -= 1.5 * np.sqrt(np.maximum(spread, 0.0))
        else:
            sub = means - 0.5 * ndimage.convolve(around[k, lo_r : r1 + ry + 1, lo_c : c1 + rx + 1], ring,
                                                 mode="nearest")
        sub = np.where(window[k, lo_r : r1 + ry + 1, lo_c : c1 + rx + 1] & (means >= floor), sub, -np.inf)
        yield k, lo_r, lo_c, sub, means


def _disc_track(
    array: np.ndarray,
    window: np.ndarray,
    radius_mm: float,
    spacing,
    excluded: np.ndarray | None = None,
    tissue_hu: float = 60.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per slice, the centre (row, col) inside ``window`` of the disc of ``radius_mm`` whose mean (HU
    clipped to −100..400) stands out most from the ring 3–8 mm around it (half the ring's mean, HU clipped
    to −100..``tissue_hu`` + 60, is subtracted): a thick, round structure brighter than its surroundings —
    a contrast-filled vessel, or a native one in its fat, not the inside of an organ.
    Returns rows, cols, found."""
    nz = array.shape[0]
    rows, cols, found = np.zeros(nz, int), np.zeros(nz, int), np.zeros(nz, bool)
    for k, lo_r, lo_c, sub, _ in _disc_scores(array, window, radius_mm, spacing, excluded, tissue_hu):
        r, c = np.unravel_index(int(np.argmax(sub)), sub.shape)
        rows[k], cols[k], found[k] = r + lo_r, c + lo_c, True
    if found.sum() >= 3:
        idx = np.flatnonzero(found)
        rows[idx] = np.round(ndimage.median_filter(rows[idx].astype(float), 5, mode="nearest")).astype(int)
        cols[idx] = np.round(ndimage.median_filter(cols[idx].astype(float), 5, mode="nearest")).astype(int)
    return rows, cols, found


def _disc_path(
    array: np.ndarray,
    window: np.ndarray,
    radius_mm: float,
    spacing,
    excluded: np.ndarray | None = None,
    tissue_hu: float = 60.0,
    drift: float = 0.5,
    penalty: float = 10.0,
    change: float = 0.5,
    floor: float = -np.inf,
    sectors: bool = True,
    ends: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The centres of discs that differ from their surroundings on every side (:func:`_disc_scores` with
    ``sectors``; without, that stand out brightest from their ring) chosen as one continuous course
    (dynamic programming over the slices): the sum of the discs' scores less ``penalty`` per mm that the
    centre moves between neighbouring slices beyond ``drift`` × their distance and ``change`` per HU that
    the disc's mean changes (a vessel runs on with its blood; the most distinct disc of one slice may be a
    neighbour organ or bowel).

    With ``ends`` (a score) the course may begin and end on any slice (the best-scoring run of slices, as
    a local alignment: a vessel ends, the IVC in the right atrium) where a disc of that run scores at least
    ``ends`` (the vessel stands out clearly somewhere; else the whole chain's course, as without); the
    slices beyond it are not found. Without, a course running on through the tissue beyond the
    vessel's end drew its last slices off the lumen: the HU change to what lies beyond costs less spread
    over several slices (the phantom's IVC lost its top 5-20 mm).
    Returns rows, cols, found, each slice's score and disc mean (HU)."""
    sz, sy, sx = spacing
    nz = array.shape[0]
    rows, cols, found = np.zeros(nz, int), np.zeros(nz, int), np.zeros(nz, bool)
    scores, means = np.full(nz, -np.inf), np.zeros(nz)
    stride = max(1, int(round(2.0 / min(sy, sx))))  # candidate centres about every 2 mm
    chain: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []  # k, rows, cols, scores, HU

    def close() -> None:
        if not chain:
            return
        back: list[np.ndarray] = []  # the whole chain's course
        local_back: list[np.ndarray] = []  # a course beginning anywhere (-1: it begins on this slice)
        total = chain[0][3].copy()
        local = chain[0][3].copy()
        best_end, best_local = (0, int(np.argmax(local))), float(np.max(local))
        pairs = zip(chain, chain[1:], strict=False)
        for j, ((k0, r0, c0, _, m0), (k1, r1, c1, s1, m1)) in enumerate(pairs, 1):
            dist = np.hypot((r1[:, None] - r0[None, :]) * sy, (c1[:, None] - c0[None, :]) * sx)
            cost = penalty * np.maximum(dist - drift * sz * (k1 - k0), 0.0)
            cost += change * np.abs(m1[:, None] - m0[None, :])
            best = np.argmax(total[None, :] - cost, axis=1)
            total = s1 + (total[best] - cost[np.arange(best.size), best])
            back.append(best)
            if ends is not None:
                reach = local[None, :] - cost
                came = np.argmax(reach, axis=1)
                carried = reach[np.arange(came.size), came]
                local_back.append(np.where(carried > 0.0, came, -1))
                local = s1 + np.maximum(carried, 0.0)
                if float(np.max(local)) > best_local:
                    best_end, best_local = (j, int(np.argmax(local))), float(np.max(local))
        if ends is not None and best_local > 0.0:  # the best run of slices; beyond it the vessel has ended
            run: list[tuple[int, int]] = []
            j, i = best_end
            while True:
                run.append((j, i))
                if j == 0 or local_back[j - 1][i] < 0:
                    break
                i = int(local_back[j - 1][i])
                j -= 1
            if max(float(chain[j][3][i]) for j, i in run) >= ends:
                for j, i in run:
                    k, r, c, sc, mn = chain[j]
                    rows[k], cols[k], found[k], scores[k], means[k] = r[i], c[i], True, sc[i], mn[i]
                chain.clear()
                return
        i = int(np.argmax(total))
        for j in range(len(chain) - 1, -1, -1):
            k, r, c, sc, mn = chain[j]
            rows[k], cols[k], found[k], scores[k], means[k] = r[i], c[i], True, sc[i], mn[i]
            if j:
                i = int(back[j - 1][i])
        chain.clear()

    previous = -2
    for k, lo_r, lo_c, sub, mean in _disc_scores(array, window, radius_mm, spacing, excluded, tissue_hu,
                                                 sectors=sectors, floor=floor):
        grid = np.zeros(sub.shape, dtype=bool)
        grid[::stride, ::stride] = True
        rr, cc = np.nonzero(grid & np.isfinite(sub))
        if rr.size == 0:
            continue
        if k != previous + 1:
            close()
        chain.append((k, rr + lo_r, cc + lo_c, sub[rr, cc], mean[rr, cc]))
        previous = k
    close()
    return rows, cols, found, scores, means


def _trim_course(found: np.ndarray, scores: np.ndarray, confident: float = DISTINCT_SCORE
                 ) -> tuple[np.ndarray, bool]:
    """``found`` less the slices of a vessel's course (:func:`_disc_path`) beyond where it stops standing
    out (the median score of three slices below 0) on either side of its most distinct slice, when it
    stands out clearly (``confident``) somewhere: the course has ended (the IVC in the right atrium) and
    the path ran on through the tissue beyond (the liver's dome, the mediastinum). A course that stands
    out nowhere (an IVC isodense with the liver) is kept whole: QC judges it. Returns the slices and
    whether the course stands out clearly somewhere."""
    idx = np.flatnonzero(found)
    if idx.size < 3 or float(np.max(scores[idx])) < confident:
        return found, False
    smooth = ndimage.median_filter(scores[idx], 3, mode="nearest")
    best = int(np.argmax(scores[idx]))
    first, last = best, best
    while first > 0 and smooth[first - 1] >= 0.0 and idx[first - 1] == idx[first] - 1:
        first -= 1
    while last < idx.size - 1 and smooth[last + 1] >= 0.0 and idx[last + 1] == idx[last] + 1:
        last += 1
    out = np.zeros_like(found)
    out[idx[first] : idx[last] + 1] = True
    return out, True


def _tube(shape, rows, cols, found, radius_mm: float, spacing) -> np.ndarray:
    _, sy, sx = spacing
    out = np.zeros(shape, dtype=bool)
    yy = np.arange(shape[1])[:, None] * sy
    xx = np.arange(shape[2])[None, :] * sx
    for k in np.flatnonzero(found):
        out[k] = (yy - rows[k] * sy) ** 2 + (xx - cols[k] * sx) ** 2 <= radius_mm**2
    return out


def _seeds(
    array: np.ndarray,
    lm: Landmarks,
    liver_mask: np.ndarray | None = None,
    layer: np.ndarray | None = None,
    muscle_hu: float | None = None,
    muscle_spread: float = 0.0,
) -> tuple[dict[str, OrganModel], dict[str, np.ndarray], np.ndarray | None]:
    """Seeds and attenuation of each organ found in the field of view, the vessels' tubes and the liver
    chain's mask when it agrees with the liver's seed (``None`` otherwise)."""
    s = lm.scale
    sp = lm.spacing
    zz, _, _ = lm.grids()
    u, v = lm.relative()
    body = lm.body
    inner = erode_mm(body, 12.0 * s, sp)
    low = lm.fat_hu + 40.0
    soft = (array > lm.fat_hu + 30.0) & (array < lm.bone_hu) & inner
    not_lung = ~dilate_mm(lm.lungs, 3.0, sp)
    h_r = zz - lm.lung_base_right
    h_l = zz - lm.lung_base_left
    log.debug(
        "landmarks: scale %.2f, fat %.0f HU, tissue %.0f HU, bone > %.0f HU, lung bases R %.0f L %.0f mm"
        " of %.0f",
        s, lm.fat_hu, lm.tissue_hu, lm.bone_hu, lm.lung_base_right, lm.lung_base_left,
        (array.shape[0] - 1) * sp[0],
    )
    models: dict[str, OrganModel] = {}
    tubes: dict[str, np.ndarray] = {}

    # aorta: round, thick, bright structure in front of the vertebral body, slightly left
    window = (u > -15 * s) & (u < 40 * s) & (v > -55 * s) & (v < -4 * s) & inner
    vertebra = (v > 0) & (np.abs(u) < 22 * s)  # the vertebral body's bone is not a bright disc
    # (one continuous course: a bright vessel beside it, the IVC at the window's right edge, may score as
    # high on some slices; per slice the best disc jumped to it where the two nearly tie)
    rows, cols, found, _, _ = _disc_path(array, window, 7.0 * s, sp, excluded=vertebra,
                                         tissue_hu=lm.tissue_hu, change=0.0, sectors=False)
    if found.any():
        # (arterial phase: the lumen is brighter than the bone threshold; the track stays in front of the
        # vertebral body, so the core is the tube's soft tissue and contrast, not bone)
        core = _tube(array.shape, rows, cols, found, 4.0 * s, sp) & inner & (array > lm.fat_hu + 30.0)
        hu = float(np.median(array[core])) if core.any() else lm.tissue_hu
        models["aorta"] = OrganModel("aorta", core, hu, 25.0)
        tubes["aorta"] = _tube(array.shape, rows, cols, found, 18.0 * s, sp)
        aorta_zone = _tube(array.shape, rows, cols, found, 12.0 * s, sp)
        # IVC: right of the aorta, in front of the right side of the vertebral body
        window = (u > -45 * s) & (u < -5 * s) & (v > -40 * s) & (v < 5 * s) & inner & ~aorta_zone
        # (not on the vertebral body's bone, which the window's back reaches on its right side; one
        # continuous course: the right kidney's front and the liver's veins are brighter discs on some slices)
        rows, cols, found, scores, means = _disc_path(array, window, 6.0 * s, sp, excluded=vertebra,
                                                      tissue_hu=lm.tissue_hu, floor=lm.fat_hu + 80.0,
                                                      ends=DISTINCT_SCORE)
        found, distinct = _trim_course(found, scores)
        if found.any():
            # (at least a voxel's width about the centre: a child's IVC on a coarse grid)
            radius = max(3.5 * s, 1.5 * max(sp[1:]))
            core = _tube(array.shape, rows, cols, found, radius, sp) & soft
            if core.any():
                hu = float(np.median(array[core]))
                models["ivc"] = OrganModel("ivc", core, hu, 25.0)
                # a course that stands out nowhere (an IVC isodense with the liver around it) keeps no more
                # than its core: its wall is not in the image, the liver keeps what lies around (QC withholds
                # it for its low contrast)
                tubes["ivc"] = _tube(array.shape, rows, cols, found, 13.0 * s if distinct else radius, sp)
        # the hilar vessel: the brightest disc of the same window whose core is not the IVC's
        window = (u > -60 * s) & (u < -8 * s) & (v > -40 * s) & (v < 5 * s) & inner & ~aorta_zone
        if "ivc" in tubes:
            window &= ~_tube(array.shape, rows, cols, found, 13.0 * s, sp)
        rows, cols, found = _disc_track(array, window, 6.0 * s, sp, tissue_hu=lm.tissue_hu)
        if found.any():
            core = _tube(array.shape, rows, cols, found, 3.5 * s, sp) & soft
            if core.any():
                models["hilar-vessel"] = OrganModel("hilar-vessel", core, float(np.median(array[core])), 25.0)
                tubes["hilar-vessel"] = _tube(array.shape, rows, cols, found, 16.0 * s, sp)

    vessels = np.zeros(array.shape, dtype=bool)
    for tube in tubes.values():
        vessels |= tube

    # the right lobe reaches the posterior wall (the right kidney's attenuation differs from the mode)
    liver_t = (u < -45 * s) & (v > -130 * s) & (v < 90 * s) & (h_r > -90 * s) & (h_r < 20 * s)
    liver_t &= inner & not_lung & ~vessels & soft
    liver = _territory_seed(array, liver_t, low, sp, erode=5.0 * s)
    if liver is None and liver_mask is not None and liver_mask.any():  # e.g. a few slices: the chain's
        core = erode_mm(liver_mask, 6.0 * s, sp)
        seed = core if core.any() else liver_mask
        spread = float(np.median(np.abs(array[seed] - np.median(array[seed])))) * 1.4826
        liver = OrganModel("liver", seed, float(np.median(array[seed])), max(spread, 8.0))
    if liver is None:
        raise ImagingError(
            "No liver found below the right lung base; is the upper abdomen in the field of view?"
        )
    models["liver"] = OrganModel("liver", liver.seed, liver.hu, liver.spread)
    if liver_mask is not None and liver_mask.any():
        inside = float((liver.seed & liver_mask).sum()) / max(float(liver.seed.sum()), 1.0)
        if inside < 0.5:  # the chain's band missed this liver (e.g. steatosis below 0 HU): not used
            log.warning(
                "The liver chain's mask holds only %.0f %% of the liver's seed (%.0f HU): the organs' own "
                "liver is used.", 100 * inside, liver.hu,
            )
            liver_mask = None

    # posterolateral: bowel and stomach lie in front of it
    spleen_t = (u > 45 * s) & (v > -45 * s) & (v < 80 * s) & (h_l > -110 * s) & (h_l < 20 * s)
    spleen_t &= inner & not_lung & soft & ~dilate_mm(liver.seed, 10.0, sp)
    # the spleen is never far darker than the liver (its prior in assess.PRIORS, which QC checks too): the
    # bowel and muscle that fill the territory of a long field of view are not taken for it
    floor = low
    if PRIORS["spleen"].median_vs is not None:
        structure, offset = PRIORS["spleen"].median_vs
        if structure == "liver":
            floor = max(low, liver.hu + offset)
    spleen = _territory_seed(array, spleen_t, floor, sp, erode=3.0 * s)
    if spleen is not None and spleen.seed.sum() * float(np.prod(sp)) > 5000.0 * s**3:  # ≥ 5 ml
        models["spleen"] = OrganModel("spleen", _own_level(array, lm, spleen.seed), spleen.hu, spleen.spread)

    # the rough extent of liver and spleen (connected, near their attenuation): no kidney inside
    taken = np.zeros(array.shape, dtype=bool)
    for m in models.values():
        taken |= m.seed
    seeds = taken.copy()
    for m in models.values():
        if m.name in ("liver", "spleen"):
            near = soft & (np.abs(array - m.hu) <= max(2.5 * m.spread, 20.0))
            near = ndimage.binary_opening(near, iterations=2)
            taken |= _keep_seeded(near, m.seed)
    grown: dict[int, np.ndarray] = {}
    renal = _renal_soft(array, lm, soft, models.get("aorta"))
    for name, side in (("kidney-right", -1.0), ("kidney-left", 1.0)):
        model = None
        # the floods of liver and spleen cover a kidney of nearly their attenuation (native phase): then
        # only their seeds are known to be no kidney
        for i, known in enumerate((taken, seeds)):
            if i not in grown:
                grown[i] = dilate_mm(known, 4.0, sp)
            free = renal & ~grown[i]
            if layer is not None:  # a kidney touching the body wall's muscle is one blob with it otherwise
                free &= ~layer
            found = _kidney(array, lm, free, side, h_r if side < 0 else h_l, muscle_hu, muscle_spread)
            if found is not None and (
                model is None or _unlike_muscle(found.hu, muscle_hu) > _unlike_muscle(model.hu, muscle_hu)
            ):
                model = found
            # a level of the muscle's (the psoas taken for a kidney) is looked for further
            if model is not None and not _muscle_level(model.hu, muscle_hu, muscle_spread):
                break
        if model is not None and _unenhanced_in_contrast(model, models.get("aorta"), lm, muscle_hu):
            log.debug("%s at %.0f HU, below the muscle's %.0f HU with contrast in the aorta: no kidney", name,
                      model.hu, muscle_hu)
            model = None
        if model is not None:
            models[name] = model
            taken |= model.seed
            grown.pop(0, None)

    if "spleen" in models and "kidney-left" in models:
        # a spleen seed grown into a kidney of nearly its attenuation (native phase) gives back what the
        # kidney's attenuation explains better
        spleen = models["spleen"]
        for _ in range(2):  # (again with the level of a kidney looked for again: the first was the psoas')
            kidney = models["kidney-left"]
            nearer = np.abs(array - kidney.hu) < np.abs(array - spleen.hu)
            seed = largest_components(ndimage.binary_opening(spleen.seed & ~nearer), 1)
            if not (seed.any() and seed.sum() < 0.9 * spleen.seed.sum()):
                break
            models["spleen"] = OrganModel("spleen", seed, spleen.hu, spleen.spread)
            # and the kidney, found beside the larger seed, is looked for again
            known = np.zeros(array.shape, dtype=bool)
            for name, m in models.items():
                if name != "kidney-left":
                    known |= m.seed
            free = renal & ~dilate_mm(known, 4.0, sp)
            if layer is not None:
                free &= ~layer
            log.debug("left kidney looked for again beside the spleen seed given back")
            again = _kidney(array, lm, free, 1.0, h_l, muscle_hu, muscle_spread)
            # (the larger one, unless its level is the muscle's and the first one's is not: that is the
            # psoas; one of the muscle's level gives way to one that is not, as in the passes above)
            if again is None or not (
                _unlike_muscle(again.hu, muscle_hu) > _unlike_muscle(kidney.hu, muscle_hu)
                if _muscle_level(kidney.hu, muscle_hu, muscle_spread)
                else again.seed.sum() > kidney.seed.sum()
                and not _muscle_level(again.hu, muscle_hu, muscle_spread)
            ):
                break
            models["kidney-left"] = again
            if abs(again.hu - kidney.hu) < max(kidney.spread, 10.0):
                break
    # (the aorta's whole tube, not only its core, is no stomach: its arterial lumen is as bright as oral
    # contrast, and the contrast pieces took the arterial child phantom's aorta)
    apart = dict(models)
    if "aorta" in tubes:
        apart["aorta"] = OrganModel("aorta", models["aorta"].seed | tubes["aorta"], models["aorta"].hu,
                                    models["aorta"].spread)
    stomach = _stomach(array, lm, u, v, h_l, apart, liver_mask)
    if stomach is not None:
        models["stomach"] = stomach
    if liver_mask is not None and liver_mask.any():
        # the liver chain's mask, eroded and kept clear of the other organs' seeds, joins the liver's seed
        others = np.zeros(array.shape, dtype=bool)
        for name, m in models.items():
            if name != "liver":
                others |= m.seed
        values = array[liver_mask]
        mad = float(np.median(np.abs(values - np.median(values)))) * 1.4826
        liver = OrganModel("liver", liver.seed, liver.hu, max(liver.spread, min(mad, 25.0)))
        core = erode_mm(liver_mask, 6.0 * s, sp)
        own = soft
        low_liver = _liver_low(liver, lm)
        if low_liver < lm.fat_hu + 30.0 and core.any():
            # a steatotic liver reaches below the soft-tissue band (parts of it darker than the rest): the
            # seed takes the chain's core down to the liver's own lower bound, on the image smoothed by 2 mm
            # (the parenchyma's noise punches no holes into it)
            box = _box(core, (1, 1, 1))
            smooth = ndimage.gaussian_filter(array[box], [2.0 / spc for spc in sp])
            own = soft.copy()
            own[box] |= (smooth > low_liver) & (array[box] < lm.bone_hu) & inner[box]
        extra = core & ~dilate_mm(others, 10.0 * s, sp) & own
        muscly = _nearer_muscle(array, liver, muscle_hu, muscle_spread)
        if muscly is not None:  # the chain's band holds the wall's muscle and the heart (native phase)
            extra &= ~muscly
        extra = _ribbons_cut(extra, sp, 4.0 * s)  # a leak along a layer of the same tissue is no seed
        seed = _keep_seeded(extra | liver.seed, liver.seed)
        models["liver"] = OrganModel("liver", seed, liver.hu, liver.spread)
    log.debug("spine x %s y %s", np.round(lm.spine_x[::5]), np.round(lm.spine_y[::5]))
    return models, tubes, liver_mask


def _own_level(array: np.ndarray, lm: Landmarks, seed: np.ndarray) -> np.ndarray:
    """An organ's seed less a second tissue of another level it has grown into: the seed's histogram (1 HU
    bins) has a valley between its mode and another peak at least 10 HU and 2.5 spreads away, holding at
    least 5 % of the seed; the seed keeps its mode's side of the valley (opened by a voxel, the largest part).
    A native child's spleen seed, its band at least 15 HU wide, runs into the left kidney 10-15 HU darker
    that it touches (a child's thin perirenal fat): the kidney's level is its own peak in the seed."""
    values = array[seed]
    try:
        hu, spread, below, above = histogram_mode(values, lm.fat_hu + 40.0, 400.0, bin_width=1.0)
    except ImagingError:
        return seed
    if spread > NARROW_LEVEL_HU:  # a mix of tissues: its valleys mean nothing
        return seed
    keep = np.ones(values.shape, dtype=bool)
    for valley, beyond in ((below, values < below), (above, values > above)):
        if not np.isfinite(valley) or beyond.sum() < 0.05 * values.size:
            continue
        peak, _, _, _ = histogram_mode(values[beyond], lm.fat_hu + 40.0, 400.0, bin_width=1.0)
        if abs(peak - hu) >= max(10.0, 2.5 * spread):
            log.debug("seed %.0f HU: a second level %.0f HU beyond %.0f HU left out (%d of %d voxels)",
                      hu, peak, valley, int(beyond.sum()), values.size)
            keep &= ~beyond
    if keep.all():
        return seed
    own = np.zeros_like(seed)
    own[seed] = keep
    box = _box(seed, (1, 1, 1))
    part = largest_components(ndimage.binary_opening(own[box]), 1)
    if part.sum() < 20:
        return seed
    out = np.zeros_like(seed)
    out[box] = part
    return out


def _nearer_muscle(
    array: np.ndarray, liver: OrganModel, muscle_hu: float | None, muscle_spread: float
) -> np.ndarray | None:
    """Voxels whose attenuation is nearer the wall muscle's level than the liver's, where the liver's band
    (2.5 spreads) reaches the muscle's level (native phase: the chain's mask can follow the muscle) and yet
    the two levels lie at least either's spread (and 10 HU) apart; ``None`` otherwise: no level tells them
    apart, or none is needed (with contrast, the voxels between the levels are the liver's border to the
    fat). Also ``None`` where the muscle's spread is more than twice the liver's: a wall layer of muscle
    mixed with fat (most patients) has no level to trust."""
    if muscle_hu is None or muscle_spread > 2.0 * liver.spread:
        return None
    apart = abs(liver.hu - muscle_hu)
    if apart < max(liver.spread, muscle_spread, 10.0) or apart > 2.5 * liver.spread:
        return None
    log.debug(
        "liver %.0f HU (spread %.0f) stands apart from muscle %.0f HU (spread %.0f)",
        liver.hu, liver.spread, muscle_hu, muscle_spread,
    )
    return np.abs(array - muscle_hu) < np.abs(array - liver.hu)


def _renal_soft(
    array: np.ndarray, lm: Landmarks, soft: np.ndarray, aorta: OrganModel | None
) -> np.ndarray:
    """The soft tissue a kidney may be made of: ``soft`` and, when the aorta is brighter than the bone
    threshold (arterial phase), tissue up to the aorta's attenuation that is not bone. The bone threshold
    follows the soft tissue's level (a fatty liver lowers it to 180 HU), and a kidney's cortex enhancing in
    the arterial phase reaches towards the aorta's level; bone is the dense bone (over 300 HU) with its
    marrow (holes filled slice by slice) and 3 mm around it."""
    if aorta is None or aorta.hu <= lm.bone_hu:
        return soft
    bright = (array >= lm.bone_hu) & (array < aorta.hu) & erode_mm(lm.body, 12.0 * lm.scale, lm.spacing)
    if not bright.any():
        return soft
    dense = lm.bone & (array > max(lm.bone_hu, 300.0))
    if dense.any():
        box = _box(dense | bright, (2, 2, 2))
        solid = fill_holes(dense[box], slicewise=True)
        bright[box] &= ~dilate_mm(solid, 3.0, lm.spacing)
    return soft | bright


def _enclosed_tissue(
    array: np.ndarray, lm: Landmarks, mask: np.ndarray, high: float, gap_mm: float = 4.0
) -> np.ndarray:
    """The tissue (above the fat's level, below ``high`` HU) that ``mask`` encloses slice by slice, its
    outline closed over gaps up to about ``2 × gap_mm``: the medulla inside a kidney's enhancing cortex in
    the arterial phase (the renal sinus' fat is not taken)."""
    sp = lm.spacing
    box = _box(mask, [0] + [int(np.ceil(2 * gap_mm / spc)) + 1 for spc in sp[1:]])
    sub = mask[box]
    closed = closing(sub, gap_mm, sp, slicewise=True) | sub
    inside = fill_holes(closed, slicewise=True) & ~sub & (array[box] > lm.fat_hu + 50.0) & (array[box] < high)
    out = np.zeros_like(mask)
    out[box] = inside
    return out


def _liver_low(liver: OrganModel, lm: Landmarks) -> float:
    """The lowest attenuation of the liver's parenchyma, as the liver chain's band has it (2.5 spreads and
    15 HU below its level: parts of a steatotic liver are darker than the rest), never below the fat's
    level. A steatotic liver near the fat's level reaches below the soft-tissue band."""
    return max(liver.hu - 2.5 * liver.spread - 15.0, lm.fat_hu)


KIDNEY_MAX_LENGTH_MM = 160.0  # an adult kidney is 10-13 cm long; the psoas beside it goes on for 20 cm
KIDNEY_MAX_BELOW_LUNG_BASE_MM = 250.0  # its lower pole lies at most this far below the lung bases (L3-L4)
NARROW_LEVEL_HU = 20.0  # the widest spread of one tissue's level (noise); a wider one is a mix of tissues
KIDNEY_MIN_HU = 0.0  # a kidney's attenuation on any CT, native included (assess.py's plausible range)


def _kidney(
    array: np.ndarray,
    lm: Landmarks,
    soft: np.ndarray,
    side: float,
    h: np.ndarray,
    muscle_hu: float | None = None,
    muscle_spread: float = 0.0,
) -> OrganModel | None:
    """The kidney on one side: the compact soft-tissue blob in the paravertebral gutter, in its fat.

    A candidate blob may hold a kidney and the psoas it touches: its attenuation levels are tried in
    turn (the blob's mode, then the mode of what is left), and each level's core is judged on its own —
    centre beside the vertebral body, no longer than a kidney, not going on beyond the gutter, fat
    around it. Of the cores that pass, the one whose level lies farthest from the wall muscle's wins (the
    brightest where the muscle's level is unknown): the psoas and quadratus beside a kidney are muscle, and a
    kidney enhances more than muscle with contrast and lies 10-20 HU below it in the native phase."""
    s, sp = lm.scale, lm.spacing
    u, v = lm.relative()
    zone = (side * u > 35 * s) & (side * u < 120 * s) & (v > -25 * s) & (v < 75 * s) & (h < 40 * s)
    if -float(h.ravel()[0]) <= (array.shape[0] - 1) * sp[0]:  # the lung base is in the field of view
        zone &= h > -KIDNEY_MAX_BELOW_LUNG_BASE_MM * s  # not the pelvis of a long field of view
    if not (soft & zone).any():
        return None
    zbox = _box(soft & zone, (2, 2, 2))  # the work stays in the gutter's box
    cand = np.zeros_like(zone)
    cand[zbox] = _opened(soft[zbox] & zone[zbox], 2)
    labels = np.zeros(zone.shape, dtype=np.int32)
    labels[zbox], n = ndimage.label(cand[zbox])
    if n == 0:
        return None
    voxel_ml = float(np.prod(sp)) / 1000.0
    sizes = np.bincount(labels.ravel()) * voxel_ml
    sizes[0] = 0
    # a kidney lies in perirenal fat: a good part of the shell around the blob is fat
    fat = array < lm.fat_hu + 50.0
    best: tuple[np.ndarray, float, float] | None = None
    for i in np.flatnonzero(sizes >= 8.0 * s**3):
        whole = blob = labels[zbox] == i
        # the blob's attenuation levels: a kidney and the psoas it touches differ, and in the arterial
        # (corticomedullary) phase the kidney's cortex and its darker medulla differ too
        for _ in range(3):
            if blob.sum() * voxel_ml < 8.0 * s**3:
                break
            try:  # the blob's own attenuation: muscle next to a kidney (psoas, quadratus) differs from it
                hu, spread, below, above = histogram_mode(array[zbox][blob], lm.fat_hu + 40.0, 400.0)
            except ImagingError:
                break
            spread = max(spread, 8.0)
            tolerance = max(2.5 * spread, 20.0)
            # (a level stops at the histogram's valley towards another tissue's peak in the blob: a native
            # kidney lies 10-20 HU below the psoas it touches; only for a level as narrow as one tissue's
            # noise, up to 20 HU: a wider one is a mix of tissues, partial volume with fat, its valleys mean
            # nothing)
            if spread > NARROW_LEVEL_HU:
                below, above = -np.inf, np.inf
            log.debug("kidney %+.0f level %.0f HU (spread %.0f), valleys %.0f, %.0f", side, hu, spread,
                      below, above)
            level = (array[zbox] >= max(hu - tolerance, below)) & (array[zbox] <= min(hu + tolerance, above))
            if _split_from_muscle(hu, tolerance, muscle_hu):
                # (native: the psoas it touches lies in its band, yet nearer the muscle's level than its own)
                level &= np.abs(array[zbox] - hu) < np.abs(array[zbox] - muscle_hu)
            core = np.zeros_like(zone)
            core[zbox] = largest_components(whole & level, 1)  # (all of the blob: a thin cortex is cut)
            if core.any():  # the cortex's level holds the medulla inside it (fat, the renal sinus, does not)
                core |= _enclosed_tissue(array, lm, core, hu + tolerance)
            fits = core.any() and _kidney_core_fits(
                array, lm, core, soft, fat, side, hu, tolerance, muscle_hu
            )
            if fits and (best is None or _unlike_muscle(hu, muscle_hu) > _unlike_muscle(best[1], muscle_hu)):
                best = (core, hu, spread)
            blob = _opened(blob & ~level, 1)
        below_muscle = _below_muscle_core(array, lm, zbox, whole, muscle_hu, muscle_spread)
        if below_muscle is not None:
            core = np.zeros_like(zone)
            core[zbox], hu, spread = below_muscle
            tolerance = max(2.5 * spread, 20.0)
            fits = _kidney_core_fits(array, lm, core, soft, fat, side, hu, tolerance, muscle_hu)
            if fits and (best is None or _unlike_muscle(hu, muscle_hu) > _unlike_muscle(best[1], muscle_hu)):
                best = (core, hu, spread)
    if best is None:
        return None
    blob, hu, spread = best
    seed = np.zeros_like(blob)
    box = _box(blob, (1, 1, 1))
    seed[box] = largest_components(erode_mm(blob[box], 3.0 * s, sp), 1)
    if seed.sum() < 10:
        return None
    return OrganModel("kidney", seed, hu, max(spread, 10.0))


def _unenhanced_in_contrast(
    kidney: OrganModel, aorta: OrganModel | None, lm: Landmarks, muscle_hu: float | None
) -> bool:
    """Whether a kidney candidate lies below the wall muscle's level while the aorta holds contrast (its
    blood 100 HU above the soft tissue's level): a kidney with contrast enhances more than muscle in every
    phase, so such a candidate is muscle or bowel (the real arterial child's 19 HU left back muscle)."""
    if aorta is None or muscle_hu is None:
        return False
    return aorta.hu > lm.tissue_hu + 100.0 and kidney.hu < muscle_hu


def _split_from_muscle(hu: float, tolerance: float, muscle_hu: float | None) -> bool:
    """Whether a level's band reaches the wall muscle's level though the two lie at least 10 HU apart and
    the band is one tissue's (native: a kidney 10-20 HU below the psoas it touches): then the voxels nearer
    the muscle's level than the level's own are the muscle's."""
    return muscle_hu is not None and 10.0 <= abs(hu - muscle_hu) <= tolerance <= 2.5 * NARROW_LEVEL_HU


def _below_muscle_core(
    array: np.ndarray,
    lm: Landmarks,
    zbox: tuple[slice, ...],
    blob: np.ndarray,
    muscle_hu: float | None,
    muscle_spread: float,
) -> tuple[np.ndarray, float, float] | None:
    """The part of a gutter blob (in ``zbox``) made of a tissue 10-50 HU below the wall muscle's level: a
    native kidney, whose level the psoas' larger peak beside it hides in the blob's histogram (its band,
    2.5 spreads and at least 20 HU, takes the kidney with the muscle). The tissue's level is the mode of the
    blob's voxels below the muscle's band; its core the largest connected part of the blob nearer that level
    than the muscle's, opened by a voxel (the partial-volume rim round the psoas is no bridge). Returns the
    core (on the box), its level and spread, ``None`` where no such tissue is there."""
    if muscle_hu is None:
        return None
    values = array[zbox]
    gap = max(muscle_spread, 10.0)
    low_part = blob & (values < muscle_hu - gap)
    voxel_ml = float(np.prod(lm.spacing)) / 1000.0
    if low_part.sum() * voxel_ml < 8.0 * lm.scale**3:
        return None
    try:
        hu, spread, _, _ = histogram_mode(values[low_part], lm.fat_hu + 40.0, muscle_hu - gap)
    except ImagingError:
        return None
    spread = max(spread, 8.0)
    tolerance = max(2.5 * spread, 20.0)
    if not _split_from_muscle(hu, tolerance, muscle_hu) or hu < KIDNEY_MIN_HU:
        return None
    level = (np.abs(values - hu) <= tolerance) & (np.abs(values - hu) < np.abs(values - muscle_hu))
    core = largest_components(_opened(blob & level, 1), 1)
    if core.sum() * voxel_ml < 8.0 * lm.scale**3:
        return None
    log.debug("kidney level %.0f HU (spread %.0f) below the muscle's %.0f HU: %.1f ml", hu, spread, muscle_hu,
              core.sum() * voxel_ml)
    return core, hu, spread


def _unlike_muscle(hu: float, muscle_hu: float | None) -> float:
    """How far a kidney candidate's level lies from the wall muscle's (its level itself when unknown)."""
    return hu if muscle_hu is None else abs(hu - muscle_hu)


def _beside_muscle(model: OrganModel, muscle_hu: float | None, muscle_spread: float) -> bool:
    """Whether an organ's level lies within its own band (2.5 spreads, at least 10 HU each) of the wall
    muscle's, so that its flood reaches muscle, yet at least the muscle's spread (and 10 HU) apart from it,
    so that the nearer level tells the two apart: a native kidney beside the psoas, not one with contrast."""
    if muscle_hu is None:
        return False
    apart = abs(model.hu - muscle_hu)
    return max(muscle_spread, 10.0) <= apart <= 2.5 * max(model.spread, 10.0)


def _muscle_level(hu: float, muscle_hu: float | None, muscle_spread: float) -> bool:
    """Whether a level lies within the wall muscle's spread (at least 10 HU) of the muscle's level."""
    return muscle_hu is not None and abs(hu - muscle_hu) < max(muscle_spread, 10.0)


def _kidney_core_fits(
    array: np.ndarray,
    lm: Landmarks,
    core: np.ndarray,
    soft: np.ndarray,
    fat: np.ndarray,
    side: float,
    hu: float,
    tolerance: float,
    muscle_hu: float | None,
) -> bool:
    """Whether a candidate core (one attenuation level of a blob in the gutter) is a kidney."""
    s, sp = lm.scale, lm.spacing
    cz, cy, cx = (int(round(c)) for c in ndimage.center_of_mass(core))
    cu, cv = cx * sp[2] - lm.spine_x[cz], cy * sp[1] - lm.spine_y[cz]
    volume = float(core.sum()) * float(np.prod(sp)) / 1000.0
    log.debug("kidney %+.0f candidate %.1f ml, %.0f HU at u %.0f v %.0f", side, volume, hu, cu, cv)
    if hu < KIDNEY_MIN_HU:  # below any kidney's attenuation: a steatotic liver's dark lobe, bowel, fat
        return False
    if not (-5 * s < cv < 60 * s and 40 * s < side * cu < 100 * s):
        return False  # a kidney's centre lies beside the vertebral body, not in front of it
    slices = np.flatnonzero(core.any(axis=(1, 2)))
    if (slices[-1] - slices[0] + 1) * sp[0] > KIDNEY_MAX_LENGTH_MM * s:
        log.debug("kidney %+.0f: %.0f HU tissue runs on along the spine (psoas)", side, hu)
        return False
    box = _box(core, [int(np.ceil(60.0 * s / spc)) for spc in sp])
    band = np.abs(array[box] - hu) <= tolerance
    if muscle_hu is not None and 10.0 <= abs(hu - muscle_hu) <= tolerance <= 2.5 * NARROW_LEVEL_HU:
        # (native: the psoas and spleen it touches lie in its band, yet of the muscle's level, not its own)
        band &= np.abs(array[box] - hu) < np.abs(array[box] - muscle_hu)
    # the same tissue going on far beyond the gutter (stomach, bowel, liver) is not a kidney in its fat
    same, _ = ndimage.label(ndimage.binary_opening(soft[box] & band, iterations=1))
    owners = same[core[box]]
    owner = int(np.bincount(owners[owners > 0]).argmax()) if (owners > 0).any() else 0
    if owner and (same == owner).sum() > 3 * core.sum():
        log.debug("kidney %+.0f: %.0f HU tissue goes on beyond the gutter", side, hu)
        return False
    # (among the shell's fat and free soft tissue: where it touches an organ already found, the wall's
    # muscle or a muscle beside the spine — the psoas, of the wall muscle's attenuation and not of this
    # core's — the shell says nothing)
    shell = dilate_mm(core[box], 4.0, sp) & ~core[box]
    # the core's own partial-volume rim (the voxel layer next to it, between the fat's level and the core's
    # band) counts neither way: with the noise it holds a third of a 4 mm shell, and taken for soft tissue
    # it lost kidneys in their fat on some noise draws
    values = array[box]
    rim = ndimage.binary_dilation(core[box]) & shell & (values > lm.fat_hu + 50.0) & (values < hu - tolerance)
    shell &= ~rim
    shell_fat = shell & fat[box]
    other = shell & soft[box]
    if muscle_hu is not None:
        other &= ~(np.abs(array[box] - muscle_hu) < np.abs(array[box] - hu))
    counted = int((shell_fat | other).sum())
    fat_fraction = float(shell_fat.sum()) / counted if counted else 0.0
    log.debug("kidney %+.0f: %.1f ml, %.0f HU, fat around %.2f", side, volume, hu, fat_fraction)
    return fat_fraction >= 0.3


# the stomach's contents (the pipelines' HU): water and thin liquid food; positive oral contrast is brighter
# than this and than the bone threshold
STOMACH_FLUID_HU = (-15.0, 25.0)
STOMACH_CONTRAST_HU = 150.0
STOMACH_WALL_MM = 6.0  # its wall (3-5 mm distended) and partial volume round its lumen, for an adult
# its lumen reaches at least this high (mm, scaled) below the left lung's base: the fundus, under the dome
STOMACH_TOP_MM = 90.0


def _stomach(
    array: np.ndarray, lm: Landmarks, u, v, h, models: dict[str, OrganModel],  # noqa: ANN001
    liver_mask: np.ndarray | None,
) -> OrganModel | None:
    """The stomach's lumen, left-anterior under the left hemidiaphragm, left of the crus and the vertebral
    body, in front of the spleen and the left kidney, not in the mediastinum: the largest group of pieces
    (within 6 mm of each other) of gas (below −500 HU, not centred 40 mm above the left lung's base: no
    airway), water-like contents (:func:`_fluid_pieces`) and positive oral contrast
    (:func:`_contrast_pieces`), outside the other organs' seeds (fluid and contrast also 3 mm from them and
    from the liver chain's mask). Where gas floats, above or below, does not matter: supine and prone alike.
    Its attenuation is the contents' (the mode of the lumen without its gas; of the tissue 3-10 mm round a
    lumen of gas alone); the seed is the lumen with its partial-volume rim in the slice's plane.
    ``None`` without any such lumen (an empty, collapsed stomach is not looked for)."""
    s, sp = lm.scale, lm.spacing
    voxel_ml = float(np.prod(sp)) / 1000.0
    inner = erode_mm(lm.body, 6.0 * s, sp)
    zone = (u > -30 * s) & (u < 140 * s) & (v < 20 * s) & (h > -150 * s) & inner & ~lm.lungs
    zone &= ~((np.abs(u) < 30 * s) & (v > -5 * s))  # the crura and the vertebral body
    # the mediastinum: between the lungs, 30 mm above both lung bases
    zz = lm.grids()[0]
    zone &= ~((zz > max(lm.lung_base_left, lm.lung_base_right) + 30.0 * s) & (np.abs(u) < 40 * s))
    seeds = np.zeros(array.shape, dtype=bool)
    for m in models.values():
        seeds |= m.seed
    others = seeds | liver_mask if liver_mask is not None else seeds
    if not zone.any():
        return None
    box = _box(zone, (1, 1, 1))
    values, zone_b = array[box], zone[box]
    apart = zone_b & ~dilate_mm(others[box], 3.0, sp)
    pieces = np.zeros(zone_b.shape, dtype=bool)
    fluid = _fluid_pieces(values, apart, sp, lm)
    gas = values < -500.0
    # (gas is no organ's: it may lie in the liver chain's mask, whose holes are filled; not the airways' gas
    # above the diaphragm: a pocket centred more than 40 mm above the left lung's base)
    air, n = ndimage.label(gas & zone_b & ~seeds[box])
    if n:
        level = np.broadcast_to(h, array.shape)[box]
        high = np.asarray(ndimage.mean(level, air, index=np.arange(1, n + 1))) > 40.0 * s
        air = np.concatenate([[False], ~high])[air]
    for part, least in ((air > 0, 2.0), (fluid, 15.0),
                        (_contrast_pieces(values, apart, lm.body[box], sp, lm), 10.0)):
        labels, n = ndimage.label(part)
        if n == 0:
            continue
        sizes = np.bincount(labels.ravel()) * voxel_ml
        sizes[0] = 0
        pieces |= (sizes >= least * s**3)[labels]
    if not pieces.any():
        return None
    # pieces within 6 mm of each other are one lumen (gas over its fluid level, the partial volume between)
    groups, n = ndimage.label(dilate_mm(pieces, 6.0, sp))
    sizes = np.bincount(groups[pieces], minlength=n + 1)
    # the stomach's fundus lies under the left hemidiaphragm: a lumen whose top stays more than
    # STOMACH_TOP_MM below the left lung's base is bowel (a 300 mm field's pelvic loops of water, 1 mm slices)
    tops = ndimage.maximum(np.broadcast_to(h, array.shape)[box], groups, index=np.arange(1, n + 1))
    sizes[1:][np.asarray(tops, dtype=float) < -STOMACH_TOP_MM * s] = 0
    if sizes.max(initial=0) == 0:
        return None
    lumen = pieces & (groups == int(np.argmax(sizes)))
    contents = lumen & ~gas
    if contents.sum() >= 50:
        hu, spread = _mode_near(values[contents], -100.0, 1000.0)
    else:  # gas alone: the tissue 3-10 mm round it (its wall, contents of food; not the partial volume)
        rim = dilate_mm(lumen, 10.0, sp) & ~dilate_mm(lumen, 3.0, sp) & ~others[box]
        rim &= (values > lm.fat_hu + 40.0) & (values < lm.bone_hu)
        if rim.sum() < 50:
            return None
        hu, spread = _mode_near(values[rim], lm.fat_hu + 40.0, lm.bone_hu)
    seed = np.zeros(array.shape, dtype=bool)
    # its partial-volume rim in the slice's plane; the first and last slice of its fluid left to the
    # competition (the median filter of the working grid carries water one slice into the fat beyond it)
    rim = ndimage.generate_binary_structure(3, 1)
    rim[0], rim[2] = False, False
    water = lumen & fluid
    core = lumen & ~(water & ~ndimage.binary_erosion(water, np.ones((3, 1, 1), dtype=bool), border_value=1))
    lumen = core if core.any() else lumen
    seed[box] = ndimage.binary_dilation(lumen, rim) & ~others[box] & inner[box]
    log.debug("stomach: lumen %.0f ml (gas %.0f ml), contents %.0f HU", lumen.sum() * voxel_ml,
              (lumen & gas).sum() * voxel_ml, hu)
    return OrganModel("stomach", seed, hu, spread)


def _fluid_pieces(values: np.ndarray, zone: np.ndarray, spacing, lm: Landmarks) -> np.ndarray:  # noqa: ANN001
    """Water-like contents (:data:`STOMACH_FLUID_HU`) in ``zone`` not next to fat, opened by a voxel, each
    piece holding a disc of 12 mm across on some slice kept where
    at most half of what lies 3.5-7 mm around it lies within 15 HU of its median: a lumen inside its wall or
    fat, not a level of the soft tissue around."""
    fluid = zone & (values >= STOMACH_FLUID_HU[0]) & (values <= STOMACH_FLUID_HU[1])
    # (not next to fat or lung: a lumen lies inside its wall, and the partial volume of fat or lung with
    # tissue passes through the same levels)
    fluid &= ~ndimage.binary_dilation((values < lm.fat_hu + 40.0) & (values > -500.0))
    fluid = ndimage.binary_opening(fluid)
    labels, n = ndimage.label(fluid)
    out = np.zeros_like(fluid)
    for i in range(1, n + 1):
        piece = labels == i
        if piece.sum() < 20:
            continue
        pbox = _box(piece, [int(np.ceil(7.0 / spc)) + 1 for spc in spacing])
        sub = piece[pbox]
        # (a lumen holds a disc of 12 mm across on some slice; the partial volume of fat with tissue is a
        # thin layer)
        depth = max(float(ndimage.distance_transform_edt(plane, sampling=spacing[1:]).max())
                    for plane in sub if plane.any())
        if depth < 6.0 * lm.scale:
            continue
        ring = dilate_mm(sub, 7.0, spacing) & ~dilate_mm(sub, 3.5, spacing) & (values[pbox] > -500.0)
        if ring.sum() < 10:
            continue
        level = float(np.median(values[pbox][sub]))
        if float(np.mean(np.abs(values[pbox][ring] - level) <= 15.0)) <= 0.5:
            out[pbox] |= sub
    return out


def _contrast_pieces(values: np.ndarray, zone: np.ndarray, body: np.ndarray, spacing,  # noqa: ANN001
                     lm: Landmarks) -> np.ndarray:
    """Positive oral contrast in ``zone``: brighter than the bone threshold and :data:`STOMACH_CONTRAST_HU`,
    opened by 4 mm (no thin rib or vessel), at least 25 mm inside the body's surface (the ribs lie nearer)."""
    bright = zone & (values > max(lm.bone_hu, STOMACH_CONTRAST_HU))
    if not bright.any():
        return bright
    bright = dilate_mm(erode_mm(bright, 4.0 * lm.scale, spacing), 4.0 * lm.scale, spacing) & bright
    depth = np.zeros(values.shape, dtype=np.float32)
    for k in np.flatnonzero(bright.any(axis=(1, 2))):
        depth[k] = ndimage.distance_transform_edt(body[k], sampling=spacing[1:])
    labels, n = ndimage.label(bright)
    out = np.zeros_like(bright)
    for i in range(1, n + 1):
        piece = labels == i
        if float(np.median(depth[piece])) >= 25.0 * lm.scale:
            out |= piece
    return out


def _stomach_reach(array: np.ndarray, lm: Landmarks, stomach: OrganModel, blocked: np.ndarray) -> np.ndarray:
    """Where the stomach's wall may lie, also darker than the organs' soft-tissue band: tissue above the
    fat's level within :data:`STOMACH_WALL_MM` of its seed, connected to it not through ``blocked`` (the
    other organs' seeds), and what that encloses slice by slice."""
    s, sp = lm.scale, lm.spacing
    reach_mm = STOMACH_WALL_MM * s
    box = _box(stomach.seed, [int(np.ceil(reach_mm / spc)) + 1 for spc in sp])
    out = np.zeros(array.shape, dtype=bool)
    seed = stomach.seed[box]
    near = dilate_mm(seed, reach_mm, sp) & ~blocked[box] & lm.body[box]
    tissue = near & (array[box] > lm.fat_hu + 40.0)
    reach = _keep_seeded(tissue | seed, seed)
    out[box] = (fill_holes(reach, slicewise=True) & near & ~seed) | (reach & tissue)
    return out


#: The stomach's wall where no fat shows its outer border (mm; 3-5 mm distended, adult), and the range a
#: thickness measured against fat is kept in (:func:`refine_stomach`).
STOMACH_WALL_DEFAULT_MM = 4.0
STOMACH_WALL_RANGE_MM = (2.0, 6.0)
#: what the wall is measured on: its outer edge against fat over at least this share of the lumen's surface
STOMACH_EDGE_FRACTION = 0.1


@step("abdomen.stomach_on_source")
def stomach_on_source(labels: sitk.Image, image: sitk.Image) -> sitk.Image:
    """Step ``abdomen.stomach_on_source``: the organs' label map (on ``image``'s grid) with the stomach drawn
    again on the source pixels (:func:`refine_stomach`). The competition works on the median-smoothed grid,
    whose 3-voxel median across 5 mm slices moves the lumen's poles by a slice and wipes out a 4 mm wall at
    2.8 mm pixels: the phantom's stomach rows lost 10-30 % of their volume there (Dice 0.71-0.89)."""
    return _redraw_on_lps(labels, image, refine_stomach)


def _redraw_on_lps(
    labels: sitk.Image, image: sitk.Image,
    redraw: Callable[[np.ndarray, np.ndarray, tuple[float, float, float]], object],
) -> sitk.Image:
    """``labels`` (on ``image``'s grid) with ``redraw(labels, pixels, spacing)`` applied in place to
    LPS-oriented arrays of both (any position and slice orientation alike), put back on ``labels``' grid."""
    oriented = to_lps(sitk.Cast(image, sitk.sitkFloat32))
    array = sitk.GetArrayFromImage(oriented)
    out = sitk.GetArrayFromImage(to_lps(sitk.Cast(labels, sitk.sitkUInt8)))
    redraw(out, array, spacing_of(oriented))
    result = sitk.GetImageFromArray(out)
    result.CopyInformation(oriented)
    return sitk.Resample(result, labels, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def refine_stomach(
    labels: np.ndarray, array: np.ndarray, spacing: tuple[float, float, float]
) -> float | None:
    """The stomach as its lumen and the wall round it, in place on the LPS label map ``labels``; returns the
    wall's thickness used (mm; ``None``: left as it was).

    The lumen: gas (below −500 HU, with the partial volume next to it darker than the contents) and the
    contents' level (the median of the contour's core away from the gas, ± max(2.5 × its noise, 20 HU),
    ending half-way to the fat's and the wall's levels) within a voxel of the contour, the largest piece
    connected through faces. The wall: voxels above the level half-way between the fat (the median of the
    box's −200..−30 HU) and the wall (the median of what lies within 1.5 voxels outside the lumen, 40 HU
    above the fat), connected to the lumen, free or the liver's or the spleen's, whose depth (their centre's
    distance from the lumen's surface) is less than the wall's thickness. The thickness is measured in the
    image: the median depth of the first fat beyond each point of the lumen's surface where fat lies within
    the top of :data:`STOMACH_WALL_RANGE_MM` (kept in that range; not the partial volume of gas or lung, not
    a noisy voxel of the contents), or :data:`STOMACH_WALL_DEFAULT_MM` where fat faces under
    :data:`STOMACH_EDGE_FRACTION` of the lumen's surface (no fat plane: QC says its border is not seen,
    :func:`dicomnode.imaging.assess.stomach_checks`). Holes are filled slice by slice. A contour half or more
    of gas (:data:`~dicomnode.imaging.assess.STOMACH_GAS_FRACTION`: its gas pocket, the contents not found)
    is left as it is, for QC to withhold."""
    value = LABELS["stomach"]
    own = labels == value
    if np.count_nonzero(own) < 20:
        return None
    voxel = max(spacing)
    box = _box(own, [int(np.ceil(12.0 / s)) + 1 for s in spacing])
    sub, values, own = labels[box], array[box], own[box]
    fat = fat_level(values)
    gas = values < -500.0
    if np.count_nonzero(own & gas) >= STOMACH_GAS_FRACTION * np.count_nonzero(own):
        # its gas pocket without contents of their own (food at the wall's level is not told from the wall):
        # a wall drawn round it would only hide from QC that the contour is not the stomach
        log.debug("stomach on the source grid: %.0f %% of its contour is gas, left as it is",
                  100.0 * np.count_nonzero(own & gas) / np.count_nonzero(own))
        return None
    # (the contents' level and noise away from the partial volume with gas)
    core = erode_mm(own, 1.01 * voxel, spacing) & ~ndimage.binary_dilation(gas)
    if np.count_nonzero(core) < 20:
        core = own & ~gas
        if np.count_nonzero(core) < 20:
            return None
    contents = float(np.median(values[core]))
    noise = 1.4826 * float(np.median(np.abs(values[core] - contents)))
    band = max(2.5 * noise, 20.0)
    near = dilate_mm(own, 1.01 * voxel, spacing)

    def lumen_within(low: float, high: float) -> np.ndarray:
        inside = near & (((values >= low) & (values <= high)) | gas)
        inside |= near & ndimage.binary_dilation(gas) & (values < contents)
        return largest_components(inside, 1, connectivity=6)  # (diagonal steps pass through a fat plane)

    lumen = lumen_within(contents - band, contents + band)
    if not lumen.any():
        return None
    ring = ~lumen & (ndimage.distance_transform_edt(~lumen, sampling=spacing) <= 1.5 * voxel)
    ring &= (values > fat + 40.0) & near
    wall_hu = float(np.median(values[ring])) if np.count_nonzero(ring) >= 20 else contents
    # the contents end half-way to the wall's level and the fat's (a noisy lumen ran through its wall)
    low, high = contents - band, contents + band
    for other in (fat, wall_hu):
        if other < contents:
            low = max(low, 0.5 * (contents + other))
        elif other > contents:
            high = min(high, 0.5 * (contents + other))
    lumen = lumen_within(low, high)
    if not lumen.any():
        return None
    dist, nearest = ndimage.distance_transform_edt(~lumen, sampling=spacing, return_indices=True)
    # a voxel's centre from the lumen's surface: less half the nearest lumen voxel's extent that way
    grid = np.indices(lumen.shape, sparse=True)
    norm = np.maximum(dist, 1e-6)
    half = sum(np.abs(nearest[i] - grid[i]) * (spacing[i] ** 2) for i in range(3)) / (2.0 * norm)
    del nearest
    level = 0.5 * (fat + wall_hu)
    free = (sub == 0) | own | (sub == LABELS["liver"]) | (sub == LABELS["spleen"])
    depth = dist - half  # (no wall is thicker than the range's top: the liver's far side is no edge of it)
    tissue = (values > level) & (depth <= STOMACH_WALL_RANGE_MM[1]) & free & ~gas
    wall = _keep_seeded(tissue | lumen, lumen) & tissue & ~lumen
    # its thickness: the depth (from the lumen's surface) of the first fat beyond it, where fat lies within
    # the range's top of the lumen; the tissue beyond a thin fat plane is not its wall (fat: below the
    # contents' noise too, and not enclosed by the lumen: a noisy voxel of the water is none)
    fatlike = (values <= min(level, contents - 3.0 * noise)) & ~fill_holes(lumen)
    fatlike &= ~ndimage.binary_dilation(gas)  # (nor the partial volume of gas or lung with tissue)
    surface = lumen & ~ndimage.binary_erosion(lumen)
    reach, nearest = ndimage.distance_transform_edt(~fatlike, sampling=spacing, return_indices=True)
    at = np.nonzero(surface)
    first = depth[tuple(nearest[i][at] for i in range(3))]
    del nearest
    faced = reach[at] <= STOMACH_WALL_RANGE_MM[1] + voxel
    if np.count_nonzero(faced) >= STOMACH_EDGE_FRACTION * at[0].size:
        thickness = float(np.clip(np.median(first[faced]), *STOMACH_WALL_RANGE_MM))
    else:
        thickness = STOMACH_WALL_DEFAULT_MM
    stomach = fill_holes(lumen | (wall & (depth < thickness)), slicewise=True) & (free | lumen)
    log.debug("stomach on the source grid: contents %.0f HU (noise %.0f), wall %.0f HU, fat %.0f HU, wall "
              "%.1f mm (%d of %d surface voxels against fat), %d -> %d voxels", contents, noise, wall_hu, fat,
              thickness, int(np.count_nonzero(faced)), at[0].size, int(np.count_nonzero(own)),
              int(np.count_nonzero(stomach)))
    sub[own & ~stomach] = 0
    sub[stomach & free] = value
    return thickness


def _wall(array: np.ndarray, lm: Landmarks, inside: np.ndarray | None = None) -> np.ndarray:
    """Where no abdominal organ lies: the outer body layer, bone and its muscle attachments, the muscles
    behind and beside the spine, the back outside the rib cage, the heart and mediastinum."""
    s, sp = lm.scale, lm.spacing
    u, v = lm.relative()
    zz, _, _ = lm.grids()
    wall = ~erode_mm(lm.body, 6.0 * s, sp)
    wall |= dilate_mm(lm.bone & (array > max(lm.bone_hu, 300.0)), 3.0, sp)  # not contrast-filled vessels
    wall |= (v > 30 * s) & (np.abs(u) < 30 * s)  # paraspinal muscles, behind the vertebral body
    wall |= (np.abs(u) < 25 * s) & (v > -8 * s)  # crura / psoas at the vertebral body's sides
    # the back muscles outside the rib cage (on slices whose ribs span most of the trunk's width)
    back = v > -20 * s
    # (the kidneys found lie inside the cavity: where the ribs do not run round the back, a line from the
    # last lateral rib ends to the spine would cut them)
    cavity = lm.bone if inside is None else lm.bone | inside
    for k in range(lm.body.shape[0]):
        cols = np.flatnonzero(lm.bone[k].any(axis=0))
        width = np.flatnonzero(lm.body[k].any(axis=0))
        if cols.size < 2 or width.size < 2 or (cols[-1] - cols[0]) < 0.6 * (width[-1] - width[0]):
            continue
        plane = lm.body[k]
        if plane[0].any() or plane[-1].any() or plane[:, 0].any() or plane[:, -1].any():
            continue  # the field of view cuts the trunk, and with it the rib cage: no hull to trust
        hull = convex_hull_image(cavity[k])
        wall[k] |= lm.body[k] & ~hull & back[k]
    # heart and mediastinum: between the lungs, above both lung bases
    top = max(lm.lung_base_right, lm.lung_base_left) + 30.0 * s
    wall |= (zz > top) & (np.abs(u) < 70 * s) & (v < -10 * s)
    return wall


def _muscle_wall(array: np.ndarray, lm: Landmarks, band: np.ndarray) -> np.ndarray:
    """The body wall's muscle layer: soft tissue within 8 mm (15 mm at the back; scaled) inside the
    subcutaneous fat, which is the fat connected, slice by slice, to the outside of the body."""
    s, sp = lm.scale, lm.spacing
    outside = ~lm.body
    fat = array < lm.fat_hu + 50.0
    subcut = np.zeros_like(outside)
    for k in range(array.shape[0]):
        labels, _ = ndimage.label(outside[k] | (fat[k] & lm.body[k]))
        keep = np.unique(labels[outside[k]])
        subcut[k] = np.isin(labels, keep[keep > 0])
    # in-plane distance only: the wall is a layer around each slice's trunk, thicker at the back
    _, v = lm.relative()
    thickness = np.where(v > 10 * s, 15.0 * s, 8.0 * s)
    layer = np.zeros_like(outside)
    for k in range(array.shape[0]):
        layer[k] = ndimage.distance_transform_edt(~subcut[k], sampling=sp[1:]) <= thickness[k]
    return layer & band & lm.body


def _muscle_like(
    array: np.ndarray, lm: Landmarks, layer: np.ndarray
) -> tuple[np.ndarray, float | None, float]:
    """The part of the wall layer whose attenuation is the muscle's (the layer's own mode, ± 2.5 spreads,
    at least ± 15 HU): an organ that reaches into the layer (a kidney or spleen against the wall) keeps
    what differs from muscle. Returns that part, the muscle's level and its spread (``None``, 0 unknown)."""
    values = array[layer]
    if values.size < 200:
        return layer, None, 0.0
    try:
        hu, spread = _mode_near(values[:: max(1, values.size // 500_000)], lm.fat_hu + 40.0, lm.bone_hu)
    except ImagingError:
        return layer, None, 0.0
    log.debug("wall muscle %.0f HU (spread %.0f)", hu, spread)
    return layer & (np.abs(array - hu) <= max(2.5 * spread, 15.0)), hu, spread


def _psoas(
    array: np.ndarray,
    lm: Landmarks,
    models: dict[str, OrganModel],
    name: str,
    side: float,
    band: np.ndarray,
    muscle_hu: float | None,
    muscle_spread: float,
) -> np.ndarray:
    """The psoas beside a kidney whose level stands apart from muscle's (native phase: the kidney 10-20 HU
    below it, touching it), followed as a tube along the spine: tissue beside the vertebral body nearer the
    muscle's level than the kidney's, taken 20 mm below the kidney's lower pole (where nothing but muscle
    lies there) and followed upwards slice by slice to the kidney's upper pole, each slice's part within
    4 mm of the part below (it does not jump into the spleen, the aorta or the kidney beside it). Empty unless
    the kidney lies beside the muscle's level (:func:`_beside_muscle`), or where the images end below it."""
    out = np.zeros(array.shape, dtype=bool)
    kidney = models[name]
    if not _beside_muscle(kidney, muscle_hu, muscle_spread):
        return out
    s, sp = lm.scale, lm.spacing
    slices = np.flatnonzero(kidney.seed.any(axis=(1, 2)))
    start = slices[0] - int(np.ceil(20.0 * s / sp[0]))
    if start < 0:
        return out
    top = slices[-1]
    u, v = lm.relative()
    zone = (side * u > 10 * s) & (side * u < 90 * s) & (v > -15 * s) & (v < 60 * s)
    sub = zone[start : top + 1] & band[start : top + 1]
    sub &= np.abs(array[start : top + 1] - muscle_hu) < np.abs(array[start : top + 1] - kidney.hu)
    others = np.zeros(sub.shape, dtype=bool)
    for other, m in models.items():
        others |= m.seed[start : top + 1] if other != "stomach" else False
    sub &= ~dilate_mm(others, 3.0, sp, slicewise=True)
    raw = sub
    sub = ndimage.binary_opening(sub, structure=np.ones((1, 3, 3), dtype=bool))
    for k in range(1, sub.shape[0]):
        sub[k] &= dilate_mm(sub[k - 1][None], 4.0, sp, slicewise=True)[0]
    # (and its rim within 3 mm, which the opening took: where the kidney presses on it, the psoas is a
    # crescent thinner than the opening)
    sub |= raw & dilate_mm(sub, 3.0, sp, slicewise=True)
    out[start : top + 1] = sub
    log.debug("psoas beside %s: %.0f ml", name, float(sub.sum()) * float(np.prod(sp)) / 1000.0)
    return out


def _tube_core(tube: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The part of a vessel's tube on the slices where its seed lies (the tube itself is generous)."""
    return tube & seed.any(axis=(1, 2))[:, None, None]


def _background(band: np.ndarray, wall: np.ndarray, models: dict[str, OrganModel]) -> np.ndarray:
    """Background markers: outside the soft-tissue band, and the wall (:func:`_wall`), less the seeds."""
    bg = ~band | wall
    for m in models.values():
        bg &= ~m.seed
    return bg


def compete(array: np.ndarray, lm: Landmarks, liver_mask: np.ndarray | None = None) -> np.ndarray:
    """The label map (uint8, :data:`LABELS`) of an LPS-oriented CT array and its landmarks.

    With ``liver_mask`` (the liver chain's result) the liver is that mask less what another organ
    explains better; without it, the liver is the competition's own."""
    sp = lm.spacing
    layer = _muscle_wall(array, lm, (array > lm.fat_hu + 30.0) & (array < lm.bone_hu + 60.0) & lm.body)
    muscle, muscle_hu, muscle_spread = _muscle_like(array, lm, layer)
    models, tubes, liver_mask = _seeds(array, lm, liver_mask, muscle, muscle_hu, muscle_spread)
    # the wall layer is background unless an organ found explains a voxel better than muscle does (a
    # kidney or spleen reaching the wall; cartilage and bone stay background)
    # (a voxel of the layer that a kidney's attenuation explains better than the muscle's is the kidney's to
    # win: a native kidney, 10-15 HU below muscle, lies in the thick layer at the back)
    explained = np.zeros(array.shape, dtype=bool)
    closer = np.zeros(array.shape, dtype=bool)
    for name, m in models.items():
        if name not in ("stomach", *VESSELS):
            near = np.abs(array - m.hu) <= max(2.0 * m.spread, 15.0)
            explained |= near
            if muscle_hu is not None and name.startswith("kidney"):
                closer |= near & (np.abs(array - m.hu) < np.abs(array - muscle_hu))
    layer &= (muscle & ~closer) | ~explained
    organ_hus = [m.hu for name, m in models.items() if name != "stomach"]
    low = max(lm.fat_hu + 30.0, min(organ_hus) - 3.0 * 12.0 - 25.0)
    band = (array > low) & (array < lm.bone_hu + 60.0) & lm.body
    stomach_reach = None
    if "stomach" in models:  # its contents and wall may be darker than the band (water, food)
        blocked = np.zeros(array.shape, dtype=bool)
        for name, m in models.items():
            if name != "stomach":
                blocked |= m.seed
        stomach_reach = _stomach_reach(array, lm, models["stomach"], blocked)
        band |= stomach_reach
    for name in VESSELS:  # a contrast-filled lumen may be brighter than the bone threshold
        if name in tubes and models[name].hu + 60.0 > lm.bone_hu:
            lumen = _tube_core(tubes[name], models[name].seed) & (array > low)
            band |= lumen & (array < models[name].hu + 3.0 * max(models[name].spread, 25.0)) & lm.body
    markers = np.zeros(array.shape, dtype=np.uint8)
    kidneys = np.zeros(array.shape, dtype=bool)
    for name in ("kidney-right", "kidney-left"):
        if name in models:
            kidneys |= models[name].seed
    wall = _wall(array, lm, dilate_mm(kidneys, 12.0 * lm.scale, sp) if kidneys.any() else None)
    for name in VESSELS:  # calcified plaques in a vessel's wall are not bone to keep away from
        if name in tubes:
            wall &= ~_tube_core(tubes[name], models[name].seed)
    for name, side in (("kidney-right", -1.0), ("kidney-left", 1.0)):
        if name in models:
            wall |= _psoas(array, lm, models, name, side, band, muscle_hu, muscle_spread)
    markers[_background(band, wall | (layer & band), models)] = BACKGROUND
    for name, m in models.items():
        markers[m.seed] = LABELS[name]
    sigma = [1.0 / s for s in sp]
    gradient = ndimage.gaussian_gradient_magnitude(np.clip(array, low, lm.bone_hu + 60.0), sigma)
    elevation = np.clip(gradient / max(float(np.percentile(gradient[band], 99)), 1.0) * 250, 0, 255)
    elevation = elevation.astype(np.uint8)
    mask = band | (markers > 0)
    labels = watershed(elevation, markers.astype(np.int32), mask=mask).astype(np.uint8)

    # shape and attenuation constraints, then the freed voxels are flooded again by their neighbours
    fixed = np.zeros(array.shape, dtype=np.uint8)
    for name, m in models.items():
        value = LABELS[name]
        region = labels == value
        if name in tubes:
            region &= tubes[name]
        if name == "stomach" and stomach_reach is not None:  # its wall's reach round the lumen
            region &= stomach_reach | m.seed
        if name != "stomach":
            tolerance = max(3.5 * m.spread, 35.0)
            region &= np.abs(array - m.hu) <= tolerance + (60.0 if name.startswith("kidney") else 0.0)
        region = _keep_seeded(region | m.seed, m.seed)
        fixed[region] = value
    free = mask & (fixed == 0) & (labels != BACKGROUND)
    markers2 = fixed.copy()
    markers2[mask & (labels == BACKGROUND)] = BACKGROUND
    markers2[~mask] = 0
    relabelled = watershed(elevation, markers2.astype(np.int32), mask=mask).astype(np.uint8)
    out = np.where(free, relabelled, fixed).astype(np.uint8)
    if "ivc" in tubes:  # (the freed voxels' flood does not carry the IVC beyond its tube: the liver's again)
        out[(out == LABELS["ivc"]) & ~tubes["ivc"]] = 0
    if stomach_reach is not None:  # (nor the stomach beyond its wall's reach)
        out[(out == LABELS["stomach"]) & ~(stomach_reach | models["stomach"].seed)] = 0
    out[mask & (labels == BACKGROUND) & (fixed == 0)] = BACKGROUND
    if stomach_reach is not None and models["stomach"].hu > lm.bone_hu:
        # oral contrast: the stomach's wall lies on the flank of the lumen's steep edge, lower than the fat's
        # edge beyond it, and the background's flood won it; its reach is the stomach's where no organ's
        out[stomach_reach & ((out == 0) | (out == BACKGROUND))] = LABELS["stomach"]
    if liver_mask is not None and liver_mask.any():
        liver, model = LABELS["liver"], models["liver"]
        # the chain's voxels that the background won and whose attenuation is far from the liver's
        # (body wall, muscle, fat reached through a thin bridge) leave the liver; enclosed ones return
        # with the hole filling below (vessels, lesions)
        far = np.abs(array - model.hu) > max(3.5 * model.spread, 35.0)
        # as are those the background won beyond the competition's own liver surface: a leak along a
        # tissue of the liver's attenuation (the body wall's muscle in the native phase, bowel next to a
        # fatty liver) is the chain's, the competition's flood stops at the background's markers
        near = np.zeros(array.shape, dtype=bool)
        own = out == liver
        if own.any():
            box = _box(own | liver_mask, [int(np.ceil(6.0 * lm.scale / spc)) + 1 for spc in sp])
            near[box] = dilate_mm(own[box], 6.0 * lm.scale, sp)
        # and, where the liver stands apart from muscle, those nearer the muscle's attenuation than the
        # liver's: the body wall, the heart's blood and bowel of the native phase, just below the liver's
        muscly = _nearer_muscle(array, model, muscle_hu, muscle_spread)
        if muscly is not None:
            far |= muscly
        keep = liver_mask & ~wall & ~((out == BACKGROUND) & (far | ~near))
        keep = ndimage.binary_opening(keep, iterations=1) | (keep & erode_mm(liver_mask, 4.0, sp))
        out[(out == liver) & ~keep] = 0
        out[keep & ((out == 0) | (out == BACKGROUND))] = liver
    for name in ("kidney-right", "kidney-left"):
        if name in models:
            _kidney_regain(out, array, models[name], LABELS[name], muscle_hu, muscle_spread, sp)
    out[out == BACKGROUND] = 0
    for name in ("spleen", "kidney-right", "kidney-left"):
        # partial volume at the border to the fat around: each border voxel goes to the nearer local mean,
        # over 4 mm, scaled down to a smaller body (a child's fat planes are thinner) (not for an organ of
        # the wall muscle's attenuation, native spleen: no edge to move towards)
        value = LABELS[name]
        organ = out == value
        if not organ.any() or name not in models:
            continue
        if muscle_hu is not None and abs(models[name].hu - muscle_hu) < max(2.0 * models[name].spread, 15.0):
            continue
        box = _box(organ, [int(np.ceil(8.0 / spc)) + 1 for spc in sp])
        refined = refine_boundary(array[box], organ[box], sp, scale_mm=4.0 * min(lm.scale, 1.0))
        sub = out[box]
        sub[organ[box] & ~refined] = 0
        # (not into the wall's muscle nearer the muscle's level than the organ's: the local mean outside
        # an organ that touches the wall mixes the muscle with the fat, and the muscle came nearer the
        # organ's mean; a child's kidney against the muscle behind it grew by a voxel all along its back)
        grow = refined & (sub == 0)
        if muscle_hu is not None:
            values = array[box]
            grow &= ~(muscle[box] & (np.abs(values - muscle_hu) < np.abs(values - models[name].hu)))
        sub[grow] = value
    for name in ("aorta", "ivc"):
        if name in models and name in tubes:
            _vessel_boundary(out, array, lm, models[name], LABELS[name], tubes[name],
                             wall_mm=3.0 * lm.scale if name == "aorta" else 0.0, branches=name == "aorta")
    if "spleen" in models:
        _spleen_ribbons(out, array, models["spleen"], lm, muscle)
        # (and what is brighter than the spleen's band: the freed voxels' flood gave it a child's thin ribs,
        # bone partial-volumed to 120-140 HU on the working grid; what it encloses comes back with its holes)
        m = models["spleen"]
        out[(out == LABELS["spleen"]) & (array > m.hu + max(3.5 * m.spread, 35.0))] = 0
    for name in ("liver", "spleen", "kidney-right", "kidney-left", "stomach"):
        value = LABELS[name]
        organ = out == value
        if organ.any():
            organ = fill_holes(largest_components(organ, 1), slicewise=True)
            out[(out == value) & ~organ] = 0
            out[organ & (out == 0)] = value
    out[out == LABELS["hilar-vessel"]] = 0  # (after the liver's holes are filled: it stays no liver)
    log.debug(
        "abdomen: %s",
        ", ".join(f"{n} {m.hu:.0f} HU ({int((out == LABELS[n]).sum())} vx)" for n, m in models.items()),
    )
    return out


SPLEEN_RIBBON_MM = 4.0  # the spleen's ribbons: parts thinner than twice this (adult size)
SPLEEN_RIBBON_RUN_MM = 12.0  # a ribbon running on head to feet at least this far (adult size; and 3 slices)


def _spleen_ribbons(
    out: np.ndarray, array: np.ndarray, spleen: OrganModel, lm: Landmarks, muscle: np.ndarray
) -> None:
    """The spleen less the thin ribbons its flood ran along, in place on ``out``. A ribbon is what an
    in-plane opening of 4 mm (scaled, at least a pixel) removes from the spleen, farther than that from what
    the opening keeps (the corners it shaves off the outline stay). It leaves the spleen on the slices where
    nothing of the opened spleen lies (the flood ran on beyond its pole), and where it runs on head to feet
    for 12 mm (scaled) and 3 slices or more along the wall's muscle (a tenth of it in ``muscle``) or at
    another level than the spleen's (its median beyond 2.5 spreads, at least 20 HU: a child's thin rib,
    partial-volumed with the tissue round it). A native child's spleen, of the wall muscle's attenuation,
    ran down the wall below its lower pole; a thin crescent of the spleen itself (wrapped round the kidney)
    is kept."""
    sp = lm.spacing
    organ = out == LABELS["spleen"]
    if not organ.any():
        return
    radius = max(SPLEEN_RIBBON_MM * lm.scale, max(sp[1:]))
    box = _box(organ, [0] + [int(np.ceil(radius / spc)) + 2 for spc in sp[1:]])
    sub, values, view = organ[box], array[box], out[box]
    core = _keep_seeded(_ribbons_cut(sub, sp, radius), spleen.seed[box])
    ribbons = sub & ~(core | dilate_mm(core, radius, sp, slicewise=True))
    beyond = ~core.any(axis=(1, 2))[:, None, None]
    view[ribbons & beyond] = 0
    labels, _ = ndimage.label(ribbons & ~beyond, structure=np.ones((3, 3, 3), dtype=bool))
    run = max(SPLEEN_RIBBON_RUN_MM * lm.scale, 2.5 * sp[0])
    for i, where in enumerate(ndimage.find_objects(labels), 1):
        if where is None or (where[0].stop - where[0].start) * sp[0] < run:
            continue
        piece = labels[where] == i
        along_wall = (piece & muscle[box][where]).sum() >= 0.1 * piece.sum()
        level = float(np.median(values[where][piece]))
        if along_wall or abs(level - spleen.hu) > max(2.5 * spleen.spread, 20.0):
            view[where][piece] = 0
            log.debug("spleen: a ribbon of %d voxels at %.0f HU left out", int(piece.sum()), level)


def _vessel_boundary(
    out: np.ndarray, array: np.ndarray, lm: Landmarks, model: OrganModel, value: int, tube: np.ndarray,
    wall_mm: float = 0.0,
    branches: bool = False,
) -> None:
    """A vessel's partial volume at its border, in place on ``out``: each voxel just outside its contour
    (inside its tube, free: no other organ's, not the vertebral body, not brighter than the blood) joins it
    when its value lies nearer the lumen's level than the local mean of what lies around the vessel
    (:func:`refine_boundary`, HU clipped to the fat's level and the blood's): its blood fills at least half
    of it. The competition's flood stops at the gradient's ridge, the background's markers (below the
    soft-tissue band) and the attenuation tolerance take the border's partial volume, so the contour lay
    inside the lumen's edge (a round vessel lost 10-15 % of its section). With ``branches`` the origins of
    its branches leave it first (:func:`_cut_branches`); with ``wall_mm`` the calcified plaques of its wall
    within that reach of the lumen join it (the aorta is its wall too)."""
    vessel = out == value
    if not vessel.any():
        return
    sp = lm.spacing
    box = _box(vessel, [int(np.ceil(8.0 / spc)) + 1 for spc in sp])
    sub = out[box]
    if branches:
        _cut_branches(sub, value, sp)
        vessel = out == value
    u, v = lm.relative()
    spine = ((v > 0) & (np.abs(u) < 22 * lm.scale))[box]
    refined = refine_boundary(np.clip(array[box], lm.fat_hu, model.hu), vessel[box], sp, scale_mm=4.0,
                              iterations=1)
    free = (sub == 0) & tube[box] & ~spine
    values = array[box]
    blood_top = model.hu + 3.0 * model.spread
    sub[refined & free & (values < blood_top)] = value
    if wall_mm > 0:
        # calcified plaques in its wall (above the blood's and the bone's level) within the wall's reach of
        # the lumen, not the vertebra behind it (on the median-smoothed grid a plaque on the vessel's back
        # merges with the vertebra's front), and the voxels between them and the lumen brighter than the
        # blood's level
        wall = dilate_mm(sub == value, wall_mm, sp, slicewise=True) & free
        plaque = wall & (values >= max(blood_top, lm.bone_hu))
        if plaque.any():
            near = dilate_mm(plaque, 1.5 * max(sp[1:]), sp, slicewise=True)
            sub[plaque | (wall & near & (values >= model.hu))] = value


def _cut_branches(sub: np.ndarray, value: int, spacing) -> None:  # noqa: ANN001
    """The branches' origins leave a vessel's contour (in place on the label map ``sub``): what a slice-wise
    opening with a disc of half the vessel's median radius removes, where a removed piece holds at least
    such a disc one slice thick (the coeliac trunk and the mesenteric artery leaving the aorta; not the
    corners the opening shaves off a round section on a coarse grid), unless the slice would keep less than
    0.6 × the median section."""
    own = sub == value
    sections = own.sum(axis=(1, 2))
    if not sections.any():
        return
    radius = 0.5 * float(np.sqrt(np.median(sections[sections > 0]) * spacing[1] * spacing[2] / np.pi))
    opened = dilate_mm(erode_mm(own, radius, spacing, slicewise=True), radius, spacing, slicewise=True) & own
    rest, n = ndimage.label(own & ~opened)
    if n == 0:
        return
    sizes = np.bincount(rest.ravel(), minlength=n + 1) * float(np.prod(spacing))
    branch = sizes >= np.pi * radius**2 * spacing[0]
    branch[0] = False
    cut = branch[rest]
    # (a slice left with under 0.6 × the median section was no round lumen with a branch: kept whole)
    kept = (own & ~cut).sum(axis=(1, 2))
    cut[kept < 0.6 * np.median(sections[sections > 0])] = False
    sub[cut] = 0


def _kidney_regain(
    out: np.ndarray,
    array: np.ndarray,
    kidney: OrganModel,
    value: int,
    muscle_hu: float | None,
    muscle_spread: float,
    spacing,  # noqa: ANN001
) -> None:
    """A kidney beside the muscle's level (:func:`_beside_muscle`; native phase: 10-20 HU below it) takes
    back, within 6 mm of its contour, the voxels the background won that are of its own level and nearer it
    than the muscle's: the weak edge to the muscle wall and psoas behind and beside it lets the
    background's flood run into the kidney. In place on ``out``."""
    organ = out == value
    if not organ.any() or muscle_hu is None or not _beside_muscle(kidney, muscle_hu, muscle_spread):
        return
    box = _box(organ, [int(np.ceil(6.0 / spc)) + 1 for spc in spacing])
    sub, values = out[box], array[box]
    near = dilate_mm(organ[box], 6.0, spacing)
    own = np.abs(values - kidney.hu)
    regain = near & (sub == BACKGROUND) & (own <= max(2.5 * kidney.spread, 20.0))
    regain &= own < np.abs(values - muscle_hu)
    # (within 3 mm of its outline's convex hull, slice by slice: the partial volume of fat with the wall's
    # muscle and the psoas' rim, at a kidney's level too, runs along them away from the kidney)
    hull = np.zeros_like(regain)
    for k in np.flatnonzero(organ[box].any(axis=(1, 2))):
        hull[k] = convex_hull_image(organ[box][k])
    regain &= dilate_mm(hull, 3.0, spacing, slicewise=True)
    regain = _keep_seeded(regain | organ[box], organ[box]) & regain
    sub[regain] = value


def _keep_seeded(region: np.ndarray, seed: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(region)
    if n == 0:
        return region
    keep = np.unique(labels[seed & region])
    keep = keep[keep > 0]
    return np.isin(labels, keep)


@step("abdomen.organs")
def segment_organs(image: sitk.Image, body: sitk.Image, liver: sitk.Image | None = None) -> sitk.Image:
    """Step ``abdomen.organs``: the label map of the abdominal organs (:data:`LABELS`) on ``image``'s grid.

    ``liver``, when given, is the liver chain's mask on the same grid (see :func:`compete`)."""
    oriented = to_lps(sitk.Cast(image, sitk.sitkFloat32))
    array = sitk.GetArrayFromImage(oriented)
    body_arr = sitk.GetArrayFromImage(to_lps(sitk.Cast(body, sitk.sitkUInt8))).astype(bool)
    spacing = spacing_of(oriented)
    landmarks = find_landmarks(array, body_arr, spacing)  # type: ignore[arg-type]
    liver_arr = None
    if liver is not None:
        liver_arr = sitk.GetArrayFromImage(to_lps(sitk.Cast(liver, sitk.sitkUInt8))).astype(bool)
    labels = compete(array, landmarks, liver_arr)
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(oriented)
    # back onto the input grid: a permutation/flip of the axes, so nearest neighbour is exact
    return sitk.Resample(out, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)



#: Vessels refined on the source grid (:func:`vessels_on_source`): label value → name.
SOURCE_VESSELS = {LABELS["aorta"]: "aorta", LABELS["ivc"]: "ivc"}
#: Blood above this is contrast-enhanced (unenhanced blood lies at 30-70 HU on any CT).
CONTRAST_BLOOD_HU = 80.0
#: The least step from what lies around a vessel to its lumen on which its border is drawn on the mean along
#: its course (:func:`refine_vessel`; 3 × the noise there, at least this).
LOW_CONTRAST_BLOOD_HU = 15.0


@step("abdomen.vessels_on_source")
def vessels_on_source(labels: sitk.Image, image: sitk.Image, *, fraction: float = 0.4) -> sitk.Image:
    """Step ``abdomen.vessels_on_source``: the organs' label map (on ``image``'s grid) with the aorta's
    and the IVC's border drawn again on the source pixels (:func:`refine_vessel`). The competition works on
    the median-smoothed 2 mm grid, where a ring of one voxel is 10 % of an adult aorta's section and 20 % of
    a child's: the real CT's aorta 0.894 → 0.912, its 256 matrix 0.885 → 0.908, the phantom 0.956 → 0.986."""
    def redraw(out: np.ndarray, array: np.ndarray, spacing: tuple[float, float, float]) -> None:
        for value in SOURCE_VESSELS:
            refine_vessel(out, array, value, spacing, fraction=fraction)

    return _redraw_on_lps(labels, image, redraw)


def refine_vessel(
    labels: np.ndarray, array: np.ndarray, value: int, spacing: tuple[float, float, float], *,
    fraction: float = 0.4, reach_mm: float = 2.0, opening_mm: float = 1.5,
) -> None:
    """A vessel's border at the level ``fraction`` of the way from what lies around it to its lumen, in
    place on the LPS label map ``labels`` (axial slices): the lumen's level is the median of the vessel's
    core (1.5 mm inside its contour), the surroundings' level a Gaussian-weighted (4 mm) local mean of the
    ring 2-5 mm outside it, HU clipped to the fat's level (the mode of the box's voxels at -200..-30 HU)
    and the lumen's (bone and a brighter neighbour count as the lumen's level: no border is drawn into
    them). Within ``reach_mm`` of the contour a voxel free or the liver's (the liver's mask gives the IVC's
    border back, :func:`liver_less_vessels`) joins the vessel when its value lies above that level and it
    is connected, in its slice, to the core; a voxel of the contour below it leaves. Bright structures
    (over the lumen's level + max(4 × its noise, 100 HU)) that reach beyond 4 mm of the contour — the
    vertebra, a neighbouring vessel — stay out with the pixel around them; calcified plaques of its wall
    within that reach join it (the reference draws the wall). Spurs thinner than ``opening_mm`` leave (a
    branch's origin, the partial volume towards the vertebra). A slice that would keep nothing keeps its
    contour; a vessel whose lumen stands out from the ring around it by less than max(3 × its noise, 30 HU)
    is left as it is, as is one without contrast (lumen under :data:`CONTRAST_BLOOD_HU`), and so is its
    contour where the local level around it lies within max(3 × its noise, 30 HU) of the lumen's
    (isodense tissue against it, or brighter tissue, which counts at the lumen's level: no border in the
    image)."""
    vessel = labels == value
    if not vessel.any():
        return
    _, sy, sx = spacing
    box = _box(vessel, [0, int(np.ceil(8.0 / sy)) + 1, int(np.ceil(8.0 / sx)) + 1])
    sub, values, own = labels[box], array[box], vessel[box]
    core = erode_mm(own, 1.5, spacing, slicewise=True)
    if not core.any():
        core = own
    lumen = float(np.median(values[core]))
    noise = 1.4826 * float(np.median(np.abs(values[core] - lumen)))
    fat = fat_level(values)
    if lumen < CONTRAST_BLOOD_HU:  # (unenhanced blood, 30-60 HU: its border against muscle and bowel of its
        return  # own level is not in the image; the working grid's contour stays and QC judges it)
    ring = dilate_mm(own, 5.0, spacing, slicewise=True) & ~dilate_mm(own, 2.0, spacing, slicewise=True)
    if not ring.any():
        return
    floor = max(3.0 * noise, 30.0)
    if lumen - float(np.median(np.clip(values, fat, lumen)[ring])) < floor:
        # a lumen of low contrast (an IVC 20-30 HU above the liver around it): its border is drawn on the
        # mean of its slice and its neighbours along its course (their contours' centres aligned; a vessel's
        # section changes little from one slice to the next), where the noise is lower
        values = _along_course(values, own)
        lumen = float(np.median(values[core]))
        noise = 1.4826 * float(np.median(np.abs(values[core] - lumen)))
        floor = max(2.0 * noise, LOW_CONTRAST_BLOOD_HU)
        if lumen - float(np.median(np.clip(values, fat, lumen)[ring])) < floor:
            return  # (an IVC isodense with the liver around it: no border in the image to draw; QC judges it)
        fraction = max(fraction, 0.5)
        low_contrast = True
    else:
        low_contrast = False
    clipped = np.clip(values, fat, lumen)
    sigma = (0.0, 4.0 / sy, 4.0 / sx)
    weight = ndimage.gaussian_filter(ring.astype(np.float32), sigma)
    around = ndimage.gaussian_filter(np.where(ring, clipped, 0.0).astype(np.float32), sigma)
    around = np.where(weight > 1e-3, around / np.maximum(weight, 1e-3), fat)
    level = around + fraction * (lumen - around)
    if low_contrast:
        # (a thin layer of tissue between the lumen and fat, the liver's rim behind the IVC: the mean around
        # mixes the two and the rim, far nearer the lumen than that mean, joined it; where tissue lies in
        # the ring nearby, the border lies between the lumen and that tissue)
        tissue = ring & (values > 0.5 * (fat + lumen))
        t_weight = ndimage.gaussian_filter(tissue.astype(np.float32), sigma)
        t_around = ndimage.gaussian_filter(np.where(tissue, clipped, 0.0).astype(np.float32), sigma)
        t_around = t_around / np.maximum(t_weight, 1e-3)
        level = np.where(t_weight > 0.25 * np.maximum(weight, 1e-3),
                         np.maximum(level, t_around + fraction * (lumen - t_around)), level)
    reach = dilate_mm(own, max(reach_mm, 1.01 * max(sy, sx)), spacing, slicewise=True)
    bright = values > lumen + max(4.0 * noise, 100.0)
    near = dilate_mm(own, 4.0, spacing, slicewise=True)
    blocked = np.zeros_like(own)
    for k in range(own.shape[0]):
        parts, n = ndimage.label(bright[k])
        if n == 0:
            continue
        beyond = np.unique(parts[~near[k] & bright[k]])
        blocked[k] = np.isin(parts, beyond[beyond > 0])
    blocked = dilate_mm(blocked, 1.01 * max(sy, sx), spacing, slicewise=True)
    free = (sub == 0) | (sub == LABELS["liver"]) | own
    # where the lumen stands out from what lies around it; elsewhere (isodense tissue against it, a native
    # vessel beside muscle) there is no border in the image and the contour stays as it was
    edge = lumen - around >= floor
    candidate = (own & ~edge) | (reach & free & ~blocked & edge & (values >= level))
    if opening_mm > 0:  # (thin spurs: a branch's origin, the partial volume towards the vertebra)
        ry, rx = int(opening_mm / sy), int(opening_mm / sx)
        yy, xx = np.ogrid[-ry : ry + 1, -rx : rx + 1]
        disc = (yy * sy) ** 2 + (xx * sx) ** 2 <= opening_mm**2
        if disc.sum() > 1:
            candidate = ndimage.binary_opening(candidate, disc[None]) | (candidate & core)
    for k in range(own.shape[0]):
        if not own[k].any():
            continue
        parts, _ = ndimage.label(candidate[k] | core[k])
        keep = np.unique(parts[core[k]])
        kept = np.isin(parts, keep[keep > 0])
        if not kept.any():
            continue
        plane = sub[k]
        plane[own[k] & ~kept] = 0
        plane[kept] = value


def _along_course(values: np.ndarray, own: np.ndarray) -> np.ndarray:
    """``values`` (axial slices) where each slice holding ``own`` is the mean of itself and its neighbours
    that hold it too, each shifted in-plane by whole pixels so that its contour's centre (smoothed along
    the course) lies on this slice's (the course's drift between slices); other slices as they are."""
    out = values.astype(np.float32, copy=True)
    held = np.flatnonzero(own.any(axis=(1, 2)))
    if held.size == 0:
        return out
    # (the contours' centres smoothed over five slices: a contour's own noise is no drift of the course)
    track = np.array([ndimage.center_of_mass(own[k]) for k in held])
    track = ndimage.uniform_filter1d(track, min(5, held.size), axis=0, mode="nearest")
    centres = dict(zip(held.tolist(), track, strict=True))
    for k in centres:
        total, count = values[k].astype(np.float32), 1
        for j in (k - 1, k + 1):
            if j not in centres:
                continue
            dy, dx = np.round(centres[k] - centres[j]).astype(int)
            total = total + ndimage.shift(values[j].astype(np.float32), (dy, dx), order=0, mode="nearest")
            count += 1
        out[k] = total / count
    return out


@step("abdomen.liver_less_vessels")
def liver_less_vessels(liver: sitk.Image, labels: sitk.Image) -> sitk.Image:
    """Step ``abdomen.liver_less_vessels``: the liver's mask less the voxels that the label map gives to
    the aorta or the IVC (:func:`vessels_on_source` draws the IVC's border into the liver's)."""
    mask = sitk.GetArrayFromImage(liver) > 0
    arr = sitk.GetArrayFromImage(labels)
    # (and the stomach's: :func:`stomach_on_source` draws its wall into the liver's where they touch)
    taken = np.isin(arr, [*SOURCE_VESSELS, LABELS["stomach"]])
    out = sitk.GetImageFromArray((mask & ~taken).astype(np.uint8))
    out.CopyInformation(liver)
    return out
