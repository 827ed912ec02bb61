"""A streaming, non-recursive walk of an encoded dataset: proves it complete and captures its identifiers.

:class:`DatasetWalker` is fed the dataset bytes as they arrive (any chunking, no file meta) and keeps
no more of them than one element header plus the few small top-level elements the node indexes
(:data:`CAPTURED`). Nesting is followed with an explicit stack, so no input can exhaust Python's
recursion; a sequence nested deeper than ``max_depth`` is refused. Deflated datasets are inflated as a
stream, at most ``max_inflated`` bytes in all (a decompression bomb is refused when it passes the
limit, before more is inflated). Nothing is decoded except the captured elements, by pydicom, at the end.

Errors are :class:`~dicomnode.spool.header.HeaderError` (not a complete DICOM dataset) and its subclass
:class:`InflateLimitError` (the expansion limit); their messages are full sentences for the log.
"""

from __future__ import annotations

import struct
import zlib
from functools import lru_cache

from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian
from pydicom.valuerep import PersonName

from dicomnode.spool.header import HeaderError, InstanceHeader

# top-level elements whose bytes are kept for the header (all small; see InstanceHeader)
CAPTURED = frozenset({
    0x00080005, 0x00080016, 0x00080018, 0x00080020, 0x00080060, 0x00100010, 0x00100020,
    0x0020000D, 0x0020000E, 0x00200011, 0x00200012, 0x00200013, 0x00200032, 0x00200037,
    0x00201002, 0x00540081,
})
CAPTURE_LIMIT = 1024  # a captured value longer than this is not an identifier: left out of the header

_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT",
                       b"UV"})
_INFLATE_STEP = 1 << 20

# frame kinds on the stack
_DATASET, _SEQUENCE, _FRAGMENTS = 0, 1, 2


class InflateLimitError(HeaderError):
    """A deflated dataset expands beyond the configured limit."""


@lru_cache(maxsize=4096)
def _implicit_is_sequence(tag: int) -> bool:
    try:
        return bool(dictionary_VR(tag) == "SQ")
    except KeyError:
        return False


class _Frame:
    """One open container: the top-level dataset, an item's dataset, a sequence or encapsulated fragments."""

    __slots__ = ("end", "implicit", "kind")

    def __init__(self, kind: int, end: int | None, implicit: bool) -> None:
        self.kind = kind
        self.end = end  # absolute stream offset where a defined-length container ends; None: delimited
        self.implicit = implicit


