"""The receive journal: an instance is durable after ONE ``fdatasync`` into a pre-written segment file.

Why: a new spool file is durable only after its own fsync and its folder's fsync, two ext4 metadata
commits per instance (block allocation, size, directory entry). Overwriting blocks of a file that already
exists, at its final size, needs no metadata commit at all, so ``fdatasync`` of such a file is several
times faster (measured: ≈ 700 file+dir fsyncs/s against ≈ 3000 appends/s with one fdatasync each).

Layout of ``<storage.path>/journal/<receiver>/`` (one journal per receiving process)::

    segment-0000.journal …  fixed-size files, written with zeros and fsynced before first use, reused
    checkpoint              two 4 KB slots (the newest valid one counts): (sequence, offset)
    flush/flush-N           a 4 KB file never written after it is made: its fdatasync flushes the device

A segment starts with a 4 KB header (magic, its sequence number). Records follow back to back, each
aligned to 4 KB: a header (magic, the segment's sequence, data length, JSON metadata length, the
data's xxh3-64, a CRC32 of the header and metadata), the metadata (the spool path, the ``.part``'s
inode, calling AE, receive time, transfer syntax), then, from the next 4 KB boundary, the instance's
bytes (the whole Part 10 file). Every write into a segment covers whole pages (the zero-filled segments
are written with direct I/O, so their pages are not in the page cache, and a write into part of such a
page would first read it from the disk). Records of the earlier layout (magic ``DNJR``: the data right
after the metadata) are still replayed.

Writing (:meth:`Journal.append` → :meth:`Journal.commit`): the space is reserved and the header written
under a lock (so a later record's fdatasync always carries every earlier header, and recovery can walk
the chain), the data copied from the ``.part`` file in the kernel, then one commit: the segment's pages
written and waited for and the device cache flushed through the flush file on ext4 and XFS (see
:meth:`Journal._open_flusher`), one fdatasync of the segment elsewhere (concurrent associations each commit
at once; the kernel merges their device cache flushes). Only then does the caller give the ``.part`` its
final name (without fsync) and answer Success.

The syncer thread (:meth:`Journal.handover`) then makes the spool files durable in batches (writeback of
many files started at once, an fsync each, one fsync per folder) and moves the checkpoint past every
record whose file is durable; a segment wholly behind the checkpoint is recycled. Recovery
(:func:`dicomnode.spool.recovery.replay_journal`) re-creates, from the records past the checkpoint, the
files a crash left missing or torn; a record whose checksum fails was never acknowledged (its fdatasync
did not return) and is dropped with a log line naming it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import mmap
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import xxhash

from dicomnode.errors import SpoolError

if TYPE_CHECKING:
    from dicomnode.config import StorageConfig

log = logging.getLogger(__name__)

BLOCK = 4096
SEGMENT_MAGIC = b"DNJSEG1\n"
SEGMENT_HEADER = struct.Struct("<8sQI")  # magic, sequence, crc32 of the two
RECORD_MAGIC = b"DNJA"  # the data starts at the next 4 KB boundary after the metadata
LEGACY_RECORD_MAGIC = b"DNJR"  # (before 2026-12-07) the data right after the metadata; still replayed
RECORD_HEADER = struct.Struct("<4sQQIQI")  # magic, sequence, data length, meta length, xxh3-64, crc32
CHECKPOINT_MAGIC = b"DNJC"
CHECKPOINT = struct.Struct("<4sQQQI")  # magic, counter, sequence, offset, crc32
CHECKPOINT_NAME = "checkpoint"
SEGMENT_GLOB = "segment-*.journal"
COPY_CHUNK = 1024 * 1024
WRITEBACK_PIECE = 128 * 1024  # a record's data is copied in pieces of this size, each written back at once
SYNC_BATCH = 256  # files made durable per syncer round at most
# a record's metadata as compact JSON (json.dumps with separators makes a new encoder on every call)
_META_ENCODER = json.JSONEncoder(separators=(",", ":"))


def _align(n: int) -> int:
    return (n + BLOCK - 1) // BLOCK * BLOCK


def data_hash() -> Any:
    """A new hasher for a record's data (xxh3-64, incremental)."""
    return xxhash.xxh3_64()


