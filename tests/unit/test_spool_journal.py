"""The receive journal: one fdatasync per instance, the syncer, recycling, and recovery after a crash."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from dicomnode.database import Database
from dicomnode.spool import Spool, SpoolIndex, recover
from dicomnode.spool.journal import BLOCK, FLUSH_DIR, RECORD_HEADER, Journal
from dicomnode.spool.recovery import index_replayed, replay_journal
from dicomnode.spool.store import PartFile
from tests.factories import ct_series

SEGMENT = 64 * 1024  # small segments: a few instances each


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    journal = Journal(tmp_path / "journal", segment_bytes=SEGMENT, spare_segments=1, max_segments=4)
    journal.start()
    yield journal
    journal.stop()


@pytest.fixture
def spool(tmp_path: Path, journal: Journal) -> Spool:
    return Spool(tmp_path / "spool", journal=journal)


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    return ct_series(tmp_path / "src", slices=40, rows=48, cols=48, seed="journal")  # ~5 KB each


def _uids(path: Path) -> tuple[str, str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def _part(spool: Spool, path: Path) -> tuple[PartFile, tuple[str, str, str]]:
    uids = _uids(path)
    part = spool.open_part(uids[2])
    data = path.read_bytes()
    for start in range(0, len(data), 1000):
        part.write(data[start : start + 1000])
    return part, uids


def _store(spool: Spool, path: Path) -> Path:
    part, uids = _part(spool, path)
    stored = spool.publish_journaled(part, *uids, {"aet": "CT1", "ts": "1.2.840.10008.1.2.1", "at": 1.0})
    return stored.path


def _replay(tmp_path: Path, spool: Spool) -> tuple[SpoolIndex, object]:
    index = SpoolIndex(Database(tmp_path / "db.sqlite3"), spool.root)
    fresh = Journal(tmp_path / "journal", segment_bytes=SEGMENT)
    report = replay_journal(fresh, spool, index_replayed(index))
    return index, report


def test_a_journaled_instance_is_stored_whole_and_made_durable_by_the_syncer(
    spool: Spool, journal: Journal, files: list[Path]
) -> None:
    stored = [_store(spool, f) for f in files[:5]]
    for source, path in zip(files, stored, strict=False):
        assert path.read_bytes() == source.read_bytes()
    assert not list(spool.tmp_dir.iterdir())
    journal.stop()  # the syncer finishes first
    assert journal.synced_records == 5 and journal.pending() == 0
    assert list(journal.scan()) == []  # the checkpoint is past every record


def test_segments_are_recycled_and_the_journal_stays_bounded(
    spool: Spool, journal: Journal, files: list[Path]
) -> None:
    for source in files:  # 40 × ~5 KB through 64 KB segments: several times round
        _store(spool, source)
    journal.stop()
    assert journal.recycled >= 3
    assert len(list(journal.directory.glob("segment-*.journal"))) <= 4
    for source in files:
        study, series, sop = _uids(source)
        assert (spool.root / study / series / f"{sop}.dcm").read_bytes() == source.read_bytes()


def test_an_instance_larger_than_a_segment_is_stored_directly(tmp_path: Path, spool: Spool,
                                                              journal: Journal) -> None:
    (big,) = ct_series(tmp_path / "big", slices=1, rows=256, cols=256, seed="big")  # 128 KB > a segment
    path = _store(spool, big)
    assert path.read_bytes() == big.read_bytes()
    assert journal.pending() == 0 and list(journal.scan()) == []


def test_a_duplicate_keeps_the_first_copy(spool: Spool, journal: Journal, files: list[Path],
                                         tmp_path: Path) -> None:
    first = _store(spool, files[0])
    part, uids = _part(spool, files[1])  # other bytes under the first one's UIDs
    again = spool.publish_journaled(part, *_uids(files[0]), {"aet": "CT2"})
    assert again.duplicate and again.path == first
    assert first.read_bytes() == files[0].read_bytes()


def test_recovery_rewrites_missing_and_torn_files_and_drops_a_torn_record(
    tmp_path: Path, spool: Spool, journal: Journal, files: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    a = _store(spool, files[0])
    # b: committed, but the crash came before its final name (a record that holds the checkpoint back)
    part_b, uids_b = _part(spool, files[1])
    assert part_b.hasher is not None
    record_b = journal.append(part_b.fd, part_b.size, part_b.hasher.intdigest(),
                              {"path": "/".join(uids_b[:2]) + f"/{uids_b[2]}.dcm",
                               "ino": 0, "dev": 0, "aet": "CT1", "ts": "1.2.840.10008.1.2.1", "at": 5.0})
    journal.commit(record_b)
    part_b.discard()
    # c: published, then the crash tore its not-yet-durable file (same inode, half the bytes)
    c = _store(spool, files[2])
    os.truncate(c, c.stat().st_size // 2)
    # d: the crash came while its bytes were being copied: the record's checksum fails
    part_d, uids_d = _part(spool, files[3])
    assert part_d.hasher is not None
    record_d = journal.append(part_d.fd, part_d.size, part_d.hasher.intdigest(),
                              {"path": "/".join(uids_d[:2]) + f"/{uids_d[2]}.dcm", "ino": 0, "dev": 0})
    part_d.discard()
    segment_bytes = record_d.segment.path.read_bytes()
    data_at = segment_bytes.index(files[3].read_bytes(), record_d.offset)
    assert data_at > record_d.offset + RECORD_HEADER.size
    with open(record_d.segment.path, "r+b") as handle:  # the end of its data never reached the disk
        handle.seek(data_at + record_d.size - 100)
        handle.write(b"\0" * 100)
    # e: after the torn record, intact and published
    e = _store(spool, files[4])
    journal.stop()  # (what a crash leaves: b and d never finished, so the checkpoint stays before them)

    caplog.set_level(logging.INFO, logger="dicomnode.spool.recovery")
    index, report = _replay(tmp_path, spool)
    b = spool.root / uids_b[0] / uids_b[1] / f"{uids_b[2]}.dcm"
    assert b.read_bytes() == files[1].read_bytes()
    assert c.read_bytes() == files[2].read_bytes()
    assert e.read_bytes() == files[4].read_bytes() and a.read_bytes() == files[0].read_bytes()
    assert not (spool.root / uids_d[0] / uids_d[1] / f"{uids_d[2]}.dcm").exists()
    assert report.torn_records == 1  # type: ignore[attr-defined]
    assert {b, c} <= set(report.rewritten)  # type: ignore[attr-defined]
    dropped = [r.getMessage() for r in caplog.records if "dropped the torn record" in r.getMessage()]
    assert len(dropped) == 1 and record_d.segment.path.name in dropped[0] and uids_d[2] in dropped[0]
    rows = {r["sop_instance_uid"]: r for r in index.database.conn.execute("SELECT * FROM spool_instances")}
    assert rows[uids_b[2]]["calling_aet"] == "CT1" and rows[uids_b[2]]["received_at"] == 5.0
    assert uids_d[2] not in rows
    # replayed once: the checkpoint is past it all, and the spool recovery finds nothing more to index
    assert list(Journal(tmp_path / "journal", segment_bytes=SEGMENT).scan()) == []
    recover(spool, index)
    assert index.indexed_paths() == {p.relative_to(spool.root).as_posix() for p in (a, b, c, e)}


def test_recovery_keeps_another_copy_and_is_idempotent(
    tmp_path: Path, spool: Spool, journal: Journal, files: list[Path]
) -> None:
    part, uids = _part(spool, files[0])
    assert part.hasher is not None
    record = journal.append(part.fd, part.size, part.hasher.intdigest(),
                            {"path": "/".join(uids[:2]) + f"/{uids[2]}.dcm", "ino": 1, "dev": 1})
    journal.commit(record)  # never released: stays past the checkpoint
    part.discard()
    kept = spool.root / uids[0] / uids[1] / f"{uids[2]}.dcm"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(files[0].read_bytes()[:-10] + b"0123456789")  # another (complete) copy
    journal.stop()
    _, report = _replay(tmp_path, spool)
    assert report.kept == [kept]  # type: ignore[attr-defined]
    assert kept.read_bytes().endswith(b"0123456789")


def test_a_journal_with_no_room_for_a_segment_stores_directly(tmp_path: Path, files: list[Path]) -> None:
    journal = Journal(tmp_path / "j2", segment_bytes=4 * BLOCK, spare_segments=1, max_segments=2)
    journal.start()
    try:
        spool = Spool(tmp_path / "spool2", journal=journal)
        paths = [_store(spool, f) for f in files[:12]]  # more than two small segments hold at once
        assert [p.read_bytes() for p in paths] == [f.read_bytes() for f in files[:12]]
    finally:
        journal.stop()


def test_concurrent_writers_share_segments_and_recovery_finds_what_the_syncer_had_not_done(
    tmp_path: Path, files: list[Path]
) -> None:
    import threading

    journal = Journal(tmp_path / "j3", segment_bytes=SEGMENT, spare_segments=2, max_segments=6,
                      sync_seconds=30)  # the syncer waits: segments fill, the pressure rule makes it sync
    journal.start()
    spool = Spool(tmp_path / "spool3", journal=journal)
    stored: dict[int, Path] = {}

    def writer(n: int) -> None:
        for i in range(n, len(files), 4):
            stored[i] = _store(spool, files[i])

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pending = journal.pending()
    unsynced = {r.meta["path"] for r in journal.scan()}  # what a crash now would leave to recovery
    assert len(unsynced) >= pending
    for i, path in stored.items():
        assert path.read_bytes() == files[i].read_bytes()
    journal.stop()
    assert journal.pending() == 0 and list(journal.scan()) == []
    # 40 records of 8 KB through 64 KB segments, at most 6 of them (a record finding none free is stored
    # directly): segments went round
    assert journal.synced_records >= 20 and journal.recycled >= 1
    assert len(list(journal.directory.glob("segment-*.journal"))) <= 6


def test_a_failed_sync_keeps_the_records_in_the_journal_and_is_retried(
    tmp_path: Path, files: list[Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import errno
    import time

    from dicomnode.spool import journal as journal_module

    real_fsync = os.fsync
    failed: list[int] = []
    failing = True

    def fsync(fd: int) -> None:
        if failing:
            failed.append(fd)
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    caplog.set_level(logging.ERROR, logger="dicomnode.spool.journal")
    # segments large enough for the six page-aligned records and a spare made before fsync fails: the
    # preparer's own fsyncs fail too, and a seventh segment would send an instance past the journal
    journal = Journal(tmp_path / "j4", segment_bytes=4 * SEGMENT, max_segments=8, sync_seconds=0.2)
    journal.start()
    monkeypatch.setattr(journal_module.os, "fsync", fsync)  # (the syncer's fsyncs of the spool files)
    try:
        spool = Spool(tmp_path / "spool4", journal=journal)
        for source in files[:6]:
            _store(spool, source)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not failed:
            time.sleep(0.05)
        # the failed fsync: every record stays past the checkpoint (recovery would write them again)
        assert failed, "the syncer never ran"
        assert journal.pending() == 6 and len(list(journal.scan())) == 6
        errors = [r.getMessage() for r in caplog.records]
        assert any("Cannot make 6 received file(s) durable" in m and "Input/output error" in m
                   for m in errors), errors
        failing = False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and journal.pending():
            time.sleep(0.05)
        assert journal.pending() == 0 and list(journal.scan()) == []
        assert journal.synced_records == 6
    finally:
        journal.stop()  # bounded even while fsync still fails (a failed assertion above)


def test_stop_is_bounded_when_every_fsync_fails(tmp_path: Path, files: list[Path],
                                                caplog: pytest.LogCaptureFixture,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk that fails every fsync does not hold the node's shutdown: the syncer gives up at stop, says so,
    and the records stay in the journal, which the next start replays (nothing acknowledged is lost)."""
    import errno
    import threading

    from dicomnode.spool import journal as journal_module

    def fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    caplog.set_level(logging.ERROR, logger="dicomnode.spool.journal")
    journal = Journal(tmp_path / "j5", segment_bytes=4 * SEGMENT, max_segments=8, sync_seconds=60)
    journal.start()  # (the syncer's batch waits for the stop)
    spool = Spool(tmp_path / "spool5", journal=journal)
    for source in files[:3]:
        _store(spool, source)
    monkeypatch.setattr(journal_module.os, "fsync", fsync)
    stopper = threading.Thread(target=journal.stop)
    stopper.start()
    stopper.join(timeout=20)
    assert not stopper.is_alive(), "Journal.stop() hangs while fsync fails"
    assert any("durable at shutdown" in r.getMessage() and "written again at the next start" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    monkeypatch.undo()
    again = Journal(tmp_path / "j5", segment_bytes=4 * SEGMENT, max_segments=8, sync_seconds=0.1)
    assert len(list(again.scan())) == 3  # still in the journal for recovery


def test_commits_flush_through_a_file_that_is_never_written(
    tmp_path: Path, spool: Spool, journal: Journal, files: list[Path]
) -> None:
    flush = journal.flush_file
    if flush is None:
        pytest.skip(f"'{tmp_path}' is not on ext4 or XFS: commits fdatasync the segment")
    segments = list(journal.directory.glob("segment-*.journal"))
    # its inode is not in an inode-table block of a segment's (16 inodes of 256 bytes per 4 KB block)
    assert (flush.stat().st_ino - 1) // 16 not in {(p.stat().st_ino - 1) // 16 for p in segments}
    before = flush.stat()
    # the crash came before the syncer: every record must read back whole from its segment
    journal.sync_seconds = 3600
    stored = [_store(spool, f) for f in files[:4]]  # within the first segment (the syncer stays idle)
    after = flush.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    records = list(Journal(journal.directory, segment_bytes=SEGMENT).scan())
    assert [r.meta["path"] for r in records] == [str(p.relative_to(spool.root)) for p in stored]
    assert all(r.intact for r in records)
    assert [b"".join(r.chunks()) for r in records] == [f.read_bytes() for f in files[:4]]


def test_a_journal_off_ext4_and_xfs_commits_with_fdatasync(files: list[Path]) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm (tmpfs) here")
    root = Path(tempfile.mkdtemp(dir=shm))
    try:
        journal = Journal(root / "journal", segment_bytes=SEGMENT)
        journal.start()
        try:
            assert journal.flush_file is None
            assert not (root / "journal" / FLUSH_DIR).exists()
            stored = _store(Spool(root / "spool", journal=journal), files[0])
            assert stored.read_bytes() == files[0].read_bytes()
        finally:
            journal.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