class DatasetWalker:
    """Feed with :meth:`feed`, then call :meth:`finish` for the header (raises :class:`HeaderError`)."""

    def __init__(self, transfer_syntax: str, *, max_depth: int = 64, max_inflated: int = 1 << 30) -> None:
        ts = transfer_syntax.strip(" \0")  # not pydicom's UID(), which runs a regex per instance
        self.implicit = ts == ImplicitVRLittleEndian
        self.little = ts != ExplicitVRBigEndian
        self._order = "<" if self.little else ">"
        self._tag_struct = struct.Struct(self._order + "HHI")
        self._tag_pair = struct.Struct(self._order + "HH")
        self._short_len = struct.Struct(self._order + "H")
        self._long_len = struct.Struct(self._order + "I")
        self.max_depth = max_depth
        self.max_inflated = max_inflated
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS) if ts == DeflatedExplicitVRLittleEndian else None
        self.received = 0  # bytes fed (as received: deflated when deflated)
        self.pos = 0  # bytes walked (inflated)
        self.elements = 0
        self._stack: list[_Frame] = [_Frame(_DATASET, None, self.implicit)]
        self._depth = 0  # sequences open
        self._pending = bytearray()  # an element header split across chunks
        self._skip = 0  # value bytes still to pass
        self._capture: bytearray | None = None  # the captured element being completed
        self._captured: list[bytes] = []

    # -- input ----------------------------------------------------------------------------------------
    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self.received += len(data)
        if self._inflater is None:
            self._walk(memoryview(data))
            return
        chunk: bytes | memoryview = data
        while True:
            try:
                out = self._inflater.decompress(chunk, _INFLATE_STEP)
            except zlib.error as exc:
                raise HeaderError(f"The deflated dataset cannot be inflated: {exc}.") from exc
            self._inflated(out)
            chunk = self._inflater.unconsumed_tail
            if not chunk:
                return

    def _inflated(self, out: bytes) -> None:
        if self.pos + len(out) > self.max_inflated:
            raise InflateLimitError(
                f"The deflated dataset expands beyond {self.max_inflated} bytes (node.max_inflated_mb) "
                f"after {self.received} deflated bytes."
            )
        if out:
            self._walk(memoryview(out))

    def finish(self, *, sop_instance_uid: str = "", sop_class_uid: str = "") -> InstanceHeader:
        """Check that the dataset ended cleanly and return its header (command UIDs fill empty values)."""
        if self._inflater is not None:
            try:
                self._inflated(self._inflater.flush())
            except zlib.error as exc:
                raise HeaderError(f"The deflated dataset cannot be inflated: {exc}.") from exc
            if not self._inflater.eof:
                raise HeaderError("The deflated dataset is truncated (the deflate stream does not end).")
        if self.pos < 8:
            raise HeaderError(f"The dataset is only {self.pos} bytes long; it is not DICOM.")
        if self._pending or self._skip:
            raise HeaderError(
                f"The dataset is truncated: it ends at byte {self.pos} inside an element "
                f"({self._skip + (8 - len(self._pending) if self._pending else 0)} or more bytes missing)."
            )
        while self._stack and self._stack[-1].end == self.pos and len(self._stack) > 1:
            self._stack.pop()
        if len(self._stack) > 1:
            raise HeaderError(
                f"The dataset is truncated: it ends at byte {self.pos} with {len(self._stack) - 1} "
                "sequence(s) or item(s) still open."
            )
        return self._header(sop_instance_uid, sop_class_uid)

    def _header(self, sop_instance_uid: str, sop_class_uid: str) -> InstanceHeader:
        if self.elements == 0:
            raise HeaderError("The dataset is empty or not DICOM (no data elements could be read).")
        values: dict[int, bytes] = {}
        for element in self._captured:
            group, elem = self._tag_pair.unpack_from(element, 0)
            head = 8 if self.implicit or bytes(element[4:6]) not in _LONG_VRS else 12
            values[(group << 16) | elem] = element[head:]
        try:
            return _decode_header(values, sop_instance_uid, sop_class_uid, self._order)
        except (ValueError, LookupError) as exc:
            raise HeaderError(
                f"The dataset's identifiers cannot be read ({type(exc).__name__}: {exc})."
            ) from exc

    # -- the walk -------------------------------------------------------------------------------------
    def _walk(self, data: memoryview) -> None:
        i, n = 0, len(data)
        while i < n:
            if self._skip:
                take = min(self._skip, n - i)
                if self._capture is not None:
                    self._capture += data[i : i + take]
                i += take
                self.pos += take
                self._skip -= take
                if not self._skip:
                    if self._capture is not None:
                        self._captured.append(bytes(self._capture))
                        self._capture = None
                    self._close_ended()
                continue
            if self._pending:
                want = self._header_size(self._pending)
                take = min(want - len(self._pending), n - i)
                self._pending += data[i : i + take]
                i += take
                if len(self._pending) < want or self._header_size(self._pending) > len(self._pending):
                    continue
                header = bytes(self._pending)
                self._pending.clear()
                self._element(header, memoryview(header), 0)
                continue
            if n - i < 12:
                size = 8 if n - i < 8 else self._header_size(data[i : i + 8])
                if n - i < size:
                    self._pending += data[i:]
                    return
            header_len = self._element(None, data, i)
            i += header_len

    def _header_size(self, head: bytes | bytearray | memoryview) -> int:
        if len(head) < 8:
            return 8
        if self._stack[-1].implicit or head[0:2] == b"\xfe\xff" or head[0:2] == b"\xff\xfe":
            return 8
        return 12 if bytes(head[4:6]) in _LONG_VRS else 8

    def _element(self, whole: bytes | None, data: memoryview, i: int) -> int:
        """Read one element/item/delimiter header at ``data[i:]``; returns the header's length."""
        frame = self._stack[-1]
        start = self.pos
        group, elem, length = self._tag_struct.unpack_from(data, i)
        tag = (group << 16) | elem
        if frame.kind != _DATASET:  # inside a sequence or fragments: items and the delimiter only
            self.pos += 8
            if tag == _SEQ_END and frame.end is None:
                self._stack.pop()
                if frame.kind == _SEQUENCE:
                    self._depth -= 1
                self._close_ended()
                return 8
            if tag != _ITEM:
                raise HeaderError(
                    f"The dataset is malformed: expected an item at byte {start}, got ({tag:08X})."
                )
            if frame.kind == _FRAGMENTS:
                if length == _UNDEFINED:
                    raise HeaderError(
                        f"The dataset is malformed: a fragment of undefined length at byte {start}."
                    )
                self._value(length, start)
                return 8
            self._push(_Frame(_DATASET, None if length == _UNDEFINED else self.pos + length, frame.implicit),
                       start)
            return 8
        if tag == _ITEM_END and frame.end is None and len(self._stack) > 1:
            self.pos += 8
            self._stack.pop()
            self._close_ended()
            return 8
        if group == 0xFFFE:
            raise HeaderError(f"The dataset is malformed: unexpected delimiter ({tag:08X}) at byte {start}.")
        self.elements += 1
        implicit = frame.implicit
        if implicit:
            size, vr = 8, None
        else:
            vr = bytes(data[i + 4 : i + 6])
            if vr in _LONG_VRS:
                length = self._long_len.unpack_from(data, i + 8)[0]
                size = 12
            else:
                length = self._short_len.unpack_from(data, i + 6)[0]
                size = 8
        self.pos += size
        if length == _UNDEFINED:
            if vr in (b"OB", b"OW") or (implicit and tag == 0x7FE00010):
                self._push(_Frame(_FRAGMENTS, None, implicit), start)
            else:  # SQ, or UN holding a sequence encoded in Implicit VR Little Endian (PS3.5 6.2.2)
                self._push(_Frame(_SEQUENCE, None, implicit or vr == b"UN"), start, sequence=True)
            return size
        is_sequence = vr == b"SQ" if vr is not None else _implicit_is_sequence(tag)
        if is_sequence and length:
            self._push(_Frame(_SEQUENCE, self.pos + length, implicit), start, sequence=True)
            return size
        if len(self._stack) == 1 and tag in CAPTURED and length <= CAPTURE_LIMIT:
            head = whole if whole is not None else bytes(data[i : i + size])
            self._capture = bytearray(head)
        self._value(length, start)
        return size

    def _value(self, length: int, start: int) -> None:
        frame_end = self._stack[-1].end
        if frame_end is not None and self.pos + length > frame_end:
            raise HeaderError(
                f"The dataset is malformed: the value at byte {start} ({length} bytes) runs past the end "
                f"of its item or sequence at byte {frame_end}."
            )
        if length:
            self._skip = length
        else:
            if self._capture is not None:
                self._captured.append(bytes(self._capture))
                self._capture = None
            self._close_ended()

    def _push(self, frame: _Frame, start: int, *, sequence: bool = False) -> None:
        parent_end = self._stack[-1].end
        if frame.end is not None and parent_end is not None and frame.end > parent_end:
            raise HeaderError(
                f"The dataset is malformed: the container at byte {start} runs past the end of its parent "
                f"at byte {parent_end}."
            )
        if sequence:
            self._depth += 1
            if self._depth > self.max_depth:
                raise HeaderError(
                    f"Sequences are nested more than {self.max_depth} deep at byte {start} "
                    "(node.max_sequence_depth)."
                )
        self._stack.append(frame)
        self._close_ended()

    def _close_ended(self) -> None:
        """Pop every defined-length container that ends at the current position."""
        stack = self._stack
        while len(stack) > 1 and stack[-1].end is not None and stack[-1].end <= self.pos:
            frame = stack.pop()
            if frame.kind == _SEQUENCE:
                self._depth -= 1


