"""Failure paths on the wire: bad payloads, an unwritable spool, and kill -9 in the middle of a transfer."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from dicomnode.spool.journal import Journal
from tests.factories import ct_series, dataset_hash, dataset_offset
from tests.fixtures_node import storescu
from tests.support import dcmtk

pytestmark = pytest.mark.integration


def _send_raw_files(node, paths: list[Path]) -> list[int]:
    """Send Part 10 files as-is (pynetdicom's chunked send: the dataset bytes are not re-encoded)."""
    ae = AE(ae_title="CRAFTER")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(p).Status) for p in paths]
    finally:
        assoc.release()


def test_truncated_and_non_dicom_payloads_get_an_error_and_the_node_keeps_serving(
    dicomnode_node, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    good = ct_series(tmp_path / "src", slices=2, rows=32, cols=32, seed="bad-payload")
    raw = good[0].read_bytes()
    start = dataset_offset(raw)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(raw[: start + (len(raw) - start) // 2])
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(raw[:start] + b"\x17\x42" * 3000)

    node = dicomnode_node()
    assert _send_raw_files(node, [truncated, garbage]) == [0xC000, 0xC000]
    assert not list(node.spool.glob("*/*/*.dcm"))
    assert "truncated" in node.log_text()

    result = storescu(node, *good)  # the next association is served normally
    assert result.returncode == 0 and result.stderr.count("(Success)") == 2
    assert len(node.query("SELECT * FROM spool_instances")) == 2


def test_unwritable_spool_gives_out_of_resources_and_nothing_is_lost_afterwards(
    dicomnode_node, tmp_path: Path
) -> None:
    files = ct_series(tmp_path / "src", slices=2, rows=32, cols=32, seed="blocked")
    study_uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    node = dicomnode_node()
    blocker = node.spool / study_uid
    blocker.write_bytes(b"a file where the study folder must go: every write below it fails (even as root)")

    failed = storescu(node, *files)
    # storescu stops sending after an out-of-resources refusal
    assert "Received Store Response (Refused: OutOfResources)" in failed.stderr, failed.stderr
    assert "(Success)" not in failed.stderr
    assert "Could not store instance" in node.log_text() and "(0xA701)" in node.log_text()
    assert node.query("SELECT * FROM spool_instances") == []
    assert not list((node.spool / ".tmp").iterdir())

    blocker.unlink()
    ok = storescu(node, *files)
    assert ok.returncode == 0 and ok.stderr.count("(Success)") == 2
    assert node.stop() == 0


def _acknowledged(storescu_output: str) -> list[Path]:
    """Files storescu -v reported Success for (each 'Sending file' is followed by its response)."""
    done, current = [], None
    for line in storescu_output.splitlines():
        match = re.search(r"Sending file: (.+)$", line)
        if match:
            current = Path(match.group(1).strip())
        elif "Received Store Response (Success)" in line and current is not None:
            done.append(current)
            current = None
    return done


@pytest.mark.parametrize("mode", ["journal", "synced", "direct"])
def test_kill_9_during_transfer_loses_nothing_acknowledged(dicomnode_node, tmp_path: Path, mode: str) -> None:
    # (synced: more, as the node is killed only once the syncer has moved its checkpoint)
    slices = 600 if mode == "synced" else 300
    files = ct_series(tmp_path / "src", slices=slices, rows=32, cols=32, seed="kill9")
    journal = mode != "direct"
    # journal: sync_seconds 30, the syncer has fsynced none of the spool files when the node is killed;
    # synced: sync_seconds 0, it has (its rounds moved the checkpoint, segments were recycled)
    sync_seconds = 0 if mode == "synced" else 30
    node = dicomnode_node(storage={"journal": {"enabled": journal, "segment_mb": 1,
                                               "sync_seconds": sync_seconds}})
    sender = subprocess.Popen(
        [
            dcmtk("storescu"),
            "-v",
            "-aet",
            "CT1",
            "-aec",
            node.ae_title,
            "127.0.0.1",
            str(node.port),
            "+sd",
            "+sp",
            "*.dcm",
            str(tmp_path / "src"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(node.query("SELECT 1 FROM spool_instances")) < 40:
        time.sleep(0.05)
    if mode == "synced":  # the syncer's checkpoint is past some acknowledged records before the kill
        folder = node.spool.parent / "journal" / "0"
        while time.monotonic() < deadline and len(list(Journal(folder).scan(verify=False))) >= len(
                node.query("SELECT 1 FROM spool_instances")):
            time.sleep(0.05)
    node.proc.send_signal(signal.SIGKILL)
    output, _ = sender.communicate(timeout=60)
    node.proc.wait(10)
    acknowledged = _acknowledged(output)
    assert 40 <= len(acknowledged) < len(files), output[-2000:]

    if journal:  # `dicomnode status` shows what the journal holds for recovery
        status = subprocess.run([sys.executable, "-m", "dicomnode", "status", "--json", "--config",
                                 str(node.config_path)], capture_output=True, text=True, timeout=60)
        pending = json.loads(status.stdout)["journal"]["pending_records"]
        assert (pending >= len(acknowledged)) == (mode == "journal"), (pending, status.stderr)
    node.start()  # recovery runs at start-up
    if mode == "journal":  # every instance it acknowledged was still in the journal, not yet fsynced
        replayed = [r for r in node.log_records() if "Journal recovery in" in r.get("message", "")]
        assert replayed, node.log_text()[-3000:]
        made_durable = int(re.search(r"(\d+) made durable", replayed[0]["message"]).group(1))
        assert made_durable >= len(acknowledged), replayed[0]["message"]
    indexed = {r["sop_instance_uid"]: r for r in node.query("SELECT * FROM spool_instances")}
    originals = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in files}
    for path in acknowledged:
        sop = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert sop in indexed, f"acknowledged instance {sop} is not indexed after restart"
        assert dataset_hash(node.spool / indexed[sop]["path"]) == dataset_hash(path)
    for stored in node.spool.glob("*/*/*.dcm"):  # nothing half-written under a final name
        assert dataset_hash(stored) == dataset_hash(originals[stored.stem])
    assert not list((node.spool / ".tmp").iterdir())
    assert node.stop() == 0
