"""The spool folder: durable, atomic writes of received instances.

Layout (a contract other stages and operators rely on)::

    <storage.path>/spool/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    <storage.path>/spool/.tmp/<SOPInstanceUID>.<random>.part      (in-flight writes; removed by recovery)

A write goes to a temporary file on the same filesystem, is fsynced, renamed into place atomically and
the directory entry is fsynced, so a file under its final name is always complete. UIDs are validated
before they become path components (no path traversal). A duplicate SOP Instance UID keeps the file
already stored (the first copy wins; the write is reported as a duplicate).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from dicomnode.errors import InvalidUIDError, SpoolError, StorageFullError

log = logging.getLogger(__name__)

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
TMP_DIR_NAME = ".tmp"
PART_SUFFIX = ".part"


def validate_uid(value: str, what: str) -> str:
    """Return ``value`` if it is a valid DICOM UID (digits and dots, ≤ 64 chars), else raise."""
    uid = value.strip().rstrip("\0")
    if not uid:
        raise InvalidUIDError(f"The {what} is empty.")
    if len(uid) > 64 or not _UID_RE.match(uid) or ".." in uid:
        raise InvalidUIDError(f"The {what} '{value[:80]}' is not a valid DICOM UID.")
    return uid


class OutOfSpaceError(SpoolError):
    """The filesystem ran out of space (or quota) while writing an instance."""


@dataclass(frozen=True)
class StoredFile:
    path: Path
    size: int
    duplicate: bool


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Durable instance files under ``root``; see the module docstring for the layout."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.tmp_dir = self.root / TMP_DIR_NAME
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        return (
            self.root
            / validate_uid(study_uid, "Study Instance UID")
            / validate_uid(series_uid, "Series Instance UID")
            / f"{validate_uid(sop_uid, 'SOP Instance UID')}.dcm"
        )

    def series_dir(self, study_uid: str, series_uid: str) -> Path:
        return (
            self.root
            / validate_uid(study_uid, "Study Instance UID")
            / validate_uid(series_uid, "Series Instance UID")
        )

    def study_dir(self, study_uid: str) -> Path:
        return self.root / validate_uid(study_uid, "Study Instance UID")

    def _make_dirs(self, directory: Path) -> None:
        """Create the series folder, fsyncing each parent whose entries changed."""
        missing = []
        current = directory
        while not current.exists() and current != self.root:
            missing.append(current)
            current = current.parent
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:
                continue
            if self.fsync:
                _fsync_dir(folder.parent)

    def write(
        self, study_uid: str, series_uid: str, sop_uid: str, chunks: Iterable[bytes | memoryview]
    ) -> StoredFile:
        """Write one instance durably; raise :class:`SpoolError` (or a subclass) on any failure."""
        final = self.path_for(study_uid, series_uid, sop_uid)
        if final.exists():
            return StoredFile(final, final.stat().st_size, duplicate=True)
        tmp = self.tmp_dir / f"{final.stem}.{uuid.uuid4().hex}{PART_SUFFIX}"
        try:
            size = 0
            with open(tmp, "wb") as handle:
                for chunk in chunks:
                    size += handle.write(chunk)
                handle.flush()
                if self.fsync:
                    os.fsync(handle.fileno())
            self._make_dirs(final.parent)
            duplicate = self._publish(tmp, final)
            if self.fsync:
                _fsync_dir(final.parent)  # the new name is durable; the .tmp unlink need not be
        except OSError as exc:
            with suppress(OSError):
                tmp.unlink()
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OutOfSpaceError(
                    f"No space left to store instance '{sop_uid}' in '{self.root}': {exc}."
                ) from exc
            raise SpoolError(f"Cannot store instance '{sop_uid}' in '{self.root}': {exc}.") from exc
        if duplicate:
            return StoredFile(final, final.stat().st_size, duplicate=True)
        return StoredFile(final, size, duplicate=False)

    @staticmethod
    def _publish(tmp: Path, final: Path) -> bool:
        """Give the complete temp file its final name atomically; True if ``final`` already existed."""
        try:
            os.link(tmp, final)  # atomic and never replaces: the first copy of a duplicate wins
        except FileExistsError:
            tmp.unlink()
            return True
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            if final.exists():  # filesystem without hard links: rename (same-instant duplicates race)
                tmp.unlink()
                return True
            os.rename(tmp, final)
            return False
        tmp.unlink()
        return False

    def check_space(self, min_free_mb: float, max_used_percent: float) -> None:
        """Raise :class:`StorageFullError` when the spool's filesystem is above either threshold."""
        usage = shutil.disk_usage(self.root)
        free_mb = usage.free / (1024 * 1024)
        used_percent = 100.0 * (usage.total - usage.free) / usage.total if usage.total else 100.0
        if free_mb < min_free_mb:
            raise StorageFullError(
                f"Only {free_mb:.0f} MB free on the spool filesystem '{self.root}' "
                f"(storage.min_free_mb is {min_free_mb})."
            )
        if used_percent > max_used_percent:
            raise StorageFullError(
                f"The spool filesystem '{self.root}' is {used_percent:.1f}% full "
                f"(storage.max_used_percent is {max_used_percent})."
            )

    def stale_temp_files(self) -> list[Path]:
        return sorted(self.tmp_dir.glob(f"*{PART_SUFFIX}"))

    def instance_files(self) -> Iterable[Path]:
        """Every ``<study>/<series>/<sop>.dcm`` file under the spool (hidden folders skipped)."""
        for study in sorted(self.root.iterdir()):
            if study.name.startswith(".") or not study.is_dir():
                continue
            for series in sorted(study.iterdir()):
                if series.is_dir():
                    yield from sorted(series.glob("*.dcm"))
