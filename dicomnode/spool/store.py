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
import threading
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from dicomnode.errors import InvalidUIDError, SpoolError, StorageFullError
from dicomnode.spool.journal import Journal, JournalFullError, data_hash, fsync_dir, start_writeback

log = logging.getLogger(__name__)

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
TMP_DIR_NAME = ".tmp"
PART_SUFFIX = ".part"
SPARE_DIR_NAME = ".spare"  # named spare files where O_TMPFILE is missing (see Spool._make_spares)
RECEIVE_SPARES = 4  # spare files a receiving process keeps ready
_O_TMPFILE = getattr(os, "O_TMPFILE", 0)  # Linux: an unnamed file in a folder (see Spool._make_spares)


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


KNOWN_DIRS = 4096  # series folders remembered as existing (forgotten all at once beyond)
WRITEBACK_STEP = 256 * 1024  # start writing a .part to disk every this many bytes (when fsync is on)


@dataclass(frozen=True)
class StoredFile:
    path: Path
    size: int
    duplicate: bool


class DirectorySync:
    """Group commit of directory fsyncs: concurrent writers into one folder share one ``fsync``.

    A caller's new directory entry is durable once an fsync of the folder that *started after* the entry
    was made has finished. :meth:`sync` takes a ticket; if an fsync is running it waits for it, then either
    finds its ticket covered by a later one or runs the next fsync itself, covering every ticket taken
    before it starts.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._tickets: dict[Path, int] = {}
        self._done: dict[Path, int] = {}
        self._running: set[Path] = set()

    def sync(self, folder: Path) -> None:
        with self._cond:
            ticket = self._tickets[folder] = self._tickets.get(folder, 0) + 1
            while folder in self._running:
                self._cond.wait()
            if self._done.get(folder, 0) >= ticket:
                return
            self._running.add(folder)
            covered = max(ticket, self._tickets.get(folder, 0))  # pruning may have dropped the counter
        try:
            fsync_dir(folder)
        finally:
            with self._cond:
                self._running.discard(folder)
                self._done[folder] = max(self._done.get(folder, 0), covered)
                if len(self._done) > 1024:  # forget idle folders (at worst a later sync runs once more)
                    for idle in [f for f in self._done if f not in self._running][:512]:
                        self._done.pop(idle, None)
                        self._tickets.pop(idle, None)
                self._cond.notify_all()


def _spool_error(exc: OSError, sop_uid: str, root: Path) -> SpoolError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutOfSpaceError(f"No space left to store instance '{sop_uid}' in '{root}': {exc}.")
    return SpoolError(f"Cannot store instance '{sop_uid}' in '{root}': {exc}.")


class PartFile:
    """An instance being streamed into ``.tmp``: :meth:`write` chunks, then :meth:`Spool.publish` it or
    :meth:`discard` it (an aborted transfer leaves nothing behind). With a journal, the bytes are also
    hashed as they pass (the journal record's checksum)."""

    def __init__(
        self, path: Path, fd: int, sop_uid: str, root: Path, *, early_writeback: bool = False,
        hashed: bool = False, writeback_from: int = 0,
    ) -> None:
        self.path = path
        self.size = 0
        self._fd: int | None = fd
        self._sop_uid = sop_uid
        self._root = root
        # with fsync on: hand each completed WRITEBACK_STEP to the disk while the rest is still arriving,
        # so the fsync at the end has less to write (measured: about a quarter less time in fsync)
        # (from ``writeback_from`` bytes on: a part that will go to the journal is not written back itself,
        # one larger than a segment is stored directly and is)
        self._written_back = 0 if early_writeback else None
        self._writeback_from = writeback_from
        self.hasher = data_hash() if hashed else None

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise SpoolError(f"The temporary file '{self.path}' is already closed.")
        return self._fd

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        if self._fd is None:
            raise SpoolError(f"The temporary file '{self.path}' is already closed.")
        view = memoryview(chunk)
        if self.hasher is not None:
            self.hasher.update(view)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
                self.size += written
        except OSError as exc:
            raise _spool_error(exc, self._sop_uid, self._root) from exc
        if (self._written_back is not None and self.size - self._written_back >= WRITEBACK_STEP
                and self.size > self._writeback_from):
            start, count = self._written_back, self.size - self._written_back
            start_writeback(self._fd, start, count)
            self._written_back = self.size

    def close(self, *, fsync: bool) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def discard(self) -> None:
        """Close and remove the temporary file (never raises)."""
        with suppress(OSError):
            self.close(fsync=False)
        with suppress(OSError):
            self.path.unlink()


class Spool:
    """Durable instance files under ``root``; see the module docstring for the layout."""

    def __init__(
        self, root: Path, *, fsync: bool = True, journal: Journal | None = None, spares: int = 0
    ) -> None:
        """``journal`` (with ``fsync`` on): :meth:`publish` commits each instance there (one fdatasync)
        and leaves the file's own fsyncs to the journal's syncer (see :mod:`dicomnode.spool.journal`).
        ``spares``: empty files kept ready in ``.spare`` by a background thread, so that :meth:`open_part`
        names one instead of making a new inode (see :meth:`_take_spare`); :meth:`close` removes them."""
        self.root = Path(root)
        self.fsync = fsync
        self.journal = journal if fsync else None
        self.tmp_dir = self.root / TMP_DIR_NAME
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.spare_dir = self.root / SPARE_DIR_NAME
        self._directory_sync = DirectorySync()
        self._known_dirs: set[Path] = set()  # series folders that exist (see _series_dir)
        self._spare_count = spares
        self._spares: list[tuple[Path | None, int]] = []  # (None: unnamed, see _make_spares)
        self._spares_wake = threading.Condition()
        self._tmp_fd: int | None = None  # .tmp, for naming unnamed spares (see _take_spare)
        self._spare_maker: threading.Thread | None = None  # started by the first open_part
        self._closing = False

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        return self._paths(study_uid, series_uid, sop_uid)[0]

    def _paths(self, study_uid: str, series_uid: str, sop_uid: str) -> tuple[Path, str]:
        """(:meth:`path_for`, the same relative to the root as a POSIX string), built from one string (on the
        receive path: three pathlib joins and a ``relative_to`` cost about 30 µs per instance)."""
        relative = (f"{validate_uid(study_uid, 'Study Instance UID')}/"
                    f"{validate_uid(series_uid, 'Series Instance UID')}/"
                    f"{validate_uid(sop_uid, 'SOP Instance UID')}.dcm")
        return Path(f"{self.root}/{relative}"), relative

    def series_dir(self, study_uid: str, series_uid: str) -> Path:
        return (
            self.root
            / validate_uid(study_uid, "Study Instance UID")
            / validate_uid(series_uid, "Series Instance UID")
        )

    def study_dir(self, study_uid: str) -> Path:
        return self.root / validate_uid(study_uid, "Study Instance UID")

    def _series_dir(self, directory: Path) -> list[Path]:
        """:meth:`_make_dirs` without syncing, skipped for a folder this spool made or found before (the
        last :data:`KNOWN_DIRS`; one stat per folder level saved on each instance of a series)."""
        if directory in self._known_dirs:
            return []
        created = self._make_dirs(directory, sync=False)
        if len(self._known_dirs) >= KNOWN_DIRS:
            self._known_dirs.clear()
        self._known_dirs.add(directory)
        return created

    def _make_dirs(self, directory: Path, *, sync: bool = True) -> list[Path]:
        """Create the series folder, fsyncing each parent whose entries changed (unless ``sync`` is
        False: then the caller makes them durable); returns the folders created."""
        missing = []
        current = directory
        while not current.exists() and current != self.root:
            missing.append(current)
            current = current.parent
        created = []
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:
                continue
            created.append(folder)
            if self.fsync and sync:
                fsync_dir(folder.parent)
        return created

    def write(
        self, study_uid: str, series_uid: str, sop_uid: str, chunks: Iterable[bytes | memoryview]
    ) -> StoredFile:
        """Write one instance durably; raise :class:`SpoolError` (or a subclass) on any failure."""
        final = self.path_for(study_uid, series_uid, sop_uid)
        if final.exists():
            return StoredFile(final, final.stat().st_size, duplicate=True)
        part = self.open_part(sop_uid)
        try:
            for chunk in chunks:
                part.write(chunk)
        except OSError as exc:
            part.discard()
            raise _spool_error(exc, sop_uid, self.root) from exc
        except BaseException:
            part.discard()
            raise
        return self.publish(part, study_uid, series_uid, sop_uid)

    def open_part(self, sop_uid: str) -> PartFile:
        """A new ``.tmp/<sop>.<random>.part`` file to stream an instance into (see :meth:`publish`)."""
        name = validate_uid(sop_uid, "SOP Instance UID") if sop_uid.strip() else "unknown"
        tmp = self.tmp_dir / f"{name}.{os.urandom(16).hex()}{PART_SUFFIX}"
        fd = self._take_spare(tmp)
        if fd is None:
            try:
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise _spool_error(exc, sop_uid, self.root) from exc
        journaled = self.journal is not None
        return PartFile(tmp, fd, sop_uid, self.root, early_writeback=self.fsync, hashed=journaled,
                        writeback_from=self.journal.segment_bytes if self.journal is not None else 0)

    def _take_spare(self, name: Path) -> int | None:
        """A spare file given the name ``name`` (linked or renamed: see :meth:`_make_spares`), open (None
        when there is none ready).

        Why: making a file allocates an inode, and ext4 without a journal skips every free inode whose
        file was deleted in the last seconds, reading each one's dtime: after deletions (retention, or a
        benchmark's cleanup) creating a ``.part`` took 0.2-0.4 ms of kernel CPU (median; mean up to
        1.3 ms) against 12 µs for a rename, on the receive path of every instance."""
        if not self._spare_count:
            return None
        with self._spares_wake:
            if self._closing:
                return None
            if self._spare_maker is None:
                self._spare_maker = threading.Thread(target=self._make_spares, name="spool-spares",
                                                     daemon=True)
                self._spare_maker.start()
            spare = self._spares.pop() if self._spares else None
            if len(self._spares) <= self._spare_count // 2:  # (the maker refills in a batch: fewer wake-ups)
                self._spares_wake.notify()
            if spare is not None and spare[0] is None:  # unnamed, in .tmp: linked under its name
                try:  # (under the lock: close() closes the folder's descriptor)
                    assert self._tmp_fd is not None
                    os.link(f"/proc/self/fd/{spare[1]}", name.name, dst_dir_fd=self._tmp_fd,
                            follow_symlinks=True)
                except OSError as exc:
                    os.close(spare[1])
                    log.debug("A spare file could not be named '%s' (a new file instead): %s", name, exc)
                    return None
                return spare[1]
        if spare is None:
            return None
        path, fd = spare
        try:
            os.rename(path, name)
        except OSError:  # (removed by someone else's recovery, say): a new file instead
            os.close(fd)
            with suppress(OSError):
                path.unlink()
            return None
        return fd

    def _new_spare(self, unnamed: bool) -> tuple[Path | None, int]:
        """One spare file, open: unnamed in ``.tmp`` (``O_TMPFILE``) when ``unnamed``, else named in
        ``.spare``. Raises ``OSError``."""
        if unnamed:
            with self._spares_wake:
                if self._tmp_fd is None and not self._closing:
                    self._tmp_fd = os.open(self.tmp_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            return None, os.open(self.tmp_dir, os.O_RDWR | _O_TMPFILE | os.O_CLOEXEC, 0o600)
        path = self.spare_dir / os.urandom(16).hex()
        return path, os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    def _make_spares(self) -> None:
        """Keep ``spares`` empty files ready (the spare maker thread).

        They are unnamed files of ``.tmp`` (``O_TMPFILE``, Linux), each linked under its ``.part`` name
        when taken, where the filesystem makes them: making one locks no folder, and one that is never
        taken vanishes with the process. Named files in ``.spare``, renamed when taken, elsewhere: a
        rename locks both folders, and the maker's next file creation held ``.spare``'s lock for as long
        as its inode allocation took (see :meth:`_take_spare`), so the receive path's rename waited for
        it (measured in-process at load 9: 0.72 ms per rename, a link 0.05 ms)."""
        failed = False
        unnamed = bool(_O_TMPFILE)
        if not unnamed:
            with suppress(OSError):
                self.spare_dir.mkdir(exist_ok=True)
        while True:
            with self._spares_wake:
                while not self._closing and len(self._spares) >= self._spare_count:
                    self._spares_wake.wait()
                if self._closing:
                    return
            try:
                path, fd = self._new_spare(unnamed)
            except OSError as exc:
                if unnamed and exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    unnamed = False  # a filesystem without O_TMPFILE
                    with suppress(OSError):
                        self.spare_dir.mkdir(exist_ok=True)
                    continue
                if not failed:
                    log.warning("Cannot make a spare file in '%s' (each instance makes its own): %s",
                                self.tmp_dir if unnamed else self.spare_dir, exc)
                failed = True
                with self._spares_wake:
                    self._spares_wake.wait(5.0)
                continue
            failed = False
            with self._spares_wake:
                if not self._closing:
                    self._spares.append((path, fd))
                    continue
            os.close(fd)
            if path is not None:
                path.unlink(missing_ok=True)
            return

    def close(self) -> None:
        """Stop making spare files and remove those not used (the spool stays usable without them)."""
        with self._spares_wake:
            self._closing = True
            spares, self._spares = self._spares, []
            maker = self._spare_maker
            tmp_fd, self._tmp_fd = self._tmp_fd, None
            self._spares_wake.notify_all()
        if tmp_fd is not None:
            os.close(tmp_fd)
        if maker is not None:
            maker.join(5.0)
        for path, fd in spares:
            with suppress(OSError):
                os.close(fd)
            if path is not None:
                with suppress(OSError):
                    path.unlink()

    def publish_journaled(
        self, part: PartFile, study_uid: str, series_uid: str, sop_uid: str, note: dict[str, object]
    ) -> StoredFile:
        """:meth:`publish` through the journal: the record (the whole file and ``note``: calling AE,
        transfer syntax, receive time) is committed with one fdatasync, then the part gets its final name
        without fsync and the syncer makes it durable. An instance the journal cannot take (larger than a
        segment, no segment ready) is published directly. Raises as :meth:`publish`."""
        journal = self.journal
        if journal is None or part.hasher is None or not journal.fits(part.size):
            return self.publish(part, study_uid, series_uid, sop_uid)
        try:
            final, relative = self._paths(study_uid, series_uid, sop_uid)
        except BaseException:
            part.discard()
            raise
        # (a duplicate is found by the link below: it costs its record, the rare case, where a look-up
        # before would cost every instance a stat)
        try:
            stat = os.fstat(part.fd)
            meta = {"path": relative, "ino": stat.st_ino,
                    "dev": stat.st_dev, **note}
            record = journal.append(part.fd, part.size, part.hasher.intdigest(), meta)
        except JournalFullError as exc:
            log.debug("Storing '%s' directly: %s", sop_uid, exc)
            return self.publish(part, study_uid, series_uid, sop_uid)
        except OSError as exc:
            part.discard()
            raise _spool_error(exc, sop_uid, self.root) from exc
        try:
            journal.commit(record)
            part.close(fsync=False)
            created = self._series_dir(final.parent)
            try:
                duplicate = self._publish(part.path, final)
            except FileNotFoundError:  # the folder was removed meanwhile (retention): make it again
                self._known_dirs.discard(final.parent)
                created = self._series_dir(final.parent)
                duplicate = self._publish(part.path, final)
        except OSError as exc:
            journal.release(record)
            part.discard()
            raise _spool_error(exc, sop_uid, self.root) from exc
        except BaseException:
            journal.release(record)
            part.discard()
            raise
        if duplicate:
            journal.release(record)
            return StoredFile(final, final.stat().st_size, duplicate=True)
        journal.handover(record, final, created)
        return StoredFile(final, part.size, duplicate=False)

    def publish(self, part: PartFile, study_uid: str, series_uid: str, sop_uid: str) -> StoredFile:
        """fsync the part, give it its final name atomically, fsync the folder; the part is gone after.

        A duplicate (the final name exists) keeps the first copy. Raises :class:`SpoolError` (or a
        subclass); the part is removed whatever happens.
        """
        try:
            final = self.path_for(study_uid, series_uid, sop_uid)
            part.close(fsync=self.fsync)
            self._make_dirs(final.parent)
            duplicate = self._publish(part.path, final)
            if self.fsync and not duplicate:
                # the new name is durable; the .tmp unlink need not be
                self._directory_sync.sync(final.parent)
        except OSError as exc:
            part.discard()
            raise _spool_error(exc, sop_uid, self.root) from exc
        except BaseException:
            part.discard()
            raise
        if duplicate:
            return StoredFile(final, final.stat().st_size, duplicate=True)
        return StoredFile(final, part.size, duplicate=False)

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
        """``.part`` files (never acknowledged) and spare files left behind (recovery removes them)."""
        spares = [p for p in self.spare_dir.iterdir() if p.is_file()] if self.spare_dir.is_dir() else []
        return sorted([*self.tmp_dir.glob(f"*{PART_SUFFIX}"), *spares])

    def instance_files(self) -> Iterable[Path]:
        """Every ``<study>/<series>/<sop>.dcm`` file under the spool (hidden folders skipped)."""
        for study in sorted(self.root.iterdir()):
            if study.name.startswith(".") or not study.is_dir():
                continue
            for series in sorted(study.iterdir()):
                if series.is_dir():
                    yield from sorted(series.glob("*.dcm"))
