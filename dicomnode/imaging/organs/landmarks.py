"""Anatomical landmarks of the trunk on CT, in patient coordinates: body, spine, lungs, tissue levels.

Everything here works on an array oriented to LPS (see :func:`to_lps`): index axes ``(z, y, x)``
increase towards the patient's Superior, Posterior and Left, whatever the acquisition's position
(head or feet first, supine or prone) and slice orientation — the direction cosines decide, not
the array axes. Distances are in mm; ``scale`` relates the patient's trunk depth (front to back) to an
adult's (≈ 230 mm), so that priors written for an adult shrink for a child.

:class:`Landmarks` holds, per axial slice, the vertebral body's centre line (``spine_x``) and its
anterior edge (``spine_y``), interpolated through slices where the spine is not found; the lowest
level of each lung (``lung_base_right``/``lung_base_left``, the top of the volume plus a margin
when no lung is in the field of view); and the tissue levels estimated from the histogram: the
subcutaneous fat's mode and the soft-tissue mode.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from dicomnode.errors import ImagingError
from dicomnode.imaging.morphology import erode
from dicomnode.imaging.organs.common import histogram_mode

log = logging.getLogger(__name__)

ADULT_TRUNK_DEPTH_MM = 230.0


def to_lps(image: sitk.Image) -> sitk.Image:
    """The same voxels with axes permuted/flipped so that x → Left, y → Posterior, z → Superior."""
    return sitk.DICOMOrient(image, "LPS")


@dataclass(frozen=True)
class Landmarks:
    spacing: tuple[float, float, float]  # (z, y, x) mm
    body: np.ndarray  # bool (z, y, x)
    lungs: np.ndarray  # bool, air regions judged to be lung
    bone: np.ndarray  # bool
    spine_x: np.ndarray  # per slice, mm along x (index * spacing) of the vertebral body's centre
    spine_y: np.ndarray  # per slice, mm along y of the vertebral body's anterior edge
    lung_base_right: float  # mm along z
    lung_base_left: float
    scale: float  # trunk depth / adult trunk depth, clipped to 0.45..1.3
    fat_hu: float
    tissue_hu: float
    bone_hu: float

    def grids(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable (z, y, x) coordinate arrays in mm (index × spacing)."""
        nz, ny, nx = self.body.shape
        sz, sy, sx = self.spacing
        return (
            np.arange(nz, dtype=np.float32)[:, None, None] * sz,
            np.arange(ny, dtype=np.float32)[None, :, None] * sy,
            np.arange(nx, dtype=np.float32)[None, None, :] * sx,
        )

    def relative(self) -> tuple[np.ndarray, np.ndarray]:
        """(u, v): mm left of the spine's centre line and mm posterior of the vertebral body's front."""
        _, yy, xx = self.grids()
        return xx - self.spine_x[:, None, None], yy - self.spine_y[:, None, None]