def _sync_file_range() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """Linux's ``sync_file_range`` (None elsewhere): starts the writeback of a file range, not waiting."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_SYNC_FILE_RANGE = _sync_file_range()  # a constant: the libc function, looked up once
_SYNC_FILE_RANGE_WRITE = 2
_SYNC_FILE_RANGE_WAIT = 1 | 2 | 4  # WAIT_BEFORE | WRITE | WAIT_AFTER: write every dirty page, wait for all
# filesystems that overwrite a file's allocated, written blocks in place (statfs f_type): ext4, XFS
_IN_PLACE_FILESYSTEMS = frozenset({0xEF53, 0x58465342})
FLUSH_DIR = "flush"  # holds the journal's flush file (see Journal._open_flusher)
INODES_PER_BLOCK = 16  # 256-byte inodes in a 4 KB inode-table block (ext4's default)


def start_writeback(fd: int, start: int = 0, count: int = 0) -> None:
    """Start writing a file range (``count`` 0: to the end) to disk without waiting (advisory: a failure
    shows again at the fsync)."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, start, count, _SYNC_FILE_RANGE_WRITE)


def write_range_and_wait(fd: int) -> None:
    """Write every dirty page of ``fd`` to the device and wait for them (``sync_file_range`` with
    WAIT_BEFORE | WRITE | WAIT_AFTER: fdatasync without its metadata and without the device cache flush).
    Raises ``OSError``."""
    if _SYNC_FILE_RANGE is None:
        raise OSError(errno.ENOSYS, "sync_file_range is not available")
    if _SYNC_FILE_RANGE(fd, 0, 0, _SYNC_FILE_RANGE_WAIT) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"sync_file_range failed: {os.strerror(code)}")


def _inode_block(path: Path) -> int:
    """Which inode-table block holds ``path``'s inode (with ext4's default 256-byte inodes)."""
    return (path.stat().st_ino - 1) // INODES_PER_BLOCK


