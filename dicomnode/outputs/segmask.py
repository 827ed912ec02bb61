"""A DICOM SEG segment as a mask on the grid of its source series (the reverse of :mod:`.seg`).

Frames are placed by their source-image references (highdicom ``get_pixels_by_source_instance``); a SEG
that carries no usable references is placed by geometry instead: each frame's ImagePositionPatient is
matched to a slice of the series (same orientation, in-plane origin and pixel grid required).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom import Dataset

from dicomnode.errors import OutputError
from dicomnode.imaging.labelmaps import frame_segment_numbers

log = logging.getLogger(__name__)

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
POSITION_TOL_MM = 0.05


def read_seg(path: Path | str) -> hd.seg.Segmentation:
    try:
        return hd.seg.segread(str(path))
    except (OSError, ValueError, AttributeError, KeyError) as exc:
        raise OutputError(f"'{path}' cannot be read as a DICOM Segmentation: {exc}") from exc


def segment_numbers(seg: hd.seg.Segmentation) -> list[int]:
    return [int(item.SegmentNumber) for item in seg.SegmentSequence]


def _check_segment(seg: hd.seg.Segmentation, number: int) -> None:
    numbers = segment_numbers(seg)
    if number not in numbers:
        labels = ", ".join(f"{item.SegmentNumber}={item.SegmentLabel!r}" for item in seg.SegmentSequence)
        raise OutputError(f"The SEG has no segment {number} (segments: {labels}).")


def mask_by_reference(seg: hd.seg.Segmentation, sources: Sequence[Dataset], number: int) -> np.ndarray:
    pixels = seg.get_pixels_by_source_instance(
        [str(ds.SOPInstanceUID) for ds in sources], segment_numbers=[number]
    )
    return np.asarray(pixels[..., 0] > 0)


def mask_by_position(seg: hd.seg.Segmentation, sources: Sequence[Dataset], number: int) -> np.ndarray:
    """Place the frames of segment ``number`` on the sources by ImagePositionPatient."""
    first = sources[0]
    orientation = np.array([float(v) for v in first.ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in sources])
    shared = seg.SharedFunctionalGroupsSequence[0]
    seg_orientation = np.array([float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient])
    if not np.allclose(seg_orientation, orientation, atol=1e-3):
        raise OutputError(
            f"SEG orientation {seg_orientation.tolist()} differs from the series' {orientation.tolist()}."
        )
    if (int(seg.Rows), int(seg.Columns)) != (int(first.Rows), int(first.Columns)):
        raise OutputError(
            f"SEG frames are {seg.Rows}x{seg.Columns}, the series images {first.Rows}x{first.Columns}."
        )
    mask = np.zeros((len(sources), int(first.Rows), int(first.Columns)), dtype=bool)
    frames = seg.pixel_array if int(seg.NumberOfFrames) > 1 else seg.pixel_array[None]
    for i, (item, frame_number) in enumerate(
        zip(seg.PerFrameFunctionalGroupsSequence, frame_segment_numbers(seg), strict=True)
    ):
        if frame_number != number:
            continue
        ipp = np.array([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
        offsets = positions - ipp
        along = offsets @ normal
        k = int(np.argmin(np.abs(along)))
        in_plane = np.linalg.norm(offsets[k] - along[k] * normal)
        if abs(along[k]) > POSITION_TOL_MM or in_plane > POSITION_TOL_MM:
            raise OutputError(f"SEG frame {i + 1} at {ipp.tolist()} lies on no slice of the series.")
        mask[k] |= frames[i] > 0
    return mask


def seg_mask(seg: hd.seg.Segmentation, sources: Sequence[Dataset], number: int) -> np.ndarray:
    """Bool (slices, rows, columns) mask of segment ``number`` on the sorted ``sources``."""
    _check_segment(seg, number)
    try:
        return mask_by_reference(seg, sources, number)
    except (KeyError, ValueError, AttributeError, IndexError, RuntimeError) as exc:
        log.info("SEG source references unusable (%s); placing frames by position instead.", exc)
    try:
        return mask_by_position(seg, sources, number)
    except (AttributeError, KeyError, IndexError) as exc:
        raise OutputError(f"The SEG cannot be placed on the series: {exc}") from exc
