"""One received C-STORE dataset → a durable spool file, an index row and an assembler update.

The dataset is handled as the encoded bytes received on the wire: its structure is checked (every
element complete), its header read up to PixelData, and the bytes written unchanged after a Part 10
file meta header. Pixel data is never decoded and compressed data is stored as received.

UID rule (documented in README "Spool layout"): the SOP Instance UID comes from the dataset; when the
dataset's value is empty the C-STORE command's Affected SOP Instance UID is used (the same value a file's
MediaStorageSOPInstanceUID holds). A dataset SOP Instance UID that differs from the command's, and an
empty or invalid Study or Series Instance UID, are refused with 0xA900.

Statuses (PS3.4 Annex B): 0x0000 success (also for a duplicate, which is kept once);
0xA700 out of space; 0xA701 the spool could not be written (permission, I/O error); 0xA702 the index
could not be written; 0xA900 identifiers missing/invalid/inconsistent; 0xC000 not a readable or
complete DICOM dataset.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

from dicomnode.assemble.assembler import Assembler
from dicomnode.errors import InvalidUIDError, SpoolError
from dicomnode.observability.logging import log_context, register_phi
from dicomnode.spool.header import HeaderError, InstanceHeader
from dicomnode.spool.index import SpoolIndex
from dicomnode.spool.store import OutOfSpaceError, PartFile, Spool, validate_uid
from dicomnode.spool.walker import DatasetWalker, InflateLimitError

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_SPACE = 0xA700
SPOOL_WRITE_FAILED = 0xA701
INDEX_WRITE_FAILED = 0xA702
IDENTIFIERS_INVALID = 0xA900
CANNOT_UNDERSTAND = 0xC000

IMPLEMENTATION_VERSION = "DICOMNODE_01"
# index commits between two WAL checkpoints, which run on a thread of their own: SQLite's automatic
# checkpoint (every 1000 WAL pages) fsyncs the WAL and the database inside the COMMIT that triggers it,
# which made one C-STORE in ~150 wait for two device cache flushes (measured: mean commit 370 µs, median
# 40 µs; the largest five of 500 took half the time)
CHECKPOINT_EVERY = 200


@dataclass(frozen=True)
class StoreResult:
    status: int
    comment: str = ""  # short reason for the peer (ErrorComment, ≤ 64 characters)
    header: InstanceHeader | None = None
    duplicate: bool = False


def _meta_element(group_element: tuple[int, int], vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH2sHI", *group_element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", *group_element, vr, len(value)) + value


def _even(value: str, pad: bytes) -> bytes:
    raw = value.encode("ascii", errors="replace")
    return raw + pad if len(raw) % 2 else raw


def file_meta_bytes(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, calling_aet: str
) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group (PS3.10 7.1) for a received dataset.

    Encoded directly (Explicit VR Little Endian, seven fixed elements): it is written once per instance
    on the receive path, where pydicom's general writer costs more than the rest of the header work.
    """
    elements = [
        _meta_element((0x0002, 0x0001), b"OB", b"\x00\x01"),
        _meta_element((0x0002, 0x0002), b"UI", _even(sop_class_uid, b"\0")),
        _meta_element((0x0002, 0x0003), b"UI", _even(sop_instance_uid, b"\0")),
        _meta_element((0x0002, 0x0010), b"UI", _even(transfer_syntax, b"\0")),
        _meta_element((0x0002, 0x0012), b"UI", _even(PYDICOM_IMPLEMENTATION_UID, b"\0")),
        _meta_element((0x0002, 0x0013), b"SH", _even(IMPLEMENTATION_VERSION, b" ")),
    ]
    if calling_aet:
        elements.append(_meta_element((0x0002, 0x0016), b"AE", _even(calling_aet, b" ")))
    body = b"".join(elements)
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body))
    return b"\x00" * 128 + b"DICM" + group_length + body


