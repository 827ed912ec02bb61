"""``node.receivers: 2``: a second receiver process shares the DICOM port (SO_REUSEPORT)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import psutil
import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests.factories import ct_series, dataset_hash
from tests.fixtures_node import NodeProcess, storescu
from tests.integration.test_receive_failures import _acknowledged
from tests.support import dcmtk, free_port


def _receiver_pids(node: NodeProcess) -> list[int]:
    """The receiver processes (children of the node running dicomnode's receiver), once they listen."""
    assert node.proc is not None
    deadline = time.monotonic() + 60
    while "Receiver process 1 listening" not in node.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    children = psutil.Process(node.proc.pid).children()
    return [c.pid for c in children if "resource_tracker" not in " ".join(c.cmdline())]


def _holders(node: NodeProcess, pids: list[int]) -> dict[int, int]:
    """Established connections on the node's port, by process."""
    counts = {}
    for pid in pids:
        counts[pid] = sum(1 for c in psutil.Process(pid).net_connections("tcp")
                          if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == node.port)
    return counts


def _metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def _series_when_complete(node: NodeProcess, seconds: float) -> list[dict]:
    """The assembly_series rows once the first is complete, or as they are after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        series = node.query("SELECT state, instance_count FROM assembly_series")
        if (series and series[0]["state"] == "complete") or time.monotonic() >= deadline:
            return series
        time.sleep(0.2)


def test_two_receivers_both_accept_and_index_every_instance_once(dicomnode_node, tmp_path: Path) -> None:
    files = ct_series(tmp_path / "src", slices=12, rows=32, cols=32, seed="receivers")
    metrics_port = free_port()
    # sync_seconds 30: both processes' journals still hold what they received when the metrics are read
    node = dicomnode_node(node={"receivers": 2}, metrics={"port": metrics_port, "host": "127.0.0.1"},
                          storage={"journal": {"segment_mb": 8, "sync_seconds": 30}})
    (receiver,) = _receiver_pids(node)
    assert node.proc is not None

    ae = AE(ae_title="RECV2")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    associations = [ae.associate("127.0.0.1", node.port, ae_title=node.ae_title) for _ in files]
    try:
        assert all(a.is_established for a in associations)
        holders = _holders(node, [node.proc.pid, receiver])
        assert holders[node.proc.pid] >= 1 and holders[receiver] >= 1, holders  # both processes accept
        for association, path in zip(associations, files, strict=True):
            assert association.send_c_store(pydicom.dcmread(path)).Status == 0x0000
        # the same instance again, on associations probably served by the other process: kept once
        assert associations[0].send_c_store(pydicom.dcmread(files[1])).Status == 0x0000
        assert associations[-1].send_c_store(pydicom.dcmread(files[1])).Status == 0x0000
    finally:
        for association in associations:
            association.release()

    rows = node.query("SELECT sop_instance_uid, path, duplicates FROM spool_instances")
    assert len(rows) == len(files)
    duplicates = {r["sop_instance_uid"]: r["duplicates"] for r in rows}
    assert duplicates[pydicom.dcmread(files[1]).SOPInstanceUID] == 2
    for row in rows:
        original = next(f for f in files if pydicom.dcmread(f).SOPInstanceUID == row["sop_instance_uid"])
        assert dataset_hash(node.spool / row["path"]) == dataset_hash(original)
    # what a receiver stores reaches the node's metrics, and the node's assembler completes the series
    assert _metric(metrics_port, "dicomnode_instances_received_total") == len(files)
    # the journal gauges count every receiving process's records (a receiver reports once a second)
    pending = "dicomnode_journal_pending_records"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _metric(metrics_port, pending) != len(files):
        time.sleep(0.2)
    assert _metric(metrics_port, pending) == len(files)
    assert _metric(metrics_port, "dicomnode_journal_lag_seconds") > 0
    assert _series_when_complete(node, 20) == [{"state": "complete", "instance_count": len(files)}]
    assert node.stop() == 0
    assert not psutil.pid_exists(receiver) or psutil.Process(receiver).status() == psutil.STATUS_ZOMBIE


def test_kill_9_of_a_receiver_loses_nothing_acknowledged_and_it_is_replaced(
    dicomnode_node, tmp_path: Path
) -> None:
    senders_wanted = 10

    def source(i: int) -> Path:  # made when its sender is needed: usually one or two of the ten
        ct_series(tmp_path / f"src{i}", slices=120, rows=32, cols=32, seed=f"kill-receiver-{i}")
        return tmp_path / f"src{i}"

    # sync_seconds 30: the receiver's journal still holds everything it acknowledged when it is killed
    node = dicomnode_node(node={"receivers": 2}, storage={"journal": {"segment_mb": 8, "sync_seconds": 30}})
    assert node.proc is not None
    (receiver,) = _receiver_pids(node)
    senders: list[subprocess.Popen[str]] = []
    # start senders until the receiver process serves one of them (the kernel picks by address hash)
    for i in range(senders_wanted):
        senders.append(subprocess.Popen(
            [dcmtk("storescu"), "-v", "-aet", "CT1", "-aec", node.ae_title, "127.0.0.1", str(node.port),
             "+sd", "+sp", "*.dcm", str(source(i))],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
        served = False
        deadline = time.monotonic() + 5  # storescu's start and association take longer on a loaded machine
        while time.monotonic() < deadline and senders[-1].poll() is None:
            if _holders(node, [receiver])[receiver]:
                served = True
                break
            time.sleep(0.05)
        if served:
            break
    else:
        pytest.fail("no sender was served by the receiver process")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(node.query("SELECT 1 FROM spool_instances")) < 20:
        time.sleep(0.05)
    psutil.Process(receiver).send_signal(signal.SIGKILL)
    outputs = [s.communicate(timeout=120)[0] for s in senders]
    acknowledged = [path for output in outputs for path in _acknowledged(output)]
    assert any(s.returncode != 0 for s in senders), "the killed receiver's sender should have failed"

    indexed = {r["sop_instance_uid"]: r for r in node.query("SELECT * FROM spool_instances")}
    for path in acknowledged:  # the node is still up: everything acknowledged is indexed and intact
        sop = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert sop in indexed, f"acknowledged instance {sop} is not indexed"
        assert dataset_hash(node.spool / indexed[sop]["path"]) == dataset_hash(path)

    deadline = time.monotonic() + 60  # a new receiver takes the dead one's place
    while time.monotonic() < deadline and not [p for p in _receiver_pids(node) if p != receiver]:
        time.sleep(0.2)
    assert [p for p in _receiver_pids(node) if p != receiver], node.log_text()[-2000:]
    assert "exited with -9; starting a new one" in node.log_text()
    # the new receiver replayed the dead one's journal before listening: its files are durable now
    served = [path for sender, output in zip(senders, outputs, strict=True) if sender.returncode != 0
              for path in _acknowledged(output)]
    def replayed() -> list[str]:
        return [r["message"] for r in node.log_records()
                if "Journal recovery in" in r.get("message", "") and "journal/1'" in r["message"]]

    deadline = time.monotonic() + 60  # (the new process may still be starting)
    while served and not replayed() and time.monotonic() < deadline:
        time.sleep(0.2)
    if served:
        assert replayed(), node.log_text()[-3000:]
        line = replayed()[0]
        assert int(re.search(r"(\d+) made durable", line).group(1)) >= len(served), line
    again = storescu(node, *sorted((tmp_path / "src0").glob("*.dcm"))[:5])
    assert again.returncode == 0

    assert node.stop() == 0
    node.start()  # recovery removes the killed receiver's partial files
    assert not list((node.spool / ".tmp").iterdir())
    for stored in node.spool.glob("*/*/*.dcm"):  # nothing half-written under a final name
        assert pydicom.dcmread(stored).SOPInstanceUID == stored.stem
    assert node.stop() == 0


def test_a_receiver_commits_its_own_rows_and_kill_9_of_the_node_loses_none(
    dicomnode_node, tmp_path: Path
) -> None:
    files = ct_series(tmp_path / "src", slices=16, rows=32, cols=32, seed="receiver-commits")
    node = dicomnode_node(node={"receivers": 2}, storage={"journal": {"segment_mb": 8, "sync_seconds": 30}})
    (receiver,) = _receiver_pids(node)
    assert node.proc is not None
    ae = AE(ae_title="OWNROWS")
    ae.dimse_timeout = 15  # a C-STORE that waited for the stopped node would fail here, not hang
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    associations = [ae.associate("127.0.0.1", node.port, ae_title=node.ae_title) for _ in range(12)]
    served_ports = {c.raddr.port for c in psutil.Process(receiver).net_connections("tcp")
                    if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == node.port}
    ours = [a for a in associations if a.dul.socket.socket.getsockname()[1] in served_ports]
    assert all(a.is_established for a in associations) and ours, served_ports
    # the node's own process is stopped: the receiver alone makes each instance durable and indexed
    os.kill(node.proc.pid, signal.SIGSTOP)
    try:
        sent = []
        for i, path in enumerate(files):
            status = ours[i % len(ours)].send_c_store(pydicom.dcmread(path))
            assert status and status.Status == 0x0000, status
            sent.append(path)
        uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in sent}
        rows = node.query("SELECT sop_instance_uid, path FROM spool_instances")
        assert {r["sop_instance_uid"] for r in rows} == set(uids)
        series = node.query("SELECT state, instance_count FROM assembly_series")
        assert series == [{"state": "open", "instance_count": len(files)}]  # the completion timers' input
    finally:
        for association in associations:
            association.abort()
        node.kill()  # kill -9 of the (stopped) node process
    _gone, alive = psutil.wait_procs([psutil.Process(receiver)], timeout=60)  # it stops with its node
    assert not alive
    rows = node.query("SELECT sop_instance_uid, path, duplicates FROM spool_instances")
    assert {r["sop_instance_uid"] for r in rows} == set(uids)
    for row in rows:
        assert row["duplicates"] == 0
        assert dataset_hash(node.spool / row["path"]) == dataset_hash(uids[row["sop_instance_uid"]])

    node.start()  # the node's completion timers complete the series the receiver filled
    assert _series_when_complete(node, 30) == [{"state": "complete", "instance_count": len(files)}]
    assert len(node.query("SELECT 1 FROM spool_instances")) == len(files)
    assert node.stop() == 0


def test_a_receiver_hands_storage_commitment_reports_to_the_node(dicomnode_node) -> None:
    from pydicom.uid import generate_uid
    from pynetdicom import build_role
    from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

    node = dicomnode_node(node={"receivers": 2})
    (receiver,) = _receiver_pids(node)
    assert node.proc is not None
    associations, transactions = [], []
    for i in range(10):
        ae = AE(ae_title=f"PACS{i}")
        ae.add_requested_context(StorageCommitmentPushModel)
        associations.append(ae.associate("127.0.0.1", node.port, ae_title=node.ae_title,
                                         ext_neg=[build_role(StorageCommitmentPushModel, scp_role=True)]))
    try:
        assert all(a.is_established for a in associations)
        holders = _holders(node, [node.proc.pid, receiver])
        assert holders[node.proc.pid] >= 1 and holders[receiver] >= 1, holders
        for association in associations:
            info = pydicom.Dataset()
            info.TransactionUID = generate_uid()
            item = pydicom.Dataset()
            item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = CTImageStorage, generate_uid()
            info.ReferencedSOPSequence = [item]
            transactions.append(info.TransactionUID)
            status, _ = association.send_n_event_report(info, 1, StorageCommitmentPushModel,
                                                        "1.2.840.10008.1.20.1.1")
            assert status.Status == 0x0000
    finally:
        for association in associations:
            association.release()
    log = node.log_text()
    for i, transaction in enumerate(transactions):  # every report reached the node's sender, wherever taken
        assert f"Storage commitment report from 'PACS{i}' (transaction {transaction})" in log
    assert node.stop() == 0
