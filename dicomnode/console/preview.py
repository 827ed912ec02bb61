"""Results preview: axial, coronal and sagittal PNG thumbnails of a processed series with the SEG's
segment outlines drawn over them, and the measurement table of the SR (TID 1500).

The source series is read from the spool (:func:`dicomnode.imaging.volume.load_series`), each segment is
placed on it by :func:`dicomnode.outputs.segmask.seg_mask`, and the planes through the largest
cross-section of all segments are drawn with matplotlib's Agg canvas (no pyplot: thread safe) with the
true aspect ratio from the voxel spacing. CT is shown in a soft-tissue window (40/400 HU); other
modalities between the 1st and 99th percentile of the image.
"""

from __future__ import annotations

import functools
import io
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from dicomnode.errors import OutputError
from dicomnode.outputs.codes import display_unit, display_value

PLANES = ("axial", "coronal", "sagittal")
SOFT_TISSUE = (40.0, 400.0)
PALETTE = ((1.0, 0.2, 0.2), (0.2, 0.8, 1.0), (1.0, 0.85, 0.1), (0.4, 1.0, 0.4), (1.0, 0.4, 1.0))
MIN_ASPECT = 0.4  # a thin stack's slice axis is stretched to at least this fraction of the width (captioned)


@dataclass(frozen=True)
class SegmentOverlay:
    number: int
    label: str
    color: tuple[float, float, float]
    voxels: int


@dataclass(frozen=True)
class Measurement:
    segment: str
    name: str
    value: float
    unit: str

    @property
    def text(self) -> str:
        """The value as people read it (18,663 not 1.866e+04)."""
        return display_value(self.value)


@dataclass(frozen=True)
class Preview:
    pngs: dict[str, bytes]
    segments: tuple[SegmentOverlay, ...]
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    stretch: dict[str, float]  # plane → factor the slice axis was stretched by (1.0 = true aspect)

    def volumes(self) -> list[Measurement]:
        """Each segment's volume from its SEG voxels (when no SR or summary gives measurements)."""
        voxel_ml = float(np.prod(self.spacing)) / 1000.0
        return [Measurement(s.label, "Volume (SEG voxels)", s.voxels * voxel_ml, "ml") for s in self.segments]


def _segment_color(item: Dataset, index: int) -> tuple[float, float, float]:
    lab = item.get("RecommendedDisplayCIELabValue")
    if lab is not None and len(lab) == 3:
        from skimage.color import lab2rgb

        values = np.array([[[lab[0] / 65535 * 100, lab[1] / 65535 * 255 - 128, lab[2] / 65535 * 255 - 128]]])
        rgb = lab2rgb(values)[0, 0]
        return (float(rgb[0]), float(rgb[1]), float(rgb[2]))
    return PALETTE[index % len(PALETTE)]


def _window(image: np.ndarray, modality: str) -> tuple[float, float]:
    if modality == "CT":
        centre, width = SOFT_TISSUE
        return centre - width / 2, centre + width / 2
    low, high = np.percentile(image, [1, 99])
    return float(low), float(high if high > low else low + 1)


