"""Spool: atomic durable writes, UID validation, duplicates, index queries and startup recovery."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dicomnode.database import Database
from dicomnode.errors import InvalidUIDError, SpoolError, StorageFullError
from dicomnode.spool import OutOfSpaceError, Spool, SpoolIndex, read_header, recover, validate_uid
from dicomnode.spool.store import WRITEBACK_STEP
from tests.factories import ct_series, dataset_hash


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


@pytest.fixture
def index(tmp_path: Path, spool: Spool) -> SpoolIndex:
    return SpoolIndex(Database(tmp_path / "db.sqlite3"), spool.root)


@pytest.mark.parametrize(
    "bad", ["", "../../etc", "1.2/3", "1.2.3/../..", "1..2", "a.b", "1.2.3\\4", "1." * 40 + "1", " ", ".1"]
)
def test_invalid_uids_never_become_paths(spool: Spool, bad: str) -> None:
    with pytest.raises(InvalidUIDError):
        spool.write("1.2.3", bad, "1.2.3.4", [b"x"])
    with pytest.raises(InvalidUIDError):
        spool.write(bad, "1.2.3", "1.2.3.4", [b"x"])
    assert not any(p.is_file() for p in spool.root.rglob("*"))


def test_validate_uid_accepts_real_uids() -> None:
    assert validate_uid("1.2.840.10008.5.1.4.1.1.2", "SOP Class UID") == "1.2.840.10008.5.1.4.1.1.2"
    assert validate_uid("1.2.3\0", "x") == "1.2.3"


def test_write_is_atomic_and_first_copy_of_a_duplicate_wins(spool: Spool) -> None:
    stored = spool.write("1.2.3", "1.2.3.4", "1.2.3.4.5", [b"first", memoryview(b"-part")])
    assert stored.path == spool.root / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm"
    assert stored.path.read_bytes() == b"first-part" and stored.size == 10 and not stored.duplicate
    again = spool.write("1.2.3", "1.2.3.4", "1.2.3.4.5", [b"second"])
    assert again.duplicate and again.path.read_bytes() == b"first-part"
    assert spool.stale_temp_files() == []


def test_failed_write_leaves_no_partial_file(spool: Spool) -> None:
    def chunks():
        yield b"half of it"
        raise OSError(5, "Input/output error")

    with pytest.raises(SpoolError, match="Input/output error"):
        spool.write("1.2.3", "1.2.3.4", "1.2.3.4.6", chunks())
    assert not (spool.root / "1.2.3" / "1.2.3.4" / "1.2.3.4.6.dcm").exists()
    assert spool.stale_temp_files() == []


def test_out_of_space_is_its_own_error(spool: Spool) -> None:
    def chunks():
        yield b"some"
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutOfSpaceError, match="No space left to store instance '1.2.3.4.8'"):
        spool.write("1.2.3", "1.2.3.4", "1.2.3.4.8", chunks())
    assert spool.stale_temp_files() == []


def test_unwritable_series_folder_raises_spool_error(spool: Spool) -> None:
    (spool.root / "1.2.3").write_bytes(b"a file where the study folder should be")  # works even as root
    with pytest.raises(SpoolError, match="Cannot store instance '1.2.3.4.9'"):
        spool.write("1.2.3", "1.2.3.4", "1.2.3.4.9", [b"x"])
    assert spool.stale_temp_files() == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_spool_raises_spool_error(spool: Spool) -> None:
    spool.tmp_dir.chmod(0o500)
    try:
        with pytest.raises(SpoolError, match="Cannot store instance '1.2.3.4.7'"):
            spool.write("1.2.3", "1.2.3.4", "1.2.3.4.7", [b"x"])
    finally:
        spool.tmp_dir.chmod(0o700)


def test_storage_thresholds(spool: Spool) -> None:
    spool.check_space(0, 100)
    with pytest.raises(StorageFullError, match="storage.min_free_mb"):
        spool.check_space(10**12, 100)
    with pytest.raises(StorageFullError, match="storage.max_used_percent"):
        spool.check_space(0, 0.0001)


def test_index_queries_and_recovery(tmp_path: Path, spool: Spool, index: SpoolIndex) -> None:
    files = ct_series(tmp_path / "src", slices=3, rows=16, cols=16, seed="rec")
    header = read_header(files[0])
    # two files "stored" by a node that crashed before indexing them, one stale temp file, one junk file
    for f in files[:2]:
        h = read_header(f)
        stored = spool.write(h.study_uid, h.series_uid, h.sop_instance_uid, [f.read_bytes()])
        assert dataset_hash(stored.path) == dataset_hash(f)
    (spool.tmp_dir / "x.123.part").write_bytes(b"half")
    junk = spool.root / header.study_uid / header.series_uid / "1.2.3.dcm"
    junk.write_bytes(b"not dicom")

    report = recover(spool, index)
    assert report.removed_temp_files == 1 and len(report.indexed) == 2 and report.left_alone == [junk]
    assert junk.exists()  # never deleted
    assert recover(spool, index).indexed == []  # idempotent

    assert [s.study_uid for s in index.studies()] == [header.study_uid]
    (series,) = index.series_of(header.study_uid)
    assert series.instance_count == 2 and series.modality == "CT"
    paths = index.series_files(header.study_uid, header.series_uid)
    assert [read_header(p).instance_number for p in paths] == [1, 2]
    assert index.has(header.sop_instance_uid)
    row = index.instances(header.study_uid, header.series_uid)[0]
    assert row["calling_aet"] == "(recovered)" and row["transfer_syntax"] == "1.2.840.10008.1.2.1"


def test_duplicate_index_rows_are_counted(tmp_path: Path, spool: Spool, index: SpoolIndex) -> None:
    (f,) = ct_series(tmp_path / "src", slices=1, rows=8, cols=8, seed="dup")
    h = read_header(f)
    kwargs = dict(
        path=spool.path_for(h.study_uid, h.series_uid, h.sop_instance_uid), size=1, transfer_syntax="1.2"
    )
    assert index.add(h, calling_aet="A", **kwargs) is True
    assert index.add(h, calling_aet="A", **kwargs) is False
    assert index.instances(h.study_uid, h.series_uid)[0]["duplicates"] == 1


def test_directory_fsyncs_of_concurrent_writers_are_shared_and_never_early(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time

    from dicomnode.spool import store

    events: list[tuple[str, float]] = []
    lock = threading.Lock()

    def slow_fsync(path: Path) -> None:
        start = time.monotonic()
        time.sleep(0.05)
        with lock:
            events.append(("fsync", start))

    monkeypatch.setattr(store, "fsync_dir", slow_fsync)
    syncer = store.DirectorySync()
    asked: dict[int, float] = {}
    returned: dict[int, float] = {}

    def writer(i: int) -> None:
        asked[i] = time.monotonic()
        syncer.sync(tmp_path)
        returned[i] = time.monotonic()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    fsync_starts = [start for _, start in events]
    assert 1 <= len(fsync_starts) < 8  # shared
    for i in range(8):  # each caller returned after an fsync that started after it asked
        assert any(asked[i] <= start and start + 0.05 <= returned[i] + 1e-3 for start in fsync_starts)


def test_a_streamed_part_larger_than_the_writeback_step_is_stored_byte_for_byte(spool: Spool) -> None:
    payload = os.urandom(3 * WRITEBACK_STEP + 12345)
    part = spool.open_part("1.2.3.4")
    for start in range(0, len(payload), 100_003):  # odd chunks: writeback ranges straddle them
        part.write(payload[start : start + 100_003])
    stored = spool.publish(part, "1.2", "1.2.3", "1.2.3.4")
    assert stored.size == len(payload) and stored.path.read_bytes() == payload
    assert not list(spool.tmp_dir.iterdir())


def _wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_spare_files_become_the_next_parts_and_are_removed_at_close(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", spares=2)
    first = spool.open_part("1.2.3.4.5")  # (none ready yet: a new file; the maker starts)

    def ready() -> int:  # unnamed files of .tmp (O_TMPFILE), open in the spool: nothing to list
        with spool._spares_wake:
            return len(spool._spares)

    assert _wait_for(lambda: ready() == 2)
    assert [p.name for p in spool.tmp_dir.iterdir()] == [first.path.name]  # the spares have no names
    assert not spool.spare_dir.exists() or list(spool.spare_dir.iterdir()) == []
    with spool._spares_wake:
        spare_inodes = {os.fstat(fd).st_ino for _, fd in spool._spares}
    second = spool.open_part("1.2.3.4.6")
    assert second.path.name.startswith("1.2.3.4.6.") and second.path.suffix == ".part"
    assert second.path.stat().st_ino in spare_inodes  # named, not made
    second.write(b"DICM")
    stored = spool.publish(second, "1.2.3", "1.2.3.4", "1.2.3.4.6")
    assert stored.path.read_bytes() == b"DICM"
    assert _wait_for(lambda: ready() == 2)  # made again
    assert spool.stale_temp_files() == [first.path]  # what recovery would remove: the open part only
    first.discard()
    spool.close()
    assert list(spool.tmp_dir.iterdir()) == [] and ready() == 0
    third = spool.open_part("1.2.3.4.7")  # still usable after close, without spares
    assert third.path.exists() and list(spool.tmp_dir.iterdir()) == [third.path]
    third.discard()
