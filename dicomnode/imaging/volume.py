"""A DICOM series (or NRRD/NIfTI file) as a 3-D volume with patient geometry, and the way back.

``load_series(files)`` reads single-frame CT/MR/PET/… series and enhanced (multi-frame) CT/MR objects,
sorts the slices by their position along the slice normal (``ImageOrientationPatient`` row × column —
never by ``InstanceNumber``), checks the stack is a regular grid and rescales stored values to real
units (HU for CT) as float32. It refuses, with a :class:`~dicomnode.errors.VolumeError` naming the files
and values, anything that is not one regular grid: several series, non-image objects (SEG, SR, RTSTRUCT,
…), mixed orientations/sizes/pixel spacings, gantry tilt (slice offsets not along the normal), duplicate
slice positions and missing slices (irregular spacing). The rule for duplicates is: always an error
(two images at one position cannot be told apart safely; the sender must resend a clean series).
Empty UIDs (seen in the wild) are repaired in the kept headers: SOP UIDs from the file meta, an empty
Study/Series/Frame of Reference UID by one derived deterministically from the SOP Instance UIDs.

Array layout everywhere in dicomnode: ``(slices, rows, columns)``; ``spacing`` is ``(slice, row, column)``
in mm; ``origin`` is the LPS position of voxel ``[0, 0, 0]``; ``direction`` is the 3×3 matrix (row-major,
SimpleITK convention) whose columns are the column-index, row-index and slice-index directions.

The inverse, :func:`stored_values`, turns real-unit arrays back into each source slice's stored values
(its own rescale slope/intercept, its pixel representation and bits, clipped to the representable range).
Compressed transfer syntaxes decode through pydicom's pixel handlers (pylibjpeg, openjpeg, rle).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom import Dataset
from pydicom.errors import InvalidDicomError

from dicomnode.errors import VolumeError

log = logging.getLogger(__name__)

NON_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation",
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR",
    "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR",
    "1.2.840.10008.5.1.4.1.1.481.3": "RT Structure Set",
    "1.2.840.10008.5.1.4.1.1.481.5": "RT Plan",
    "1.2.840.10008.5.1.4.1.1.11.1": "Grayscale Softcopy Presentation State",
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF",
    "1.2.840.10008.5.1.4.1.1.66": "Raw Data",
    "1.2.840.10008.5.1.4.1.1.66.1": "Spatial Registration",
}
ORIENTATION_TOL = 1e-3  # direction cosines
POSITION_TOL_MM = 0.05  # duplicate / in-plane offset tolerance
SPACING_REL_TOL = 0.1  # allowed relative deviation of one slice gap from the median gap
#: Elements larger than this (the pixel data of a slice) are read from the file only when decoded, and each
#: slice's bytes are dropped once it is in the volume: a 512x512x300 series never holds all its pixel bytes.
DEFER_BYTES = 256 * 1024


@dataclass(frozen=True)
class Volume:
    """A 3-D image in real units on a patient grid, with its sorted source headers."""

    array: np.ndarray  # float32, (slices, rows, columns), real units
    spacing: tuple[float, float, float]  # (slice, row, column) mm
    origin: tuple[float, float, float]  # LPS of voxel [0, 0, 0]
    direction: tuple[float, ...]  # 9 values, row-major (SimpleITK)
    datasets: tuple[Dataset, ...] = ()  # sorted like the slices (PixelData removed); one for multi-frame
    frames: tuple[int, ...] = ()  # for a multi-frame source: the frame index (0-based) of each slice
    modality: str = ""
    units: str = ""  # "HU" for CT

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    def to_sitk(self, array: np.ndarray | None = None):  # noqa: ANN201 - SimpleITK.Image
        """This volume (or another array on its grid, e.g. a uint8 mask) as a SimpleITK image."""
        import SimpleITK as sitk

        data = self.array if array is None else array
        if data.dtype == bool:
            data = data.astype(np.uint8)
        img = sitk.GetImageFromArray(np.ascontiguousarray(data))
        img.SetSpacing(tuple(float(s) for s in self.spacing[::-1]))
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img

    @classmethod
    def from_sitk(cls, image, modality: str = "", units: str = "") -> Volume:  # noqa: ANN001
        import SimpleITK as sitk

        if image.GetDimension() != 3:
            raise VolumeError(f"Expected a 3-D image, got {image.GetDimension()} dimensions.")
        array = sitk.GetArrayFromImage(image).astype(np.float32)
        return cls(
            array=array,
            spacing=tuple(float(s) for s in image.GetSpacing()[::-1]),  # type: ignore[arg-type]
            origin=tuple(float(o) for o in image.GetOrigin()),  # type: ignore[arg-type]
            direction=tuple(float(d) for d in image.GetDirection()),
            modality=modality,
            units=units,
        )


@dataclass(frozen=True)
class _Slice:
    dataset: Dataset
    source: str  # file name (and frame) for messages
    position: np.ndarray
    orientation: np.ndarray  # 6 cosines
    size: tuple[int, int]
    pixel_spacing: tuple[float, float]
    slope: float
    intercept: float
    frame: int  # -1 for single-frame


def read_volume(path: Path | str) -> Volume:
    """A DICOM folder, a single DICOM file, or an NRRD/NIfTI/MHA file as a :class:`Volume`."""
    p = Path(path)
    if p.is_dir():
        return load_series(sorted(f for f in p.rglob("*") if f.is_file()), skip_non_dicom=True)
    if not p.exists():
        raise VolumeError(f"Input '{p}' does not exist.")
    if p.name.lower().endswith((".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")):
        import SimpleITK as sitk

        try:
            image = sitk.ReadImage(str(p))
        except RuntimeError as exc:
            raise VolumeError(f"Cannot read image file '{p}': {str(exc).strip().splitlines()[-1]}") from exc
        return Volume.from_sitk(image)
    return load_series([p])


def load_series(files: Iterable[Path | str], *, skip_non_dicom: bool = False) -> Volume:
    """Read a series' files into a :class:`Volume` (see the module docstring for the checks)."""
    paths = [Path(f) for f in files]
    if not paths:
        raise VolumeError("No input files were given.")
    datasets: list[tuple[Path, Dataset]] = []
    for path in paths:
        try:
            datasets.append((path, pydicom.dcmread(path, defer_size=DEFER_BYTES)))
        except InvalidDicomError as exc:
            if skip_non_dicom:
                log.debug("Skipping non-DICOM file %s", path)
                continue
            raise VolumeError(f"'{path}' is not a DICOM file: {exc}.") from exc
        except (OSError, ValueError, EOFError) as exc:
            raise VolumeError(f"Cannot read DICOM file '{path}': {exc}.") from exc
    if not datasets:
        raise VolumeError(f"No DICOM files among the {len(paths)} input files (first: '{paths[0]}').")
    _check_single_image_series(datasets)
    slices: list[_Slice] = []
    for path, ds in datasets:
        slices.extend(_slices_of(path, ds))
    slices = _sort_and_check(slices)
    array = _pixels(slices)
    first = slices[0]
    normal = _normal(first.orientation)
    gaps = np.diff([float(np.dot(s.position, normal)) for s in slices])
    slice_spacing = float(np.median(gaps)) if len(gaps) else _single_slice_thickness(first.dataset)
    row_dir, col_dir = first.orientation[:3], first.orientation[3:]
    direction = np.column_stack([row_dir, col_dir, normal])
    modality = str(first.dataset.get("Modality", ""))
    multi = first.frame >= 0
    headers = (_header(first.dataset),) if multi else tuple(_header(s.dataset) for s in slices)
    _repair_uids(headers)
    return Volume(
        array=array,
        spacing=(slice_spacing, float(first.pixel_spacing[0]), float(first.pixel_spacing[1])),
        origin=tuple(float(v) for v in first.position),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in direction.ravel()),
        datasets=headers,
        frames=tuple(s.frame for s in slices) if multi else (),
        modality=modality,
        units="HU" if modality == "CT" else str(first.dataset.get("RescaleType", "")),
    )