def _plane(
    array: np.ndarray, masks: Sequence[np.ndarray], plane: str, union: np.ndarray
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The 2-D image and masks through the largest cross-section of ``union`` in ``plane``."""
    axis = PLANES.index(plane)
    other = tuple(a for a in range(3) if a != axis)
    areas = union.sum(axis=other)
    index = int(np.argmax(areas)) if areas.any() else array.shape[axis] // 2
    take = [slice(None)] * 3
    take[axis] = index  # type: ignore[call-overload]
    return array[tuple(take)], [m[tuple(take)] for m in masks]


def render_plane(
    image: np.ndarray, masks: Sequence[np.ndarray], colors: Sequence[tuple[float, float, float]],
    pixel: tuple[float, float], window: tuple[float, float], flip: bool, size_px: int = 256,
) -> bytes:
    """One PNG: ``image`` (rows × columns) in ``window`` with each mask's outline; ``pixel`` = (row, column)
    spacing in mm for the true aspect ratio; ``flip`` puts row 0 at the bottom (slice axis upwards)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows, cols = image.shape
    height_mm, width_mm = rows * pixel[0], cols * pixel[1]
    if flip and height_mm < MIN_ASPECT * width_mm:
        height_mm = MIN_ASPECT * width_mm
    scale = size_px / max(height_mm, width_mm)
    fig = Figure(figsize=(max(width_mm * scale, 16) / 100, max(height_mm * scale, 16) / 100), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    origin = "lower" if flip else "upper"
    extent = (0.0, width_mm, 0.0, height_mm) if flip else (0.0, width_mm, height_mm, 0.0)
    ax.imshow(image, cmap="gray", vmin=window[0], vmax=window[1], origin=origin, extent=extent,
              interpolation="bilinear", aspect="equal")
    for mask, color in zip(masks, colors, strict=True):
        if mask.any() and mask.shape[0] > 1 and mask.shape[1] > 1:
            ax.contour(mask.astype(np.float32), levels=[0.5], colors=[color], linewidths=1.2,
                       origin=origin, extent=extent)
    out = io.BytesIO()
    fig.savefig(out, format="png", facecolor="black")
    return out.getvalue()


def render_preview(series_files: Sequence[Path], seg_path: Path) -> Preview:
    """Thumbnails of the three planes with every segment of ``seg_path`` outlined."""
    from dicomnode.imaging.volume import load_series
    from dicomnode.outputs.segmask import read_seg, seg_mask

    if not series_files:
        raise OutputError("The source series of this result is no longer in the spool.")
    volume = load_series(series_files)
    seg = read_seg(seg_path)
    masks, overlays = [], []
    for index, item in enumerate(seg.SegmentSequence):
        number = int(item.SegmentNumber)
        mask = seg_mask(seg, volume.datasets, number)
        masks.append(mask)
        overlays.append(SegmentOverlay(number, str(item.get("SegmentLabel", f"Segment {number}")),
                                       _segment_color(item, index), int(mask.sum())))
    union = np.zeros(volume.shape, dtype=bool)
    for mask in masks:
        union |= mask
    window = _window(volume.array, volume.modality)
    colors = [o.color for o in overlays]
    s_slice, s_row, s_col = volume.spacing
    pixels = {"axial": ((s_row, s_col), False), "coronal": ((s_slice, s_col), True),
              "sagittal": ((s_slice, s_row), True)}
    pngs, stretch = {}, {}
    for plane in PLANES:
        image, plane_masks = _plane(volume.array, masks, plane, union)
        pixel, flip = pixels[plane]
        pngs[plane] = render_plane(image, plane_masks, colors, pixel, window, flip)
        height, width = image.shape[0] * pixel[0], image.shape[1] * pixel[1]
        stretch[plane] = max(1.0, MIN_ASPECT * width / height) if flip and height > 0 else 1.0
    return Preview(pngs, tuple(overlays), volume.shape, volume.spacing, stretch)


class PreviewCache:
    """The last ``size`` rendered previews (an LRU cache), keyed by the SEG file and its modification time,
    so a re-processed result is rendered again. One rendering at a time: the page and its three images
    arrive together and share the first one's work."""

    def __init__(self, series_files: Callable[[str, str], Sequence[Path]], size: int = 8) -> None:
        self._series_files = series_files
        self._lock = threading.Lock()
        self._render = functools.lru_cache(maxsize=size)(self._render_uncached)

    def get(self, study_uid: str, series_uid: str, seg_path: Path) -> Preview:
        with self._lock:
            return self._render(study_uid, series_uid, seg_path, seg_path.stat().st_mtime)

    def _render_uncached(self, study_uid: str, series_uid: str, seg_path: Path, mtime: float) -> Preview:
        return render_preview(self._series_files(study_uid, series_uid), seg_path)


def _code_meaning(item: Dataset, keyword: str = "ConceptNameCodeSequence") -> str:
    seq = item.get(keyword)
    return str(seq[0].CodeMeaning) if seq else ""


def _walk_groups(items: Sequence[Dataset], out: list[Measurement], segment: str = "") -> None:
    for item in items:
        kind = str(item.get("ValueType", ""))
        name = _code_meaning(item)
        if kind == "CONTAINER" and name == "Measurement Group":
            label = segment
            for child in item.get("ContentSequence", []):
                if child.get("ValueType") == "TEXT" and _code_meaning(child) == "Tracking Identifier":
                    label = str(child.TextValue)
            _walk_groups(item.get("ContentSequence", []), out, label or f"group {len(out) + 1}")
            continue
        if kind == "NUM" and segment and item.get("MeasuredValueSequence"):
            measured = item.MeasuredValueSequence[0]
            unit = _code_meaning(measured, "MeasurementUnitsCodeSequence")
            units = measured.get("MeasurementUnitsCodeSequence")
            if units:
                unit = display_unit(str(units[0].CodeValue))  # HU, ml, mm², not UCUM's [hnsf'U]
            for modifier in item.get("ContentSequence", []):  # TID 1500: quantity + Derivation (Mean, SD …)
                if modifier.get("ValueType") == "CODE" and _code_meaning(modifier) == "Derivation":
                    name = _code_meaning(modifier, "ConceptCodeSequence")
            out.append(Measurement(segment, name, float(measured.NumericValue), unit))
        if "ContentSequence" in item:
            _walk_groups(item.ContentSequence, out, segment)


def sr_measurements(sr_path: Path) -> list[Measurement]:
    """Every numeric measurement of the SR's measurement groups, labelled by tracking identifier."""
    try:
        ds = dcmread(sr_path)
    except (OSError, ValueError, InvalidDicomError) as exc:
        raise OutputError(f"Cannot read the SR '{sr_path}': {exc}") from exc
    out: list[Measurement] = []
    _walk_groups(ds.get("ContentSequence", []), out)
    return out


def summary_measurements(summary: dict[str, object]) -> list[Measurement]:
    """Measurements from a job's ``result.json`` summary (``measurements`` or ``segments``:
    ``{segment: {name: value}}``)."""
    table = summary.get("measurements") or summary.get("segments")
    out: list[Measurement] = []
    if isinstance(table, dict):
        for segment, values in table.items():
            if isinstance(values, dict):
                for name, value in values.items():
                    if isinstance(value, int | float):
                        out.append(Measurement(str(segment), str(name), float(value), ""))
    return out