class InstanceWriter:
    """One C-STORE dataset streamed to the spool as it arrives: :meth:`feed` each fragment, then
    :meth:`finish` (the status) or :meth:`abort` (the association ended: nothing is kept).

    Only one element header and the indexed identifiers are held in memory, whatever the object's size.
    The first problem (an incomplete or over-deep dataset, a deflate bomb, a write error) stops the
    writing and removes the partial file; the rest of the dataset is read and ignored, and
    :meth:`finish` answers the status for that problem.
    """

    def __init__(
        self, ingest: Ingest, *, transfer_syntax: str, sop_class_uid: str, sop_instance_uid: str,
        calling_aet: str,
    ) -> None:
        self.ingest = ingest
        self.transfer_syntax = transfer_syntax
        self.sop_class_uid = sop_class_uid.strip()
        self.sop_instance_uid = sop_instance_uid.strip()
        self.calling_aet = calling_aet
        self.where = f"instance '{self.sop_instance_uid}' from '{calling_aet}'"
        self.walker = DatasetWalker(
            transfer_syntax, max_depth=ingest.max_sequence_depth, max_inflated=ingest.max_inflated_bytes
        )
        self._failed: StoreResult | None = None
        self._part: PartFile | None = None
        if not self.sop_instance_uid or not self.sop_class_uid:
            self._fail(IDENTIFIERS_INVALID, "Command lacks Affected SOP UIDs",
                       "the C-STORE command has no Affected SOP Class/Instance UID.")
            return
        try:
            validate_uid(self.sop_class_uid, "Affected SOP Class UID")
            self._part = ingest.spool.open_part(self.sop_instance_uid)
            self._part.write(
                file_meta_bytes(self.sop_class_uid, self.sop_instance_uid, transfer_syntax, calling_aet)
            )
        except InvalidUIDError as exc:
            self._fail(IDENTIFIERS_INVALID, str(exc)[:64], str(exc))
        except SpoolError as exc:
            self._spool_failed(exc)

    @property
    def received(self) -> int:
        return self.walker.received

    def _fail(self, status: int, comment: str, reason: str, *, error: bool = False) -> None:
        if self._failed is None:
            with log_context(calling_aet=self.calling_aet, sop_uid=self.sop_instance_uid):
                verb = "Could not store" if error else "Refused"
                (log.error if error else log.warning)("%s %s (0x%04X): %s", verb, self.where, status, reason)
            self._failed = StoreResult(status, comment)
        if self._part is not None:
            self._part.discard()
            self._part = None

    def _spool_failed(self, exc: SpoolError) -> None:
        if isinstance(exc, OutOfSpaceError):
            self._fail(OUT_OF_SPACE, "No space left on the spool", str(exc), error=True)
        else:
            self._fail(SPOOL_WRITE_FAILED, "Spool write failed", str(exc), error=True)

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        """Check and write one fragment of the dataset (never raises for bad data or a failed write)."""
        if self._failed is not None:
            self.walker.received += len(chunk)
            return
        try:
            self.walker.feed(chunk)
            if self._part is not None:
                self._part.write(chunk)
        except InflateLimitError as exc:
            self._fail(OUT_OF_SPACE, "Deflated dataset expands beyond the limit", str(exc))
        except HeaderError as exc:
            self._fail(CANNOT_UNDERSTAND, _comment(exc), str(exc))
        except SpoolError as exc:
            self._spool_failed(exc)

    def abort(self) -> None:
        """The dataset will not complete (A-ABORT, lost connection): drop the partial file."""
        if self._part is not None:
            self._part.discard()
            self._part = None

    def finish(self, *, report: bool = True) -> StoreResult:
        """Check the end of the dataset, publish the file durably and index it; the C-STORE status.

        Lines logged meanwhile carry ``calling_aet``/``sop_uid`` (and never the patient's name or ID);
        the ingest's observers hear the outcome (``report`` False: when the caller calls :meth:`report`,
        as the association does once the response is sent: a receiver process's observer writes to the
        main process's pipe, whose wake-up competed with the response for the CPU)."""
        with log_context(calling_aet=self.calling_aet, sop_uid=self.sop_instance_uid):
            result = self._finish()
        if report:
            self.report(result)
        return result

    def report(self, result: StoreResult) -> None:
        """Tell the ingest's observers the outcome of :meth:`finish`."""
        if result.status != SUCCESS:
            for failed in self.ingest.on_failed:
                failed(f"0x{result.status:04X}")
        elif not result.duplicate:
            for stored in self.ingest.on_stored:
                stored(self.received)

    def _finish(self) -> StoreResult:
        if self._failed is not None:
            return self._failed
        try:
            header = self.walker.finish(
                sop_instance_uid=self.sop_instance_uid, sop_class_uid=self.sop_class_uid
            )
        except HeaderError as exc:
            self._fail(CANNOT_UNDERSTAND, _comment(exc), str(exc))
            return self._failed  # type: ignore[return-value]
        register_phi(header.patient_name, header.patient_id)  # until finish()'s log_context ends
        if header.sop_instance_uid != self.sop_instance_uid:
            self._fail(IDENTIFIERS_INVALID, "SOP Instance UID differs from command",
                       f"the dataset's SOP Instance UID is '{header.sop_instance_uid}'.")
            return self._failed  # type: ignore[return-value]
        if header.sop_class_uid != self.sop_class_uid:
            self._fail(IDENTIFIERS_INVALID, "SOP Class UID differs from command",
                       f"the dataset's SOP Class UID is '{header.sop_class_uid}', the command's "
                       f"'{self.sop_class_uid}'.")
            return self._failed  # type: ignore[return-value]
        part, self._part = self._part, None
        assert part is not None  # open unless failed
        try:
            stored = self.ingest.spool.publish_journaled(
                part, header.study_uid, header.series_uid, header.sop_instance_uid,
                {"aet": self.calling_aet, "ts": self.transfer_syntax, "at": self.ingest.clock()},
            )
        except InvalidUIDError as exc:
            self._fail(IDENTIFIERS_INVALID, str(exc)[:64], str(exc))
            return self._failed  # type: ignore[return-value]
        except SpoolError as exc:
            self._spool_failed(exc)
            return self._failed  # type: ignore[return-value]
        return self.ingest.index_stored(header, stored.path, stored.size, self.transfer_syntax, self.where,
                                        self.calling_aet)


