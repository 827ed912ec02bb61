"""Fallback for viewers that show neither SEG nor SR: outlines and key measurements burned into pixels.

A derived grey-scale series (same SOP class and geometry as the source, so viewers can still link it) whose
images are the source image with every segment's outline and a short measurement summary burned in at the
brightest representable value, labelled "NOT FOR DIAGNOSIS" in the pixels, the SeriesDescription and the
ImageComments, with BurnedInAnnotation YES.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from dicomnode.errors import OutputError
from dicomnode.outputs.api import ProcessedSeries, Segment
from dicomnode.outputs.derived import DerivedSpec, derived_image
from dicomnode.outputs.uids import UIDFactory

NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSIS"


@dataclass(frozen=True)
class CaptureSpec:
    series_number: int = 904
    description: str = "outlines"


def summary_lines(segments: tuple[Segment, ...], measurements: Mapping[str, Mapping[str, float]],
                  unit: str) -> list[str]:
    """One short line per segment: volume and mean intensity where known."""
    lines = [NOT_FOR_DIAGNOSIS]
    for segment in segments:
        values = measurements.get(segment.label, {})
        parts = [segment.label]
        if "volume_ml" in values:
            parts.append(f"{values['volume_ml']:.1f} mL")
        if "original_firstorder_Mean" in values:
            parts.append(f"mean {values['original_firstorder_Mean']:.0f} {unit}")
        lines.append(" ".join(parts))
    return lines


def text_mask(lines: list[str], shape: tuple[int, int]) -> np.ndarray:
    """Boolean (rows, columns) mask of ``lines`` written top-left in Pillow's default font."""
    rows, columns = shape
    size = max(10, min(rows, columns) // 32)
    font = ImageFont.load_default(size=size)
    canvas = Image.new("L", (columns, rows), 0)
    draw = ImageDraw.Draw(canvas)
    y = max(2, size // 2)
    for line in lines:
        draw.text((max(2, size // 2), y), line, fill=255, font=font)
        y += int(size * 1.3)
    return np.asarray(canvas) > 127


def outline_mask(mask: np.ndarray) -> np.ndarray:
    """In-plane boundary pixels of each slice of a (slices, rows, columns) mask."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure)


def build_capture_series(
    processed: ProcessedSeries,
    measurements: Mapping[str, Mapping[str, float]],
    uids: UIDFactory,
    spec: CaptureSpec = CaptureSpec(),
) -> list:
    """One burned-in image per source slice (pydicom datasets, ready to write)."""
    if processed.image is None:
        raise OutputError("A burned-in capture series needs the source image in the processed series.")
    image = np.asarray(processed.image, dtype=np.float64)
    sources = processed.sources
    if image.shape[0] != len(sources):
        raise OutputError(
            f"The source image has {image.shape[0]} slices but the series has {len(sources)} sources."
        )
    burn = np.zeros(image.shape, dtype=bool)
    for segment in processed.segments:
        burn |= outline_mask(np.asarray(segment.mask, dtype=bool))
    unit = "HU" if str(sources[0].get("Modality", "")) == "CT" else ""
    burn |= text_mask(summary_lines(processed.segments, measurements, unit), image.shape[1:])[None]
    burned = np.where(burn, np.inf, image)  # +inf is clipped to the brightest stored value
    pipeline = processed.provenance.pipeline
    derived_spec = DerivedSpec(
        series_description=f"{NOT_FOR_DIAGNOSIS} {pipeline} {spec.description}"[:64],
        series_number=spec.series_number,
    )
    window = processed.window
    if window is None and "WindowCenter" in sources[0]:
        centre, width = sources[0].WindowCenter, sources[0].WindowWidth
        window = (float(centre[0] if centre.VM > 1 else centre), float(width[0] if width.VM > 1 else width))
    now = dt.datetime.now()
    images = []
    for i, source in enumerate(sources):
        ds = derived_image(
            source, burned[i], i + 1, processed.provenance, uids, derived_spec, window,
            kind="capture", now=now,
        )
        ds.BurnedInAnnotation = "YES"
        ds.ImageComments = f"{NOT_FOR_DIAGNOSIS}: segmentation outlines and measurements burned in."
        ds.DerivationDescription = f"{pipeline}: outlines and measurements burned in ({NOT_FOR_DIAGNOSIS})"
        images.append(ds)
    return images