def _filesystem_type(path: Path) -> int | None:
    """``statfs``'s f_type of the filesystem holding ``path`` (None when it cannot be read)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        buffer = ctypes.create_string_buffer(256)  # struct statfs (120 bytes on 64-bit Linux)
        if libc.statfs(os.fsencode(path), buffer) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return int(struct.unpack_from("l", buffer.raw, 0)[0])


def _write_zeros_direct(path: Path, size: int) -> bool:
    """Write ``size`` zero bytes (a multiple of :data:`BLOCK`) to the start of ``path`` with ``O_DIRECT``:
    the device reads them from one page-aligned buffer, no page cache is filled (a buffered write of a
    64 MB segment cost the receiving process more CPU than a fifth of everything else it did while
    receiving at full speed). False when the filesystem or system does not take direct I/O (the caller
    writes through the page cache then); ``OSError`` for other failures."""
    direct = getattr(os, "O_DIRECT", 0)
    if not direct:
        return False
    try:
        fd = os.open(path, os.O_WRONLY | direct | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # tmpfs and others
            return False
        raise
    zeros = mmap.mmap(-1, COPY_CHUNK)  # anonymous: page-aligned and zero-filled
    try:
        done = 0
        while done < size:
            view = memoryview(zeros)[: min(COPY_CHUNK, size - done)]
            try:
                written = os.pwrite(fd, view, done)
            except OSError as exc:
                if exc.errno == errno.EINVAL and done == 0:
                    return False
                raise
            finally:
                view.release()
            if written <= 0:
                raise OSError(errno.EIO, f"a direct write of zeros returned {written}")
            done += written
        return True
    finally:
        zeros.close()
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy(source: int, target: int, count: int, target_offset: int, *, writeback: bool = False) -> None:
    """Copy ``count`` bytes from the start of ``source`` to ``target`` at ``target_offset``; ``writeback``:
    start writing each :data:`WRITEBACK_PIECE` to the device as soon as it is copied (the device writes
    while the rest is copied: the commit's wait is for the last piece only)."""
    done = 0
    try:
        while done < count:
            piece = min(count - done, WRITEBACK_PIECE) if writeback else count - done
            copied = os.copy_file_range(source, target, piece, done, target_offset + done)
            if copied == 0:
                raise OSError(errno.EIO, f"the source ended after {done} of {count} bytes")
            if writeback and done + copied < count:  # (the last piece is written by the commit itself)
                start_writeback(target, target_offset + done, copied)
            done += copied
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    while done < count:  # another filesystem, or no copy_file_range: through user space
        chunk = os.pread(source, min(COPY_CHUNK, count - done), done)
        if not chunk:
            raise OSError(errno.EIO, f"the source ended after {done} of {count} bytes")
        view = memoryview(chunk)
        while view:
            written = os.pwrite(target, view, target_offset + done)
            view = view[written:]
            done += written


@dataclass(eq=False)
class _Segment:
    path: Path
    fd: int
    sequence: int = 0  # 0: free


@dataclass(eq=False)
class Record:
    """A reserved record: ``segment``, ``offset`` (its position), ``size`` (the instance's bytes)."""

    segment: _Segment
    sequence: int
    offset: int
    size: int


@dataclass(frozen=True)
class ScannedRecord:
    """A record found past the checkpoint: ``intact`` when its data matches its checksum."""

    segment: Path
    offset: int
    meta: dict[str, Any]
    size: int
    digest: int
    intact: bool
    data_offset: int

    def chunks(self) -> Iterator[bytes]:
        """The instance's bytes, read back from the segment."""
        with open(self.segment, "rb") as handle:
            handle.seek(self.data_offset)
            left = self.size
            while left:
                chunk = handle.read(min(COPY_CHUNK, left))
                if not chunk:
                    raise OSError(errno.EIO, f"The journal segment '{self.segment}' ends inside a record.")
                left -= len(chunk)
                yield chunk


class JournalFullError(SpoolError):
    """The record does not fit a segment or no segment is ready (the caller stores the instance
    directly)."""


def _read_checkpoint(path: Path) -> tuple[int, int, int]:
    """(counter, sequence, offset) of the newest valid checkpoint slot; (0, 0, 0) when there is none."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return 0, 0, 0
    best = (0, 0, 0)
    for slot in (0, 1):
        piece = raw[slot * BLOCK : slot * BLOCK + CHECKPOINT.size]
        if len(piece) < CHECKPOINT.size:
            continue
        magic, counter, sequence, offset, crc = CHECKPOINT.unpack(piece)
        if magic == CHECKPOINT_MAGIC and zlib.crc32(piece[:-4]) == crc and counter > best[0]:
            best = (counter, sequence, offset)
    return best


def _segment_sequence(fd: int) -> int:
    raw = os.pread(fd, SEGMENT_HEADER.size, 0)
    if len(raw) < SEGMENT_HEADER.size:
        return 0
    magic, sequence, crc = SEGMENT_HEADER.unpack(raw)
    if magic != SEGMENT_MAGIC or zlib.crc32(raw[:-4]) != crc:
        return 0
    return int(sequence)


class Journal:
    """One process's receive journal in ``directory`` (see the module docstring).

    Use: :meth:`scan` (recovery reads what is past the checkpoint), then :meth:`start` (everything
    scanned is taken as recovered), then :meth:`append`/:meth:`commit`/:meth:`handover` per instance and
    :meth:`stop` at the end (the syncer finishes its work first).
    """

    def __init__(
        self, directory: Path, *, segment_bytes: int = 64 * 2**20, spare_segments: int = 1,
        max_segments: int = 8, sync_seconds: float = 2.0,
    ) -> None:
        if segment_bytes < 4 * BLOCK or segment_bytes % BLOCK:
            raise ValueError(f"A journal segment of {segment_bytes} bytes is not a multiple of {BLOCK} "
                             f"of at least {4 * BLOCK} bytes.")
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.spare_segments = max(1, spare_segments)
        self.max_segments = max(self.spare_segments + 1, max_segments)
        self.sync_seconds = sync_seconds
        self._lock = threading.Lock()
        # the syncer and the preparer each wait on their own condition (of the one lock), woken only when
        # there is work for them: a wake-up per instance cost two threads' GIL round trips on the receive
        # path
        self._syncer_wake = threading.Condition(self._lock)
        self._preparer_wake = threading.Condition(self._lock)
        self._segments: list[_Segment] = []
        self._free: list[_Segment] = []
        self._current: _Segment | None = None
        self._offset = 0
        self._next_sequence = 1
        self._outstanding: dict[tuple[int, int], float] = {}  # (sequence, offset) → reserved at
        self._handed: list[tuple[Record, Path, list[Path], float]] = []
        self._checkpoint = (0, 0)
        self._checkpoint_counter = 0
        self._checkpoint_fd: int | None = None
        self._flush_fd: int | None = None  # see _open_flusher; None: commits fdatasync the segment
        self._flush_block: int | None = None  # its inode-table block
        self._old_flush_fds: list[int] = []  # replaced ones, closed at stop (a commit may be using one)
        self._stopping = False
        self._syncer: threading.Thread | None = None
        self._preparer: threading.Thread | None = None
        self._failed_creating = False
        self.synced_records = 0
        self.recycled = 0
        self.running = False

    # -- recovery ---------------------------------------------------------------------------------------
    def scan(self, *, verify: bool = True) -> Iterator[ScannedRecord]:
        """Every record past the checkpoint, in order; torn ones with ``intact`` False (``verify`` False:
        the data is not read, every record reads as intact — for counting them)."""
        _, sequence, offset = _read_checkpoint(self.directory / CHECKPOINT_NAME)
        found = []
        for path in sorted(self.directory.glob(SEGMENT_GLOB)):
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                found.append((_segment_sequence(fd), path))
            finally:
                os.close(fd)
        for seg_sequence, path in sorted(found):
            if seg_sequence == 0 or seg_sequence < sequence:
                continue
            start = offset if seg_sequence == sequence and offset >= BLOCK else BLOCK
            yield from self._scan_segment(path, seg_sequence, start, verify)

    def _scan_segment(self, path: Path, sequence: int, offset: int, verify: bool) -> Iterator[ScannedRecord]:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            while offset + RECORD_HEADER.size <= size:
                handle.seek(offset)
                raw = handle.read(RECORD_HEADER.size)
                magic, rec_sequence, data_len, meta_len, digest, crc = RECORD_HEADER.unpack(raw)
                if magic not in (RECORD_MAGIC, LEGACY_RECORD_MAGIC) or rec_sequence != sequence:
                    return  # the end of this segment's log
                head = RECORD_HEADER.size + meta_len
                if magic == RECORD_MAGIC:
                    head = _align(head)
                total = head + data_len
                if offset + total > size:
                    return
                meta_raw = handle.read(meta_len)
                if zlib.crc32(raw[:-4] + meta_raw) != crc:
                    return
                meta = json.loads(meta_raw)
                handle.seek(offset + head)
                hasher = data_hash()
                left = data_len if verify else 0
                while left:
                    chunk = handle.read(min(COPY_CHUNK, left))
                    if not chunk:
                        break
                    hasher.update(chunk)
                    left -= len(chunk)
                intact = hasher.intdigest() == digest if verify else True
                yield ScannedRecord(path, offset, meta, data_len, digest, intact, offset + head)
                offset += _align(total)

    # -- lifecycle --------------------------------------------------------------------------------------
    def settle(self) -> None:
        """Take everything :meth:`scan` found as recovered: the checkpoint moves past every segment (for a
        journal that will not be started, e.g. one of a receiver process that is no longer configured)."""
        if not self.directory.is_dir():
            return
        counter, highest, _ = _read_checkpoint(self.directory / CHECKPOINT_NAME)
        for path in self.directory.glob(SEGMENT_GLOB):
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                highest = max(highest, _segment_sequence(fd))
            finally:
                os.close(fd)
        self._checkpoint_counter = counter
        self._checkpoint_fd = self._open_checkpoint()
        try:
            self._write_checkpoint((highest + 1, BLOCK))
        finally:
            os.close(self._checkpoint_fd)
            self._checkpoint_fd = None

    def start(self) -> None:
        """Open the segments, take everything scanned as recovered (a new checkpoint past it), make the
        spare segments and start the syncer and preparer threads. Raises :class:`SpoolError` when the
        folder or its checkpoint cannot be written (the caller stores instances directly then); a
        segment that cannot be made is logged and retried in the background."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            for stale in self.directory.glob("*.tmp"):
                stale.unlink(missing_ok=True)
            self._checkpoint_counter, highest, _ = _read_checkpoint(self.directory / CHECKPOINT_NAME)
            for path in sorted(self.directory.glob(SEGMENT_GLOB)):
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
                highest = max(highest, _segment_sequence(fd))
                if os.fstat(fd).st_size != self.segment_bytes:  # another segment size configured: remake
                    os.close(fd)
                    path.unlink()
                    continue
                segment = _Segment(path, fd)
                self._segments.append(segment)
                self._free.append(segment)
            self._next_sequence = highest + 1
            self._checkpoint_fd = self._open_checkpoint()
            self._write_checkpoint((self._next_sequence, BLOCK))  # the next segment activated has this
        except OSError as exc:
            self.stop()
            raise SpoolError(f"Cannot start the receive journal in '{self.directory}': {exc}.") from exc
        # the first segment and its spares now, before the port opens (on a fresh disk: otherwise the first
        # instances received compete with the preparer writing a spare); the preparer makes later ones
        while len(self._free) <= self.spare_segments and len(self._segments) < self.max_segments:
            if not self._create_segment():
                break
        self._refresh_flusher()  # (after the segments: its inode must not share their inode-table block)
        with self._lock:
            self._activate()
        self._stopping = False
        self._syncer = threading.Thread(target=self._sync_loop, name="journal-syncer", daemon=True)
        self._syncer.start()
        self._preparer = threading.Thread(target=self._prepare_loop, name="journal-preparer", daemon=True)
        self._preparer.start()
        self.running = True
        log.info("Receive journal in '%s': %d segment(s) of %d MB.", self.directory, len(self._segments),
                 self.segment_bytes // 2**20)

    def stop(self) -> None:
        """Finish the syncer's work (every handed-over file durable, the checkpoint written), close."""
        with self._lock:
            self._stopping = True
            self._syncer_wake.notify_all()
            self._preparer_wake.notify_all()
        for thread in (self._syncer, self._preparer):
            if thread is not None:
                thread.join()
        self._syncer = self._preparer = None
        self.running = False
        with self._lock:
            for segment in self._segments:
                with contextlib.suppress(OSError):
                    os.close(segment.fd)
            self._segments.clear()
            self._free.clear()
            self._current = None
            if self._checkpoint_fd is not None:
                os.close(self._checkpoint_fd)
                self._checkpoint_fd = None
            for fd in [*self._old_flush_fds, *([self._flush_fd] if self._flush_fd is not None else [])]:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._old_flush_fds.clear()
            self._flush_fd = self._flush_block = None

    @property
    def flush_file(self) -> Path | None:
        """The flush file commits use (ext4, XFS: see :meth:`_open_flusher`); None: they fdatasync."""
        if self._flush_fd is None:
            return None
        return Path(os.readlink(f"/proc/self/fd/{self._flush_fd}"))

    def _refresh_flusher(self) -> None:
        """Open a flush file whose inode-table block no segment shares (see :meth:`_open_flusher`); on
        failure (logged) commits fdatasync the segment."""
        try:
            fd = self._open_flusher()
        except OSError as exc:
            log.warning("No flush file in '%s' (each commit fdatasyncs its segment): %s", self.directory, exc)
            fd = None
        with self._lock:
            if self._flush_fd is not None:
                self._old_flush_fds.append(self._flush_fd)
            self._flush_fd = fd
            self._flush_block = None if fd is None else (os.fstat(fd).st_ino - 1) // INODES_PER_BLOCK

    def _open_flusher(self) -> int | None:
        """The flush file's descriptor, where commits can use it (ext4 and XFS; None elsewhere).

        Why: ``fdatasync`` of a segment waits for three things one after the other on ext4 without a
        journal (this VM's filesystem): the record's pages, the segment's inode (its mtime changed, so its
        inode-table block is dirty, and ext4 writes it synchronously), then the device cache flush. Under
        CPU contention each wait ends with a wake-up that can take a scheduler tick (measured: the device
        answers in ~20 µs, the fdatasync took 4-6 ms). The inode is not needed to read the record back:
        segments are written in full and fsynced before use and never change size. So a commit writes
        the segment's dirty pages and waits for them (:func:`write_range_and_wait`), then ``fdatasync``-s
        this flush file, which is never written after it is made, to get the device cache flush alone
        (ext4 and XFS flush the device for an fsync of a clean file). It lives in its own folder; while its
        inode shares an inode-table block with a segment's (whose mtime changes dirty that block, which
        its fsync would then write: three waits again), another is made (an empty file takes the lowest free
        inode, so at most a block's worth of them); this is checked again for each new segment."""
        if _SYNC_FILE_RANGE is None or _filesystem_type(self.directory) not in _IN_PLACE_FILESYSTEMS:
            return None
        folder = self.directory / FLUSH_DIR
        folder.mkdir(exist_ok=True)
        with self._lock:
            paths = [segment.path for segment in self._segments]
        taken = {_inode_block(path) for path in paths}
        for attempt in range(2 * INODES_PER_BLOCK):
            path = folder / f"flush-{attempt}"
            if not path.exists():
                os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
                fsync_dir(folder)
                fsync_dir(self.directory)
            if _inode_block(path) not in taken:
                return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return os.open(folder / "flush-0", os.O_RDONLY | os.O_CLOEXEC)

    # -- the receive path -------------------------------------------------------------------------------
    def fits(self, size: int, meta_len: int = 1024) -> bool:
        return _align(RECORD_HEADER.size + meta_len) + _align(size) <= self.segment_bytes - BLOCK

    def append(self, source_fd: int, size: int, digest: int, meta: dict[str, Any]) -> Record:
        """Reserve a record, write its header and copy ``size`` bytes of ``source_fd`` into it.

        Raises :class:`JournalFullError` when the record does not fit a segment or no segment is ready
        (the caller stores the instance directly instead), ``OSError`` for a failed write."""
        meta_raw = _META_ENCODER.encode(meta).encode()
        data_at = _align(RECORD_HEADER.size + len(meta_raw))  # from the record's start
        total = data_at + _align(size)
        if total > self.segment_bytes - BLOCK:
            raise JournalFullError(f"A record of {size} bytes does not fit a journal segment.")
        with self._lock:
            if not self.running or self._stopping:
                raise JournalFullError(f"The journal in '{self.directory}' is not running.")
            if (self._current is None or self._offset + total > self.segment_bytes) and not self._activate():
                raise JournalFullError(f"No spare journal segment in '{self.directory}'.")
            segment, offset = self._current, self._offset
            assert segment is not None
            self._offset += total
            record = Record(segment, segment.sequence, offset, size)
            head = RECORD_HEADER.pack(RECORD_MAGIC, segment.sequence, size, len(meta_raw), digest, 0)[:-4]
            header = head + struct.pack("<I", zlib.crc32(head + meta_raw)) + meta_raw
            try:
                # under the lock: any later record's fdatasync carries this header (recovery walks them);
                # padded to whole pages (see the module docstring)
                os.pwrite(segment.fd, header + bytes(data_at - len(header)), offset)
            except OSError:
                self._offset = offset  # nothing later was reserved: give the space back
                raise
            self._outstanding[(record.sequence, offset)] = time.monotonic()
        try:
            if size % BLOCK:  # the last page whole too (zeros, then the data's end over them)
                os.pwrite(segment.fd, bytes(BLOCK), offset + data_at + size - size % BLOCK)
            _copy(source_fd, segment.fd, size, offset + data_at, writeback=self._flush_fd is not None)
        except OSError:
            self.release(record)
            raise
        return record

    def commit(self, record: Record) -> None:
        """Make ``record`` durable: its segment's pages written and the device cache flushed (one
        fdatasync of the segment, or, on ext4 and XFS, its pages written and waited for and the flush
        file fdatasynced: see :meth:`_open_flusher`)."""
        try:
            # concurrent commits each do this at once: the kernel writes the pages of all of them and
            # merges their cache flushes (measured with 4 associations: as fast as, or slightly faster
            # than, one fdatasync at a time covering the records that waited for it)
            flush_fd = self._flush_fd
            if flush_fd is not None:
                write_range_and_wait(record.segment.fd)  # every earlier header in the segment too
                os.fdatasync(flush_fd)
            else:
                os.fdatasync(record.segment.fd)
        except OSError:
            self.release(record)
            raise

    def handover(self, record: Record, final: Path, new_dirs: list[Path]) -> None:
        """``final`` holds the record's data (not yet fsynced); the syncer makes it and ``new_dirs``'
        entries durable, then the record no longer holds its segment."""
        with self._lock:
            self._handed.append((record, final, new_dirs, time.monotonic()))
            if len(self._handed) == 1 or self._pressed():  # else the syncer is timed for the oldest already
                self._syncer_wake.notify()

    def release(self, record: Record) -> None:
        """``record`` needs no file (refused, a duplicate kept once, a failed write)."""
        with self._lock:
            self._outstanding.pop((record.sequence, record.offset), None)

    def pending(self) -> int:
        """Records reserved whose spool file is not durable yet."""
        with self._lock:
            return len(self._outstanding)

    def backlog(self) -> tuple[int, float]:
        """(:meth:`pending`, :meth:`lag_seconds`) at once (the metrics)."""
        return self.pending(), self.lag_seconds()

    def lag_seconds(self) -> float:
        """Age of the oldest record whose spool file is not durable yet (0 when there is none)."""
        with self._lock:
            oldest = min(self._outstanding.values(), default=None)
        return 0.0 if oldest is None else max(0.0, time.monotonic() - oldest)

    # -- segments ---------------------------------------------------------------------------------------
    def _activate(self) -> bool:
        """Make a free segment the current one (the lock held); False when none is free."""
        if not self._free:
            self._preparer_wake.notify()  # it makes one
            self._syncer_wake.notify()  # and the syncer frees one (it is pressed now)
            return False
        segment = self._free.pop(0)
        segment.sequence = self._next_sequence
        self._next_sequence += 1
        head = struct.pack("<8sQ", SEGMENT_MAGIC, segment.sequence)
        # durable with the first record's fdatasync in this segment (nothing counts before that)
        os.pwrite(segment.fd, head + struct.pack("<I", zlib.crc32(head)), 0)
        self._current, self._offset = segment, BLOCK
        if len(self._free) < self.spare_segments:
            self._preparer_wake.notify()
            self._syncer_wake.notify()
        return True

    def _create_segment(self) -> bool:
        """Write a new zero-filled segment, fsync it and its folder; False when that fails (logged)."""
        number = 0
        names = {s.path.name for s in self._segments}
        while f"segment-{number:04d}.journal" in names:
            number += 1
        final = self.directory / f"segment-{number:04d}.journal"
        tmp = final.with_suffix(".tmp")
        try:
            stat = os.statvfs(self.directory)
            if stat.f_bavail * stat.f_frsize < 2 * self.segment_bytes:  # never take the last free space
                raise OSError(errno.ENOSPC, f"less than twice a segment ({2 * self.segment_bytes} bytes) is "
                                            "free")
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                if not _write_zeros_direct(tmp, self.segment_bytes):
                    zeros = bytes(COPY_CHUNK)
                    for start in range(0, self.segment_bytes, COPY_CHUNK):
                        os.pwrite(fd, zeros[: min(COPY_CHUNK, self.segment_bytes - start)], start)
                os.fsync(fd)
                os.rename(tmp, final)
                fsync_dir(self.directory)
            except OSError:
                os.close(fd)
                raise
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if not self._failed_creating:
                log.error("Cannot create a journal segment in '%s' (instances are stored directly "
                          "meanwhile): %s", self.directory, exc)
            self._failed_creating = True
            return False
        self._failed_creating = False
        segment = _Segment(final, fd)
        with self._lock:
            self._segments.append(segment)
            self._free.append(segment)
        if self.running and self._flush_block is not None and _inode_block(final) == self._flush_block:
            self._refresh_flusher()
        return True

    def _prepare_loop(self) -> None:
        """Keep ``spare_segments`` free segments ready (within ``max_segments``)."""
        while True:
            with self._lock:
                while not self._stopping and not (
                    len(self._free) < self.spare_segments and len(self._segments) < self.max_segments
                ):
                    self._preparer_wake.wait()
                if self._stopping:
                    return
            if not self._create_segment():
                with self._lock:
                    if not self._stopping:
                        self._preparer_wake.wait(5.0)

    # -- the syncer -------------------------------------------------------------------------------------
    def _sync_loop(self) -> None:
        """Make the handed-over files durable in batches: when the oldest has waited ``sync_seconds``,
        when half the segments are in use, or at stop (meanwhile the kernel writes them back on its own,
        so the fsyncs mostly commit metadata; fewer, larger batches mean fewer device cache flushes
        competing with the receive path's fdatasyncs)."""
        while True:
            with self._lock:
                while not self._stopping:
                    waited = time.monotonic() - self._handed[0][3] if self._handed else 0.0
                    if self._handed and (waited >= self.sync_seconds or self._pressed()):
                        break
                    self._syncer_wake.wait(min(1.0, self.sync_seconds - waited) if self._handed else 1.0)
                    if not self._handed:
                        break  # (releases alone can move the checkpoint: look at it once a second)
                stopping = self._stopping
                batch, self._handed = self._handed[:SYNC_BATCH], self._handed[SYNC_BATCH:]
            if batch:
                try:
                    self._make_durable(batch)
                except OSError as exc:  # they keep their segments; recovery redoes them after a restart
                    if stopping:  # a disk that fails every fsync must not hold the shutdown for ever
                        log.error("Cannot make %d received file(s) durable at shutdown: %s; their records "
                                  "stay in the journal in '%s' and are written again at the next start.",
                                  len(batch) + len(self._handed), exc, self.directory)
                        return
                    log.error("Cannot make %d received file(s) durable (retrying): %s", len(batch), exc)
                    with self._lock:
                        self._handed[:0] = batch
                        self._syncer_wake.wait(1.0)
                    continue
                with self._lock:
                    for record, *_ in batch:
                        self._outstanding.pop((record.sequence, record.offset), None)
                    self.synced_records += len(batch)
            self._advance()
            if stopping and not batch:
                return

    def _pressed(self) -> bool:
        """Half the segments in use, or no spare left (the lock held)."""
        in_use = len(self._segments) - len(self._free)
        return in_use >= max(2, self.max_segments // 2) or not self._free

    @staticmethod
    def _make_durable(batch: list[tuple[Record, Path, list[Path], float]]) -> None:
        fds: list[int] = []
        folders: set[Path] = set()
        try:
            for _record, final, new_dirs, _at in batch:
                folders.add(final.parent)
                folders.update(d.parent for d in new_dirs)
                try:
                    fd = os.open(final, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:  # removed meanwhile (retention): nothing to keep
                    continue
                fds.append(fd)
                start_writeback(fd)  # all of the batch at once, then each fsync mostly commits metadata
            for fd in fds:
                os.fsync(fd)
        finally:
            for fd in fds:
                os.close(fd)
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(FileNotFoundError):
                fsync_dir(folder)

    def _advance(self) -> None:
        """Move the checkpoint to the oldest record still outstanding; recycle the segments behind it
        (the syncer thread only)."""
        with self._lock:
            if self._current is None:
                return
            position = min(self._outstanding, default=(self._current.sequence, self._offset))
            if position == self._checkpoint:
                return
        try:
            self._write_checkpoint(position)
        except OSError as exc:
            log.error("Cannot write the journal checkpoint in '%s': %s", self.directory, exc)
            return
        with self._lock:
            for segment in self._segments:
                if 0 < segment.sequence < position[0] and segment is not self._current:
                    segment.sequence = 0
                    self._free.append(segment)
                    self.recycled += 1
            self._preparer_wake.notify()  # (fewer segments to make now)

    def _open_checkpoint(self) -> int:
        path = self.directory / CHECKPOINT_NAME
        if path.exists() and path.stat().st_size == 2 * BLOCK:
            return os.open(path, os.O_RDWR | os.O_CLOEXEC)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.pwrite(fd, bytes(2 * BLOCK), 0)
        os.fsync(fd)
        os.rename(tmp, path)
        fsync_dir(self.directory)
        return fd

    def _write_checkpoint(self, position: tuple[int, int]) -> None:
        assert self._checkpoint_fd is not None
        self._checkpoint_counter += 1
        head = struct.pack("<4sQQQ", CHECKPOINT_MAGIC, self._checkpoint_counter, *position)
        slot = self._checkpoint_counter % 2
        os.pwrite(self._checkpoint_fd, head + struct.pack("<I", zlib.crc32(head)), slot * BLOCK)
        os.fdatasync(self._checkpoint_fd)
        self._checkpoint = position


def open_journal(storage: StorageConfig, number: int) -> Journal | None:
    """Receiving process ``number``'s journal (``0``: the node itself; not started), None when it is off
    (``storage.journal.enabled`` false, or ``storage.fsync`` false: nothing is made durable anyway)."""
    if not (storage.fsync and storage.journal.enabled):
        return None
    config = storage.journal
    return Journal(storage.journal_dir / str(number), segment_bytes=config.segment_mb * 2**20,
                   spare_segments=config.spare_segments, max_segments=config.max_segments,
                   sync_seconds=config.sync_seconds)


def journal_folders(storage: StorageConfig) -> list[Path]:
    """Every receiving process's journal folder that exists (also of processes no longer configured)."""
    if not storage.journal_dir.is_dir():
        return []
    return sorted(p for p in storage.journal_dir.iterdir() if p.is_dir())


def journal_backlog(storage: StorageConfig) -> tuple[int, int]:
    """(records, bytes) past the checkpoints of every receiving process's journal: instances acknowledged
    whose spool file is not known to be fsynced yet (read from disk; ``dicomnode status``)."""
    records = size = 0
    for folder in journal_folders(storage):
        for record in Journal(folder).scan(verify=False):
            records += 1
            size += record.size
    return records, size