def _fill_track(values: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Interpolate a per-slice track through the slices where it was not found; median-smooth it."""
    idx = np.flatnonzero(found)
    out = np.interp(np.arange(values.size), idx, values[idx])
    if out.size >= 5:
        out = ndimage.median_filter(out, size=5, mode="nearest")
    return out


def find_landmarks(array: np.ndarray, body: np.ndarray, spacing: tuple[float, float, float]) -> Landmarks:
    """Landmarks of an LPS-oriented CT array (HU) and its body mask."""
    sz, sy, sx = spacing
    if body.sum() * float(np.prod(spacing)) < 50_000:  # 50 ml
        raise ImagingError("The body mask is (nearly) empty; no trunk to find organs in.")
    body = _trunk(array, body)
    values = array[body][:: max(1, int(body.sum()) // 2_000_000)]
    # the fat level in the outer 15 mm of the trunk (subcutaneous fat): a steatotic liver near -40 HU is
    # a larger mass in the fat's range than the visceral fat
    step = max(1, int(10.0 // sz))  # slices about 10 mm apart are enough for a level
    shell = array[::step][body[::step] & ~erode(body[::step], 15.0, spacing, slicewise=True)]
    shell = shell[(shell >= -200.0) & (shell <= -40.0)]
    fat_hu, _, _, _ = histogram_mode(shell if shell.size >= 2000 else values, -200.0, -40.0)
    tissue_hu, _, _, _ = histogram_mode(values, -30.0, 150.0)
    bone_hu = max(180.0, tissue_hu + 130.0)
    # the trunk's front-to-back depth through its centre (arms and table do not change it)
    depths = []
    for k in range(body.shape[0]):
        cols_k = np.flatnonzero(body[k].any(axis=0))
        if cols_k.size:
            depths.append(body[k, :, int(round(np.mean(np.nonzero(body[k])[1])))].sum() * sy)
    depth = float(np.percentile(depths, 75)) if depths else 0.0
    scale = float(np.clip(depth / ADULT_TRUNK_DEPTH_MM, 0.45, 1.3))

    bone = (array > bone_hu) & body
    # (arterial phase: a contrast-filled lumen brighter than the bone threshold joins the vertebra it lies
    # against and moved the spine's front onto the aorta's)
    lumens = _lumens(array, bone, spacing, scale, tissue_hu)
    if lumens.any():
        log.debug("landmarks: %d voxels of contrast-filled lumen above the bone threshold are not bone",
                  int(lumens.sum()))
        bone &= ~lumens
    nz = array.shape[0]
    spine_x = np.zeros(nz)
    spine_y = np.zeros(nz)
    found = np.zeros(nz, dtype=bool)
    xs = np.arange(array.shape[2]) * sx
    ys = np.arange(array.shape[1]) * sy
    for k in range(nz):
        cols_k = np.flatnonzero(body[k].any(axis=0))
        rows_k = np.flatnonzero(body[k].any(axis=1))
        if cols_k.size < 10 or rows_k.size < 10:
            continue
        cx = (xs[cols_k[0]] + xs[cols_k[-1]]) / 2
        cy = (ys[rows_k[0]] + ys[rows_k[-1]]) / 2
        # (a field of view cut through the trunk moves the body's centre away from the spine: search wider)
        cut = bool(body[k][:, 0].any() or body[k][:, -1].any())
        strip = np.abs(xs - cx) < (90.0 if cut else 40.0) * scale
        back = ys > cy - 0.05 * (ys[rows_k[-1]] - ys[rows_k[0]])
        b = bone[k] & strip[None, :] & back[:, None]
        if b.sum() * sx * sy < 150.0 * scale**2:  # < 1.5 cm² of bone: no vertebra on this slice
            continue
        parts, count = ndimage.label(b)
        if count > 1:  # the vertebra, not calcified plaques of the aorta in front of it
            sizes = np.bincount(parts.ravel())
            sizes[0] = 0
            b = parts == int(np.argmax(sizes))
        r, c = np.nonzero(b)
        front = float(np.percentile(ys[r], 3))
        body_part = ys[r] <= front + 30.0 * scale  # the vertebral body, not the ribs joined behind it
        spine_x[k] = float(np.median(xs[c[body_part]]))
        spine_y[k] = front
        found[k] = True
    if not found.any():
        raise ImagingError("No vertebral column found near the body's posterior midline; is this a trunk CT?")
    spine_x = _fill_track(spine_x, found)
    spine_y = _fill_track(spine_y, found)

    lungs = _lungs(array, body, spacing)
    top = (nz - 1) * sz
    xx = np.arange(array.shape[2])[None, None, :] * sx
    right = lungs & (xx < spine_x[:, None, None])
    left = lungs & (xx >= spine_x[:, None, None])
    return Landmarks(
        spacing=spacing,
        body=body,
        lungs=lungs,
        bone=bone,
        spine_x=spine_x,
        spine_y=spine_y,
        lung_base_right=_base(right, sz, sx * sy, top),
        lung_base_left=_base(left, sz, sx * sy, top),
        scale=scale,
        fat_hu=fat_hu,
        tissue_hu=tissue_hu,
        bone_hu=bone_hu,
    )


def _lumens(
    array: np.ndarray, bone: np.ndarray, spacing: tuple[float, float, float], scale: float, tissue_hu: float
) -> np.ndarray:
    """The contrast-filled vessels (the aorta in the arterial phase) among ``bone`` (the voxels above the
    bone threshold), told from bone by shape, profile and position, slice by slice: a round, thick section
    (its inscribed radius 6-16 mm, scaled, and at least two pixels; its area under 1.45 × that disc's) whose
    core is uniform (MAD ≤ 12 % of its contrast to the soft tissue) at 150-500 HU above the tissue, brightest
    in its middle (the rim of its inscribed disc not brighter than its core by over 10 % of that contrast),
    in front of the bone it is joined to (the vertebral body lies behind the aorta), and found again at the
    same place on a neighbouring slice (a vessel runs on). A vertebra's interior is not uniform (trabecular
    bone and cortex: MAD 50-120 HU on the real CT's 2 mm grid), the ribs' sections are thinner. Returns
    the voxels of those sections not brighter than their lumen (a cortex that they touch stays bone)."""
    _, sy, sx = spacing
    pixel = max(sy, sx)
    depth = max(4.0 * scale, 1.5 * pixel)  # how deep inside the section its core lies
    out = np.zeros_like(bone)
    centres: list[list[tuple[float, float, float]]] = [[] for _ in range(bone.shape[0])]
    yy = np.arange(bone.shape[1])[:, None] * sy
    xx = np.arange(bone.shape[2])[None, :] * sx
    for k in range(bone.shape[0]):
        b = bone[k]
        if b.sum() < 4:
            continue
        dist = ndimage.distance_transform_edt(b, sampling=(sy, sx))
        cores, n = ndimage.label(dist >= depth)
        for i in range(1, n + 1):
            core = cores == i
            peak = float(dist[core].max())
            if not max(6.0 * scale, 2.0 * pixel) <= peak <= 16.0 * scale or core.sum() < 5:
                continue
            r, c = np.unravel_index(int(np.argmax(np.where(core, dist, 0.0))), dist.shape)
            disc = (yy - r * sy) ** 2 + (xx - c * sx) ** 2 <= (peak + 1.5 * pixel) ** 2
            section = b & disc
            level = float(np.median(array[k][core]))
            spread = float(np.median(np.abs(array[k][core] - level)))
            if not (tissue_hu + 150.0 <= level <= tissue_hu + 500.0 and spread <= 0.12 * (level - tissue_hu)):
                continue
            if section.sum() * sy * sx > 1.45 * np.pi * peak**2:
                continue
            # (the rim of its inscribed disc: its own border, not the vertebra's cortex that it touches)
            rim = ((yy - r * sy) ** 2 + (xx - c * sx) ** 2 <= peak**2) & (dist < depth)
            if rim.any() and float(np.median(array[k][rim])) > level + 0.1 * (level - tissue_hu):
                continue
            # (the bone it is joined to lies behind it: a vertebra's body behind the aorta, not in front)
            parts, _ = ndimage.label(b)
            rest = np.isin(parts, np.unique(parts[section])) & ~disc
            if rest.sum() * sy * sx >= 50.0 * scale**2 and r * sy > np.percentile(yy[np.nonzero(rest)[0], 0],
                                                                                   3) + peak:
                continue
            lumen = section & (array[k] <= level + max(3.0 * 1.4826 * spread, 50.0))
            centres[k].append((r * sy, c * sx, peak))
            out[k] |= lumen
    # a vessel runs on: a section without one within its radius on a neighbouring slice is not kept
    if bone.shape[0] > 1:
        for k in range(bone.shape[0]):
            if not centres[k]:
                continue
            near = [
                (r1, c1)
                for j in (k - 1, k + 1) if 0 <= j < bone.shape[0]
                for r1, c1, _ in centres[j]
            ]
            keep = np.zeros_like(out[k])
            labels, _ = ndimage.label(out[k])
            for r0, c0, peak in centres[k]:
                if any(np.hypot(r0 - r1, c0 - c1) <= peak for r1, c1 in near):
                    part = labels[int(round(r0 / sy)), int(round(c0 / sx))]
                    if part:
                        keep |= labels == part
            out[k] = keep
    return out


def _trunk(array: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Per slice, the largest connected part of the body above −500 HU after a 2-voxel opening
    (the table's shells and arms apart from the trunk are dropped), holes filled."""
    out = np.zeros_like(body)
    dense = body & (array > -500.0)
    for k in range(body.shape[0]):
        part = ndimage.binary_opening(ndimage.binary_fill_holes(dense[k]), iterations=2)
        labels, n = ndimage.label(part)
        if n == 0:
            continue
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        out[k] = ndimage.binary_fill_holes(labels == int(np.argmax(sizes)))
    return out & body if out.any() else body


def _lungs(array: np.ndarray, body: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Air regions inside the body that are lung: large (≥ 150 ml) or reaching the top slice with ≥ 20 ml.
    Bowel and stomach gas is smaller or lies below."""
    air = (array < -400.0) & body
    labels, n = ndimage.label(air)
    if n == 0:
        return air
    voxel_ml = float(np.prod(spacing)) / 1000.0
    sizes = np.bincount(labels.ravel()) * voxel_ml
    sizes[0] = 0
    at_top = np.zeros(n + 1, dtype=bool)
    at_top[np.unique(labels[-1])] = True
    # a lung's voxels are mostly parenchyma (−950..−600 HU), gas in bowel is purer air
    keep = (sizes >= 150.0) | (at_top & (sizes >= 20.0))
    keep[0] = False
    return keep[labels]


def _base(lung: np.ndarray, sz: float, pixel_mm2: float, top: float) -> float:
    """The lowest level (mm along z) where this lung's cross-section reaches 10 % of its largest one
    (the costophrenic recesses below are thin); above the volume when no lung is visible."""
    areas = lung.sum(axis=(1, 2)) * pixel_mm2
    if areas.max(initial=0) < 500.0:  # < 5 cm²: no lung in the field of view
        return top + 20.0
    k = int(np.flatnonzero(areas >= 0.1 * areas.max())[0])
    return k * sz
