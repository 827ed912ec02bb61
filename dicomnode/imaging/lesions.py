"""Lesion detection inside an organ mask, relative to the organ's own statistics.

``detect(image, organ)`` returns a label map (``sitk.sitkUInt16``, 0 = background, 1..N one lesion each,
ordered by decreasing volume) of hypo- and/or hyper-dense regions:

1. The image is smoothed (Gaussian, ``smoothing_mm``); voxels below ``exclude_below`` (CT: fat and gas in
   fissures and at the hilum, about -30 HU) are not organ; when the organ itself lies close to that limit
   (steatosis: a liver at 10-25 HU, its hypodense lesions at -20..-40 HU) the limit moves down to midway
   between the fat around the organ and the organ's median. The organ's intensity centre and spread are
   its median and MAD-based sigma inside the organ eroded by ``margin_mm`` (and, on thick slices, one
   slice off its top and bottom).
2. The organ's slowly varying background (Gaussian ``background_mm``, normalised over the organ
   without the obvious outliers) is subtracted; candidates differ from it by more than
   ``delta = max(k_sigma × sigma, min_contrast)`` (dark for ``hypo``, bright for ``hyper``, each
   polarity on its own) inside the eroded organ. The candidates are opened by a ball of diameter
   ``vessel_mm`` (thinner vessels and rims vanish) and grown back into the whole organ through voxels
   that still pass (lesions at the organ's edge keep their size). A component that joins two structures
   at clearly different levels (a lesion touching a vessel far brighter than it: a fatty liver's
   metastasis and portal vein) is split in two (:func:`_split_levels`), each judged on its own.
3. Each connected component is one lesion unless it is (reason counted in the ``rejected``
   estimate): ``small`` (equivalent-sphere diameter below ``min_diameter_mm``); a ``rim`` (mostly in the
   organ's edge band: partial volume); ``weak`` (the median contrast of its deeper half is below
   ``min_strength × delta``, ×1.3 when it reaches the edge band: sub-threshold vessels that noise
   pushes over the threshold, beam hardening next to bone); ``elongated`` (principal-axis ratio above
   ``max_elongation``); ``tubular`` (inscribed-ball diameter below ``min_compactness`` × the
   equivalent diameter: branching vessels); ``flat`` (the depth of its core, the voxels deeper than
   half its largest depth, through the slices, one slice of partial volume added, is below ``flatness``
   × the core's length in the slice plane: a vein lying in the plane, a long piece on one to a few
   slices, where a lesion is about as deep as it is long); or it
   ``continues as a vessel``: at half the threshold it
   belongs to a structure that goes on beyond its neighbourhood — inside the organ, or outside it
   through the same tissue (a vessel leaving at the hilum, a neighbour the mask leaked into) — at
   least ``max_continuation`` × its own thickness and with a similar peak contrast (≥ 0.65 of its
   own). A lesion next to a vessel keeps its own, stronger contrast and stays; a subcapsular lesion
   only touches different tissue outside the organ and stays; a round blob of 12 mm or more (largest
   inscribed ball ≥ 0.78 × its equivalent diameter, or ≥ 0.7 when what it joins is darker than it)
   stays whatever it touches: vessel pieces cut by the threshold are far from round (0.5-0.65); so does one
   of 0.6 or more whose three principal axes (each with its voxel's extent) are within ``BLOB_AXES`` of
   each other, when what it joins is darker or brighter than it (thick slices cut a sphere's inscribed
   ball: a 25 mm lesion on 5 mm slices reads 0.64; vessel pieces' axes differ by 1.6 or more). A piece
   far from round (below 0.7) whose structure beyond has branch centres (its 98th percentile) as bright as
   it continues as a vessel too: a trunk cut by the field of view or by the organ's mask at the hilum,
   whose thinner branches partial volume darkens in bulk.
   On slices that hold metal (above the metal threshold, passed from the whole image), the smoothed
   image is first averaged along circles about the metal (Gaussian ``ARC_MM`` along the arc, over the
   organ only): the streak residue that metal artefact reduction leaves runs radially and alternates
   bright and dark across the arc, so it cancels, while a round lesion keeps most of its contrast
   (phantom: noise on the metal's slices 13 → 5 HU, a 10 mm lesion's contrast 32 → 23 HU). The threshold
   on those slices is what a lesion of ``REFERENCE_MM`` (10 mm) with the threshold's contrast keeps through
   the averaging (its gain, measured by averaging discs on the organ's largest such slice about the same
   metal), not below ``k_sigma`` × the noise left there: the contrast-to-noise ratio is what counts
   (phantom: gain 0.75, 20 → 18.5 HU; the 12 mm lesion beside the rod, -19 HU at the fixed threshold, is
   found). A kept lesion
   whose own boundary (step 4) is elongated in the slice plane with its long axis pointing at the metal
   is a ``metal streak`` (streak residue, the dark band between metal and bone), not a lesion; lesions
   near metal that stay carry the ``metal`` QC flag (:mod:`dicomnode.imaging.assess`). One whose own
   boundary's heart (its deepest part) reaches an edge of the images (the first or last slice, a cropped
   side) narrower than ``FOV_KEEP_MM`` is ``cut by the field of view`` (:func:`_cut_by_fov`): whether it
   goes on as a vessel beyond the images cannot be seen.
4. A kept lesion's mask is its own boundary: beyond the midpoint between its level (the median of its
   deepest voxels) and its surround's (the organ tissue in a shell around it that is not a candidate),
   on the image blurred by half a voxel only, connected to its deepest voxels and within one voxel of
   the component. What joined it at a weaker level (a darker region of the parenchyma, a vessel) and
   the margin a threshold below half its contrast adds are left out, so its volume is its own.
5. With ``surface_mm`` > 0, hypodense lesions that bulge the organ's surface (subcapsular, exophytic) are
   looked for as well: the organ mask holds only part of them or none (the organ's segmentation stops
   at the lesion; hole filling cannot close a defect open to the surface). Lesion-like tissue (darker
   than the organ's background by ``delta``, above ``exclude_below`` and not in partial volume with
   fat or gas) within ``surface_mm`` of the organ is searched, on a grid of about 3 mm, for round
   blobs: the largest inscribed balls (local maxima of the distance to non-lesion-like tissue) of
   diameter ``surface_min_mm`` (14 mm) or more that cross or touch the organ's surface. A ball is a
   lesion when the shell around it (1-1.5 radii) is mostly not lesion-like (at most 40 %: a piece of
   the body wall's muscle, a diaphragmatic crus, an intercostal muscle between two ribs or bowel goes
   on through that shell), the blob (the lesion-like tissue in balls of 0.6 radius there, so a thinner
   wall it touches is left out) shares at least 30 % of its boundary with the organ, is round
   (inscribed / equivalent diameter >= 0.7, principal-axis ratio <= 2), not mostly inside the organ
   (that is the enclosed search's) and as clear as an enclosed lesion. Against a wall of its own
   attenuation (body wall muscle, a crus: the organ chain leaves such a lesion out whole, its shell is
   mostly lesion-like) a ball is a lesion too where the organ wraps round ``WRAP`` (30 %) of its shell
   (it lies in the surface, not on it), within the organ's envelope the organ surrounds it, at most
   ``THICK_WALL`` of its shell is tissue as thick as it (the wall beyond is thinner; a kidney or a thick
   muscle goes on at its thickness), and it lies within the images and off the slices that hold metal;
   beyond the organ its mask is then its ball (no edge parts it from the wall). One wrapped so but
   against a thicker wall is named (:data:`AGAINST_LIKE`), not reported. It is then traced on the full
   grid; an enclosed lesion it overlaps (its inner part) becomes part of it. The labels of lesions
   found this way may lie outside the organ mask; ``surface_lesions`` counts them.
6. A hypodense candidate (enclosed or at the surface) at water density (``FLUID_HU``, -15..20 HU: bile,
   whatever the phase; only where the organ lies clearly above it) that is a piece of an elongated fluid
   sac (the water-density tissue at least as thick as its half radius around it, on a box of 5 radii:
   principal-axis ratio >= ``SAC_ELONGATION`` and >= ``SAC_MM`` long) is the ``gallbladder`` in its fossa
   under the liver, not a lesion; a round cyst of the same density is one.

:func:`describe` gives each lesion's volume, diameter, centre (LPS mm), mean value and kind.

``detect`` returns a :class:`~dicomnode.imaging.step.StepOutput`: the label map with the estimates
``organ_median``, ``organ_sigma``, ``threshold`` (the contrast threshold ``delta``), ``rejected``
(candidates dropped, by reason), ``surface_lesions`` (lesions found bulging the surface) and ``doubtful``:
one sentence (joined by ``DOUBT_SEPARATOR``) per candidate of ``REPORT_MM`` (10 mm) or more whose shape is
a lesion's (inscribed / equivalent diameter >= 0.6, axes within 1.5) but that was dropped for what it
touches or where it lies (:data:`DOUBTFUL`: continues as a vessel, weak, cut by the field of view, metal
streak, against tissue of its own attenuation) — its size, position and why. The pipeline runner turns
each into a ``warn`` on the organ searched with the flag :data:`DOUBTFUL` names: a drop that could be a
missed lesion is never silent. Drops for shape (small, rim, elongated, tubular, flat) are not named: those
candidates are not lesion-shaped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from dicomnode.errors import ImagingError
from dicomnode.imaging.grid import axial, same_grid, to_working_grid
from dicomnode.imaging.morphology import closing, dilate, erode, opening
from dicomnode.imaging.step import StepOutput, StepValue, image_of, step

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lesion:
    label: int
    kind: str  # hypo | hyper
    volume_ml: float
    diameter_mm: float  # of the sphere with the same volume
    centre_mm: tuple[float, float, float]  # LPS
    mean: float  # real units (HU)
    contrast: float  # mean − organ median


@step("lesions.detect")
def detect(
    image: sitk.Image,
    organ: sitk.Image,
    *,
    kind: str = "both",
    k_sigma: float = 3.0,
    min_contrast: float = 20.0,
    min_diameter_mm: float = 7.0,
    smoothing_mm: float = 1.5,
    margin_mm: float = 3.0,
    max_elongation: float = 3.0,
    background_mm: float = 25.0,
    vessel_mm: float = 6.0,
    min_compactness: float = 0.45,
    max_continuation: float = 0.6,
    min_strength: float = 1.15,
    exclude_below: float | None = None,
    surface_mm: float = 0.0,
    working_spacing_mm: float = 1.5,
) -> StepOutput:
    """A label map of lesions inside ``organ`` (see the module docstring); works on the organ's
    bounding box (plus a margin), so its cost follows the organ's size, not the volume's, and on a
    grid no finer than ``working_spacing_mm`` (default 1.5 mm; 0 keeps the source grid)."""
    if organ.GetSize() != image.GetSize():
        raise ImagingError("The organ mask is not on the image grid.")
    inside = sitk.GetArrayViewFromImage(organ)
    if not inside.any():
        return StepOutput(_empty(image))
    idx = np.argwhere(inside)
    params = {
        "kind": kind, "k_sigma": k_sigma, "min_contrast": min_contrast, "min_diameter_mm": min_diameter_mm,
        "smoothing_mm": smoothing_mm, "margin_mm": margin_mm, "max_elongation": max_elongation,
        "background_mm": background_mm, "vessel_mm": vessel_mm, "min_compactness": min_compactness,
        "max_continuation": max_continuation, "min_strength": min_strength, "exclude_below": exclude_below,
        "surface_mm": surface_mm,
    }
    # the enclosed search on the organ's box (its result does not depend on the surface search); lesions
    # bulging the surface are looked for on the box grown by ``surface_mm``, and merged
    out, estimates = _detect_box(image, organ, idx, 0.0, {**params, "surface_mm": 0.0}, working_spacing_mm)
    surface = 0
    if surface_mm > 0 and kind in ("hypo", "both"):
        found, more = _detect_box(image, organ, idx, surface_mm, {**params, "enclosed": False},
                                  working_spacing_mm)
        rejected = dict(estimates.get("rejected", {}))  # type: ignore[call-overload]
        for reason, count in dict(more.get("rejected", {})).items():  # type: ignore[call-overload]
            rejected[reason] = rejected.get(reason, 0) + count
        estimates["rejected"] = rejected
        estimates["doubtful"] = DOUBT_SEPARATOR.join(
            d for d in (str(estimates.get("doubtful", "")), str(more.get("doubtful", ""))) if d)
        out, surface = _merge_surface(out, found)
    result = sitk.GetImageFromArray(out)
    result.CopyInformation(image)
    estimates["surface_lesions"] = surface
    return StepOutput(result, estimates)


def _detect_box(
    image: sitk.Image, organ: sitk.Image, idx: np.ndarray, extra_mm: float, params: dict,
    working_spacing_mm: float,
) -> tuple[np.ndarray, dict]:
    """:func:`detect_in_region` on the organ's box grown by ``extra_mm`` (on the working grid), its labels
    on the whole grid: within the organ, except lesions that bulge its surface."""
    inside_shape = tuple(image.GetSize()[::-1])
    spacing = np.asarray(image.GetSpacing()[::-1])
    margin = np.ceil((3.0 * params["smoothing_mm"] + 2.0 + extra_mm) / spacing).astype(int)
    lo = np.maximum(idx.min(axis=0) - margin, 0)
    hi = np.minimum(idx.max(axis=0) + margin + 1, inside_shape)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(lo[::-1], hi[::-1], strict=True))  # x, y, z
    region_image, region_organ = image[crop], organ[crop]
    params = {**params, "metal_points": _metal_points(image, int(lo[0]), int(hi[0]))}
    # which faces of the region (array axis 0 low, high, axis 1 low, ...) are the image's own
    faces = tuple(bool(v) for a, b, n in zip(lo, hi, inside_shape, strict=True) for v in (a == 0, b == n))
    working_mm = float(working_spacing_mm)
    if working_mm > 0 and min(image.GetSpacing()) < working_mm:  # fine grids: detect on a coarser one
        coarse = to_working_grid(region_image, working_mm)
        coarse_organ = sitk.Resample(region_organ, coarse, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        found = detect_in_region(coarse, coarse_organ, **params,
                                 fov_faces=_faces_on(faces, region_image, coarse))
        labels = sitk.Resample(found.image, region_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        # the labels stop at the organ's surface, except a subcapsular lesion's part that bulges beyond it
        keep = sitk.GetArrayFromImage(region_organ) > 0
        keep |= np.isin(sitk.GetArrayViewFromImage(labels), list(found.estimates.get("surface_labels", ())))
        labels = sitk.Mask(labels, sitk.Cast(_like(keep, labels), sitk.sitkUInt8))
    else:  # laid out axially in the patient's frame (a permutation: exact both ways), as the coarse grid is
        laid_out = axial(region_image)
        found = detect_in_region(laid_out, axial(region_organ), **params,
                                 fov_faces=_faces_on(faces, region_image, laid_out))
        labels = found.image
        if not same_grid(labels, region_image):
            labels = sitk.Resample(labels, region_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    out = np.zeros(inside_shape, dtype=np.uint16)
    out[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))] = sitk.GetArrayFromImage(labels)
    estimates = dict(found.estimates)
    estimates.pop("surface_labels", None)
    return out, estimates


def _faces_on(faces: tuple[bool, ...], source: sitk.Image, target: sitk.Image) -> tuple[bool, ...]:
    """``faces`` (per array axis of ``source``: low side, high side) for ``target``'s array axes, where
    ``target`` covers the same region with its axes permuted or reversed (:func:`grid.axial`): each of its
    axes is matched to the source axis it runs along (the largest direction cosine, its sign for the side)."""
    d_source = np.asarray(source.GetDirection()).reshape(3, 3)
    d_target = np.asarray(target.GetDirection()).reshape(3, 3)
    out: list[bool] = []
    for a_target in range(3):  # array axes run opposite to ITK's index axes
        cosines = d_source.T @ d_target[:, 2 - a_target]
        i = int(np.argmax(np.abs(cosines)))
        low, high = faces[2 * (2 - i)], faces[2 * (2 - i) + 1]
        out += [low, high] if cosines[i] > 0 else [high, low]
    return tuple(out)


def _merge_surface(enclosed: np.ndarray, surface: np.ndarray) -> tuple[np.ndarray, int]:
    """One label map from the enclosed lesions and the surface lesions (an enclosed lesion a surface lesion
    overlaps is its inner part: one lesion), labels by decreasing volume; and the surface lesions' count."""
    if not surface.any():
        return enclosed, 0
    boxes = ndimage.find_objects(enclosed)
    joined: set[int] = set()
    merged: list[tuple[tuple[slice, ...], np.ndarray]] = []
    for box in ndimage.find_objects(surface):
        if box is None:
            continue
        merged.append((box, surface[box] > 0))
    out = np.zeros_like(enclosed)
    full_masks: list[tuple[int, np.ndarray, bool]] = []
    for box, comp in merged:
        mask = np.zeros(enclosed.shape, dtype=bool)
        mask[box] = comp
        for value in np.unique(enclosed[box][comp]):
            if value:
                joined.add(int(value))
                other = boxes[int(value) - 1]
                mask[other] |= enclosed[other] == value
        full_masks.append((int(mask.sum()), mask, True))
    for value, box in enumerate(boxes, start=1):
        if box is None or value in joined:
            continue
        mask = np.zeros(enclosed.shape, dtype=bool)
        mask[box] = enclosed[box] == value
        full_masks.append((int(mask.sum()), mask, False))
    for new, (_, mask, _) in enumerate(sorted(full_masks, key=lambda item: -item[0]), start=1):
        out[mask & (out == 0)] = new
    return out, sum(1 for *_, at_surface in full_masks if at_surface)


