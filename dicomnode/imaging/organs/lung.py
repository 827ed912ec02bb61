"""Lungs on CT: air inside the body, airways removed, split into left and right.

Steps (``lung.*`` in ``lung-ct.yaml``), on the working grid (float32 HU, uint8 masks):

* ``air`` — voxels darker than an air/tissue threshold estimated by Otsu on the body's histogram
  (clamped to −1000…200 HU, so the result is typically −450…−350 HU), inside the body; components
  smaller than ``min_volume_ml`` (bowel gas) are dropped.
* ``airways`` — trachea and main bronchi: grown from the small midline air regions of the most cranial
  slices with a strict lumen threshold (−950 HU first; stricter when the growth leaks into the lung);
  dilated by ``margin_mm``. Empty when no trachea is in the field of view.
* ``split`` — lungs minus airways, split into right (label 1) and left (label 2) lungs by connected
  components, eroding step by step (up to ``max_erosion_mm``) when the lungs touch at the anterior
  junction, then growing the two seeds back over the whole lung mask (patient right = −x in LPS).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.morphology import convex_hull_image
from skimage.segmentation import watershed

from dicomnode.errors import ImagingError
from dicomnode.imaging.grid import array_of, image_like
from dicomnode.imaging.morphology import closing, dilate, erode, fill_holes, opening
from dicomnode.imaging.organs.common import physical_axes
from dicomnode.imaging.step import Estimate, StepOutput, step

log = logging.getLogger(__name__)



@step("lung.air")
def air(image: sitk.Image, body: sitk.Image, *, min_volume_ml: float = 50.0) -> StepOutput:
    """Large air-filled regions inside the body (lungs + airways), with the estimate ``air_threshold``."""
    array, spacing = array_of(image)
    inside = sitk.GetArrayFromImage(body).astype(bool)
    values = np.clip(array[inside], -1000, 200)
    if values.size < 100:
        raise ImagingError("The body mask is (nearly) empty; no lungs can be found.")
    level = float(threshold_otsu(values[:: max(1, values.size // 1_000_000)]))
    level = min(max(level, -700.0), -250.0)
    candidate = (array < level) & inside
    labels, n = ndimage.label(candidate)
    sizes = np.bincount(labels.ravel()) * float(np.prod(spacing)) / 1000.0
    sizes[0] = 0
    keep = np.flatnonzero(sizes >= min_volume_ml)
    if keep.size == 0:
        raise ImagingError(
            f"No air region of at least {min_volume_ml} ml inside the body (threshold {level:.0f} HU)."
        )
    return StepOutput(image_like(np.isin(labels, keep), image, np.uint8), {"air_threshold": level})


@step("lung.airways")
def airways(
    image: sitk.Image,
    lungs: sitk.Image,
    *,
    max_area_cm2: float = 6.0,
    midline_mm: float = 30.0,
    bronchus_mm: float = 45.0,
    lumen_hu: float = -950.0,
    margin_mm: float = 2.0,
) -> sitk.Image:
    """Trachea and main bronchi (uint8); empty when no trachea is in the cranial slices.

    The trachea is tracked slice by slice from the most cranial slice down: a small (≤ ``max_area_cm2``)
    air region near the midline, overlapping the one above, until it joins the lungs (the carina).
    The main bronchi are then grown from there through lumen-dark air (< ``lumen_hu``) within
    ``bronchus_mm`` of the carina.
    """
    array, spacing = array_of(image)
    lung = sitk.GetArrayFromImage(lungs).astype(bool)
    empty = image_like(np.zeros_like(lung), image, np.uint8)
    slices = np.flatnonzero(lung.any(axis=(1, 2)))
    if slices.size == 0:
        return empty
    x, _, z = physical_axes(image)
    xx_all = np.broadcast_to(x, lung.shape)
    lung_x = xx_all[lung]
    cx = float(lung_x.min() + lung_x.max()) / 2.0  # midline between the lungs' lateral borders
    pixel_cm2 = spacing[1] * spacing[2] / 100.0
    z_axis = np.broadcast_to(z, lung.shape)[:, 0, 0]
    order = slices[::-1] if z_axis[-1] > z_axis[0] else slices  # cranial first
    trachea = np.zeros_like(lung)
    previous: np.ndarray | None = None
    carina: int | None = None
    for k in order:
        labels, n = ndimage.label(lung[k])
        found, best = None, midline_mm
        for i in range(1, n + 1):
            comp = labels == i
            area = comp.sum() * pixel_cm2
            offset = abs(float(np.mean(xx_all[k][comp])) - cx)
            touches = previous is None or bool((comp & previous).any())
            if touches and offset < best and area <= max_area_cm2:
                found, best = comp, offset
            elif touches and previous is not None and area > max_area_cm2:
                carina = int(k)
        if found is None:
            break
        trachea[k] = found
        previous = ndimage.binary_dilation(found, iterations=2)
        if carina is not None:
            break
    if not trachea.any():
        return empty
    grown = trachea
    if carina is not None:
        # the main bronchi start at the carina: measure ``bronchus_mm`` from the lowest tracked trachea
        # slice, not from the trachea's centroid (a long trachea in the field of view put it far above)
        tracked = np.flatnonzero(trachea.any(axis=(1, 2)))
        caudal = int(tracked.min() if order[0] > order[-1] else tracked.max())
        js, is_ = np.nonzero(trachea[caudal])
        ks = np.full(js.shape, caudal)
        centre = np.array([ks.mean() * spacing[0], js.mean() * spacing[1], is_.mean() * spacing[2]])
        grid = np.ogrid[tuple(slice(0, n) for n in lung.shape)]
        near = sum((g * s - c) ** 2 for g, s, c in zip(grid, spacing, centre, strict=True)) <= bronchus_mm**2
        lumen = (((array < lumen_hu) & lung) & near) | trachea
        labels, _ = ndimage.label(lumen)
        ids = np.unique(labels[trachea])
        grown = np.isin(labels, ids[ids > 0])
    return image_like(dilate(grown, margin_mm, spacing) & lung, image, np.uint8)


@step("lung.split")
def split(
    lungs: sitk.Image,
    airway: sitk.Image | None = None,
    *,
    max_erosion_mm: float = 12.0,
    min_ratio: float = 0.15,
) -> sitk.Image:
    """Lungs without airways as a label map: 1 = right lung, 2 = left lung (uint8)."""
    spacing = tuple(lungs.GetSpacing()[::-1])
    lung = sitk.GetArrayFromImage(lungs).astype(bool)
    if airway is not None:
        lung &= ~sitk.GetArrayFromImage(airway).astype(bool)
    x, _, _ = physical_axes(lungs)
    xx = np.broadcast_to(x, lung.shape)
    markers = None
    radius = 0.0
    while radius <= max_erosion_mm:
        core = erode(lung, radius, spacing) if radius > 0 else lung
        labels, n = ndimage.label(core)
        if n >= 2:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            a, b = np.argsort(sizes)[::-1][:2]
            if sizes[b] >= min_ratio * sizes[a]:
                markers = np.zeros(lung.shape, dtype=np.int32)
                xa, xb = float(np.mean(xx[labels == a])), float(np.mean(xx[labels == b]))
                right, left = (a, b) if xa < xb else (b, a)
                markers[labels == right] = 1
                markers[labels == left] = 2
                break
        radius += max(spacing[1], 2.0)
    if markers is None:
        log.info("Lungs could not be separated by erosion; splitting at the body midline.")
        cx = float(np.median(xx[lung])) if lung.any() else 0.0
        out = np.where(lung, np.where(xx < cx, 1, 2), 0)
        return image_like(out, lungs, np.uint8)
    distance = ndimage.distance_transform_edt(lung, sampling=spacing)
    out = watershed(-distance, markers, mask=lung)
    return image_like(out, lungs, np.uint8)


def _capped(candidates: np.ndarray, lung: np.ndarray, *, edges: bool = True, share: float = 0.75,
            ) -> np.ndarray:
    """The 3-D components of ``candidates`` capped by ``lung`` above and below: at least ``share`` (3/4) of
    the voxels just above and below each component (along the slice axis) are lung. A nodule in the lung, or
    in an indentation of its pleura, is capped; the liver dome rising into a ring of lung base is not (liver
    lies below it). ``lung`` may include what lies inside the lung's outline on each slice (a broad-based
    nodule continues above and below the part of it one repair adds)."""
    labels, n = ndimage.label(candidates)
    keep = np.zeros(n + 1, dtype=bool)
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        grown = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in sl)
        part = labels[grown] == i
        caps = np.zeros_like(part)
        caps[1:] |= part[:-1]
        caps[:-1] |= part[1:]
        caps &= ~part
        # at the first and last slice the continuation is unknown: count it as capped (``edges``) or not
        edge = int(part[0].sum() if grown[0].start == 0 else 0) + int(
            part[-1].sum() if grown[0].stop >= lung.shape[0] else 0)
        faces = int(caps.sum()) + edge
        keep[i] = faces == 0 or int((caps & lung[grown]).sum()) + (edge if edges else 0) >= share * faces
    return keep[labels]


def _fill_enclosed(lung: np.ndarray) -> np.ndarray:
    """The lung with what it encloses: 3-D holes, and the capped 2-D holes of the axial slices (a nodule
    touching a vessel is a hole in its slices but not in 3-D)."""
    filled = ndimage.binary_fill_holes(lung)
    holes = fill_holes(filled, slicewise=True) & ~filled
    # on the first and last slice the continuation is unknown: a hole there (the diaphragm dome in the lung
    # base's ring on the lowest slice) must be capped by lung on the side the images show
    return filled | _capped(holes, filled, edges=False) if holes.any() else filled


def _bulges(lung: np.ndarray, allowed: np.ndarray, spacing: tuple[float, ...], depth_mm: float,
            xx: np.ndarray, yy: np.ndarray, lateral_sign: float) -> tuple[np.ndarray, np.ndarray]:
    """What indents the lung's outline on each axial slice, up to the outline's convex hull: the pleural
    line carried straight across a broad-based juxtapleural nodule or mass from where the lung meets the
    chest wall on either side of it (a rolling ball of any fixed radius fills only the part of a broad
    base narrower than itself). Only the ``allowed`` voxels (lateral to the lung's medial border), only
    indentations reaching ``depth_mm`` or more inward from the hull (the slivers along ribs and intercostal
    spaces are not indentations), and only those that face the chest wall: an indentation whose centre
    lies, seen from the slice's lung centre, within 60° of the midline direction (``lateral_sign``: the
    sign of x towards this lung's lateral side, patient coordinates ``xx``/``yy`` in mm) is the hilum, the
    heart or the mediastinum. Returns the indentations and everything between the outline and its hull
    that is ``allowed``."""
    out = np.zeros(lung.shape, dtype=bool)
    inside = np.zeros(lung.shape, dtype=bool)
    in_plane = spacing[1:]
    xs, ys = np.broadcast_to(xx, lung.shape), np.broadcast_to(yy, lung.shape)
    for k in np.flatnonzero(lung.any(axis=(1, 2))):
        hull = convex_hull_image(lung[k])
        gap = hull & ~lung[k] & allowed[k]
        inside[k] = gap
        if not gap.any():
            continue
        depth = ndimage.distance_transform_edt(hull, sampling=in_plane)
        parts, n = ndimage.label(gap)
        labelled = parts[gap]
        deepest = np.zeros(n + 1)
        np.maximum.at(deepest, labelled, depth[gap])
        count = np.maximum(np.bincount(labelled, minlength=n + 1), 1)
        cx, cy = float(xs[k][lung[k]].mean()), float(ys[k][lung[k]].mean())
        dx = (np.bincount(labelled, xs[k][gap], minlength=n + 1) / count - cx) * lateral_sign
        dy = np.bincount(labelled, ys[k][gap], minlength=n + 1) / count - cy
        medial = -dx > 0.5 * np.hypot(dx, dy)  # within 60° of the direction of the midline
        keep = (deepest >= depth_mm) & ~medial
        keep[0] = False
        out[k] = keep[parts]
    return out, inside


@step("lung.envelope")
def envelope(
    labels: sitk.Image, airway: sitk.Image | None = None, *, pleura_mm: float = 15.0, wall_mm: float = 4.0,
    bulge_mm: float = 3.0, dent_mm: float = 8.0,
) -> sitk.Image:
    """Each lung of a split label map (1 = right, 2 = left) with what lies inside its pleura: holes filled
    (vessels, intrapulmonary nodules) and the pleural surface repaired by a closing of ``pleura_mm``
    (a rolling ball: masses and consolidation that indent the air) and, on each slice, the pleural line
    carried across every indentation deeper than ``bulge_mm`` up to the lung's convex outline
    (:func:`_bulges`: a broad-based juxtapleural nodule wider than the ball). The repair never
    reaches medially past the lung's own medial border on any image row, so the hilum and the mediastinum
    stay outside — except a round dent that border makes across up to ``2 × dent_mm`` of rows
    (:func:`_medial_dents`: a nodule against the mediastinum) — and so do the trachea and main bronchi
    (``airway``) with their wall (``wall_mm``).
    Returns the same labels."""
    if pleura_mm < 0:
        raise ImagingError(f"Parameter 'pleura_mm' must not be negative, got {pleura_mm!r}.")
    lab = sitk.GetArrayFromImage(labels)
    spacing = tuple(labels.GetSpacing()[::-1])
    x, y, _ = physical_axes(labels)
    xx = np.broadcast_to(x, lab.shape)
    out = np.zeros(lab.shape, dtype=np.uint8)
    for value, medial in ((1, np.max), (2, np.min)):
        lung = lab == value
        if not lung.any():
            continue
        filled = _fill_enclosed(lung)
        closed = fill_holes(closing(filled, pleura_mm, spacing), slicewise=True) if pleura_mm > 0 else filled
        # the lung's medial border on each row (z, y): the repair stays lateral to it
        fill = -np.inf if value == 1 else np.inf
        border = medial(np.where(filled, xx, fill), axis=2, keepdims=True)
        lateral = xx <= border if value == 1 else xx >= border
        added = closed & ~filled & (lab == 0) & lateral
        if added.any():
            added = _capped(added, filled, edges=False)
        if dent_mm > 0:  # a nodule against the mediastinum: the dent it cuts into the medial border
            added |= _medial_dents(closed & ~filled & (lab == 0) & ~lateral, filled, border, xx, value == 1,
                                   spacing, dent_mm)
        if bulge_mm > 0:
            bulges, inside = _bulges(filled, lateral & (lab == 0), spacing, bulge_mm, x, y,
                                     -1.0 if value == 1 else 1.0)
            if bulges.any():
                # a nodule continues above and below the part of it that indents the outline: what lies
                # inside the outline (within the hull's sagitta over a curved chest wall) caps it too;
                # at the first and last slice the continuation is unknown (the lung base's ring around the
                # diaphragm dome is an indentation too)
                rows, cols = np.nonzero(bulges.any(axis=0))
                margin = [int(np.ceil(bulge_mm / sp)) + 1 for sp in spacing[1:]]
                near = (slice(None), slice(max(0, rows.min() - margin[0]), rows.max() + margin[0] + 1),
                        slice(max(0, cols.min() - margin[1]), cols.max() + margin[1] + 1))
                caps = dilate((filled | inside | added)[near], bulge_mm, spacing, slicewise=True)
                added[near] |= _capped(bulges[near], caps, edges=False)
        out[filled | added] = value
    if airway is not None:
        out[dilate(sitk.GetArrayFromImage(airway).astype(bool), wall_mm, spacing)] = 0
    return image_like(out, labels, np.uint8)


def _medial_dents(beyond: np.ndarray, filled: np.ndarray, border: np.ndarray, xx: np.ndarray, right: bool,
                  spacing: tuple[float, ...], dent_mm: float) -> np.ndarray:
    """The round dents a nodule against the mediastinum cuts into the lung's medial border, out of
    ``beyond`` (what the rolling ball adds medial to that border, ``border``: the medial-most patient x of
    the lung ``filled`` on each row (z, y), ``xx`` the patient x of each voxel, ``right``: the right lung,
    whose medial side is +x). On the rows through such a nodule the lung's own medial border runs along
    the nodule's lateral face, so the nodule lay outside the repair whatever its size (lung1: a 12 mm
    one 72 % outside the lung). The border is carried across each dent from the rows up to ``dent_mm``
    on either side of it (the pleural line on either side), and what the ball adds medial to the row's
    own border but lateral to the carried one is kept where lung caps 60 % of it above and below (the gaps
    between the hilum's vessels and bronchi mostly are not) and each 3-D part is round (principal axes
    within 2.5 of each other) and at most ``2 × dent_mm + 10`` mm across: a nodule's dent, not the
    branching gaps of the hilum."""
    size = 2 * int(round(dent_mm / spacing[1])) + 1
    extreme = ndimage.maximum_filter1d if right else ndimage.minimum_filter1d
    carried = extreme(border, size, axis=1, mode="nearest")
    beyond = beyond & ((xx <= carried) if right else (xx >= carried))
    if not beyond.any():
        return beyond
    # lung caps a nodule's dent above and below, but not all of it: its medial part reaches the carried
    # border, medial to the lung's own border on the slices above and below (0.71-0.79 on lung1's 12 mm
    # nodule; the hilum's gaps 0.4-0.5)
    beyond = _capped(beyond, filled, edges=False, share=0.6)
    labels, _ = ndimage.label(beyond)
    keep = np.zeros(int(labels.max()) + 1, dtype=bool)
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        part = labels[sl] == i
        extent = max((s.stop - s.start) * sp for s, sp in zip(sl, spacing, strict=True))
        keep[i] = part.sum() > 1 and extent <= 2.0 * dent_mm + 10.0 and _elongation(part, spacing) <= 2.5
        if keep[i]:
            log.debug("lung envelope: a round dent of the medial border at %s (%d voxels) is lung",
                      [s.start for s in sl], int(part.sum()))
    return keep[labels]


def _elongation(mask: np.ndarray, spacing: tuple[float, ...]) -> float:
    """Longest over shortest principal axis of a mask in mm (each voxel's own extent included)."""
    points = np.argwhere(mask) * np.asarray(spacing)
    cov = np.cov(points.T) if points.shape[0] > 1 else np.zeros((3, 3))
    eig = np.sort(np.linalg.eigvalsh(cov + np.diag(np.asarray(spacing) ** 2 / 12.0)))
    return float(np.sqrt(eig[-1] / max(eig[0], 1e-6)))


class _PlaneCoordinates:
    """Patient x and y (mm, LPS) of voxel indices (z, y, x) inside ``box`` of ``image``'s array."""

    def __init__(self, image: sitk.Image, box: tuple[slice, ...]) -> None:
        self.matrix = (np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing()))[:2]
        self.origin = np.array(image.GetOrigin())[:2]
        self.offset = np.array([s.start or 0 for s in box][::-1], dtype=float)  # (x, y, z) index offset

    def xy(self, points: np.ndarray) -> np.ndarray:
        """(n, 2) patient (x, y) of (n, 3) (z, y, x) indices."""
        return (points[:, ::-1] + self.offset) @ self.matrix.T + self.origin

    def x(self, points: np.ndarray) -> np.ndarray:
        return self.xy(points)[:, 0]

    def on_slice(self, k: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Patient x and y of every voxel of slice ``k`` (``shape``: rows, columns of the box)."""
        cols = np.arange(shape[1]) + self.offset[0]
        rows = np.arange(shape[0]) + self.offset[1]
        base = self.matrix[:, 2] * (k + self.offset[2]) + self.origin
        return tuple(np.add.outer(self.matrix[a, 1] * rows, self.matrix[a, 0] * cols) + base[a]
                     for a in range(2))


def _to_pleura(region: np.ndarray, inside: np.ndarray, values: np.ndarray, level: float,
               spacing: tuple[float, ...], plane: _PlaneCoordinates, midline: float, rim_mm: float,
               ) -> np.ndarray:
    """A lesion on the envelope's boundary carried out to the pleural line in the images' own resolution:
    the envelope (repaired on the coarse working grid) lies up to a working voxel inside the pleura, so a
    juxtapleural nodule cut at it loses its base. On each slice, the solid voxels within ``rim_mm`` of the
    lesion, outside the envelope, but inside the convex hull of the lesion and the lung beside it (the
    envelope and the air within ``rim_mm`` of it, in a window of 30 mm around the lesion: the pleural line
    carried across the lesion's base from both sides) join the lesion; never towards the midline (seen
    from that lung's centre on the slice, within 60° of it: the hilum and mediastinum)."""
    out = region.copy()
    in_plane = spacing[1:]
    side = 1.0 if float(plane.x(np.argwhere(region)).mean()) > midline else -1.0
    pad = [int(np.ceil(30.0 / sp)) for sp in in_plane]
    for k in np.flatnonzero(region.any(axis=(1, 2))):
        rr, cc = np.nonzero(region[k])
        crop = (slice(max(0, rr.min() - pad[0]), rr.max() + pad[0] + 1),
                slice(max(0, cc.min() - pad[1]), cc.max() + pad[1] + 1))
        x_k, y_k = plane.on_slice(int(k), inside[k].shape)
        lung_all = inside[k] & (side * (x_k - midline) > 0)
        if not lung_all.any():
            continue
        cx, cy = float(x_k[lung_all].mean()), float(y_k[lung_all].mean())
        lung = lung_all[crop]
        near = ndimage.distance_transform_edt(~lung, sampling=in_plane) <= rim_mm
        air = lung | ((values[k][crop] < level) & near)
        lesion = region[k][crop]
        hull = convex_hull_image(air | lesion)
        grow = (values[k][crop] > level) & hull & ~air & (
            ndimage.distance_transform_edt(~lesion, sampling=in_plane) <= rim_mm)
        if not grow.any():
            continue
        dx, dy = (x_k[crop] - cx) * side, y_k[crop] - cy
        grow &= ~(-dx > 0.5 * np.hypot(dx, dy))  # within 60° of the direction of the midline
        parts, _ = ndimage.label(grow | lesion)
        touching = np.unique(parts[lesion])
        out[k][crop] |= np.isin(parts, touching[touching > 0]) & grow
    return out


def _outline_closed(inside: np.ndarray, air: np.ndarray, radius_mm: float, spacing: tuple[float, ...],
                    reach_mm: float, plane: _PlaneCoordinates, midline: float) -> np.ndarray:
    """Each part of the lung on each axial slice carried out to the pleural line in the images' own
    resolution (the ``air`` within ``reach_mm`` of it: the envelope, repaired on the coarse working grid,
    lies up to a working voxel inside the pleura) and closed by a disc of ``radius_mm``: the notch a small
    juxtapleural or paramediastinal nodule cuts into the lung's outline (narrower than the disc) lies
    inside it, up to the pleural line across its base. Never towards the midline (seen from the part's
    centre, within 60° of the direction of the midline ``midline``, patient x in mm): the gaps between the
    vessels and bronchi of the hilum, and the mediastinum, stay outside. The parts are closed one by one,
    so the gap between the two lungs stays open."""
    out = inside.copy()
    if radius_mm <= 0:
        return out
    in_plane = (1.0, *spacing[1:])
    pad = [int(np.ceil((radius_mm + reach_mm) / s)) + 1 for s in spacing[1:]]
    for k in np.flatnonzero(inside.any(axis=(1, 2))):
        parts, _ = ndimage.label(inside[k])
        for i, sl in enumerate(ndimage.find_objects(parts), start=1):
            if sl is None:
                continue
            rows = slice(max(0, sl[0].start - pad[0]), min(inside.shape[1], sl[0].stop + pad[0]))
            cols = slice(max(0, sl[1].start - pad[1]), min(inside.shape[2], sl[1].stop + pad[1]))
            part = (parts[rows, cols] == i)[None]
            part |= dilate(part, reach_mm, in_plane, slicewise=True) & air[k][rows, cols][None]
            # padded so that the closing does not stop at the crop's edge
            padded = np.pad(part[0], [(p, p) for p in pad])[None]
            closed = closing(padded, radius_mm, in_plane, slicewise=True)[0, pad[0]:-pad[0], pad[1]:-pad[1]]
            x_k, y_k = plane.on_slice(int(k), inside[k].shape)
            x_k, y_k = x_k[rows, cols], y_k[rows, cols]
            own = parts[rows, cols] == i
            side = 1.0 if float(x_k[own].mean()) > midline else -1.0
            dx, dy = (x_k - float(x_k[own].mean())) * side, y_k - float(y_k[own].mean())
            out[k][rows, cols] |= closed & ~(-dx > 0.5 * np.hypot(dx, dy))
    return out


def _circle(points: np.ndarray) -> tuple[float, float, float, float]:
    """Least-squares circle through (n, 2) points: (centre row, centre column, radius, RMS residual)."""
    a = np.column_stack([2.0 * points, np.ones(len(points))])
    b = (points**2).sum(axis=1)
    (cr, cc, k), *_ = np.linalg.lstsq(a, b, rcond=None)
    radius = float(np.sqrt(max(k + cr**2 + cc**2, 0.0)))
    residual = float(np.sqrt(np.mean((np.hypot(points[:, 0] - cr, points[:, 1] - cc) - radius) ** 2)))
    return float(cr), float(cc), radius, residual


def _to_mediastinum(region: np.ndarray, outline: np.ndarray, values: np.ndarray, level: float,
                    spacing: tuple[float, ...], plane: _PlaneCoordinates, midline: float) -> np.ndarray:
    """A nodule against the mediastinum or the hilum completed where the lung's outline cuts it: the
    envelope stops at the lung's medial border (the hilum is never repaired), so a paramediastinal
    nodule is cut along it. On each slice where more than 15 % of the lesion's border (1.5 mm wide)
    is solid tissue outside the outline on its medial side (within 60° of the direction of ``midline``
    seen from the lesion's centre: not the chest wall behind a posterior nodule), the circle its free
    border (the part facing the lung's air) describes is fitted; where it is round (RMS residual under a
    fifth of its radius and under 1.5 mm) and no wider than the free border spans, the solid voxels
    inside that circle join the lesion, at most three times its area on the slice (a quarter of it
    visible)."""
    sp = np.asarray(spacing, dtype=float)
    out = region.copy()
    cross = ndimage.generate_binary_structure(2, 1)
    for k in np.flatnonzero(region.any(axis=(1, 2))):
        rr, cc = np.nonzero(region[k])
        extent = max(float(np.ptp(rr)) * sp[1], float(np.ptp(cc)) * sp[2])
        pad = [int(np.ceil(extent / s)) + 2 for s in sp[1:]]
        crop = (slice(max(0, rr.min() - pad[0]), rr.max() + pad[0] + 1),
                slice(max(0, cc.min() - pad[1]), cc.max() + pad[1] + 1))
        lesion, lung, val = region[k][crop], outline[k][crop], values[k][crop]
        shell = ndimage.binary_dilation(lesion, cross) & ~lesion
        # the envelope, on the coarse working grid, may stop a voxel or two short of the cut: look 1.5 mm out
        band = dilate(lesion[None], 1.5, (1.0, *sp[1:]), slicewise=True)[0] & ~lesion
        x_k, y_k = plane.on_slice(int(k), region[k].shape)
        x, y = x_k[crop], y_k[crop]
        centre_x = float(x[lesion].mean())
        side = 1.0 if centre_x > midline else -1.0
        dx, dy = (x - centre_x) * side, y - float(y[lesion].mean())
        # solid tissue outside the outline within 60° of the direction of the midline, seen from the lesion
        cut = band & ~lung & (val > level) & (-dx > 0.5 * np.hypot(dx, dy))
        log.debug("slice %d: lesion border %d, cut medially %d", k, band.sum(), cut.sum())
        if cut.sum() <= 0.15 * band.sum():
            continue
        free = ndimage.binary_dilation(shell & lung & (val < level), cross) & lesion
        points = np.argwhere(free) * sp[1:]
        if len(points) < 8:
            continue
        cr, cc_, radius, residual = _circle(points)
        span = float(np.max(np.ptp(points, axis=0)))
        log.debug("slice %d: circle radius %.1f mm, residual %.1f mm, free border spans %.1f mm", k, radius,
                  residual, span)
        if residual > min(0.2 * radius, 1.5) or 2.0 * radius > 1.2 * span + 2.0 * sp[1]:
            continue
        rows, cols = np.ogrid[0:lesion.shape[0], 0:lesion.shape[1]]
        disc = np.hypot(rows * sp[1] - cr, cols * sp[2] - cc_) <= radius
        add = disc & (val > level) & ~lesion
        log.debug("slice %d: the circle adds %d to %d voxels", k, add.sum(), lesion.sum())
        if add.sum() > 3.0 * lesion.sum():
            continue
        out[k][crop] |= add
    return out


def _subsolid(values: np.ndarray, outline: np.ndarray, solid: np.ndarray, parenchyma: float, level: float,
              spacing: tuple[float, ...], diameter_mm: float, contrast_hu: float, max_elongation: float,
              ) -> list[np.ndarray]:
    """Ground-glass nodules (pure, or part-solid: a solid core in a halo) inside the lung's outline: hazy
    lung — denser than the parenchyma by ``contrast_hu`` (lightly smoothed, 0.7 mm in the plane) — in
    blobs at least ``diameter_mm`` wide (an opening; a solid core included), at least half of it haze
    (not solid nor the solid voxels' partial-volume rim: a solid nodule or a bundle of vessels is the
    solid pass's), grown back over the hazy lung within that radius. Rejected: tubes (principal axes more
    than ``max_elongation`` apart: a vessel's partial-volume smear, dependent density along the pleura),
    blobs under a sphere of ``diameter_mm``, and blobs whose faces (above and below included) are more
    than a tenth outside the lung: the haze of a pleura, diaphragm or apex cut obliquely by the slice."""
    glass = parenchyma + contrast_hu
    if glass >= level - 50.0:
        return []
    smooth = ndimage.gaussian_filter(values, [0.0, *(0.7 / s for s in spacing[1:])])
    glassy = outline & (smooth > glass)
    hazy = glassy & ~dilate(solid, 1.5 * max(spacing[1:]), spacing, slicewise=True)
    radius = diameter_mm / 2.0
    cores, _ = ndimage.label(opening(glassy, radius, spacing))
    found = []
    for i, sl in enumerate(ndimage.find_objects(cores), start=1):
        if sl is None:
            continue
        grow = tuple(slice(max(0, s.start - int(np.ceil(radius / sp)) - 1),
                           min(dim, s.stop + int(np.ceil(radius / sp)) + 1))
                     for s, sp, dim in zip(sl, spacing, values.shape, strict=True))
        core = cores[grow] == i
        if hazy[grow][core].mean() < 0.5:
            continue  # mostly solid: a solid nodule or a bundle of vessels (the solid pass judges those)
        region = dilate(core, radius + max(spacing[1:]), spacing) & glassy[grow]
        if spacing[0] > radius:  # thick slices: the caps above and below
            caps = np.zeros_like(core)
            caps[1:] |= core[:-1]
            caps[:-1] |= core[1:]
            region |= caps & glassy[grow]
        across = (6.0 * float(region.sum()) * float(np.prod(spacing)) / np.pi) ** (1.0 / 3.0)
        if _elongation(region, spacing) > max_elongation or across < diameter_mm:
            log.debug("ground glass at %s rejected: elongated or small", [int(s.start) for s in sl])
            continue
        ring = ndimage.binary_dilation(region) & ~region  # the faces around it, above and below included
        if (ring & ~outline[grow]).sum() > 0.1 * ring.sum():
            log.debug("ground glass at %s rejected: at the lung's edge", [int(s.start) for s in sl])
            continue
        full = np.zeros(values.shape, dtype=bool)
        full[grow] = region
        found.append(full)
    return found


@dataclass(frozen=True)
class SearchLimit:
    """A region of one lung where :func:`nodules` cannot promise to find nodules of ``min_diameter_mm``:
    ``side`` (right, left), ``region`` (``slices``: the whole lung, too thick slices; ``mediastinum``: the
    band along the lung's medial border; ``surface``: the apex and the diaphragm, where the pleura runs
    across the slices), ``reason`` (one sentence for the lung's QC), ``mask`` (where, on the array the
    search ran on) and ``below_mm``: nodules under this diameter may be missed there (``inf``: any)."""

    side: str
    region: str
    reason: str
    mask: np.ndarray
    below_mm: float = math.inf


def search_limits(outline: np.ndarray, spacing: tuple[float, ...], plane: _PlaneCoordinates, midline: float,
                  min_diameter_mm: float, *, band_mm: float = 10.0, surface_mm: float = 10.0,
                  ) -> list[SearchLimit]:
    """Where the nodule search of each lung (``outline``: the envelope carried out to the pleural line, the
    only place solid is looked for) cannot see a nodule of ``min_diameter_mm``, so that 'no nodule' is not
    read as 'none there':

    * ``slices`` — slices thicker than the nodule: a nodule of diameter ``d`` centred on the boundary
      between two slices of thickness ``t`` fills each voxel of its axis only half, and at ``2 mm`` from
      its axis (the opening that keeps ``min_diameter_mm`` blobs) under half unless ``d ≥ √(t² + m²)``
      (``m`` = ``min_diameter_mm``); named where that exceeds ``m`` by 1 mm or more (3 mm slices);
    * ``mediastinum`` — within ``band_mm`` of the lung's medial border on each image row: the envelope
      never reaches medially past it (the hilum and mediastinum stay out) except across a round dent of
      it (``lung.envelope``'s ``dent_mm``: on lung1 a 12 mm nodule against the heart), so a nodule lying
      mostly outside the lung's contour there (on an oblique border, or wider) may be missed;
    * ``surface`` — within ``surface_mm`` (at least one slice) of where the lung ends above or below
      (apex, diaphragm domes, the images' first and last slice): the pleural line is carried across an
      indentation only where lung caps it above and below, so a nodule sitting on the pleura there stays
      outside the contour or merges with the dome under it, whatever its size (lung1's domes: 8, 16 and
      20 mm nodules missed, a 10 mm one found)."""
    thickness, d = float(spacing[0]), float(min_diameter_mm)
    guaranteed = float(np.hypot(thickness, d))
    n = max(1, int(np.ceil(surface_mm / thickness - 1e-6)))
    column = np.ones((2 * n + 1, 1, 1), dtype=bool)  # n slices above and below
    surface = outline & ~ndimage.binary_erosion(outline, column, border_value=0)
    limits: list[SearchLimit] = []
    for side, sign in (("right", -1.0), ("left", 1.0)):
        lung = np.zeros(outline.shape, dtype=bool)
        band = np.zeros(outline.shape, dtype=bool)
        for k in np.flatnonzero(outline.any(axis=(1, 2))):
            x_k, _ = plane.on_slice(int(k), outline[k].shape)
            lateral = sign * (x_k - midline)
            lung[k] = outline[k] & (lateral > 0)
            border = np.where(lung[k], lateral, np.inf).min(axis=1, keepdims=True)
            band[k] = lung[k] & (lateral - border <= band_mm)
        if not lung.any():
            continue
        if guaranteed >= d + 1.0:
            limits.append(SearchLimit(side, "slices", (
                f"Nodules under {guaranteed:.1f} mm across may be missed anywhere in the {side} lung: on "
                f"these {thickness:.1f} mm slices a nodule lying across two slices is averaged with the lung "
                "around it and reads below the solid threshold."), lung, guaranteed))
        if band.any():
            limits.append(SearchLimit(side, "mediastinum", (
                f"Against the mediastinum and hilum (within {band_mm:.0f} mm of the {side} lung's medial "
                "border) nodules are looked for only inside the lung's contour: one is found only where at "
                f"least {d:.0f} mm of it bulges into the lung; one lying mostly outside the contour may be "
                "missed, whatever its size."), band))
        on_surface = surface & lung
        if on_surface.any():
            limits.append(SearchLimit(side, "surface", (
                f"At the apex and over the diaphragm (within {n * thickness:.0f} mm of where the {side} lung "
                "ends above or below, or of the images' first or last slice) nodules are looked for only "
                "where lung surrounds them on the slices above and below: one sitting on the diaphragm or "
                "against the apex may be missed, whatever its size."), on_surface))
    return limits


@dataclass(frozen=True)
class _SearchSpace:
    """Where :func:`nodules` looks, on the box around the envelope: the envelope (``inside``), the image
    (``values``), the parenchyma's mode and the solid threshold, patient coordinates, the midline between
    the lungs and the lung's outline carried out to the pleural line (``outline``)."""

    spacing: tuple[float, ...]
    box: tuple[slice, ...]
    lo: np.ndarray
    inside: np.ndarray
    values: np.ndarray
    parenchyma: float
    level: float
    plane: _PlaneCoordinates
    midline: float
    outline: np.ndarray


def _search_space(image: sitk.Image, lungs: sitk.Image, *, soft_tissue_hu: float, rim_mm: float,
                  outline_mm: float) -> _SearchSpace | None:
    array, spacing = array_of(image)
    envelope_mask = sitk.GetArrayFromImage(lungs) > 0
    if not envelope_mask.any():
        return None
    idx = np.argwhere(envelope_mask)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    # room around the envelope for its outline carried out to the pleural line
    margin = [0, *(int(np.ceil(rim_mm / sp)) + 1 for sp in spacing[1:])]
    lo, hi = np.maximum(lo - margin, 0), np.minimum(hi + margin, envelope_mask.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    inside, values = envelope_mask[box], array[box]
    air = values[inside & (values < -500)]
    if air.size < 100:
        return None
    hist, edges = np.histogram(air, bins=np.arange(-1000, -496, 4))
    parenchyma = float(edges[int(np.argmax(ndimage.gaussian_filter1d(hist.astype(float), 2)))] + 2)
    level = min(max((parenchyma + soft_tissue_hu) / 2.0, -600.0), -250.0)
    plane = _PlaneCoordinates(image, box)
    lung_x = plane.x(np.argwhere(inside))
    midline = float(lung_x.min() + lung_x.max()) / 2.0
    outline = _outline_closed(inside, values < level, outline_mm, spacing, rim_mm, plane, midline)
    return _SearchSpace(spacing, box, lo, inside, values, parenchyma, level, plane, midline, outline)


def nodule_search_limits(image: sitk.Image, lungs: sitk.Image, *, min_diameter_mm: float = 4.0,
                         soft_tissue_hu: float = 40.0, rim_mm: float = 3.0, outline_mm: float = 5.0,
                         reach_mm: float = 10.0) -> list[SearchLimit]:
    """:func:`search_limits` of the search :func:`nodules` runs with these parameters, each mask on the
    whole image's array and widened, on each slice, by what lies within ``reach_mm`` of it outside the
    lung's contour on the same side of the midline (a nodule the search missed there lies partly or
    wholly outside the contour: against the mediastinum, on the apex or the dome)."""
    space = _search_space(image, lungs, soft_tissue_hu=soft_tissue_hu, rim_mm=rim_mm, outline_mm=outline_mm)
    if space is None:
        return []
    shape = space.outline.shape
    x = np.stack([space.plane.on_slice(k, shape[1:])[0] for k in range(shape[0])])
    limits = []
    for limit in search_limits(space.outline, space.spacing, space.plane, space.midline, min_diameter_mm):
        sign = -1.0 if limit.side == "right" else 1.0
        near = dilate(limit.mask, reach_mm, space.spacing, slicewise=True) & ~space.outline
        full = np.zeros(lungs.GetSize()[::-1], dtype=bool)
        full[space.box] = limit.mask | (near & (sign * (x - space.midline) > 0))
        limits.append(replace(limit, mask=full))
    return limits


def _half_way(region: np.ndarray, values: np.ndarray, outline: np.ndarray, parenchyma: float,
              spacing: tuple[float, ...], reach_mm: float = 1.5) -> np.ndarray:
    """A ground-glass or part-solid lesion's border drawn half way between the lung's parenchyma and the
    lesion's own median (its half-maximum contour; the haze threshold, 250 HU above the parenchyma, lies
    inside it: a voxel half filled by a −480 HU nodule reads about −680 HU): the voxels of the lung's outline
    within ``reach_mm`` of it in the plane, denser than that, join it."""
    idx = np.argwhere(region)
    pad = [0, *(int(np.ceil(reach_mm / sp)) + 1 for sp in spacing[1:])]
    box = tuple(slice(max(0, int(a) - p), int(b) + p + 1) for a, b, p in zip(idx.min(axis=0), idx.max(axis=0),
                                                                          pad, strict=True))
    part = region[box]
    edge = (parenchyma + float(np.median(values[box][part]))) / 2.0
    ring = dilate(part, reach_mm, spacing, slicewise=True) & ~part & outline[box] & (values[box] > edge)
    out = region.copy()
    out[box] |= ring
    return out


def _round_candidate(region: np.ndarray, spacing: tuple[float, ...], diameter_mm: float) -> bool:
    """Whether a dropped blob looked like a nodule of ``diameter_mm`` or more: that equivalent diameter,
    principal axes within 2 of each other."""
    across = (6.0 * float(region.sum()) * float(np.prod(spacing)) / np.pi) ** (1.0 / 3.0)
    return across >= diameter_mm and _elongation(region, spacing) <= 2.0


def _doubt(image: sitk.Image, lo: np.ndarray, why: str, where: tuple[slice, ...], region: np.ndarray,
           spacing: tuple[float, ...], limit: SearchLimit) -> str:
    """One sentence naming a round candidate the search dropped in ``limit``'s region."""
    across = (6.0 * float(region.sum()) * float(np.prod(spacing)) / np.pi) ** (1.0 / 3.0)
    centre = np.argwhere(region).mean(axis=0) + [s.start for s in where] + lo  # (z, y, x) index
    x, y, z = image.TransformContinuousIndexToPhysicalPoint([float(c) for c in centre[::-1]])
    what = {"vessel": "a cut through a vessel", "faint": "partial volume", "ring": "a bronchial wall",
            "airway": "a bronchial wall"}[why]
    return (f"A round {across:.0f} mm candidate at ({x:.0f}, {y:.0f}, {z:.0f}) mm in the {limit.region} "
            f"region of the {limit.side} lung was dropped as {what}: a nodule there is not ruled out.")


@step("lung.nodules")
def nodules(
    image: sitk.Image,
    lungs: sitk.Image,
    *,
    min_diameter_mm: float = 4.0,
    max_elongation: float = 3.0,
    soft_tissue_hu: float = 40.0,
    lumen_hu: float = -980.0,
    rim_mm: float = 3.0,
    outline_mm: float = 5.0,
    ground_glass_mm: float = 0.0,
    ground_glass_hu: float = 250.0,
    doubt_mm: float = 10.0,
) -> StepOutput:
    """Nodules and masses inside the lung envelope as a label map (1, 2, … by decreasing volume).

    Solid is what is denser than halfway between the lungs' own parenchyma (its histogram mode) and soft
    tissue. An opening of ``min_diameter_mm / 2`` keeps the blobs at least that wide and cuts off the
    thinner vessels; each surviving blob is grown back over the solid voxels within that radius (and, on
    slices thicker than that, over those just above and below it: a nodule's caps). A blob
    smaller than a sphere of ``min_diameter_mm``, with a largest cross-section under that disc (and under
    4 voxels: the resolution limit), or lying only on the envelope's one-voxel rim, is not reported.
    Vessels that survive (thick, near the hilum) are tubes: a blob whose longest axis exceeds
    ``max_elongation`` × its shortest (principal axes in mm, voxel extent included) is rejected. A blob
    that is a small part of a larger solid tree (a cut through a vessel, or a nodule on one) must be twice
    ``min_diameter_mm`` wide, and every blob must reach near soft-tissue density (its 90th percentile
    within 140 HU of ``soft_tissue_hu``) — partial-volume cuts of vessels on thick slices do not. A blob
    that is mostly a wall around enclosed air, or whose 3 mm surroundings are more than 5 % airway lumen
    (darker than ``lumen_hu``; parenchyma never is), is a bronchus not removed as airway: rejected too.
    A blob on the envelope's edge is carried out to the pleural line in the images' resolution
    (:func:`_to_pleura`, within ``rim_mm``).

    Estimates: ``limit_<side>_<region>`` (:func:`search_limits`: where the search cannot promise a nodule)
    and ``doubt_<side>_<region>``: the round candidates of ``doubt_mm`` or more (equivalent diameter;
    principal axes within 2) dropped in such a region (as a vessel cut, a bronchial wall, partial
    volume), each named with its size, position and why — the concrete reason for the lung's QC to warn
    that the region may hide a nodule."""
    empty = StepOutput(image_like(np.zeros(lungs.GetSize()[::-1]), image, np.uint8), {"nodules": 0})
    space = _search_space(image, lungs, soft_tissue_hu=soft_tissue_hu, rim_mm=rim_mm, outline_mm=outline_mm)
    if space is None:
        return empty
    spacing, box, lo, inside, values = space.spacing, space.box, space.lo, space.inside, space.values
    parenchyma, level, plane, midline, outline = (space.parenchyma, space.level, space.plane, space.midline,
                                                  space.outline)
    solid = outline & (values > level)
    radius = min_diameter_mm / 2.0
    core = opening(solid, radius, spacing)
    labels, n = ndimage.label(core)
    # a blob must reach more than one in-plane voxel inside the envelope (not the partial-volume rim)
    deep = erode(outline, 1.01 * max(spacing[1], spacing[2]), spacing)
    trees, _ = ndimage.label(solid)  # vessel trees: what the solid voxels connect to
    tree_sizes = np.bincount(trees.ravel())
    thick = opening(core, 2.0 * radius, spacing)  # blobs twice as wide: a nodule on a vessel
    out = np.zeros(inside.shape, dtype=np.int32)
    found: list[tuple[float, np.ndarray, bool]] = []
    rejected = {"elongated": 0, "small": 0, "ring": 0, "airway": 0, "faint": 0, "vessel": 0}
    dropped: list[tuple[str, tuple[slice, ...], np.ndarray]] = []  # (why, where, what) once past "small"
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        at = [int(s.start + o) for s, o in zip(sl, lo, strict=True)]  # where (voxel index), for the log
        grow = tuple(slice(max(0, s.start - int(np.ceil(radius / sp)) - 1),
                           min(dim, s.stop + int(np.ceil(radius / sp)) + 1))
                     for s, sp, dim in zip(sl, spacing, inside.shape, strict=True))
        blob = labels[grow] == i
        reach = dilate(blob, radius + max(spacing[1], spacing[2]), spacing)
        if spacing[0] > radius + max(spacing[1], spacing[2]):  # thick slices: the caps above and below
            reach[1:] |= blob[:-1]
            reach[:-1] |= blob[1:]
        region = solid[grow] & reach
        if max(_elongation(blob, spacing), _elongation(region, spacing)) > max_elongation:
            rejected["elongated"] += 1
            log.debug("lung blob at %s rejected: elongated", at)
            continue
        volume = float(region.sum()) * float(np.prod(spacing))
        widest = float(region.sum(axis=(1, 2)).max())  # voxels of its largest axial cross-section
        if (6.0 * volume / np.pi) ** (1.0 / 3.0) < min_diameter_mm or widest < max(
                4.0, np.pi * radius**2 / (spacing[1] * spacing[2])) or not deep[grow][blob].any():
            rejected["small"] += 1
            log.debug("lung blob at %s rejected: small", at)
            continue
        hollow = fill_holes(region, slicewise=True)
        if region.sum() < 0.6 * hollow.sum():
            # a wall around air: a bronchus (a cavity's wall is thicker)
            rejected["ring"] += 1
            dropped.append(("ring", grow, region))
            log.debug("lung blob at %s rejected: ring", at)
            continue
        shell = dilate(region, 3.0, spacing) & ~region
        if np.mean(values[grow][shell] < lumen_hu) > 0.05:
            # beside an airway lumen (darker than any parenchyma): a bronchial wall
            rejected["airway"] += 1
            dropped.append(("airway", grow, region))
            log.debug("lung blob at %s rejected: airway", at)
            continue
        if float(np.percentile(values[grow][region], 90)) < soft_tissue_hu - 140.0:
            # no voxel near soft-tissue density: partial volume of a vessel or scar
            rejected["faint"] += 1
            dropped.append(("faint", grow, region))
            log.debug("lung blob at %s rejected: faint", at)
            continue
        tree_size = int(tree_sizes[np.unique(trees[grow][region])].sum())
        if region.sum() < 0.5 * tree_size and not thick[grow][blob].any():
            # a cut through a vessel tree no wider than the tree's vessels
            rejected["vessel"] += 1
            dropped.append(("vessel", grow, region))
            log.debug("lung blob at %s rejected: vessel", at)
            continue
        full = np.zeros(inside.shape, dtype=bool)
        full[grow] = region
        in_slice = np.zeros((3, 3, 3), dtype=bool)
        in_slice[1] = True
        on_pleura = bool((ndimage.binary_dilation(region, in_slice) & ~inside[grow]).any())
        found.append((volume, full, on_pleura))
    if rim_mm > 0 and any(on_pleura for _, _, on_pleura in found):
        found = [(v, _to_pleura(full, inside, values, level, spacing, plane, midline, rim_mm)
                  if on_pleura else full, on_pleura) for v, full, on_pleura in found]
        found = [(float(full.sum()) * float(np.prod(spacing)), full, on) for _, full, on in found]
    if any(on_pleura for _, _, on_pleura in found):
        found = [(v, _to_mediastinum(full, outline, values, level, spacing, plane, midline)
                  if on else full, on) for v, full, on in found]
        found = [(float(full.sum()) * float(np.prod(spacing)), full, on) for _, full, on in found]
    if ground_glass_mm > 0:
        for haze in _subsolid(values, outline, solid, parenchyma, level, spacing, ground_glass_mm,
                              ground_glass_hu, max_elongation):
            # a part-solid nodule: its solid core and its halo are one lesion
            cores = [j for j, (_, full, _) in enumerate(found) if (full & haze).any()]
            merged = _half_way(np.logical_or.reduce([haze, *(found[j][1] for j in cores)]), values, outline,
                               parenchyma, spacing)
            found = [f for j, f in enumerate(found) if j not in cores]
            found.append((float(merged.sum()) * float(np.prod(spacing)), merged, False))
    for n_, (_, full, _) in enumerate(sorted(found, key=lambda f: -f[0]), start=1):
        out[full & (out == 0)] = n_
    result = np.zeros(lungs.GetSize()[::-1], dtype=np.uint8)
    result[box] = np.minimum(out, 255)
    log.info("lung nodules: %d found (solid above %.0f HU; rejected %s)", len(found), level, rejected)
    count = len(found)
    del labels, trees, core, thick, deep, solid, found, out
    estimates: dict[str, Estimate] = {"solid_threshold": level, "nodules": count, "rejected": rejected}
    for limit in search_limits(outline, spacing, plane, midline, min_diameter_mm):
        estimates[f"limit_{limit.side}_{limit.region}"] = limit.reason
        if limit.region == "slices":
            continue
        doubts = [_doubt(image, lo, why, where, region, spacing, limit) for why, where, region in dropped
                  if _round_candidate(region, spacing, doubt_mm) and limit.mask[where][region].mean() >= 0.5]
        if doubts:
            estimates[f"doubt_{limit.side}_{limit.region}"] = " ".join(doubts)
    return StepOutput(image_like(result, image, np.uint8), estimates)