def _sop_class(ds: Dataset) -> str:
    uid = str(ds.get("SOPClassUID", "") or "")
    if not uid and hasattr(ds, "file_meta"):
        uid = str(ds.file_meta.get("MediaStorageSOPClassUID", "") or "")
    return uid


def _check_single_image_series(datasets: Sequence[tuple[Path, Dataset]]) -> None:
    bad = [
        f"'{p.name}' ({NON_IMAGE_SOP_CLASSES.get(_sop_class(ds), _sop_class(ds) or 'no SOP class')})"
        for p, ds in datasets
        if _sop_class(ds) in NON_IMAGE_SOP_CLASSES or "PixelData" not in ds
    ]
    if bad:
        raise VolumeError(
            f"{len(bad)} of {len(datasets)} files are not images and cannot be part of a volume: "
            + ", ".join(bad[:5])
            + (" …" if len(bad) > 5 else "")
            + "."
        )
    series = Counter(str(ds.get("SeriesInstanceUID", "") or "") for _, ds in datasets)
    named = {uid: n for uid, n in series.items() if uid}
    if len(named) > 1:
        listing = ", ".join(f"'{uid}' ({n} files)" for uid, n in named.items())
        raise VolumeError(f"The input mixes {len(named)} series: {listing}; process one series at a time.")
    frames = [p.name for p, ds in datasets if int(ds.get("NumberOfFrames", 1) or 1) > 1]
    if frames and len(datasets) > 1:
        raise VolumeError(
            f"Multi-frame object '{frames[0]}' is mixed with {len(datasets) - 1} other files; "
            "a multi-frame series must be given alone."
        )


