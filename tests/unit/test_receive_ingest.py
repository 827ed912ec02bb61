"""Ingest of received dataset bytes: statuses for good, bad, inconsistent and unpersistable datasets."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from dicomnode.assemble import Assembler
from dicomnode.config import CompletionConfig
from dicomnode.database import Database
from dicomnode.errors import SpoolError
from dicomnode.receive import Ingest
from dicomnode.spool import OutOfSpaceError, Spool, SpoolIndex
from tests.factories import JPEG2000_DIR, ct_series, dataset_hash, dataset_offset
from tests.support import shared_data

EXPLICIT = "1.2.840.10008.1.2.1"


def _ingest(tmp_path: Path, spool: Spool | None = None) -> Ingest:
    spool = spool or Spool(tmp_path / "spool")
    database = Database(tmp_path / "db.sqlite3")
    index = SpoolIndex(database, spool.root)
    return Ingest(spool, index, Assembler(database, index, CompletionConfig(), lambda e: None))


def _payload(path: Path) -> tuple[bytes, str, str, str]:
    raw = path.read_bytes()
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    return (
        raw[dataset_offset(raw) :],
        str(meta.TransferSyntaxUID),
        str(meta.MediaStorageSOPClassUID),
        str(meta.MediaStorageSOPInstanceUID),
    )


def _store(ingest: Ingest, data: bytes, ts: str, sop_class: str, sop_uid: str):
    return ingest.store(
        data, transfer_syntax=ts, sop_class_uid=sop_class, sop_instance_uid=sop_uid, calling_aet="CT1"
    )


@pytest.fixture
def ct_file(tmp_path: Path) -> Path:
    return ct_series(tmp_path / "src", slices=1, rows=32, cols=32, seed="ingest")[0]


def test_good_dataset_is_stored_byte_identical_and_duplicates_are_kept_once(
    tmp_path: Path, ct_file: Path
) -> None:
    ingest = _ingest(tmp_path)
    data, ts, sop_class, sop_uid = _payload(ct_file)
    result = _store(ingest, data, ts, sop_class, sop_uid)
    assert result.status == 0x0000 and not result.duplicate
    stored = ingest.spool.path_for(result.header.study_uid, result.header.series_uid, sop_uid)
    assert dataset_hash(stored) == dataset_hash(ct_file)
    assert pydicom.dcmread(stored).file_meta.SourceApplicationEntityTitle == "CT1"
    again = _store(ingest, data, ts, sop_class, sop_uid)
    assert again.status == 0x0000 and again.duplicate
    assert ingest.index.instance_count(result.header.study_uid) == 1


@pytest.mark.parametrize(
    ("mangle", "status"),
    [
        (lambda d: d[: len(d) // 2], 0xC000),  # truncated inside the pixel data
        (lambda d: d[:-10], 0xC000),
        (lambda d: b"this is not DICOM at all, just some text" * 10, 0xC000),
        (lambda d: b"", 0xC000),
    ],
)
def test_unreadable_payloads_get_cannot_understand(
    tmp_path: Path, ct_file: Path, mangle, status: int
) -> None:
    ingest = _ingest(tmp_path)
    data, ts, sop_class, sop_uid = _payload(ct_file)
    assert _store(ingest, mangle(data), ts, sop_class, sop_uid).status == status
    assert not list(ingest.spool.instance_files())


def _rewrite(path: Path, tmp_path: Path, **changes: str) -> Path:
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    out = tmp_path / "changed.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


@pytest.mark.parametrize(
    "changes",
    [{"StudyInstanceUID": ""}, {"SeriesInstanceUID": "../../etc"}, {"SOPInstanceUID": "1.2.3.4.5.6"}],
)
def test_missing_invalid_or_inconsistent_identifiers_get_a900(tmp_path: Path, ct_file: Path, changes) -> None:
    ingest = _ingest(tmp_path)
    original_sop = pydicom.dcmread(ct_file).SOPInstanceUID
    data, ts, sop_class, _ = _payload(_rewrite(ct_file, tmp_path, **changes))
    result = _store(ingest, data, ts, sop_class, original_sop)
    assert result.status == 0xA900 and result.comment
    assert not list(ingest.spool.instance_files())


def test_empty_dataset_sop_uid_falls_back_to_the_command(tmp_path: Path, ct_file: Path) -> None:
    ingest = _ingest(tmp_path)
    sop_uid = pydicom.dcmread(ct_file).SOPInstanceUID
    data, ts, sop_class, _ = _payload(_rewrite(ct_file, tmp_path, SOPInstanceUID=""))
    result = _store(ingest, data, ts, sop_class, sop_uid)
    assert result.status == 0x0000 and result.header.sop_instance_uid == sop_uid


def test_real_jpeg2000_file_with_empty_study_uid_is_refused(tmp_path: Path) -> None:
    ingest = _ingest(tmp_path)
    path = sorted(shared_data(*JPEG2000_DIR).iterdir())[0]
    data, ts, sop_class, sop_uid = _payload(path)
    assert ts == "1.2.840.10008.1.2.4.90"
    result = _store(ingest, data, ts, sop_class, sop_uid)
    assert result.status == 0xA900 and "Study Instance UID is empty" in result.comment


class FailingSpool(Spool):
    def __init__(self, root: Path, error: Exception) -> None:
        super().__init__(root)
        self.error = error

    def publish(self, part, *args, **kwargs):
        part.discard()
        raise self.error


@pytest.mark.parametrize(
    ("error", "status"),
    [(OutOfSpaceError("No space left."), 0xA700), (SpoolError("Permission denied."), 0xA701)],
)
def test_persist_failures_map_to_out_of_resources(tmp_path: Path, ct_file: Path, error, status: int) -> None:
    ingest = _ingest(tmp_path, FailingSpool(tmp_path / "spool", error))
    data, ts, sop_class, sop_uid = _payload(ct_file)
    result = _store(ingest, data, ts, sop_class, sop_uid)
    assert result.status == status
    assert ingest.index.instance_count(result.header.study_uid if result.header else "x") == 0


def test_index_checkpoints_run_off_the_receive_path_and_keep_the_database_file_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    import sqlite3
    import time

    from dicomnode.receive import ingest as ingest_module

    monkeypatch.setattr(ingest_module, "CHECKPOINT_EVERY", 10)
    ingest = _ingest(tmp_path, Spool(tmp_path / "spool", fsync=False))
    for path in ct_series(tmp_path / "many", slices=25, rows=16, cols=16, seed="checkpoint"):
        assert _store(ingest, *_payload(path)).status == 0x0000
    # the committing thread never checkpoints itself (no C-STORE waits for the WAL's fsyncs) ...
    assert ingest.index.database.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and ingest._checkpointing:
        time.sleep(0.05)
    # ... a thread of its own did (at least the one the 10th commit started; a later one is skipped while
    # it runs): the database file alone, without its WAL, has those rows
    alone = tmp_path / "alone.sqlite3"
    shutil.copyfile(tmp_path / "db.sqlite3", alone)
    rows = sqlite3.connect(alone).execute("SELECT COUNT(*) FROM spool_instances").fetchone()[0]
    assert rows >= 10