def detect_in_region(
    image: sitk.Image,
    organ: sitk.Image,
    *,
    kind: str = "both",
    k_sigma: float = 3.0,
    min_contrast: float = 20.0,
    min_diameter_mm: float = 7.0,
    smoothing_mm: float = 1.5,
    margin_mm: float = 3.0,
    max_elongation: float = 3.0,
    background_mm: float = 25.0,
    vessel_mm: float = 6.0,
    min_compactness: float = 0.45,
    max_continuation: float = 0.6,
    min_strength: float = 1.15,
    exclude_below: float | None = None,
    surface_mm: float = 0.0,
    surface_min_mm: float = 14.0,
    surface_grid_mm: float = 3.0,
    metal_points: np.ndarray | None = None,
    enclosed: bool = True,
    fov_faces: tuple[bool, ...] | None = None,
) -> StepOutput:
    """:func:`detect` on a region (the whole grid is processed); ``metal_points`` (LPS mm, one row per
    metal voxel on the organ's slices) lets candidates that follow a metal streak be told apart;
    ``fov_faces`` says which faces of the region (axis 0 low, high, axis 1 low, high, ...; default: all)
    are the edges of the field of view, where a candidate cut by them is judged (:func:`_cut_by_fov`)."""
    if kind not in ("hypo", "hyper", "both"):
        raise ImagingError(f"Parameter 'kind' must be hypo, hyper or both; got {kind!r}.")
    if min_diameter_mm < 0 or k_sigma <= 0 or vessel_mm < 0:
        raise ImagingError(
            f"Invalid lesion parameters: k_sigma={k_sigma!r}, min_diameter_mm={min_diameter_mm!r}, "
            f"vessel_mm={vessel_mm!r}."
        )
    spacing = tuple(image.GetSpacing()[::-1])
    organ_arr = sitk.GetArrayFromImage(organ).astype(bool)
    if organ_arr.shape != tuple(image.GetSize()[::-1]):
        raise ImagingError("The organ mask is not on the image grid.")
    smoothed = sitk.SmoothingRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), smoothing_mm)
    smooth = sitk.GetArrayFromImage(smoothed)
    raw = sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkFloat32))
    fat_limit = None
    if exclude_below is not None:  # fat or gas in fissures and at the hilum is not organ (CT: fat < -30 HU)
        fat_limit = _fat_limit(smooth, organ_arr, float(exclude_below))
        organ_arr &= smooth >= fat_limit
    metal = _to_index(image, metal_points)
    averaged = np.zeros(organ_arr.shape[0], dtype=bool)  # the slices averaged along arcs about the metal
    gain = 1.0
    if len(metal):  # streaks run radially from the metal: average them out along arcs around it
        gain = _arc_gain(organ_arr, metal, spacing, smoothing_mm, ARC_MM)
        smooth = _across_streaks(smooth, organ_arr, metal, spacing, ARC_MM)
        averaged = _metal_slices(organ_arr, metal)
    # at least one voxel deep along every axis: thick slices carry partial volume at the organ's top/bottom
    depth = max(margin_mm, 1.01 * max(spacing))
    core = erode(organ_arr, margin_mm, spacing)
    if spacing[0] > margin_mm:  # thick slices: also one slice off the organ's top and bottom
        core &= ndimage.binary_erosion(organ_arr, np.ones((3, 1, 1), dtype=bool))
    if max(spacing[1:]) > margin_mm:  # coarse pixels (> 3 mm): also one pixel off the organ's edge in-plane,
        # else the partial volume with the fat beside the organ reads as deep (a 3.2 mm grid's fat plane)
        core &= ndimage.binary_erosion(organ_arr, ndimage.generate_binary_structure(2, 1)[None])
    if core.sum() < 50:
        core = organ_arr
    values = smooth[core]
    if values.size < 10:
        return StepOutput(_empty(image))
    centre = float(np.median(values))
    sigma = 1.4826 * float(np.median(np.abs(values - centre)))
    # pass 1 against the organ's median finds obvious outliers; the organ's slowly varying background
    # (contrast gradients, beam hardening) is then estimated without them, and pass 2 thresholds the
    # residual against that local background
    outliers = organ_arr & (np.abs(smooth - centre) > max(k_sigma * sigma, min_contrast))
    weight = (organ_arr & ~dilate(outliers, 2 * smoothing_mm, spacing)).astype(np.float32)
    bg_sigma = [background_mm / s for s in spacing]
    support = ndimage.gaussian_filter(weight, bg_sigma)
    background = ndimage.gaussian_filter(smooth * weight, bg_sigma) / np.maximum(support, 1e-3)
    background = np.where(support > 0.05, background, centre)
    del support, weight
    residual = smooth - background
    sigma = 1.4826 * float(np.median(np.abs(residual[core] - np.median(residual[core]))))
    delta = max(k_sigma * sigma, min_contrast)
    limits = Limits(min_diameter_mm, max_elongation, min_compactness, max_continuation, delta, min_strength)
    # on the slices averaged along arcs a lesion keeps only part of its contrast (``gain``, for a lesion of
    # ``REFERENCE_MM``): their threshold is what a lesion of ``delta`` keeps, not below ``k_sigma`` times
    # the noise left there (the streak residue cancels: the contrast to noise ratio is what counts)
    threshold = np.full(organ_arr.shape[0], delta, dtype=np.float32)
    metal_limits = limits
    if averaged.any() and gain < 1.0:
        on = core & averaged[:, None, None]
        left = residual[on] if on.sum() >= 50 else residual[core]
        noise = 1.4826 * float(np.median(np.abs(left - np.median(left))))
        delta_metal = min(delta, max(gain * delta, k_sigma * noise))
        threshold[averaged] = delta_metal
        metal_limits = Limits(min_diameter_mm, max_elongation, min_compactness, max_continuation, delta_metal,
                              min_strength)
        log.debug("metal slices: gain %.2f, noise %.1f, threshold %.1f", gain, noise, delta_metal)
    level = threshold[:, None, None]
    rejected: dict[str, int] = {}
    doubtful: list[str] = []  # round candidates of REPORT_MM or more dropped for what they touch or where
    kept: list[tuple[float, np.ndarray, bool]] = []
    for polarity in (("hypo", "hyper") if kind == "both" else (kind,)) if enclosed else ():
        passes = (residual < -level) if polarity == "hypo" else (residual > level)
        # structures thinner than ``vessel_mm`` (vessels, rims) do not survive the opening of the seeds;
        # the seeds then grow back into the whole organ through voxels that still pass
        seeds = opening(passes & core, vessel_mm / 2.0, spacing)
        grown = seeds | (dilate(seeds, depth + max(spacing), spacing) & passes & organ_arr)
        half = (residual < -0.5 * level) if polarity == "hypo" else (residual > 0.5 * level)
        labels, _ = ndimage.label(grown)
        labels = _split_levels(labels, -residual if polarity == "hypo" else residual, delta, depth,
                               vessel_mm, spacing)
        for i, box in enumerate(ndimage.find_objects(labels), start=1):
            comp = labels[box] == i
            volume_mm3 = float(comp.sum()) * float(np.prod(spacing))
            reach = max((6.0 * volume_mm3 / math.pi) ** (1.0 / 3.0), min_diameter_mm)
            box = _grow_box(box, labels.shape, [int(math.ceil(reach / s)) + 1 for s in spacing])
            comp = labels[box] == i
            # the structure the component belongs to at half the threshold: inside the organ, not through
            # much darker/brighter tissue; outside it, only the same tissue (a vessel leaving at the hilum,
            # a neighbouring organ the mask leaked into), not what a subcapsular lesion merely touches
            same = np.abs(smooth[box] - float(np.median(smooth[box][comp]))) <= 0.5 * delta
            allowed = half[box] & (organ_arr[box] | same)
            allowed &= np.abs(residual[box]) <= float(np.abs(residual[box][comp]).max()) + delta
            local, _ = ndimage.label(allowed | comp)
            weaker = np.isin(local, np.unique(local[comp]))
            on_metal = averaged[box[0]][comp.any(axis=(1, 2))].mean() > 0.5
            reason = (metal_limits if on_metal else limits).reject(comp, core[box], weaker,
                                                                   np.abs(residual[box]), spacing)
            if not reason:
                # the candidate is a lesion; its mask is its own boundary, without what joins it at a weaker
                # level (a darker region or vessel next to it) and without the margin the threshold adds
                sharp = ndimage.gaussian_filter(raw[box], 0.5)  # a half-voxel blur: noise, not the edge
                own = _own_boundary(comp, sharp, organ_arr[box] & ~grown[box], spacing)
                # ... unless that boundary, on slices with metal, runs along a streak
                if _follows_streak(own if own.any() else comp, box, metal, spacing):
                    reason = "metal streak"
                # ... or it goes on beyond the images about as wide as it is (a vessel cut by the edge)
                elif _cut_by_fov(own if own.any() else comp, box, labels.shape, fov_faces, spacing):
                    reason = "cut by the field of view"
                # ... or, at water density, it is a piece of the gallbladder the organ's mask took in
                elif polarity == "hypo" and centre - FLUID_HU[1] >= delta:
                    deepest = np.unravel_index(int(np.argmax(_distance(~comp, spacing))), comp.shape)
                    middle = np.asarray(deepest) + np.asarray([b.start for b in box])
                    radius = 0.5 * _thickness(comp, spacing)
                    if _in_a_sac(smooth, middle, radius, comp, box, spacing):
                        reason = "gallbladder"
            if reason:
                rejected[reason] = rejected.get(reason, 0) + 1
                if reason in DOUBTFUL:
                    doubt = _doubtful(comp, box, spacing, image, polarity, reason)
                    if doubt:
                        doubtful.append(doubt)
                log.debug("%s component of %d voxels rejected: %s at %s", polarity, int(comp.sum()), reason,
                          [b.start for b in box])
                continue
            log.debug("%s component of %d voxels kept at %s", polarity, int(comp.sum()),
                      [b.start for b in box])
            full = np.zeros(labels.shape, dtype=bool)
            full[box] = own if own.any() else comp
            kept.append((float(comp.sum()), full, False))
    if surface_mm > 0 and kind in ("hypo", "both"):
        # lesions that bulge the organ's surface: the organ mask holds only part of them (or none)
        floor = fat_limit if fat_limit is not None else centre - 6.0 * delta
        # the search runs on a grid of about ``surface_grid_mm`` (block means; lesions of 10 mm are 3 voxels
        # wide there), each lesion found is then traced on the full grid
        factors = tuple(max(1, int(surface_grid_mm // s)) for s in spacing)
        # lesion-like: darker than the organ by the threshold, not fat or gas nor partial volume with them
        # (the organ's top and bottom slices, a fat plane's edge)
        like = (residual < -delta) & (smooth > floor)
        like &= ~ndimage.binary_dilation(smooth <= floor)
        for comp in _surface_lesions(
            like, residual, organ_arr, spacing, limits, factors=factors, surface_mm=surface_mm,
            min_diameter_mm=max(min_diameter_mm, surface_min_mm), rejected=rejected, smooth=smooth,
            fluid_check=centre - FLUID_HU[1] >= delta, doubtful=doubtful, image=image, fov_faces=fov_faces,
            metal_slices=averaged,
        ):
            # the part inside the organ may have been found already (as an enclosed lesion): one lesion
            joined = [j for j, (_, other, _) in enumerate(kept) if (other & comp).any()]
            for j in joined:
                comp |= kept[j][1]
            kept = [entry for j, entry in enumerate(kept) if j not in joined]
            kept.append((float(comp.sum()), comp, True))
    out = np.zeros(organ_arr.shape, dtype=np.uint16)
    surface: list[int] = []
    for new, (_, comp, at_surface) in enumerate(sorted(kept, key=lambda item: -item[0]), start=1):
        out[comp & (out == 0)] = new
        if at_surface:
            surface.append(new)
    result = sitk.GetImageFromArray(out)
    result.CopyInformation(image)
    estimates = {"organ_median": centre, "organ_sigma": sigma, "threshold": delta, "rejected": rejected,
                 "surface_labels": tuple(float(v) for v in surface),
                 "doubtful": DOUBT_SEPARATOR.join(doubtful)}
    return StepOutput(result, estimates)


def _surface_lesions(
    like: np.ndarray,
    residual: np.ndarray,
    organ: np.ndarray,
    spacing: tuple[float, ...],
    limits: Limits,
    *,
    factors: tuple[int, ...],
    surface_mm: float,
    min_diameter_mm: float,
    rejected: dict[str, int],
    smooth: np.ndarray,
    fluid_check: bool,
    doubtful: list[str] | None = None,
    image: sitk.Image | None = None,
    fov_faces: tuple[bool, ...] | None = None,
    metal_slices: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Hypodense lesions that cross the organ's surface (see the module docstring): round blobs of
    lesion-like tissue whose largest inscribed ball crosses or touches the surface. Balls are looked for
    on a grid coarser by ``factors`` and judged on the full one."""
    coarse_spacing = tuple(s * f for s, f in zip(spacing, factors, strict=True))
    coarse_like, coarse_organ = _shrink(like, factors) >= 0.5, _shrink(organ, factors) >= 0.5
    depth = _distance(~coarse_like, coarse_spacing)  # mm to the nearest voxel that is not lesion-like
    outside = _distance(coarse_organ, coarse_spacing)  # mm to the organ (0 in it)
    inside = _distance(~coarse_organ, coarse_spacing)  # mm to the organ's surface from within (0 outside)
    step_mm = max(coarse_spacing)
    peaks = (depth >= 0.5 * min_diameter_mm) & (depth >= ndimage.maximum_filter(depth, size=3))
    peaks &= (outside <= depth + step_mm) & (inside <= 0.5 * depth + step_mm) & (outside <= surface_mm)
    order = np.argwhere(peaks)
    order = order[np.argsort(-depth[peaks], kind="stable")]
    seen = np.zeros(organ.shape, dtype=bool)
    found: list[np.ndarray] = []
    last = np.asarray(organ.shape) - 1
    for coarse_centre in order:
        centre = np.minimum(coarse_centre * np.asarray(factors) + np.asarray(factors) // 2, last)
        if seen[tuple(centre)]:
            continue
        reach = float(depth[tuple(coarse_centre)]) + step_mm
        # a first look on the coarse grid: a ball whose shell is mostly lesion-like is a piece of a layer
        coarse_box = _ball_box(coarse_centre, 1.6 * reach, coarse_spacing, coarse_like.shape)
        around = _ball_distance(coarse_box, coarse_centre, coarse_spacing)
        shell = (around > reach) & (around <= 1.5 * reach)
        rim = (around > reach - step_mm) & (around <= reach + step_mm)
        reason = ""
        if shell.any() and coarse_like[coarse_box][shell].mean() > 0.6:
            reason = "continues beyond the surface"
        elif rim.any() and coarse_organ[coarse_box][rim].mean() < 0.1:  # (a lesion's is 0.2 or more)
            reason = "apart from the surface"
        if reason:
            rejected[reason] = rejected.get(reason, 0) + 1
            ball = _ball_box(centre, reach, spacing, organ.shape)
            seen[ball] |= _ball_distance(ball, centre, spacing) <= reach - step_mm
            continue
        log.debug("surface: a closer look at r=%.1f", reach - step_mm)
        # on the full grid: the ball's centre and radius (the deepest point near the coarse one)
        box = _ball_box(centre, 2.0 * reach, spacing, organ.shape)
        local_depth = _distance(~like[box], spacing)
        near = _ball_distance(box, centre, spacing) <= step_mm
        c = np.unravel_index(int(np.argmax(np.where(near, local_depth, -1.0))), near.shape)
        radius = float(local_depth[c])
        centre = np.asarray(c) + np.asarray([sl.start for sl in box])
        distance = _ball_distance(box, centre, spacing)
        seen[box] |= distance <= max(radius, step_mm)
        if radius < 0.5 * min_diameter_mm:
            rejected["small"] = rejected.get("small", 0) + 1
            continue
        def envelope(box: tuple[slice, ...] = box, centre: np.ndarray = centre, radius: float = radius
                     ) -> np.ndarray:
            # the organ's outline on each slice closed by a disc of ``BITE`` ball radii (on a box that
            # holds the organ well beyond it), on the ball's box
            wide = _ball_box(centre, 4.0 * radius + step_mm, spacing, organ.shape)
            closed = closing(organ[wide], BITE * radius, spacing, slicewise=True)
            inner = tuple(slice(b.start - w.start, b.stop - w.start) for b, w in zip(box, wide, strict=True))
            return closed[inner] | organ[box]

        # whether the ball lies within the images (what lies around it beyond their edge cannot be seen) and
        # off the slices that hold metal (streak residue darkens bands there that no edge parts from a lesion)
        faces = fov_faces if fov_faces is not None else (True,) * (2 * len(spacing))
        seen_round = all((not faces[2 * a] or centre[a] * spacing[a] >= radius)
                         and (not faces[2 * a + 1] or (organ.shape[a] - 1 - centre[a]) * spacing[a] >= radius)
                         for a in range(len(spacing)))
        if metal_slices is not None:
            reach = int(math.ceil(radius / spacing[0]))
            first, stop = max(0, int(centre[0]) - reach), int(centre[0]) + reach + 1
            seen_round &= not bool(metal_slices[first:stop].any())
        reason, lesion = _surface_blob(like[box], local_depth, organ[box], residual[box], distance, radius,
                                       spacing, limits, envelope, seen_round)
        if not reason and fluid_check and _in_a_sac(smooth, centre, radius, lesion, box, spacing):
            reason = "gallbladder"
        if reason:
            if reason != "enclosed":
                rejected[reason] = rejected.get(reason, 0) + 1
            if reason in DOUBTFUL and doubtful is not None and image is not None:
                doubt = _doubtful(lesion, box, spacing, image, "hypo", reason)
                if doubt:
                    doubtful.append(doubt)
            continue
        log.debug("surface lesion: r=%.1f at %s, %d voxels", radius, tuple(centre), int(lesion.sum()))
        full = np.zeros(organ.shape, dtype=bool)
        full[box] = lesion
        found.append(full)
        seen |= full
    return found


AGAINST_LIKE = "against tissue of its own attenuation"  # a surface candidate in the organ's surface (WRAP)
REPORT_MM = 10.0  # a dropped candidate this wide or more whose shape is a lesion's is named in the organ's QC
# why each such drop is a judgement (what the candidate touches or where it lies, not its shape), and the QC
# flag that names it: a lesion there cannot be ruled out
DOUBTFUL = {
    "continues as a vessel": ("low_contrast", "it joins a vessel-like structure of similar contrast, as a "
                              "piece of that vessel cut by the threshold would"),
    "weak": ("low_contrast", "its contrast is barely above the search's threshold"),
    "cut by the field of view": ("truncated", "it is cut by the edge of the images, so whether it goes on "
                                 "as a vessel beyond them cannot be seen"),
    "metal streak": ("metal", "it runs along a metal streak"),
    AGAINST_LIKE: ("low_contrast", "it bulges the surface against tissue of its own attenuation about as "
                   "thick as it (a muscle, a crus, bowel), so where it ends cannot be seen"),
}
DOUBT_SEPARATOR = "; "


def _doubtful(comp: np.ndarray, box: tuple[slice, ...], spacing: tuple[float, ...], image: sitk.Image,
              polarity: str, reason: str) -> str:
    """The sentence naming a dropped candidate whose shape is a lesion's (at least ``REPORT_MM`` wide,
    inscribed / equivalent diameter >= 0.6, its three axes within 1.5 of each other: a vessel piece is
    longer), dropped for ``reason`` (one of :data:`DOUBTFUL`); '' for any other."""
    volume = float(comp.sum()) * float(np.prod(spacing))
    diameter = (6.0 * volume / math.pi) ** (1.0 / 3.0)
    if diameter < REPORT_MM or _thickness(comp, spacing) < 0.6 * diameter or _axes(comp, spacing) > 1.5:
        return ""
    index = np.argwhere(comp).mean(axis=0) + np.asarray([b.start for b in box])
    point = image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in index[::-1]))
    kind = "hypodense" if polarity == "hypo" else "hyperdense"
    return (f"a round {kind} candidate of {diameter:.0f} mm at ({point[0]:.0f}, {point[1]:.0f}, "
            f"{point[2]:.0f}) mm (LPS) was not reported as a lesion: {DOUBTFUL[reason][1]} ({reason})")


FLUID_HU = (-15.0, 20.0)  # bile and other water-density fluid (0-20 HU: water is 0 HU on every CT)
SAC_ELONGATION = 1.8  # principal-axis ratio of the gallbladder (a 70-100 mm pear, 30-40 mm wide: 2-3) ...
SAC_MM = 45.0  # ... and its length: a round cyst (ratio about 1) of any size is not one
BITE = 2.0  # the organ's envelope around a surface candidate: each slice closed by a disc of this many ball
# radii (the ball found is about 0.8 of the lesion's radius, partial volume at its edge: at 1.3 radii a
# notch as wide as the lesion stayed open; real liver, spheres half outside it: 20 mm found 4 -> 6 of 10,
# 40 mm 7 -> 8 of 10, no row of the accuracy table moved)


WRAP = 0.3  # a surface candidate whose shell (1-1.5 ball radii) is this much organ lies in the organ's
# surface (a ball centred on a flat surface: 0.5; one that only touches it from outside: 0.1; real liver,
# 20 mm lesions half outside it: 0.32-0.58, the balls of the wall's own muscle 0.07-0.22) ...
WALL_DEPTH = 0.8  # ... and is a lesion, whatever lies beyond, when at most ``THICK_WALL`` of that shell is
THICK_WALL = 0.35  # lesion-like tissue that holds balls of this many of its radii (as thick as the lesion: a
# kidney, a thick crus or muscle goes on at its thickness, real CT 0.45-0.65; the wall a lesion lies against
# 0.14-0.29); one wrapped but against a thicker wall is named (``AGAINST_LIKE``), not reported


def _in_a_sac(smooth: np.ndarray, centre: np.ndarray, radius: float, lesion: np.ndarray,
              box: tuple[slice, ...], spacing: tuple[float, ...]) -> bool:
    """Whether a surface candidate of water density is a piece of an elongated fluid-filled sac beside the
    organ (the gallbladder under the liver: a pear 30-100 mm long), not a round lesion: the fluid it
    belongs to (what is at water density and at least as thick as the candidate's ball, on a box of 5
    radii), elongated (principal-axis ratio >= ``SAC_ELONGATION``) and at least ``SAC_MM`` long. A
    lesion of another density, or a round cyst of any size, is not affected."""
    level = float(np.median(smooth[box][lesion]))
    if not FLUID_HU[0] <= level <= FLUID_HU[1]:
        return False
    wide = _ball_box(centre, 5.0 * radius, spacing, smooth.shape)
    # a further 2 mm blur: the image's noise would cut holes in so narrow a band
    region = ndimage.gaussian_filter(smooth[wide], [2.0 / s for s in spacing])
    fluid = (region >= FLUID_HU[0]) & (region <= FLUID_HU[1])
    depth = _distance(~fluid, spacing)
    body = dilate(depth > 0.5 * radius, 0.5 * radius, spacing) & fluid  # thinner leaks (partial volume) out
    pieces, _ = ndimage.label(body)
    here = tuple(int(c) - w.start for c, w in zip(centre, wide, strict=True))
    if not pieces[here]:
        return False
    sac = pieces == pieces[here]
    length = _length(sac, spacing)
    elongation = _elongation(sac, spacing)
    log.debug("fluid around a surface candidate: elongation %.2f, length %.0f mm", elongation, length)
    return elongation >= SAC_ELONGATION and length >= SAC_MM


def _length(mask: np.ndarray, spacing: tuple[float, ...]) -> float:
    """A mask's length along its major principal axis (4 standard deviations: 1.15 × a line's length)."""
    points = np.argwhere(mask) * np.asarray(spacing)
    if len(points) < 5:
        return 0.0
    return 4.0 * math.sqrt(max(float(np.linalg.eigvalsh(np.cov(points.T))[-1]), 0.0))


def _ball_box(centre: np.ndarray, reach_mm: float, spacing: tuple[float, ...], shape: tuple[int, ...]
              ) -> tuple[slice, ...]:
    pad = [int(math.ceil(reach_mm / s)) + 1 for s in spacing]
    return tuple(slice(max(0, int(v) - p), min(n, int(v) + p + 1)) for v, p, n in zip(centre, pad, shape,
                                                                                      strict=True))


def _ball_distance(box: tuple[slice, ...], centre: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """The distance (mm) of every voxel of ``box`` to ``centre`` (an index on the whole grid)."""
    axes = [(np.arange(sl.start, sl.stop) - v) * s for sl, v, s in zip(box, centre, spacing, strict=True)]
    return np.sqrt(sum(g**2 for g in np.meshgrid(*axes, indexing="ij", sparse=True)))


def _surface_blob(
    like: np.ndarray,
    depth: np.ndarray,
    organ: np.ndarray,
    residual: np.ndarray,
    distance: np.ndarray,
    radius: float,
    spacing: tuple[float, ...],
    limits: Limits,
    envelope: Callable[[], np.ndarray],
    seen_round: bool = True,
) -> tuple[str, np.ndarray]:
    """Why the ball of ``radius`` at the centre of ``distance`` is not a surface lesion ('' when it is one)
    and the lesion's mask: the lesion-like tissue in balls of 0.6 × ``radius`` around it (what is
    thinner, a wall or a vessel it touches, is left out). ``envelope`` gives the organ's envelope on the
    box (only computed when needed)."""
    half = 0.5 * max(spacing)
    annulus = (distance > radius + half) & (distance <= 1.5 * radius + half)
    fill = float(like[annulus].mean()) if annulus.any() else 1.0
    near = distance <= 1.5 * radius
    lesion = dilate(depth > 0.6 * radius, 0.6 * radius, spacing) & like & near
    pieces, _ = ndimage.label(lesion)
    lesion = pieces == pieces[np.unravel_index(np.argmin(distance), distance.shape)]
    volume = float(lesion.sum()) * float(np.prod(spacing))
    diameter = (6.0 * volume / math.pi) ** (1.0 / 3.0)
    outside = 1.0 - float((lesion & organ).sum()) / float(lesion.sum())
    if outside < 0.25:
        return "enclosed", lesion
    shell = ndimage.binary_dilation(lesion) & ~lesion
    contact = float((shell & organ).sum()) / float(shell.sum())
    roundness = 2.0 * radius / diameter
    log.debug("surface candidate r=%.1f: d=%.1f fill=%.2f outside=%.2f contact=%.2f round=%.2f", radius,
              diameter, fill, outside, contact, roundness)
    if contact < 0.2:
        return "apart from the surface", lesion
    if roundness < 0.7 or _elongation(lesion, spacing) > 2.0:
        return "not round", lesion
    if fill > 0.4 or contact < 0.3:
        # not a blob standing out on its own: a lesion still when it fills a bite of the organ's envelope
        # (it pushed the organ's surface in) in which the organ, not the same tissue, surrounds it
        hull = envelope()
        ball = distance <= radius
        bite = float((ball & hull & ~organ).sum()) / float(ball.sum())
        within = annulus & hull
        fill_within = float(like[within].mean()) if within.any() else 1.0
        # ... or one the organ wraps round (it lies in the surface, not on it) against a wall of its own
        # attenuation thinner than it (muscle on the surface, a crus; the organ's mask stops at the lesion)
        wrap = float(organ[annulus].mean()) if annulus.any() else 0.0
        thick = dilate(depth > WALL_DEPTH * radius, WALL_DEPTH * radius, spacing) & like
        wall = float(thick[annulus].mean()) if annulus.any() else 1.0
        log.debug("surface bite %.2f, fill within the envelope %.2f, wrap %.2f, thick wall %.2f", bite,
                  fill_within, wrap, wall)
        if bite < 0.25 or fill_within > 0.4:
            # (wrapped: and within the organ's envelope the organ, not the same tissue, surrounds it, and the
            # ball lies within the images, off the slices with metal: there what it is cannot be seen)
            wrapped = wrap >= WRAP and fill_within <= 0.4 and seen_round
            if not (wrapped and wall <= THICK_WALL):
                # one the organ wraps round is named: a lesion there cannot be told from what lies beyond it
                return (AGAINST_LIKE if wrapped else "continues beyond the surface"), lesion
            # beyond the organ no edge parts it from the wall of its own attenuation: there it is its ball
            lesion &= organ | (distance <= radius + half)
    strength = -float(np.median(residual[lesion & (distance <= 0.5 * radius)]))
    if strength < limits.min_strength * limits.threshold:
        return "weak", lesion
    return "", lesion


def _distance(mask: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """The distance (mm) of every voxel to the nearest voxel of ``mask`` (0 on it)."""
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing([float(s) for s in spacing[::-1]])
    distance = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=False,
                                            useImageSpacing=True)
    return np.maximum(sitk.GetArrayFromImage(distance), 0.0)


def _shrink(array: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """Block means of ``array`` (``factors`` voxels per block along each axis; the last partial block
    of an axis is its own, smaller block)."""
    out = array.astype(np.float32)
    for axis, f in enumerate(factors):
        if f > 1:
            edges = np.arange(0, out.shape[axis], f)
            out = np.add.reduceat(out, edges, axis=axis) / np.diff(np.append(edges, out.shape[axis])).reshape(
                [-1 if a == axis else 1 for a in range(out.ndim)])
    return out


def _expand(mask: np.ndarray, factors: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    """A block mask (see :func:`_shrink`) back on the full grid."""
    out = mask
    for axis, f in enumerate(factors):
        if f > 1:
            out = np.repeat(out, f, axis=axis)
    return out[tuple(slice(0, n) for n in shape)]


# thick slices cut a ball's inscribed diameter (a 25 mm sphere on 5 mm slices: 0.62-0.64):
BLOB_ROUND = 0.6  # a piece this round whose three axes are within ``BLOB_AXES`` of each other (a ball; vessel
BLOB_AXES = 1.35  # pieces cut by the threshold 1.6-2.5 on the real CT) is a lesion where what it joins is at
# another level (not its own course), as one of ``Limits.round`` is


@dataclass(frozen=True)
class Limits:
    """Shape limits a lesion candidate must meet (see :meth:`reject`)."""

    min_diameter_mm: float
    max_elongation: float
    min_compactness: float
    max_continuation: float
    threshold: float  # the contrast threshold (real units)
    min_strength: float = 1.15
    same_contrast: float = 0.65
    edge_strength: float = 1.3  # the factor on min_strength for components reaching the edge band
    ball: float = 0.78  # roundness (inscribed / equivalent diameter) of a lesion whatever it touches
    round: float = 0.7  # roundness of a lesion that touches a much darker/brighter structure
    darker: float = 1.1  # "much": the structure's peak contrast over the component's own
    ball_mm: float = 12.0  # ... and at least this wide (round pieces of 6-10 mm vessels stay vessels)
    flatness: float = 0.55  # core depth through the slices (+ one slice) / in-plane length: lesions 0.7-1.8,
    # veins lying in the slice plane 0.1-0.45 (phantoms, spheres in the real liver)

    def reject(
        self,
        comp: np.ndarray,
        core: np.ndarray,
        weaker: np.ndarray | None,
        contrast: np.ndarray,
        spacing: tuple[float, ...],
    ) -> str:
        """Why the component is not a lesion ('' when it is one); ``weaker`` is the structure the
        component belongs to at half the contrast threshold (on the same box, ``None`` to skip) and
        ``contrast`` the absolute difference to the organ's local background."""
        volume_mm3 = float(comp.sum()) * float(np.prod(spacing))
        diameter = (6.0 * volume_mm3 / math.pi) ** (1.0 / 3.0)
        if diameter < self.min_diameter_mm:
            return "small"
        deep = float(core[comp].mean())
        if deep < 0.5:  # mostly at the organ's edge: a partial-volume rim
            return "rim"
        # significance: the component's interior (its deeper half), not only its tail, is well beyond
        # the threshold (sub-threshold structures such as unenhanced vessels cross it where noise adds up);
        # at the organ's edge (partial volume, beam hardening next to bone) it must be clearer still
        depth = ndimage.distance_transform_edt(np.pad(comp, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
        strength = float(np.median(contrast[depth >= 0.5 * depth.max()]))
        log.debug("strength %.1f vs threshold %.1f; d=%.1f", strength, self.threshold, diameter)
        needed = self.min_strength * (self.edge_strength if deep < 0.8 else 1.0)
        if strength < needed * self.threshold:
            return "weak"
        if _elongation(comp, spacing) > self.max_elongation:
            return "elongated"
        # compactness: the largest inscribed sphere against the equivalent sphere (1 for a ball, about
        # 0.8 for a 2:1 ellipsoid, well below 0.5 for branching or tubular structures: vessels)
        inscribed = 2.0 * float(depth.max())
        if inscribed < self.min_compactness * min(diameter, _in_plane_limit(comp, spacing)):
            return "tubular"
        # a lesion's core (its voxels deeper than half its largest depth) is about as deep through the slices
        # (partial volume included) as it is long in the slice plane; a vein lying in the plane keeps a long
        # core on one to a few slices (a thinner vessel that joins a lesion is not part of its core)
        inner = depth >= 0.5 * float(depth.max())
        length = _in_plane_length(inner, spacing)
        log.debug("core depth %.1f vs in-plane length %.1f", _in_plane_limit(inner, spacing), length)
        if _in_plane_limit(inner, spacing) < self.flatness * length:
            return "flat"
        # continuation: at half the threshold a lesion stays a closed blob, while a vessel cut by the
        # threshold goes on beyond the component's neighbourhood, about as thick as the piece found and
        # with a similar peak contrast (a lesion beside a vessel keeps its own, stronger contrast)
        if weaker is not None:
            beyond = weaker & ~dilate(comp, 0.5 * max(diameter, self.min_diameter_mm), spacing)
            if beyond.sum() >= 0.5 * comp.sum():  # more than a few voxels of noise touching the blob
                thick = _thickness(beyond, spacing)
                own = max(float(np.percentile(contrast[comp], 90)), 1e-6)
                peak = float(np.percentile(contrast[beyond], 90)) / own
                # the centres of the branches (partial volume lowers the bulk of a thinner branch's voxels)
                top = float(np.percentile(contrast[beyond], 98)) / own
                log.debug("continuation: d=%.1f inscribed=%.1f thick=%.1f peak ratio=%.2f (top %.2f)",
                          diameter, inscribed, thick, peak, top)
                # a ball is a lesion even where it touches a dark structure: a vessel piece cut by the
                # threshold is far from round (inscribed / equivalent diameter 0.5-0.6 on real CT), a lesion
                # is round (0.7-0.95); a round piece stays when it is very round or the structure beyond is
                # darker than it (a fissure, a darker vessel: not its own course)
                roundness = inscribed / max(diameter, 1e-6)
                apart = peak > self.darker and (roundness >= self.round or (
                    roundness >= BLOB_ROUND and _axes(comp, spacing) <= BLOB_AXES))
                ball = diameter >= self.ball_mm and (roundness >= self.ball or apart)
                if thick >= self.max_continuation * inscribed and peak >= self.same_contrast and not ball:
                    return "continues as a vessel"
                # a piece far from round (a trunk cut by the field of view or by the organ's mask at the
                # hilum) that goes on into branches whose centres are as bright as it is a vessel too
                if not ball and roundness < self.round and thick >= self.max_continuation * inscribed and (
                        top >= self.same_contrast):
                    return "continues as a vessel"
        return ""


SPLIT_PEAK = 3.0  # a component whose peak contrast is this many thresholds or more ...
SPLIT_LEVEL = 0.5  # ... holds a part of its own below this point between the threshold and that peak


def _split_levels(labels: np.ndarray, contrast: np.ndarray, threshold: float, depth: float, vessel_mm: float,
                  spacing: tuple[float, ...]) -> np.ndarray:
    """``labels`` with each component that joins two structures at clearly different levels split in two: a
    lesion beside a vessel much brighter (darker) than it, as in a fatty liver (-40..10 HU), where a
    metastasis (60 HU, portal phase) and the portal vein (175 HU) both pass the threshold and touch, and
    the vessel's own boundary then took the lesion's place. In a component whose peak contrast (98th
    percentile) is at least ``SPLIT_PEAK`` thresholds, the voxels below the point ``SPLIT_LEVEL`` of the
    way from the threshold to the peak that are thicker than ``vessel_mm`` (opened by it, so the brighter
    structure's partial-volume edge drops out), grown back into that lower band and reaching farther than
    a slice and half ``vessel_mm`` from the brighter part are a component of their own (each piece); the
    rest keeps the label. A single lesion's level is one: its edge is thinner
    than ``vessel_mm`` and stays with it. ``contrast`` is signed so that candidates are positive."""
    out = labels
    last = int(labels.max())
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        comp = labels[box] == i
        values = contrast[box][comp]
        peak = float(np.percentile(values, 98))
        if values.size < 8 or peak < SPLIT_PEAK * threshold:
            continue
        band = comp & (contrast[box] < threshold + SPLIT_LEVEL * (peak - threshold))
        lower = opening(band, vessel_mm / 2.0, spacing)
        if not lower.any():
            continue
        lower |= dilate(lower, depth, spacing) & band
        # a piece of its own reaches well away from the brighter structure: not its partial-volume layer
        # (on thick slices a whole slice above or below a vessel lying in the plane)
        away = _distance(comp & ~band, spacing)
        pieces, count = ndimage.label(lower)
        reach = ndimage.maximum(away, pieces, index=np.arange(1, count + 1)) if count else []
        far = max(spacing) + 0.5 * vessel_mm
        own = [j for j, value in enumerate(np.atleast_1d(reach), start=1) if value >= far]
        if not own:
            continue
        if out is labels:
            out = labels.copy()
        region = out[box]
        for j in own:
            last += 1
            region[pieces == j] = last
        log.debug("component %d split: peak %.0f, %d piece(s) at the lower level", i, peak, len(own))
    return out


FOV_DEPTH = 0.75  # a candidate whose heart (this share of its largest depth) reaches the images' edge ...
FOV_KEEP_MM = 14.0  # ... is judged undecidable unless its section there holds a disc this wide (measured as
# :func:`_thickness` does, one voxel generous: vessels cut by the real CT's last slice 6-7 mm, the phantom's
# 25 mm lesion cut by a cropped side 19.6 mm; the width below which a surface lesion is not looked for either)


def _cut_by_fov(comp: np.ndarray, box: tuple[slice, ...], shape: tuple[int, ...],
                faces: tuple[bool, ...] | None, spacing: tuple[float, ...]) -> bool:
    """Whether a candidate is cut by the field of view so that what it is cannot be told: its heart lies on
    a face of the image (the first or last slice, a cropped side). With the images taken to go on beyond
    that face as they are on it, the candidate's heart (its voxels at least ``FOV_DEPTH`` of its largest
    depth deep, connected to its deepest ones; depth: the distance to what is not candidate) reaches the
    face: it is about as thick at the edge as anywhere (a vessel crossing the edge; a ball whose centre
    lies within a quarter of its radius of the edge), while a lesion whose centre lies inside narrows
    towards the edge, even where a thinner structure it touches (a fissure) goes on beyond. The vessel
    test (continuation beyond the candidate) cannot see what lies beyond the images: a vessel cut by the
    first or last slice is a short round piece, as a lesion is (the real CT's slabs and fatty variants: a
    hepatic vein, a fat-filled fissure on the last slice).
    Unless its section on the face holds a disc of ``FOV_KEEP_MM`` (wider than the vessels cut by the
    edge), it is not reported: what lies mostly beyond the images is not judged from its edge."""
    faces = faces if faces is not None else (True,) * (2 * len(shape))
    for axis, sl in enumerate(box):
        for high in (False, True):
            edge = shape[axis] - 1 if high else 0
            if not faces[2 * axis + int(high)] or not sl.start <= edge < sl.stop:
                continue
            at = edge - sl.start
            on_face = np.take(comp, at, axis=axis)
            if not on_face.any():
                continue
            # beyond the face the candidate goes on as it is on the face (edge padding), elsewhere it ends
            extra = [(0, 0)] * comp.ndim
            extra[axis] = (0, comp.shape[axis]) if high else (comp.shape[axis], 0)
            open_face = np.pad(comp, extra, mode="edge")
            depth = _distance(~np.pad(open_face, 1), spacing)[1:-1, 1:-1, 1:-1]
            inner = tuple(slice(0, n) if a != axis or high else slice(comp.shape[axis], 2 * comp.shape[axis])
                          for a, n in enumerate(comp.shape))
            depth = depth[inner]
            largest = float(depth[comp].max())
            # its heart: the part at least ``FOV_DEPTH`` of its largest depth deep, around its deepest voxels
            pieces, _ = ndimage.label(comp & (depth >= FOV_DEPTH * largest))
            heart = np.isin(pieces, np.unique(pieces[comp & (depth >= largest)]))
            plane = tuple(spacing[a] for a in range(comp.ndim) if a != axis)
            width = 2.0 * float(ndimage.distance_transform_edt(np.pad(on_face, 1), sampling=plane).max())
            log.debug("on the field of view's edge (axis %d): depth %.1f mm, heart on the edge %s, section "
                      "%.1f mm wide", axis, largest, bool(np.take(heart, at, axis=axis).any()), width)
            if np.take(heart, at, axis=axis).any() and width < FOV_KEEP_MM:
                return True
    return False


STREAK_ELONGATION = 1.55  # in-plane axis ratio of a lesion's own boundary read as a streak (phantom: the
# band between metal and spine 1.7, lesions on the metal's slices 1.3-1.4) ...
STREAK_COSINE = 0.85  # ... when its long axis points at the metal (within about 30 degrees)


def _metal_points(image: sitk.Image, first: int, stop: int) -> np.ndarray:
    """LPS positions (mm) of the metal voxels on slices ``first``..``stop`` - 1 (none: an empty array)."""
    from dicomnode.imaging.artifacts import DEFAULT_METAL_HU, metal_threshold

    view = sitk.GetArrayViewFromImage(image)[first:stop]
    if view.size == 0 or float(view.max()) <= DEFAULT_METAL_HU:
        return np.zeros((0, 3))
    index = np.argwhere(view > metal_threshold(image)).astype(float)
    index[:, 0] += first
    if len(index) > 20000:  # positions, not a mask: a subsample of a large implant is enough
        index = index[:: len(index) // 20000 + 1]
    matrix = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    return np.asarray(image.GetOrigin()) + index[:, ::-1] @ matrix.T


def _to_index(image: sitk.Image, points: np.ndarray | None) -> np.ndarray:
    """``points`` (LPS mm) as continuous (slice, row, column) indices of ``image``."""
    if points is None or len(points) == 0:
        return np.zeros((0, 3))
    matrix = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    return (np.linalg.solve(matrix, (points - np.asarray(image.GetOrigin())).T).T)[:, ::-1]


ARC_MM = 3.0  # Gaussian sigma along arcs around the metal, on slices that hold metal
REFERENCE_MM = 10.0  # the lesion size whose contrast loss on those slices sets their threshold


def _metal_slices(organ: np.ndarray, metal: np.ndarray) -> np.ndarray:
    """Which slices :func:`_across_streaks` averages (metal on the slice and organ on it)."""
    on = np.zeros(organ.shape[0], dtype=bool)
    for k in range(organ.shape[0]):
        on[k] = bool(organ[k].any()) and bool((np.abs(metal[:, 0] - k) <= 0.5).any())
    return on


def _arc_gain(organ: np.ndarray, metal: np.ndarray, spacing: tuple[float, ...], smoothing_mm: float,
              arc_mm: float) -> float:
    """The share of its contrast a lesion of ``REFERENCE_MM`` keeps through the averaging along arcs, on the
    averaged slice with the most organ: discs ``3 × REFERENCE_MM`` apart in the organ's interior (a unit
    step, blurred in-plane like the image), the median of their centres' values after the averaging."""
    slices = np.flatnonzero(_metal_slices(organ, metal))
    if len(slices) == 0:
        return 1.0
    k = int(slices[np.argmax(organ[slices].sum(axis=(1, 2)))])
    plane = np.asarray(spacing[1:])
    radius = 0.5 * REFERENCE_MM
    interior = ndimage.distance_transform_edt(organ[k], sampling=plane) > 1.5 * REFERENCE_MM
    step = np.maximum(np.round(3.0 * REFERENCE_MM / plane).astype(int), 1)
    rows, cols = np.mgrid[0:organ.shape[1], 0:organ.shape[2]]
    centres = np.argwhere(interior & (rows % step[0] == 0) & (cols % step[1] == 0))
    if len(centres) == 0:
        return 1.0
    discs = np.zeros(organ.shape[1:], dtype=np.float32)
    for r, c in centres:
        discs[np.hypot((rows - r) * plane[0], (cols - c) * plane[1]) <= radius] = 1.0
    blurred = ndimage.gaussian_filter(discs, smoothing_mm / plane)
    here = metal[np.abs(metal[:, 0] - k) <= 0.5].copy()
    here[:, 0] = 0.0
    after = _across_streaks(blurred[None], organ[k][None], here, spacing, arc_mm)[0]
    kept = [float(after[r, c]) / max(float(blurred[r, c]), 1e-3) for r, c in centres]
    return float(np.clip(np.median(kept), 0.0, 1.0))


def _across_streaks(
    smooth: np.ndarray, organ: np.ndarray, metal: np.ndarray, spacing: tuple[float, ...], arc_mm: float
) -> np.ndarray:
    """``smooth`` with each slice that holds metal averaged along circles about the metal's centre (a
    Gaussian of ``arc_mm`` along the arc, over the organ only): streaks run radially from the metal and
    alternate bright and dark across it, so they cancel, while a lesion (round, 10 mm or more) keeps most
    of its contrast. In-plane pixels are taken as square (their mean size)."""
    out = smooth.copy()
    pixel = float(np.sqrt(spacing[1] * spacing[2]))
    ny, nx = smooth.shape[1:]
    rows, cols = np.mgrid[0:ny, 0:nx].astype(np.float32)
    for k in range(smooth.shape[0]):
        here = metal[np.abs(metal[:, 0] - k) <= 0.5]
        if len(here) == 0 or not organ[k].any():
            continue
        cy, cx = here[:, 1].mean(), here[:, 2].mean()
        radius = np.hypot(rows - cy, cols - cx)
        angle = np.mod(np.arctan2(rows - cy, cols - cx), 2 * np.pi)
        n_r = int(radius.max()) + 2
        n_t = max(int(2 * np.pi * radius.max()) + 1, 8)
        step = 2 * np.pi / n_t
        r = np.arange(n_r, dtype=np.float32)[:, None]
        t = (np.arange(n_t, dtype=np.float32) * step)[None]
        where = [cy + r * np.sin(t), cx + r * np.cos(t)]
        weight = ndimage.map_coordinates(organ[k].astype(np.float32), where, order=1, mode="constant")
        value = ndimage.map_coordinates(smooth[k] * organ[k], where, order=1, mode="constant")
        for i in range(1, n_r):
            sigma = min(arc_mm / pixel / (i * step), n_t / 4.0)
            weight[i] = ndimage.gaussian_filter1d(weight[i], sigma, mode="wrap")
            value[i] = ndimage.gaussian_filter1d(value[i], sigma, mode="wrap")
        averaged = value / np.maximum(weight, 1e-3)
        averaged = np.concatenate([averaged, averaged[:, :1]], axis=1)
        back = ndimage.map_coordinates(averaged, [radius, angle / step], order=1, mode="nearest")
        out[k] = np.where(organ[k], back, smooth[k])
    return out


def _follows_streak(
    comp: np.ndarray, box: tuple[slice, ...], metal: np.ndarray, spacing: tuple[float, ...]
) -> bool:
    """Whether a candidate on slices that hold metal is a streak: metal streaks (and the dark band between
    metal and bone) run radially from the metal, so a candidate elongated in the slice plane (its own
    boundary, without the streak pieces a lesion's threshold component picks up: axis ratio >=
    ``STREAK_ELONGATION``) whose long axis points at the metal is streak residue, not a lesion (a lesion
    is round, whatever its direction from the metal)."""
    if len(metal) == 0:
        return False
    points = np.argwhere(comp) + np.array([b.start for b in box])
    lo, hi = points[:, 0].min() - 0.5, points[:, 0].max() + 0.5
    near = metal[(metal[:, 0] >= lo) & (metal[:, 0] <= hi)]
    if len(near) == 0 or len(points) < 5:
        return False
    plane = np.asarray(spacing[1:])
    inplane = points[:, 1:] * plane
    centre = inplane.mean(axis=0)
    metal_mm = near[:, 1:] * plane
    towards = metal_mm - centre
    distance = np.hypot(towards[:, 0], towards[:, 1])
    if float(distance.min()) < 1e-6:
        return False
    w, v = np.linalg.eigh(np.cov(inplane.T))
    elongation = math.sqrt(max(float(w[-1]), 1e-9) / max(float(w[0]), 1e-9))
    cosine = float(np.max(np.abs(towards @ v[:, -1]) / distance))  # the long axis towards any metal voxel
    log.debug("streak test: elongation %.2f, cosine to the metal %.2f", elongation, cosine)
    return elongation >= STREAK_ELONGATION and cosine >= STREAK_COSINE


FAT_HU = -100.0  # fat's attenuation on CT, where no fat lies around the organ to measure it


def _fat_limit(smooth: np.ndarray, organ: np.ndarray, exclude_below: float) -> float:
    """The level below which organ voxels are fat, not organ: ``exclude_below`` (fat's upper limit), or the
    midpoint between the fat around the organ (its median below ``exclude_below``, measured in the region;
    -100 HU when there is none) and the organ's median when that is lower. A fatty liver (steatosis,
    10-25 HU) keeps its hypodense lesions (-20..-40 HU), which a fixed -30 HU limit would cut out as fat."""
    inside = smooth[organ]
    if inside.size == 0:
        return exclude_below
    centre = float(np.median(inside))  # the organ's edge (partial volume) barely moves its median
    fat_voxels = smooth[~organ & (smooth < exclude_below) & (smooth > 2.5 * FAT_HU)]
    fat = float(np.median(fat_voxels)) if fat_voxels.size >= 50 else FAT_HU
    return min(exclude_below, 0.5 * (fat + centre))


def _own_boundary(
    comp: np.ndarray, smooth: np.ndarray, surround: np.ndarray, spacing: tuple[float, ...]
) -> np.ndarray:
    """The part of a candidate component that is one lesion, bounded at half its own contrast.

    The lesion's level is the median of its deepest voxels (at least half its largest inscribed
    radius), its surround's the median of the organ tissue in a shell around it that is not itself a
    candidate. The lesion is what is beyond the midpoint of the two, connected to its deepest voxels,
    within one voxel of the component (so a partial-volume edge is neither cut nor widened): a dark or
    bright structure that joins it (a vessel, a broad darker region) at a weaker level is left out."""
    depth = ndimage.distance_transform_edt(np.pad(comp, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    deepest = depth >= 0.5 * float(depth.max())
    level = float(np.median(smooth[deepest]))
    step_mm = float(max(spacing))
    outside = ndimage.distance_transform_edt(~comp, sampling=spacing)
    shell = surround & (outside > step_mm) & (outside <= step_mm + max(4.0, 2.0 * step_mm))
    if shell.sum() < 10:
        return comp
    edge = 0.5 * (level + float(np.median(smooth[shell])))
    beyond = (smooth < edge) if level < edge else (smooth > edge)
    allowed = beyond & (outside <= step_mm)
    pieces, _ = ndimage.label(allowed)
    keep = np.unique(pieces[deepest & allowed])
    return ndimage.binary_fill_holes(np.isin(pieces, keep[keep > 0]))


def _thickness(mask: np.ndarray, spacing: tuple[float, ...]) -> float:
    """Diameter (mm) of the largest inscribed ball (twice the largest distance to the background; a
    one-voxel structure is two voxels "thick", as the measure counts to the neighbouring voxel centres)."""
    return 2.0 * float(ndimage.distance_transform_edt(mask, sampling=spacing).max())


def _in_plane_length(comp: np.ndarray, spacing: tuple[float, ...]) -> float:
    """The component's length along its major in-plane axis (4 standard deviations: a disc's diameter,
    1.15 × a line's length)."""
    points = np.argwhere(comp)[:, 1:] * np.asarray(spacing[1:])
    if len(points) < 3:
        return 0.0
    return 4.0 * math.sqrt(max(float(np.linalg.eigvalsh(np.cov(points.T))[-1]), 0.0))


def _in_plane_limit(comp: np.ndarray, spacing: tuple[float, ...]) -> float:
    """On thick slices a component's inscribed sphere is limited by its slice count: the largest
    diameter an ``n``-slice component can hold (no limit in-plane)."""
    slices = int(comp.any(axis=(1, 2)).sum())
    return max(slices * float(spacing[0]) + float(spacing[0]), 1e-6)


def _grow_box(box: tuple[slice, ...], shape: tuple[int, ...], pad: list[int]) -> tuple[slice, ...]:
    return tuple(
        slice(max(0, s.start - p), min(n, s.stop + p)) for s, n, p in zip(box, shape, pad, strict=True)
    )


def _elongation(comp: np.ndarray, spacing) -> float:  # noqa: ANN001
    points = np.argwhere(comp) * np.asarray(spacing)
    if len(points) < 5:
        return 1.0
    eig = np.sort(np.linalg.eigvalsh(np.cov(points.T)))[::-1]
    # a component flat in one axis (thick slices) has a ~0 minor axis: compare the two largest axes
    return float(math.sqrt(max(eig[0], 1e-9) / max(eig[1], 1e-9)))


def _axes(comp: np.ndarray, spacing: tuple[float, ...]) -> float:
    """The ratio of a component's longest to its shortest principal axis in 3-D, each axis's sampling
    (a voxel's extent, ``spacing² / 12``) added to its variance so that thick slices do not make a ball
    look flat: about 1 for a ball, 1.6 or more for a vessel piece."""
    points = np.argwhere(comp) * np.asarray(spacing)
    if len(points) < 5:
        return float("inf")
    eig = np.linalg.eigvalsh(np.cov(points.T) + np.diag(np.asarray(spacing, dtype=float) ** 2 / 12.0))
    return float(math.sqrt(max(eig[-1], 1e-9) / max(eig[0], 1e-9)))


def _like(array: np.ndarray, image: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray(array.astype(np.uint8))
    out.CopyInformation(image)
    return out


def _empty(image: sitk.Image) -> sitk.Image:
    out = sitk.Image(image.GetSize(), sitk.sitkUInt16)
    out.CopyInformation(image)
    return out


def describe(image: sitk.Image, labels: StepValue) -> list[Lesion]:
    """Per lesion: kind, volume, equivalent diameter, centre (LPS) and mean value (the kind and contrast
    need the organ median :func:`detect` estimated; NaN contrast for a bare label map)."""
    lab = sitk.GetArrayFromImage(image_of(labels))
    arr = sitk.GetArrayFromImage(image)
    estimates = labels.estimates if isinstance(labels, StepOutput) else {}
    median = float(estimates["organ_median"]) if "organ_median" in estimates else float("nan")  # type: ignore[arg-type]
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    out = []
    for i in range(1, int(lab.max()) + 1):
        comp = lab == i
        if not comp.any():
            continue
        vol = float(comp.sum()) * voxel_ml
        k, j, x = (float(v) for v in ndimage.center_of_mass(comp))
        centre = image.TransformContinuousIndexToPhysicalPoint((x, j, k))
        mean = float(arr[comp].mean())
        out.append(
            Lesion(
                label=i,
                kind="hypo" if mean < median else "hyper",
                volume_ml=vol,
                diameter_mm=(6.0 * vol * 1000.0 / math.pi) ** (1.0 / 3.0),
                centre_mm=tuple(float(c) for c in centre),  # type: ignore[arg-type]
                mean=mean,
                contrast=mean - median,
            )
        )
    return out