def _floats(value, n: int, what: str, source: str) -> np.ndarray:  # noqa: ANN001
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise VolumeError(f"{what} of '{source}' is not numeric: {value!r}.") from exc
    if arr.size != n:
        raise VolumeError(f"{what} of '{source}' has {arr.size} values, expected {n}: {value!r}.")
    return arr


def _slices_of(path: Path, ds: Dataset) -> list[_Slice]:
    rows, cols = int(ds.Rows), int(ds.Columns)
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise VolumeError(f"'{path.name}' has {ds.SamplesPerPixel} samples per pixel; only grey-scale works.")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if n_frames > 1 or "PerFrameFunctionalGroupsSequence" in ds:
        return _frames_of(path, ds, rows, cols)
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if keyword not in ds:
            raise VolumeError(f"'{path.name}' has no {keyword}; its geometry is unknown.")
    return [
        _Slice(
            dataset=ds,
            source=path.name,
            position=_floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", path.name),
            orientation=_floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", path.name),
            size=(rows, cols),
            pixel_spacing=tuple(_floats(ds.PixelSpacing, 2, "PixelSpacing", path.name)),  # type: ignore[arg-type]
            slope=float(ds.get("RescaleSlope", 1.0) or 1.0),
            intercept=float(ds.get("RescaleIntercept", 0.0) or 0.0),
            frame=-1,
        )
    ]


def _group(ds: Dataset, shared: Dataset | None, keyword: str) -> Dataset | None:
    for source in (ds, shared):
        if source is not None and keyword in source and len(source[keyword].value):
            return source[keyword].value[0]
    return None


def _frames_of(path: Path, ds: Dataset, rows: int, cols: int) -> list[_Slice]:
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not per_frame:
        raise VolumeError(f"Multi-frame '{path.name}' has no per-frame functional groups; geometry unknown.")
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    out = []
    for i, frame in enumerate(per_frame):
        source = f"{path.name} frame {i + 1}"
        pos = _group(frame, shared, "PlanePositionSequence")
        ori = _group(frame, shared, "PlaneOrientationSequence")
        meas = _group(frame, shared, "PixelMeasuresSequence")
        if pos is None or ori is None or meas is None:
            raise VolumeError(f"'{source}' lacks plane position, orientation or pixel measures.")
        rescale = _group(frame, shared, "PixelValueTransformationSequence")
        rescale = rescale if rescale is not None else ds
        out.append(
            _Slice(
                dataset=ds,
                source=source,
                position=_floats(pos.ImagePositionPatient, 3, "ImagePositionPatient", source),
                orientation=_floats(ori.ImageOrientationPatient, 6, "ImageOrientationPatient", source),
                size=(rows, cols),
                pixel_spacing=tuple(_floats(meas.PixelSpacing, 2, "PixelSpacing", source)),  # type: ignore[arg-type]
                slope=float(rescale.get("RescaleSlope", 1.0) or 1.0),
                intercept=float(rescale.get("RescaleIntercept", 0.0) or 0.0),
                frame=i,
            )
        )
    return out


