"""Attribute paths in rules and reading their values from a dataset.

Syntax (one path = steps joined by ``.``)::

    Modality                                  a keyword from the DICOM dictionary
    (0018,0015)                               a tag as (group,element), hexadecimal
    (0019,"SIEMENS CT VA0  COAD",92)          a private tag: group, private creator, element offset (hex)
    ProcedureCodeSequence[0].CodeValue        a sequence item by 0-based index, then an attribute in it
    (0040,0275).(0032,1060)                   without an index, the values of all items are collected
    ProcedureCodeSequence[*].CodeMeaning      ``[*]`` says "all items" explicitly

A value is a tuple of atoms (``str``, ``int`` or ``float``), one per DICOM value (VM): text is stripped
of padding, DS/IS/binary numbers become numbers, a sequence contributes one ``"<item>"`` atom per item.
An absent attribute has the value ``None``; a present attribute without a value has ``()``.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import lru_cache

from pydicom.datadict import dictionary_has_tag, dictionary_VR, keyword_dict, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

Atom = str | int | float
Value = tuple[Atom, ...]
ITEM = "<item>"

_STEP_RE = re.compile(
    r"""^(?:
        (?P<keyword>[A-Za-z][A-Za-z0-9]*)
      | \((?P<group>[0-9A-Fa-f]{4}),(?P<element>[0-9A-Fa-f]{4})\)
      | \((?P<pgroup>[0-9A-Fa-f]{4}),"(?P<creator>[^"]{1,64})",(?P<offset>[0-9A-Fa-f]{2})\)
    )(?:\[(?P<index>\d+|\*)\])?$""",
    re.VERBOSE,
)
_SPLIT_RE = re.compile(r'\.(?=(?:[^"]*"[^"]*")*[^"]*$)')  # dots outside quotes


@dataclass(frozen=True)
class Step:
    tag: int  # for a private step: (group << 16) | offset, resolved through the creator per dataset
    creator: str | None = None
    index: int | None = None  # None = all items

    def element(self, ds: Dataset) -> DataElement | None:
        if self.creator is None:
            return ds.get(self.tag)
        group, offset = self.tag >> 16, self.tag & 0xFF
        try:
            block = ds.private_block(group, self.creator)
        except KeyError:
            return None
        tag = block.get_tag(offset)
        return ds.get(tag)


@dataclass(frozen=True)
class AttributePath:
    text: str
    steps: tuple[Step, ...]

    def read(self, ds: Dataset) -> Value | None:
        """The value at this path in ``ds`` (see the module docstring), ``None`` if absent."""
        datasets = [ds]
        for step in self.steps[:-1]:
            items: list[Dataset] = []
            for current in datasets:
                elem = step.element(current)
                if elem is None or elem.VR != "SQ" or not elem.value:
                    continue
                if step.index is None:
                    items.extend(elem.value)
                elif step.index < len(elem.value):
                    items.append(elem.value[step.index])
            datasets = items
        last = self.steps[-1]
        found = False
        atoms: list[Atom] = []
        for current in datasets:
            elem = last.element(current)
            if elem is None:
                continue
            found = True
            atoms.extend(element_atoms(elem, last.index))
        return tuple(atoms) if found else None


def _suggest(keyword: str) -> str:
    close = difflib.get_close_matches(keyword, keyword_dict.keys(), n=1, cutoff=0.75)
    return f" (did you mean '{close[0]}'?)" if close else ""


@lru_cache(maxsize=4096)
def parse_path(text: str) -> AttributePath:
    """Parse an attribute path; raises ``ValueError`` with a sentence naming the bad part."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("an attribute path must be a non-empty keyword or (gggg,eeee) tag")
    steps = []
    parts = _SPLIT_RE.split(text.strip())
    for position, part in enumerate(parts):
        match = _STEP_RE.match(part.strip())
        if not match:
            raise ValueError(
                f"'{part}' in attribute path '{text}' is neither a DICOM keyword, a (gggg,eeee) tag nor "
                f'a private (gggg,"creator",ee) tag, optionally followed by [n] or [*]'
            )
        raw_index = match["index"]
        index = None if raw_index in (None, "*") else int(raw_index)
        if match["keyword"]:
            tag = tag_for_keyword(match["keyword"])
            if tag is None:
                raise ValueError(f"unknown DICOM keyword '{match['keyword']}'{_suggest(match['keyword'])}")
            step = Step(int(tag), None, index)
        elif match["group"]:
            tag = (int(match["group"], 16) << 16) | int(match["element"], 16)
            step = Step(tag, None, index)
        else:
            group = int(match["pgroup"], 16)
            if group % 2 == 0:
                raise ValueError(f"'{part}' names a private creator in the even group {group:04X}")
            step = Step((group << 16) | int(match["offset"], 16), match["creator"], index)
        last = position == len(parts) - 1
        if not last and match["keyword"] and dictionary_has_tag(step.tag) and dictionary_VR(step.tag) != "SQ":
            raise ValueError(
                    f"'{match['keyword']}' in '{text}' is not a sequence, so nothing can follow it"
                )
        steps.append(step)
    return AttributePath(text.strip(), tuple(steps))


def _text(value: str | bytes) -> str:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return value.strip(" \x00")


def element_atoms(elem: DataElement, index: int | None = None) -> Value:
    """The atoms of one data element (see the module docstring)."""
    value = elem.value
    if elem.VR == "SQ":
        items = list(value or ())
        if index is not None:
            return (ITEM,) if index < len(items) else ()
        return tuple(ITEM for _ in items)
    if value is None:
        return ()
    if isinstance(value, bytes) and elem.VR in ("UN", "OB", "OW", "UT", "LO", "SH", "CS"):
        text = _text(value)
        return tuple(v.strip() for v in text.split("\\")) if text else ()
    raw = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    atoms: list[Atom] = []
    for item in raw:
        if isinstance(item, int):
            atoms.append(int(item))
        elif isinstance(item, float):
            atoms.append(float(item))
        elif isinstance(item, PersonName):
            atoms.append(str(item).strip())
        elif isinstance(item, str | bytes):
            text = _text(item)
            if text or len(raw) > 1:
                atoms.append(text)
        elif item is not None:
            atoms.append(str(item))
    return tuple(atoms)
