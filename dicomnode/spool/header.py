"""The few header attributes the node needs from an instance, read without touching pixel data.

:func:`parse_dataset` reads an encoded dataset (as received on the wire, no file meta) in the given
transfer syntax and stops before ``PixelData``; :func:`read_header` does the same for a Part 10 file.
Pixel data is never decoded here; compressed pixel data is never even read.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.tag import Tag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

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


_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


class _Walker:
    """Walks the element structure of an encoded dataset to prove it is complete (no value is decoded)."""

    def __init__(self, data: bytes | memoryview, implicit: bool, little: bool) -> None:
        self.data = memoryview(data)
        self.end = len(self.data)
        self.implicit = implicit
        self.order = "<" if little else ">"

    def _need(self, pos: int, count: int, what: str) -> None:
        if pos + count > self.end:
            raise HeaderError(
                f"The dataset is truncated: {what} at byte {pos} needs {count} bytes but only "
                f"{self.end - pos} remain."
            )

    def _tag(self, pos: int) -> tuple[int, int]:
        self._need(pos, 8, "an element header")
        group, element, length = struct.unpack_from(self.order + "HHI", self.data, pos)
        return (group << 16) | element, length

    def dataset(self, pos: int, in_item: bool) -> int:
        while pos < self.end:
            tag, length = self._tag(pos)
            if tag == _ITEM_END and in_item:
                return pos + 8
            if tag >> 16 == 0xFFFE:
                raise HeaderError(
                    f"The dataset is malformed: unexpected delimiter ({tag:08X}) at byte {pos}."
                )
            if self.implicit:
                pos += 8
            else:
                vr = bytes(self.data[pos + 4 : pos + 6])
                if vr in _LONG_VRS:
                    self._need(pos, 12, "an element header")
                    length = struct.unpack_from(self.order + "I", self.data, pos + 8)[0]
                    pos += 12
                else:
                    length = struct.unpack_from(self.order + "H", self.data, pos + 6)[0]
                    pos += 8
            if length == _UNDEFINED:
                pos = self.items(pos)
            else:
                self._need(pos, length, f"the value of element ({tag >> 16:04X},{tag & 0xFFFF:04X})")
                pos += length
        if in_item:
            raise HeaderError("The dataset is truncated: an item ends without its delimiter.")
        return pos

    def items(self, pos: int) -> int:
        while True:
            tag, length = self._tag(pos)
            if tag == _SEQ_END:
                return pos + 8
            if tag != _ITEM:
                raise HeaderError(
                    f"The dataset is malformed: expected an item at byte {pos}, got ({tag:08X})."
                )
            pos += 8
            if length == _UNDEFINED:
                pos = self.dataset(pos, in_item=True)
            else:
                self._need(pos, length, "an item")
                pos += length


def check_complete(encoded: bytes | memoryview, transfer_syntax: str) -> None:
    """Raise :class:`HeaderError` unless every element of the encoded dataset is complete."""
    ts = UID(transfer_syntax)
    data = encoded
    if ts == DeflatedExplicitVRLittleEndian:
        try:
            data = zlib.decompress(bytes(encoded), -zlib.MAX_WBITS)
        except zlib.error as exc:
            raise HeaderError(f"The deflated dataset cannot be inflated: {exc}.") from exc
    if len(data) < 8:
        raise HeaderError(f"The dataset is only {len(data)} bytes long; it is not DICOM.")
    _Walker(data, ts == ImplicitVRLittleEndian, ts != ExplicitVRBigEndian).dataset(0, in_item=False)


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
    """Parse the header of an encoded dataset (no file meta) received in ``transfer_syntax``."""
    ts = UID(transfer_syntax)
    data: bytes | memoryview = encoded
    try:
        if ts == DeflatedExplicitVRLittleEndian:
            data = zlib.decompressobj(-zlib.MAX_WBITS).decompress(bytes(encoded), 4 * 1024 * 1024)
        ds = read_dataset(
            io.BytesIO(data),
            is_implicit_VR=ts == ImplicitVRLittleEndian,
            is_little_endian=ts != ExplicitVRBigEndian,
            stop_when=_stop_at_pixels,
        )
        header = header_from_dataset(ds, sop_instance_uid=sop_instance_uid, sop_class_uid=sop_class_uid)
    except HeaderError:
        raise
    except Exception as exc:  # pydicom raises many types for garbage input
        raise HeaderError(f"The dataset cannot be parsed as DICOM ({type(exc).__name__}: {exc}).") from exc
    if len(ds) == 0:
        raise HeaderError("The dataset is empty or not DICOM (no data elements could be read).")
    return header


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