def _normal(orientation: np.ndarray) -> np.ndarray:
    n = np.cross(orientation[:3], orientation[3:])
    norm = float(np.linalg.norm(n))
    if norm < 0.5:
        raise VolumeError(f"ImageOrientationPatient {list(orientation)} does not span a plane.")
    return n / norm


def _sort_and_check(slices: list[_Slice]) -> list[_Slice]:
    first = slices[0]
    for attr, label in (("size", "matrix size (rows, columns)"), ("pixel_spacing", "PixelSpacing")):
        values = Counter(tuple(np.round(getattr(s, attr), 4)) for s in slices)
        if len(values) > 1:
            usual = values.most_common(1)[0][0]
            odd = [s.source for s in slices if tuple(np.round(getattr(s, attr), 4)) != usual]
            raise VolumeError(
                f"The slices have {len(values)} different {label} values "
                f"({', '.join(str(tuple(float(x) for x in v)) for v in values)}); e.g. '{odd[0]}' differs."
            )
    odd = [s for s in slices if np.max(np.abs(s.orientation - first.orientation)) > ORIENTATION_TOL]
    if odd:
        raise VolumeError(
            f"Mixed orientations: '{first.source}' has ImageOrientationPatient {list(first.orientation)} "
            f"but '{odd[0].source}' has {list(odd[0].orientation)} ({len(odd)} slices differ)."
        )
    normal = _normal(first.orientation)
    ordered = sorted(slices, key=lambda s: float(np.dot(s.position, normal)))
    if len(ordered) < 2:
        return ordered
    dist = np.array([float(np.dot(s.position, normal)) for s in ordered])
    gaps = np.diff(dist)
    dupes = [(ordered[i], ordered[i + 1]) for i in np.flatnonzero(gaps < POSITION_TOL_MM)]
    if dupes:
        listing = "; ".join(
            f"'{a.source}' and '{b.source}' at {dist[ordered.index(a)]:.2f} mm" for a, b in dupes
        )
        raise VolumeError(
            f"{len(dupes)} duplicate slice position(s) along the slice normal: {listing}. "
            "Duplicates are never merged; resend the series without them."
        )
    # gantry tilt / non-orthogonal stacking: the offset between slices must lie along the normal
    offsets = np.array([b.position - a.position for a, b in zip(ordered, ordered[1:], strict=False)])
    along = offsets @ normal
    in_plane = np.linalg.norm(offsets - np.outer(along, normal), axis=1)
    if np.max(in_plane) > max(POSITION_TOL_MM, 0.01 * float(np.median(along))):
        angle = float(np.degrees(np.arctan2(np.max(in_plane), float(np.median(along)))))
        tag = first.dataset.get("GantryDetectorTilt", None)
        raise VolumeError(
            f"The slices are not stacked along their normal (gantry tilt or sheared stack of about "
            f"{angle:.1f} degrees; GantryDetectorTilt {tag!r}); tilted series are not supported."
        )
    median = float(np.median(gaps))
    bad = np.flatnonzero(np.abs(gaps - median) > SPACING_REL_TOL * median)
    if bad.size:
        listing = "; ".join(
            f"{gaps[i]:.2f} mm between '{ordered[i].source}' and '{ordered[i + 1].source}'" for i in bad[:4]
        )
        raise VolumeError(
            f"Irregular slice spacing (missing slices?): the usual gap is {median:.2f} mm but found {listing}"
            + (f" and {bad.size - 4} more" if bad.size > 4 else "")
            + "."
        )
    return ordered


def _pixels(slices: Sequence[_Slice]) -> np.ndarray:
    rows, cols = slices[0].size
    out = np.empty((len(slices), rows, cols), dtype=np.float32)
    multi: np.ndarray | None = None
    for k, s in enumerate(slices):
        try:
            if s.frame >= 0:
                if multi is None:
                    multi = s.dataset.pixel_array
                data = multi[s.frame]
            else:
                data = s.dataset.pixel_array
        except Exception as exc:  # pydicom raises many types for undecodable pixel data
            ts = s.dataset.file_meta.get("TransferSyntaxUID", "?") if hasattr(s.dataset, "file_meta") else "?"
            raise VolumeError(
                f"Cannot decode the pixel data of '{s.source}' (transfer syntax '{ts}'): {exc}"
            ) from exc
        out[k] = data.astype(np.float32) * np.float32(s.slope) + np.float32(s.intercept)
        if s.frame < 0:
            del data
            del s.dataset.PixelData  # its bytes are in the volume now; the kept header never has them
    return out