def _text(raw: bytes | None) -> str:
    return raw.decode("latin-1").strip(" \0") if raw else ""


def _number(raw: bytes | None, kind: type[int] | type[float]) -> int | float | None:
    text = _text(raw).split("\\")[0].strip()
    try:
        return kind(float(text)) if kind is int else float(text)
    except ValueError:
        return None


def _unsigned_short(raw: bytes | None, order: str) -> int | None:
    return int(struct.unpack_from(order + "H", raw)[0]) if raw and len(raw) >= 2 else None


def _numbers(raw: bytes | None) -> list[float] | None:
    try:
        return [float(v) for v in _text(raw).split("\\")]
    except ValueError:
        return None


def _patient_name(raw: bytes | None, charset: bytes | None) -> str:
    if not raw:
        return ""
    encodings = [e.strip() for e in _text(charset).split("\\")] if charset else []
    if not encodings or encodings == ["ISO_IR 6"] or encodings == [""]:
        return _text(raw)
    return str(PersonName(raw, encodings=convert_encodings(encodings))).strip(" \0")


def _decode_header(
    values: dict[int, bytes], sop_instance_uid: str, sop_class_uid: str, order: str
) -> InstanceHeader:
    """The :class:`InstanceHeader` from the captured raw values (strings, IS and DS, never sequences)."""
    position, orientation = _numbers(values.get(0x00200032)), _numbers(values.get(0x00200037))
    slice_position = None
    if position and orientation and len(position) == 3 and len(orientation) == 6:
        o = orientation
        normal = (o[1] * o[5] - o[2] * o[4], o[2] * o[3] - o[0] * o[5], o[0] * o[4] - o[1] * o[3])
        slice_position = sum(p * n for p, n in zip(position, normal, strict=True))
    return InstanceHeader(
        sop_instance_uid=_text(values.get(0x00080018)) or sop_instance_uid.strip(),
        sop_class_uid=_text(values.get(0x00080016)) or sop_class_uid.strip(),
        study_uid=_text(values.get(0x0020000D)),
        series_uid=_text(values.get(0x0020000E)),
        patient_id=_text(values.get(0x00100020)),
        patient_name=_patient_name(values.get(0x00100010), values.get(0x00080005)),
        modality=_text(values.get(0x00080060)),
        study_date=_text(values.get(0x00080020)),
        series_number=_number(values.get(0x00200011), int),  # type: ignore[arg-type]
        instance_number=_number(values.get(0x00200013), int),  # type: ignore[arg-type]
        acquisition_number=_number(values.get(0x00200012), int),  # type: ignore[arg-type]
        images_in_acquisition=_number(values.get(0x00201002), int),  # type: ignore[arg-type]
        number_of_slices=_unsigned_short(values.get(0x00540081), order),
        slice_position=slice_position,
    )
