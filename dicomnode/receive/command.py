"""A received DIMSE command set (PS3.7 6.3.1: group 0000, Implicit VR Little Endian), read once per message.

A command set is a flat list of group 0000 elements of fixed VRs; :class:`Command` keeps their raw values
by tag and converts one only when it is asked for, with pydicom's data dictionary giving the tag and VR
of a keyword. It answers the few questions the association asks (``get``, ``in``, attribute access) the
way a pydicom :class:`~pydicom.dataset.Dataset` would. pydicom's general reader cost more per C-STORE
than the rest of the receive path (a generator, a RawDataElement and a value validation per element);
this reader is one ``struct`` call per element and refuses anything that is not a command set.
"""

from __future__ import annotations

import struct
from types import MappingProxyType
from typing import Any

from pydicom.datadict import DicomDictionary, keyword_for_tag

from dicomnode.errors import ReceiveError

_ELEMENT = struct.Struct("<HHI")
_NUMBERS = {"US": struct.Struct("<H"), "UL": struct.Struct("<I"), "SS": struct.Struct("<h"),
            "SL": struct.Struct("<i")}
_TEXT_VRS = frozenset({"UI", "AE", "LO", "SH", "CS", "ST", "LT", "DA", "TM", "PN"})
# keyword → (element, VR) of every command element (group 0000) in pydicom's dictionary, read once: a
# C-STORE asks for about ten of them, and each look-up through pydicom's functions cost microseconds
_COMMAND_ELEMENTS = MappingProxyType({
    keyword_for_tag(tag): (tag & 0xFFFF, entry[0]) for tag, entry in DicomDictionary.items()
    if tag >> 16 == 0 and keyword_for_tag(tag)
})


class CommandError(ReceiveError):
    """The bytes are not a DIMSE command set."""


class Command:
    """The elements of one command set by tag (see the module docstring)."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[int, bytes]) -> None:
        self._values = values

    @classmethod
    def decode(cls, data: bytes | bytearray) -> Command:
        """Read a command set; raises :class:`CommandError` for anything else."""
        values: dict[int, bytes] = {}
        view = memoryview(data)
        i, end = 0, len(view)
        if end < 8:
            raise CommandError(f"A command set of {end} bytes is too short for one element.")
        while i < end:
            if end - i < 8:
                raise CommandError(f"The command set ends inside an element header at byte {i}.")
            group, element, length = _ELEMENT.unpack_from(view, i)
            if group != 0x0000:
                raise CommandError(f"Element ({group:04X},{element:04X}) at byte {i} is not in group 0000.")
            i += 8
            if length > end - i:
                raise CommandError(
                    f"Element (0000,{element:04X}) at byte {i - 8} is {length} bytes long; "
                    f"only {end - i} are left."
                )
            values[element] = bytes(view[i : i + length])
            i += length
        return cls(values)

    def __contains__(self, keyword: str) -> bool:
        known = _COMMAND_ELEMENTS.get(keyword)
        return known is not None and known[0] in self._values

    def get(self, keyword: str, default: Any = None) -> Any:
        """The element's value (int for US/UL, str for text, bytes otherwise) or ``default``."""
        known = _COMMAND_ELEMENTS.get(keyword)
        if known is None:
            return default
        element, vr = known
        raw = self._values.get(element)
        if raw is None:
            return default
        number = _NUMBERS.get(vr)
        if number is not None:
            if len(raw) < number.size:
                return default
            return number.unpack_from(raw)[0]
        if vr in _TEXT_VRS:
            return raw.decode("ascii", errors="replace").strip(" \0")
        return raw

    def __getattr__(self, keyword: str) -> Any:
        value = self.get(keyword, _MISSING)
        if value is _MISSING:
            raise AttributeError(f"The command set has no '{keyword}'.")
        return value


_MISSING = object()
