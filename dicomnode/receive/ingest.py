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

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

from dicomnode.assemble.assembler import Assembler
from dicomnode.errors import InvalidUIDError, SpoolError
from dicomnode.observability.logging import log_context, register_phi
from dicomnode.spool.header import HeaderError, InstanceHeader, check_complete, parse_dataset
from dicomnode.spool.index import SpoolIndex
from dicomnode.spool.store import OutOfSpaceError, Spool

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_SPACE = 0xA700
SPOOL_WRITE_FAILED = 0xA701
INDEX_WRITE_FAILED = 0xA702
IDENTIFIERS_INVALID = 0xA900
CANNOT_UNDERSTAND = 0xC000

IMPLEMENTATION_VERSION = "DICOMNODE_01"


@dataclass(frozen=True)
class StoreResult:
    status: int
    comment: str = ""  # short reason for the peer (ErrorComment, ≤ 64 characters)
    header: InstanceHeader | None = None
    duplicate: bool = False


def file_meta_bytes(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, calling_aet: str
) -> bytes:
    """Preamble, ``DICM`` and the encoded File Meta Information group for a received dataset."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    if calling_aet:
        meta.SourceApplicationEntityTitle = calling_aet
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return b"\x00" * 128 + b"DICM" + buffer.getvalue()


class Ingest:
    """Turns received datasets into stored, indexed instances; never raises for a bad dataset."""

    def __init__(
        self,
        spool: Spool,
        index: SpoolIndex,
        assembler: Assembler,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spool = spool
        self.index = index
        self.assembler = assembler
        self.clock = clock
        # observers (e.g. metrics): called with the size in bytes of every newly stored instance, and
        # with the status as text ('0xA700') of every refused or failed one
        self.on_stored: list[Callable[[int], None]] = []
        self.on_failed: list[Callable[[str], None]] = []

    def store(
        self,
        encoded: bytes | memoryview,
        *,
        transfer_syntax: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        calling_aet: str,
    ) -> StoreResult:
        """Store one dataset (lines logged carry ``calling_aet``/``sop_uid``); observers hear the outcome."""
        with log_context(calling_aet=calling_aet, sop_uid=sop_instance_uid):
            result = self._store(encoded, transfer_syntax=transfer_syntax, sop_class_uid=sop_class_uid,
                                 sop_instance_uid=sop_instance_uid, calling_aet=calling_aet)
        if result.status != SUCCESS:
            for failed in self.on_failed:
                failed(f"0x{result.status:04X}")
        elif not result.duplicate:
            for stored in self.on_stored:
                stored(len(encoded))
        return result

    def _store(
        self,
        encoded: bytes | memoryview,
        *,
        transfer_syntax: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        calling_aet: str,
    ) -> StoreResult:
        where = f"instance '{sop_instance_uid}' from '{calling_aet}'"
        try:
            check_complete(encoded, transfer_syntax)
            header = parse_dataset(
                encoded, transfer_syntax, sop_instance_uid=sop_instance_uid, sop_class_uid=sop_class_uid
            )
        except HeaderError as exc:
            log.warning("Refused %s (0x%04X): %s", where, CANNOT_UNDERSTAND, exc)
            return StoreResult(CANNOT_UNDERSTAND, "Not a complete DICOM dataset")
        register_phi(header.patient_name, header.patient_id)  # until store()'s log_context ends
        if sop_instance_uid and header.sop_instance_uid != sop_instance_uid:
            log.warning(
                "Refused %s (0x%04X): the dataset's SOP Instance UID is '%s'.",
                where,
                IDENTIFIERS_INVALID,
                header.sop_instance_uid,
            )
            return StoreResult(IDENTIFIERS_INVALID, "SOP Instance UID differs from command")
        try:
            stored = self.spool.write(
                header.study_uid,
                header.series_uid,
                header.sop_instance_uid,
                [
                    file_meta_bytes(sop_class_uid, header.sop_instance_uid, transfer_syntax, calling_aet),
                    encoded,
                ],
            )
        except InvalidUIDError as exc:
            log.warning("Refused %s (0x%04X): %s", where, IDENTIFIERS_INVALID, exc)
            return StoreResult(IDENTIFIERS_INVALID, str(exc)[:64])
        except OutOfSpaceError as exc:
            log.error("Could not store %s (0x%04X): %s", where, OUT_OF_SPACE, exc)
            return StoreResult(OUT_OF_SPACE, "No space left on the spool")
        except SpoolError as exc:
            log.error("Could not store %s (0x%04X): %s", where, SPOOL_WRITE_FAILED, exc)
            return StoreResult(SPOOL_WRITE_FAILED, "Spool write failed")
        try:
            with self.index.database.transaction() as conn:
                new = self.index.add(
                    header,
                    path=stored.path,
                    size=stored.size,
                    transfer_syntax=transfer_syntax,
                    calling_aet=calling_aet,
                    received_at=self.clock(),
                    conn=conn,
                )
                if new:
                    self.assembler.on_instance(header, conn)
        except sqlite3.Error as exc:
            # The file is complete on disk; recovery indexes it at the next start, a resend is a duplicate.
            log.error("Could not index %s (0x%04X): %s.", where, INDEX_WRITE_FAILED, exc)
            return StoreResult(INDEX_WRITE_FAILED, "Index write failed")
        if not new:
            log.info("Duplicate %s of series '%s' kept once.", where, header.series_uid)
        return StoreResult(SUCCESS, header=header, duplicate=not new)