def _header(ds: Dataset) -> Dataset:
    """The dataset without its pixel data (headers are what the result writers need)."""
    if "PixelData" in ds:
        ds = ds.copy()
        del ds.PixelData
    return ds


def _repair_uids(headers: Sequence[Dataset]) -> None:
    """Fill empty SOP Class/Instance UIDs from the file meta and empty Study/Series/Frame of Reference
    UIDs with UIDs derived deterministically from the instances' SOP Instance UIDs (real-world senders
    do leave them empty; the result objects must reference something stable)."""
    from pydicom.uid import generate_uid

    for ds in headers:
        meta = getattr(ds, "file_meta", None)
        if not str(ds.get("SOPInstanceUID", "") or "") and meta is not None:
            ds.SOPInstanceUID = meta.get("MediaStorageSOPInstanceUID", "") or generate_uid()
        if not str(ds.get("SOPClassUID", "") or "") and meta is not None:
            ds.SOPClassUID = meta.get("MediaStorageSOPClassUID", "")
    sources = sorted(str(ds.SOPInstanceUID) for ds in headers)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        if any(not str(ds.get(keyword, "") or "") for ds in headers):
            present = {str(ds.get(keyword, "") or "") for ds in headers} - {""}
            uid = present.pop() if len(present) == 1 else generate_uid(entropy_srcs=[keyword, *sources])
            log.warning("The series has an empty %s; using %s.", keyword, uid)
            for ds in headers:
                setattr(ds, keyword, uid)


def _single_slice_thickness(ds: Dataset) -> float:
    return float(ds.get("SpacingBetweenSlices", None) or ds.get("SliceThickness", None) or 1.0)


def stored_values(volume: Volume, array: np.ndarray) -> list[np.ndarray]:
    """Real-unit ``array`` on ``volume``'s grid → one stored-value array per source slice.

    Uses each slice's rescale (slope/intercept), keeps its pixel representation (signed/unsigned) and
    BitsAllocated dtype, and clips to the range ``BitsStored`` can represent.
    """
    if array.shape != volume.array.shape:
        raise VolumeError(f"Array shape {array.shape} does not match the volume's {volume.array.shape}.")
    if not volume.datasets:
        raise VolumeError("The volume has no source DICOM datasets to take the stored-value encoding from.")
    out = []
    for k in range(array.shape[0]):
        ds = volume.datasets[0] if volume.frames else volume.datasets[k]
        slope, intercept = _rescale_of(ds, volume.frames[k] if volume.frames else -1)
        bits_stored = int(ds.get("BitsStored", 16))
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        half = 2 ** (bits_stored - 1)
        lo, hi = (-half, half - 1) if signed else (0, 2**bits_stored - 1)
        dtype = {8: np.int8 if signed else np.uint8, 16: np.int16 if signed else np.uint16}.get(
            int(ds.get("BitsAllocated", 16)), np.int32 if signed else np.uint32
        )
        values = np.rint((array[k].astype(np.float64) - intercept) / slope)
        out.append(np.clip(values, lo, hi).astype(dtype))
    return out


def _rescale_of(ds: Dataset, frame: int) -> tuple[float, float]:
    source: Dataset = ds
    if frame >= 0:
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        shared_seq = ds.get("SharedFunctionalGroupsSequence")
        shared = shared_seq[0] if shared_seq else None
        group = _group(per_frame[frame], shared, "PixelValueTransformationSequence")
        source = group if group is not None else ds
    return float(source.get("RescaleSlope", 1.0) or 1.0), float(source.get("RescaleIntercept", 0.0) or 0.0)


def resample_onto(image, volume: Volume, *, label: bool = True) -> np.ndarray:  # noqa: ANN001
    """A SimpleITK image (e.g. a reference label map or a mask) resampled onto ``volume``'s grid."""
    import SimpleITK as sitk

    interp = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    ref = volume.to_sitk(np.zeros(volume.shape, dtype=np.uint8))
    resampled = sitk.Resample(image, ref, sitk.Transform(), interp, 0.0, image.GetPixelID())
    return sitk.GetArrayFromImage(resampled)
