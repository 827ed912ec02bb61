"""Segmentations for evaluation: a DICOM SEG or an NRRD/NIfTI label map → named masks on one grid.

:func:`read_segmentation` returns a :class:`Segmentation`: its grid (a SimpleITK reference image) and
its segments (number → name, mask). A DICOM SEG is read with highdicom (``segread``) and each frame is
placed by its ``PlanePositionSequence`` onto the grid of the reference it is compared with (or, without
one, onto the grid its frames span). A label map's segments are its non-zero values (named by number).
:func:`evaluate` pairs segments by name (case-insensitive) or number, or by explicit ``A=B`` pairs, and
computes :func:`dicomnode.imaging.metrics.compare` for each pair on the reference grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from dicomnode.errors import ImagingError
from dicomnode.imaging.metrics import MaskComparison, compare

IMAGE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


@dataclass(frozen=True)
class Segmentation:
    grid: sitk.Image  # geometry only (uint8)
    segments: dict[int, tuple[str, np.ndarray]]  # number -> (name, bool mask (z, y, x))

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in self.grid.GetSpacing()[::-1])  # type: ignore[return-value]



def frame_segment_numbers(seg: Any) -> list[int]:
    """The segment number of each frame of a DICOM SEG. The Segment Identification Sequence is per frame,
    or — as highdicom writes it when there is a single segment — shared by every frame."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    fallback = shared.get("SegmentIdentificationSequence")
    numbers = []
    for i, frame in enumerate(seg.PerFrameFunctionalGroupsSequence, 1):
        identification = frame.get("SegmentIdentificationSequence") or fallback
        if not identification:
            raise ImagingError(f"SEG frame {i} has no Segment Identification Sequence (per frame or shared).")
        numbers.append(int(identification[0].ReferencedSegmentNumber))
    return numbers

def read_segmentation(path: Path | str, grid: sitk.Image | None = None) -> Segmentation:
    p = Path(path)
    if not p.is_file():
        raise ImagingError(f"Segmentation file '{p}' does not exist.")
    if p.name.lower().endswith(IMAGE_SUFFIXES):
        return _read_labelmap(p, grid)
    return _read_seg(p, grid)


def _read_labelmap(path: Path, grid: sitk.Image | None) -> Segmentation:
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ImagingError(f"Cannot read label map '{path}': {str(exc).strip().splitlines()[-1]}") from exc
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() != 3:
        raise ImagingError(f"'{path}' is not a 3-D scalar label map.")
    if grid is not None and not _same_grid(image, grid):
        image = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, image.GetPixelID())
    array = sitk.GetArrayFromImage(image)
    if not np.allclose(array, np.round(array)):
        raise ImagingError(f"'{path}' holds non-integer values; it is an image, not a label map.")
    labels = array.astype(np.int64)
    segments = {int(v): (str(int(v)), labels == v) for v in np.unique(labels) if v > 0}
    return Segmentation(_geometry(grid if grid is not None else image), segments)


def _read_seg(path: Path, grid: sitk.Image | None) -> Segmentation:
    import highdicom as hd
    from pydicom.errors import InvalidDicomError

    try:
        seg = hd.seg.segread(str(path))
    except (InvalidDicomError, AttributeError, ValueError, KeyError) as exc:
        raise ImagingError(f"'{path}' is not a readable DICOM Segmentation: {exc}.") from exc
    frames = seg.pixel_array
    if frames.ndim == 2:
        frames = frames[None]
    per_frame = seg.PerFrameFunctionalGroupsSequence
    shared = seg.SharedFunctionalGroupsSequence[0]
    orientation = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    spacing_rc = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    positions = np.array(
        [[float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient] for f in per_frame]
    )
    numbers = frame_segment_numbers(seg)
    if grid is None:
        grid = _grid_from_frames(orientation, spacing_rc, positions, frames.shape[1:], shared)
    size = grid.GetSize()
    if (size[1], size[0]) != frames.shape[1:]:
        raise ImagingError(
            f"The SEG's frames are {frames.shape[1]}x{frames.shape[2]} but the reference grid is "
            f"{size[1]}x{size[0]}; in-plane resampling of SEG frames is not supported."
        )
    names = {int(d.SegmentNumber): str(d.SegmentLabel) for d in seg.SegmentSequence}
    masks = {n: np.zeros(size[::-1], dtype=bool) for n in names}
    for frame, position, number in zip(frames, positions, numbers, strict=True):
        index = grid.TransformPhysicalPointToContinuousIndex(tuple(position))
        k = int(round(index[2]))
        if abs(index[2] - k) > 0.1 or abs(index[0]) > 0.5 or abs(index[1]) > 0.5 or not 0 <= k < size[2]:
            raise ImagingError(
                f"A frame of '{path.name}' at {tuple(round(v, 2) for v in position)} does not lie on a slice "
                "of the reference grid."
            )
        masks[number][k] |= frame.astype(bool)
    return Segmentation(_geometry(grid), {n: (names[n], masks[n]) for n in names})


def _grid_from_frames(orientation, spacing_rc, positions, shape, shared) -> sitk.Image:  # noqa: ANN001
    normal = np.cross(orientation[:3], orientation[3:])
    distances = positions @ normal
    unique = np.unique(np.round(distances, 3))
    if len(unique) > 1:
        step = float(np.min(np.diff(unique)))
    else:
        step = float(getattr(shared.PixelMeasuresSequence[0], "SliceThickness", 1.0) or 1.0)
    count = int(round((unique[-1] - unique[0]) / step)) + 1
    origin = positions[int(np.argmin(distances))]
    grid = sitk.Image([int(shape[1]), int(shape[0]), count], sitk.sitkUInt8)
    grid.SetSpacing((spacing_rc[1], spacing_rc[0], step))
    grid.SetOrigin(tuple(float(v) for v in origin))
    grid.SetDirection(tuple(np.column_stack([orientation[:3], orientation[3:], normal]).ravel()))
    return grid


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4)
    )


def _geometry(image: sitk.Image) -> sitk.Image:
    grid = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    grid.CopyInformation(image)
    return grid


def _lookup(seg: Segmentation, key: str) -> int:
    for number, (name, _) in seg.segments.items():
        if name.lower() == key.lower():
            return number
    if key.isdigit() and int(key) in seg.segments:
        return int(key)
    known = ", ".join(f"{n} ({name})" for n, (name, _) in sorted(seg.segments.items()))
    raise ImagingError(f"No segment '{key}' in the segmentation; it has: {known or 'none'}.")


def evaluate(
    segmentation: Path | str, reference: Path | str, pairs: dict[str, str] | None = None
) -> dict[str, MaskComparison]:
    """Metrics per matched segment, keyed by the evaluated segment's name."""
    ref = read_segmentation(reference)
    seg = read_segmentation(segmentation, grid=ref.grid)
    matched: list[tuple[int, int]] = []
    if pairs:
        matched = [(_lookup(seg, a), _lookup(ref, b)) for a, b in pairs.items()]
    else:
        ref_names = {name.lower(): n for n, (name, _) in ref.segments.items()}
        for number, (name, _) in seg.segments.items():
            if name.lower() in ref_names:
                matched.append((number, ref_names[name.lower()]))
            elif number in ref.segments and name == str(number):
                matched.append((number, number))
    if not matched:
        raise ImagingError(
            "No segment names or numbers match between the two segmentations; pair them with "
            "--match NAME=REFERENCE (e.g. --match Liver=5)."
        )
    return {
        seg.segments[a][0]: compare(seg.segments[a][1], ref.segments[b][1], ref.spacing) for a, b in matched
    }
