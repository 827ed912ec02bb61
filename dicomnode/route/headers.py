"""The headers of a series' instances, read once (without pixel data) and kept in a bounded cache.

A :class:`SeriesView` orders its instances by (InstanceNumber, SOP Instance UID, file name); its *first*
instance is the one ``scope: first`` conditions look at. Values of an attribute path are extracted once
per view and reduced to their distinct values, so 200 rules testing 500 instances stay cheap.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicomnode.errors import RuleError
from dicomnode.route.paths import AttributePath, Value

log = logging.getLogger(__name__)
Bounds = tuple[bool, float, float, float, float]


class HeaderCache:
    """LRU cache of headers keyed by file path, invalidated by modification time and size."""

    def __init__(self, max_files: int = 4000) -> None:
        self.max_files = max_files
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[int, int, Dataset]] = OrderedDict()

    def read(self, path: Path) -> Dataset:
        """The header of ``path``; raises :class:`RuleError` if it is not a readable DICOM file."""
        key = str(path)
        try:
            stat = os.stat(path)
        except OSError as exc:
            raise RuleError(f"Cannot read the DICOM file '{path}': {exc.strerror}.") from exc
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] == stat.st_mtime_ns and entry[1] == stat.st_size:
                self._entries.move_to_end(key)
                return entry[2]
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            raise RuleError(f"'{path}' is not a readable DICOM file: {exc}.") from exc
        with self._lock:
            self._entries[key] = (stat.st_mtime_ns, stat.st_size, ds)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_files:
                self._entries.popitem(last=False)
        return ds

    def __len__(self) -> int:
        return len(self._entries)


def _number(atom: object) -> float | None:
    if isinstance(atom, int | float) and not isinstance(atom, bool):
        return float(atom)
    try:
        return float(str(atom))
    except ValueError:
        return None


def _order_key(item: tuple[Path, Dataset]) -> tuple[int, str, str]:
    path, ds = item
    try:
        number = int(ds.get("InstanceNumber") or 0)
    except (TypeError, ValueError):
        number = 0
    return number, str(ds.get("SOPInstanceUID", "")), path.name


@dataclass
class SeriesView:
    """The instances of one series (or, for study rules, of a whole study) as rules see them."""

    study_uid: str
    series_uid: str
    files: tuple[Path, ...]
    headers: tuple[Dataset, ...]
    _first: dict[str, Value | None] = field(default_factory=dict, repr=False)
    _distinct: dict[str, frozenset[Value | None]] = field(default_factory=dict, repr=False)
    _all: dict[str, tuple[Value | None, ...]] = field(default_factory=dict, repr=False)
    _bounds: dict[str, Bounds | None] = field(default_factory=dict, repr=False)

    @classmethod
    def from_files(
        cls, files: Iterable[Path], cache: HeaderCache, *, study_uid: str = "", series_uid: str = ""
    ) -> SeriesView:
        pairs = sorted(((Path(f), cache.read(Path(f))) for f in files), key=_order_key)
        if pairs:
            study_uid = study_uid or str(pairs[0][1].get("StudyInstanceUID", ""))
            series_uid = series_uid or str(pairs[0][1].get("SeriesInstanceUID", ""))
        return cls(study_uid, series_uid, tuple(p for p, _ in pairs), tuple(ds for _, ds in pairs))

    @classmethod
    def combine(cls, views: Sequence[SeriesView], study_uid: str) -> SeriesView:
        """One view over several series (study rules); the first series' first instance comes first."""
        files = tuple(f for v in views for f in v.files)
        headers = tuple(h for v in views for h in v.headers)
        return cls(study_uid, "", files, headers)

    @property
    def instance_count(self) -> int:
        return len(self.headers)

    @property
    def first(self) -> Dataset | None:
        return self.headers[0] if self.headers else None

    def first_value(self, path: AttributePath) -> Value | None:
        """The value of ``path`` in the first instance (``None`` when absent or no instances)."""
        key = path.text
        if key in self._first:
            return self._first[key]
        value = path.read(self.headers[0]) if self.headers else None
        self._first[key] = value
        return value

    def instance_values(self, path: AttributePath) -> tuple[Value | None, ...]:
        """The value of ``path`` in every instance, in instance order (read once per view)."""
        cached = self._all.get(path.text)
        if cached is None:
            cached = tuple(path.read(ds) for ds in self.headers)
            self._all[path.text] = cached
        return cached

    def distinct_values(self, path: AttributePath) -> frozenset[Value | None]:
        """The distinct values of ``path`` over all instances."""
        cached = self._distinct.get(path.text)
        if cached is None:
            cached = frozenset(self.instance_values(path))
            self._distinct[path.text] = cached
        return cached

    def numeric_bounds(self, path: AttributePath) -> Bounds | None:
        """For numeric tests over all instances: (every instance has a number, min and max of the
        per-instance largest number, min and max of the per-instance smallest number); ``None`` if no
        instance has a number. A value satisfies ``gt x`` iff its largest number is > x, ``lt x`` iff its
        smallest is < x, so scope ``all``/``any`` reduce to comparisons with these bounds."""
        if path.text in self._bounds:
            return self._bounds[path.text]
        largest, smallest, every = [], [], True
        for value in self.distinct_values(path):
            numbers = [n for n in map(_number, value or ()) if n is not None]
            if not numbers:
                every = False
                continue
            largest.append(max(numbers))
            smallest.append(min(numbers))
        bounds = (every, min(largest), max(largest), min(smallest), max(smallest)) if largest else None
        self._bounds[path.text] = bounds
        return bounds

    def describe(self) -> str:
        first = self.first
        if first is None:
            return f"series {self.series_uid or '?'} (no instances)"
        desc = str(first.get("SeriesDescription", "") or "").strip()
        modality = str(first.get("Modality", "") or "").strip()
        return f"{modality or '?'} series {self.series_uid or '?'} '{desc}' ({self.instance_count} instances)"


def dicom_files(folder: Path) -> list[Path]:
    """The instance files of a spool series folder (``*.dcm``, hidden and partial files excluded)."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    names = (e for e in entries if e.name.endswith(".dcm") and not e.name.startswith("."))
    return [Path(e.path) for e in names if e.is_file()]


def group_paths(paths: Iterable[Path], cache: HeaderCache) -> dict[tuple[str, str], list[Path]]:
    """DICOM files under ``paths`` (files or folders, recursively) grouped by (study UID, series UID).

    Files that are not DICOM are skipped with a debug message (folders often hold other files).
    """
    groups: dict[tuple[str, str], list[Path]] = {}
    for root in paths:
        root = Path(root)
        if not root.exists():
            raise RuleError(f"'{root}' does not exist.")
        candidates = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in candidates:
            try:
                ds = cache.read(path)
            except RuleError as exc:
                if root.is_file():
                    raise
                log.debug("skipping %s: %s", path, exc)
                continue
            study = str(ds.get("StudyInstanceUID", "") or "")
            series = str(ds.get("SeriesInstanceUID", "") or "")
            groups.setdefault((study, series), []).append(path)
    return groups