def _comment(exc: HeaderError) -> str:
    if "nested" in str(exc):
        return "Sequences nested too deep"
    return "Not a complete DICOM dataset"


class Ingest:
    """Turns received datasets into stored, indexed instances; never raises for a bad dataset."""

    def __init__(
        self,
        spool: Spool,
        index: SpoolIndex,
        assembler: Assembler,
        *,
        clock: Callable[[], float] = time.time,
        max_sequence_depth: int = 64,
        max_inflated_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        """Every receiving process (the node and each receiver process) has its own :class:`Ingest` and
        commits its own rows: see :meth:`commit_row`."""
        self.spool = spool
        self.index = index
        self.assembler = assembler
        self.clock = clock
        self.max_sequence_depth = max_sequence_depth
        self.max_inflated_bytes = max_inflated_bytes
        # observers (e.g. metrics): called with the size in bytes of every newly stored instance, and
        # with the status as text ('0xA700') of every refused or failed one
        self.on_stored: list[Callable[[int], None]] = []
        self.on_failed: list[Callable[[str], None]] = []
        self._writer = IndexWriterLock(index.database.path)
        self._queue: list[IndexRow] = []
        self._queue_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._local = threading.local()  # the committing thread's connection, once tuned
        self._commits = 0  # since the last checkpoint (under the commit lock)
        self._checkpointing = False

    def begin(
        self, *, transfer_syntax: str, sop_class_uid: str, sop_instance_uid: str, calling_aet: str
    ) -> InstanceWriter:
        """Start streaming one C-STORE dataset (see :class:`InstanceWriter`)."""
        return InstanceWriter(self, transfer_syntax=transfer_syntax, sop_class_uid=sop_class_uid,
                              sop_instance_uid=sop_instance_uid, calling_aet=calling_aet)

    def store(
        self,
        encoded: bytes | memoryview,
        *,
        transfer_syntax: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        calling_aet: str,
    ) -> StoreResult:
        """Store one whole encoded dataset (the streaming path fed in one piece)."""
        writer = self.begin(transfer_syntax=transfer_syntax, sop_class_uid=sop_class_uid,
                            sop_instance_uid=sop_instance_uid, calling_aet=calling_aet)
        writer.feed(encoded)
        return writer.finish()

    def index_stored(
        self, header: InstanceHeader, path: Path, size: int, transfer_syntax: str, where: str,
        calling_aet: str,
    ) -> StoreResult:
        """Index a published file and tell the assembler; returns once the row is committed.

        Group commit: see :meth:`commit_row`.
        """
        pending = IndexRow(header, path, size, transfer_syntax, calling_aet, self.clock())
        self.commit_row(pending)
        if pending.error is not None:
            # The file is complete on disk; recovery indexes it at the next start, a resend is a duplicate.
            log.error("Could not index %s (0x%04X): %s.", where, INDEX_WRITE_FAILED, pending.error)
            return StoreResult(INDEX_WRITE_FAILED, "Index write failed")
        if not pending.new:
            log.info("Duplicate %s of series '%s' kept once.", where, header.series_uid)
        return StoreResult(SUCCESS, header=header, duplicate=not pending.new)

    def commit_row(self, pending: IndexRow) -> None:
        """Commit ``pending`` with the rows of every thread waiting at the same moment (group commit).

        The rows of all this process's threads waiting at the same moment go into one transaction, written
        by whichever thread gets the commit lock first. Between processes (the node and its receiver
        processes each commit their own rows) the transactions take turns on :class:`IndexWriterLock`,
        so that a waiting process wakes as soon as the other's COMMIT is done instead of sleeping in
        SQLite's busy handler (1, 2, 5, 10 … ms). Sets ``pending.new`` or ``pending.error``."""
        with self._queue_lock:
            self._queue.append(pending)
        with self._commit_lock:
            if pending.new is None and pending.error is None:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._commit(batch)

    def _commit(self, batch: list[IndexRow]) -> None:
        database = self.index.database
        try:
            conn = database.conn
            if getattr(self._local, "conn", None) is not conn:
                conn.execute("PRAGMA wal_autocheckpoint=0")  # see CHECKPOINT_EVERY
                self._local.conn = conn
            # (the lock and the transaction spelled out: two context managers cost ~15 µs per instance)
            self._writer.acquire()
            try:
                own = not conn.in_transaction  # (as Database.transaction: nested use joins the outer one)
                if own:
                    conn.execute("BEGIN IMMEDIATE")
                try:
                    for row in batch:
                        row.new = self.index.add(
                            row.header, path=row.path, size=row.size, transfer_syntax=row.transfer_syntax,
                            calling_aet=row.calling_aet, received_at=row.received_at, conn=conn,
                        )
                        if row.new:
                            self.assembler.on_instance(row.header, conn)
                except BaseException:
                    if own:
                        conn.execute("ROLLBACK")
                    raise
                if own:
                    conn.execute("COMMIT")
            finally:
                self._writer.release()
        except sqlite3.Error as exc:
            for row in batch:
                row.new, row.error = None, exc
            return
        self._commits += 1
        if self._commits >= CHECKPOINT_EVERY and not self._checkpointing:
            self._commits, self._checkpointing = 0, True
            threading.Thread(target=self._checkpoint, name="index-checkpoint", daemon=True).start()

    def _checkpoint(self) -> None:
        """Copy the index's WAL into the database (PASSIVE: never blocks a writer), off the receive path."""
        database = self.index.database
        try:
            database.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            log.warning("The index's WAL checkpoint failed (the next one retries): %s", exc)
        finally:
            database.close()  # this thread's connection
            self._checkpointing = False


class IndexWriterLock:
    """An exclusive ``flock`` on ``<database>-receive.lock`` held around each receive-path index
    transaction, shared by every process receiving into the same database (one writer at a time; the
    kernel wakes the next waiter when it is released). Other writers of the database (completion timers,
    jobs) do not take it: SQLite's busy timeout covers the rare overlap with them.

    ``flock`` locks belong to the open file, so this serialises processes only: the threads of one
    process are serialised by the caller (the group commit's lock)."""

    def __init__(self, database_path: Path) -> None:
        self.path = Path(f"{database_path}-receive.lock")
        self._fd: int | None = None
        self._pid = 0

    def acquire(self) -> None:
        """Take the lock (waits for the other processes' transactions); raises ``sqlite3.OperationalError``
        when the lock file cannot be opened."""
        if self._fd is None or self._pid != os.getpid():  # opened once per process (not inherited)
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise sqlite3.OperationalError(
                    f"Cannot open the index writer lock '{self.path}': {exc.strerror}.") from exc
            self._pid = os.getpid()
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def release(self) -> None:
        assert self._fd is not None
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    @contextmanager
    def held(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()


@dataclass
class IndexRow:
    """A stored instance waiting for its index row; ``new`` (False: a duplicate) or ``error`` once done."""

    header: InstanceHeader
    path: Path
    size: int
    transfer_syntax: str
    calling_aet: str
    received_at: float
    new: bool | None = None
    error: sqlite3.Error | None = None
