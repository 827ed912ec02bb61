"""Startup recovery of the spool: make the index agree with the files, never deleting acknowledged data.

* ``.tmp/*.part`` files are writes that were never acknowledged (the node answers Success only after the
  rename): they are removed.
* ``<study>/<series>/<sop>.dcm`` files missing from the index (a crash between rename and index commit,
  or SQLite's last transactions lost with ``synchronous=NORMAL``) are read (header only) and indexed.
* Files that cannot be read, or whose folders disagree with their UIDs, are logged and left in place.

Before that, :func:`replay_journal` goes through the receive journal's records past its checkpoint
(instances acknowledged, or about to be, whose spool file may not be durable yet): a file that is
missing, or is still the record's own file but torn (size or checksum differ), is written again from the
record (``.part``, fsync, link, folder fsync); an intact one is fsynced; a file that is another copy of the
instance (a duplicate kept once) is left alone. A record whose own checksum fails was torn by the crash
before its fdatasync returned, so it was never acknowledged: it is dropped with a log line naming it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicomnode.spool.header import HeaderError, InstanceHeader, read_header
from dicomnode.spool.index import RECOVERED_AET, SpoolIndex
from dicomnode.spool.journal import Journal, ScannedRecord, data_hash, fsync_dir
from dicomnode.spool.store import Spool

# index one replayed instance unless it is indexed already: (header, path, size, the record's metadata)
JournalIndexer = Callable[[InstanceHeader, Path, int, dict[str, Any]], None]

log = logging.getLogger(__name__)


@dataclass
class RecoveryReport:
    removed_temp_files: int = 0
    indexed: list[Path] = field(default_factory=list)
    left_alone: list[Path] = field(default_factory=list)


def recover(spool: Spool, index: SpoolIndex) -> RecoveryReport:
    """Remove stale temporary files and index instance files the index does not know."""
    report = RecoveryReport()
    for part in spool.stale_temp_files():
        part.unlink(missing_ok=True)
        report.removed_temp_files += 1
    known = index.indexed_paths()
    for path in spool.instance_files():
        relative = path.relative_to(spool.root).as_posix()
        if relative in known:
            continue
        try:
            header = read_header(path)
            expected = spool.path_for(header.study_uid, header.series_uid, header.sop_instance_uid)
        except (HeaderError, ValueError) as exc:
            log.warning("Recovery left '%s' alone: %s", path, exc)
            report.left_alone.append(path)
            continue
        if expected != path:
            log.warning("Recovery left '%s' alone: its UIDs say it belongs at '%s'.", path, expected)
            report.left_alone.append(path)
            continue
        stat = path.stat()
        index.add(
            header,
            path=path,
            size=stat.st_size,
            transfer_syntax=_transfer_syntax(path),
            calling_aet=RECOVERED_AET,
            received_at=stat.st_mtime,
        )
        report.indexed.append(path)
    if report.removed_temp_files or report.indexed or report.left_alone:
        log.info(
            "Spool recovery: removed %d stale temporary file(s), indexed %d file(s), left %d unreadable.",
            report.removed_temp_files,
            len(report.indexed),
            len(report.left_alone),
        )
    return report


@dataclass
class JournalReport:
    rewritten: list[Path] = field(default_factory=list)  # missing or torn: written again from the record
    synced: list[Path] = field(default_factory=list)  # intact: fsynced
    kept: list[Path] = field(default_factory=list)  # another copy of the instance: left alone
    torn_records: int = 0


def replay_journal(journal: Journal, spool: Spool, indexer: JournalIndexer) -> JournalReport:
    """Make every journaled instance past the checkpoint durable in the spool (see the module docstring),
    index those ``indexer`` does not know, then move the checkpoint past them all (:meth:`Journal.settle`).
    """
    report = JournalReport()
    for record in journal.scan():
        where = f"'{record.segment.name}' at offset {record.offset}"
        if not record.intact:
            log.warning("Journal recovery dropped the torn record %s (%s, %d bytes): its checksum fails, so "
                        "it was never acknowledged.", where, record.meta.get("path", "?"), record.size)
            report.torn_records += 1
            continue
        try:
            path = _record_path(spool, record.meta)
        except ValueError as exc:
            log.error("Journal recovery skipped the record %s: %s", where, exc)
            continue
        outcome = _materialise(spool, record, path)
        getattr(report, outcome).append(path)
        if outcome == "kept":
            continue
        try:
            header = read_header(path)
        except HeaderError as exc:  # the spool recovery below leaves it alone and says so
            log.warning("Journal recovery could not read back '%s': %s", path, exc)
            continue
        indexer(header, path, record.size, record.meta)
    journal.settle()
    if report.rewritten or report.synced or report.torn_records:
        log.info("Journal recovery in '%s': %d file(s) written again, %d made durable, %d kept, %d torn "
                 "record(s) dropped.", journal.directory, len(report.rewritten), len(report.synced),
                 len(report.kept), report.torn_records)
    return report


def _record_path(spool: Spool, meta: dict[str, Any]) -> Path:
    parts = str(meta.get("path", "")).split("/")
    if len(parts) != 3 or not parts[2].endswith(".dcm"):
        raise ValueError(f"its spool path '{meta.get('path')}' is not <study>/<series>/<sop>.dcm")
    return spool.path_for(parts[0], parts[1], parts[2][: -len(".dcm")])


def _materialise(spool: Spool, record: ScannedRecord, path: Path) -> str:
    """'kept', 'synced' or 'rewritten' (see :func:`replay_journal`)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        stat = None
    if stat is not None:
        if (stat.st_ino, stat.st_dev) != (record.meta.get("ino"), record.meta.get("dev")):
            return "kept"
        if stat.st_size == record.size and _file_digest(path) == record.digest:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            fsync_dir(path.parent)
            return "synced"
        path.unlink()
    study, series = path.parent.parent.name, path.parent.name
    spool.write(study, series, path.stem, record.chunks())
    return "rewritten"


def _file_digest(path: Path) -> int:
    hasher = data_hash()
    with open(path, "rb") as handle:
        while chunk := handle.read(1024 * 1024):
            hasher.update(chunk)
    return int(hasher.intdigest())


def index_replayed(index: SpoolIndex) -> JournalIndexer:
    """An indexer for :func:`replay_journal` that adds the rows ``index`` lacks (the main process)."""

    def add(header: InstanceHeader, path: Path, size: int, meta: dict[str, Any]) -> None:
        if not index.has(header.sop_instance_uid):
            index.add(header, path=path, size=size, transfer_syntax=str(meta.get("ts", "")),
                      calling_aet=str(meta.get("aet", RECOVERED_AET)), received_at=meta.get("at"))

    return add


def _transfer_syntax(path: Path) -> str:
    from pydicom.errors import InvalidDicomError
    from pydicom.filereader import read_file_meta_info

    try:
        return str(read_file_meta_info(os.fspath(path)).get("TransferSyntaxUID", ""))
    except (OSError, ValueError, InvalidDicomError):  # the header was readable; only this column is lost
        return ""
