"""Startup recovery of the spool: make the index agree with the files, never deleting acknowledged data.

* ``.tmp/*.part`` files are writes that were never acknowledged (the node answers Success only after the
  rename): they are removed.
* ``<study>/<series>/<sop>.dcm`` files missing from the index (a crash between rename and index commit,
  or SQLite's last transactions lost with ``synchronous=NORMAL``) are read (header only) and indexed.
* Files that cannot be read, or whose folders disagree with their UIDs, are logged and left in place.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from dicomnode.spool.header import HeaderError, read_header
from dicomnode.spool.index import RECOVERED_AET, SpoolIndex
from dicomnode.spool.store import Spool

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


def _transfer_syntax(path: Path) -> str:
    from pydicom.errors import InvalidDicomError
    from pydicom.filereader import read_file_meta_info

    try:
        return str(read_file_meta_info(os.fspath(path)).get("TransferSyntaxUID", ""))
    except (OSError, ValueError, InvalidDicomError):  # the header was readable; only this column is lost
        return ""
