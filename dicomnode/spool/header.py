"""The few header attributes the node needs from an instance, read without touching pixel data.

:func:`parse_dataset` reads an encoded dataset (as received on the wire, no file meta) in the given
transfer syntax and stops before ``PixelData``; :func:`read_header` does the same for a Part 10 file.
Pixel data is never decoded here; compressed pixel data is never even read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag

from dicomnode.errors import SpoolError

_PIXEL_DATA = Tag(0x7FE0, 0x0010)


class HeaderError(SpoolError):
    """The payload is not a readable DICOM dataset."""


@dataclass(frozen=True)
class InstanceHeader:
    """Identifiers and geometry hints of one instance (what the index and the assembler need)."""

    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    patient_id: str = ""
    patient_name: str = ""
    modality: str = ""
    study_date: str = ""
    series_number: int | None = None
    instance_number: int | None = None
    acquisition_number: int | None = None
    images_in_acquisition: int | None = None
    number_of_slices: int | None = None
    slice_position: float | None = None  # ImagePositionPatient projected on the slice normal (mm)


def _stop_at_pixels(tag: object, vr: object, length: int) -> bool:
    return tag == _PIXEL_DATA or (isinstance(tag, int) and tag >= 0x7FE00000)


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _slice_position(ds: Dataset) -> float | None:
    try:
        position = [float(v) for v in ds.ImagePositionPatient]
        o = [float(v) for v in ds.ImageOrientationPatient]
    except (AttributeError, TypeError, ValueError):
        return None
    if len(position) != 3 or len(o) != 6:
        return None
    normal = (o[1] * o[5] - o[2] * o[4], o[2] * o[3] - o[0] * o[5], o[0] * o[4] - o[1] * o[3])
    return sum(p * n for p, n in zip(position, normal, strict=True))


def check_complete(encoded: bytes | memoryview, transfer_syntax: str) -> None:
    """Raise :class:`HeaderError` unless every element of the encoded dataset is complete."""
    from dicomnode.spool.walker import DatasetWalker  # the walker builds on this module

    walker = DatasetWalker(transfer_syntax)
    walker.feed(encoded)
    walker.finish()


def header_from_dataset(
    ds: Dataset, *, sop_instance_uid: str = "", sop_class_uid: str = ""
) -> InstanceHeader:
    """Build the header; the command's SOP UIDs fill in for empty dataset values (see README)."""
    return InstanceHeader(
        sop_instance_uid=str(ds.get("SOPInstanceUID", "") or sop_instance_uid).strip(),
        sop_class_uid=str(ds.get("SOPClassUID", "") or sop_class_uid).strip(),
        study_uid=str(ds.get("StudyInstanceUID", "") or "").strip(),
        series_uid=str(ds.get("SeriesInstanceUID", "") or "").strip(),
        patient_id=str(ds.get("PatientID", "") or ""),
        patient_name=str(ds.get("PatientName", "") or ""),
        modality=str(ds.get("Modality", "") or ""),
        study_date=str(ds.get("StudyDate", "") or ""),
        series_number=_int(ds, "SeriesNumber"),
        instance_number=_int(ds, "InstanceNumber"),
        acquisition_number=_int(ds, "AcquisitionNumber"),
        images_in_acquisition=_int(ds, "ImagesInAcquisition"),
        number_of_slices=_int(ds, "NumberOfSlices"),
        slice_position=_slice_position(ds),
    )


def parse_dataset(
    encoded: bytes | memoryview, transfer_syntax: str, *, sop_instance_uid: str = "", sop_class_uid: str = ""
) -> InstanceHeader:
    """Parse the header of an encoded dataset (no file meta) received in ``transfer_syntax``.

    The whole dataset is walked (see :mod:`dicomnode.spool.walker`): an incomplete one is refused too.
    """
    from dicomnode.spool.walker import DatasetWalker

    walker = DatasetWalker(transfer_syntax)
    walker.feed(encoded)
    return walker.finish(sop_instance_uid=sop_instance_uid, sop_class_uid=sop_class_uid)


def read_header(path: Path) -> InstanceHeader:
    """Read the header of a Part 10 file in the spool (used by recovery and tools)."""
    try:
        ds = dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise HeaderError(f"File '{path}' is not a readable DICOM file: {exc}.") from exc
    meta = ds.file_meta
    return header_from_dataset(
        ds,
        sop_instance_uid=str(meta.get("MediaStorageSOPInstanceUID", "")),
        sop_class_uid=str(meta.get("MediaStorageSOPClassUID", "")),
    )
