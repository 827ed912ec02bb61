"""Sending to real peers: Orthanc (checked through REST), a status-answering SCP, a peer that is down."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless

from dicomnode.config import DestinationConfig, OutboxConfig
from dicomnode.database import Database
from dicomnode.errors import SendError
from dicomnode.send.destination import DicomDestination
from dicomnode.send.forward import forward, series_files
from dicomnode.send.outbox import Outbox
from dicomnode.send.sender import Sender
from tests.fixtures_orthanc import Orthanc
from tests.support import free_port, shared_data

pytestmark = pytest.mark.integration


def ct_files(n: int = 5) -> list[Path]:
    return sorted(shared_data("ct-abdomen-20", "dicom").glob("*.dcm"))[:n]


def to_orthanc(orthanc: Orthanc, name: str = "pacs") -> DicomDestination:
    cfg = DestinationConfig(ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port, timeout=10)
    return DicomDestination(name, cfg, "DICOMNODE")


def test_batch_arrives_in_orthanc(orthanc: Orthanc) -> None:
    files = ct_files(5)
    outcomes = to_orthanc(orthanc).send(files)
    assert [o.delivered for o in outcomes] == [True] * 5 and {o.status for o in outcomes} == {0}
    assert orthanc.count_instances() == 5
    for path, outcome in zip(files, outcomes, strict=True):
        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert outcome.sop_instance_uid == uid
        (hit,) = [r for r in orthanc.lookup(uid) if r["Type"] == "Instance"]
        assert orthanc.simplified_tags(hit["ID"])["SOPInstanceUID"] == uid


def test_only_needed_contexts_and_tcp_nodelay(status_scp, tmp_path: Path) -> None:  # noqa: ANN001
    scp = status_scp(lambda ds: 0x0000)
    compressed = sorted(shared_data("ct-abdomen-20", "dicom-jpeg2000").iterdir())[:1]
    dest = DicomDestination("scp", DestinationConfig(ae_title=scp.aet, host="127.0.0.1", port=scp.port),
                            "DICOMNODE")
    items = [dest_item for dest_item in map(_item, [*ct_files(2), *compressed])]
    assoc = dest._associate(items)  # the association the batch would use
    try:
        sock = assoc.dul.socket.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        assoc.release()
    # uncompressed CT: its own syntax plus the other uncompressed one; the JPEG 2000 file: only its own
    assert sorted(scp.contexts) == sorted([(CTImageStorage, ExplicitVRLittleEndian),
                                           (CTImageStorage, ImplicitVRLittleEndian),
                                           (CTImageStorage, JPEG2000Lossless)])
    # the status SCP takes only uncompressed CT: the JPEG 2000 file is decompressed and delivered
    outcomes = dest.send([*ct_files(2), *compressed])
    assert [o.delivered for o in outcomes] == [True, True, True]
    assert len(scp.received) == 3


def _item(path: Path):  # noqa: ANN202
    from dicomnode.send.destination import _read_item

    return _read_item(path)


def test_configured_transfer_syntaxes_are_respected(status_scp) -> None:  # noqa: ANN001
    scp = status_scp(lambda ds: 0x0000)
    cfg = DestinationConfig(ae_title=scp.aet, host="127.0.0.1", port=scp.port,
                            transfer_syntaxes=[ImplicitVRLittleEndian])
    outcomes = DicomDestination("scp", cfg, "DICOMNODE").send(ct_files(2))
    assert all(o.delivered for o in outcomes)
    assert set(scp.contexts) == {(CTImageStorage, ImplicitVRLittleEndian)}


def test_warnings_count_as_delivered_and_failures_are_retried_alone(status_scp, tmp_path: Path) -> None:  # noqa: ANN001
    files = ct_files(5)
    uids = [str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    answers = dict(zip(uids, [0x0000, 0xB000, 0xB006, 0xB007, 0xA700], strict=True))
    scp = status_scp(lambda ds: answers[str(ds.SOPInstanceUID)])
    cfg = DestinationConfig(ae_title=scp.aet, host="127.0.0.1", port=scp.port, timeout=10)
    outbox = Outbox(Database(tmp_path / "db.sqlite3"),
                    OutboxConfig(backoff_initial_seconds=0.2, backoff_max_seconds=1, max_attempts=5))
    ids = outbox.enqueue("scp", files, "result", job_id="job-7")
    sender = Sender(outbox, {"scp": DicomDestination("scp", cfg, "DICOMNODE")})
    sender.process_due()
    states = [(outbox.get(i).state, outbox.get(i).last_status) for i in ids]
    assert states[:4] == [("sent", 0x0000), ("sent", 0xB000), ("sent", 0xB006), ("sent", 0xB007)]
    assert states[4] == ("failed", 0xA700) and "0xA700" in outbox.get(ids[4]).last_error
    answers[uids[4]] = 0x0000  # the SCP recovers
    time.sleep(0.25)
    sender.process_due()
    assert outbox.get(ids[4]).state == "sent"
    assert scp.received == uids + [uids[4]]  # only the failed instance was sent again


def test_sop_class_not_accepted_fails_that_instance_only(status_scp, tmp_path: Path) -> None:  # noqa: ANN001
    from pydicom.uid import MRImageStorage

    scp = status_scp(lambda ds: 0x0000, sop_classes=[MRImageStorage])
    mixed = ct_files(1)
    mr = tmp_path / "mr.dcm"
    ds = dcmread(mixed[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5.6.7"
    ds.save_as(mr)
    dest = DicomDestination("scp", DestinationConfig(ae_title=scp.aet, host="127.0.0.1", port=scp.port),
                            "DICOMNODE")
    ct_outcome, mr_outcome = dest.send([mixed[0], mr])
    assert mr_outcome.delivered and not ct_outcome.delivered
    assert "did not accept SOP class '1.2.840.10008.5.1.4.1.1.2'" in ct_outcome.error


def test_peer_down_and_rejection_give_clear_errors(status_scp) -> None:  # noqa: ANN001
    port = free_port()  # nothing listens here
    down = DicomDestination("pacs", DestinationConfig(ae_title="PACS", host="127.0.0.1", port=port,
                                                      timeout=5), "DICOMNODE")
    with pytest.raises(SendError, match=rf"'pacs' 'PACS' at 127.0.0.1:{port}: no connection"):
        down.send(ct_files(1))
    scp = status_scp(lambda ds: 0x0000, require_calling_aet=["SOMEONE"])
    rejecting = DicomDestination("scp", DestinationConfig(ae_title=scp.aet, host="127.0.0.1", port=scp.port),
                                 "DICOMNODE")
    with pytest.raises(SendError, match=r"association rejected .*Calling AE title not recognised"):
        rejecting.send(ct_files(1))


def test_orthanc_down_then_up_delivers_everything_once(orthanc: Orthanc, tmp_path: Path) -> None:
    files = ct_files(6)
    orthanc.stop(grace=0)  # down at once (it is idle, its database fresh; SIGTERM takes Orthanc 3-5 s)
    outbox = Outbox(Database(tmp_path / "db.sqlite3"),
                    OutboxConfig(backoff_initial_seconds=0.2, backoff_max_seconds=0.5, max_attempts=100,
                                 batch_size=4, poll_seconds=0.1))
    ids = outbox.enqueue("pacs", files, "result", job_id="job-1")
    sender = Sender(outbox, {"pacs": to_orthanc(orthanc)})
    sender.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(outbox.get(i).attempts >= 1 for i in ids):
            time.sleep(0.05)
        items = [outbox.get(i) for i in ids]
        assert all(i.state in ("failed", "queued", "sending") for i in items)
        assert any("no connection" in i.last_error for i in items)
        orthanc.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and outbox.depth_by_destination():
            time.sleep(0.1)
    finally:
        sender.stop()
    assert {outbox.get(i).state for i in ids} == {"sent"}
    assert orthanc.count_instances() == 6
    changes = orthanc.get_json("/changes?limit=1000")["Changes"]  # type: ignore[index]
    assert sum(1 for c in changes if c["ChangeType"] == "NewInstance") == 6


def test_forward_queues_the_original_instances(tmp_path: Path) -> None:
    series_dir = shared_data("ct-abdomen-20", "dicom")
    outbox = Outbox(Database(tmp_path / "db.sqlite3"), OutboxConfig())
    ids = forward(outbox, series_files(series_dir), ["pacs", "archive"], job_id="rule-fwd")
    assert len(ids["pacs"]) == len(ids["archive"]) == 20
    items = outbox.list(destination="archive")
    assert {i.origin for i in items} == {"forward"}
    assert {i.file_path.parent for i in items} == {series_dir.resolve()}
    with pytest.raises(SendError, match="holds no instances"):
        series_files(tmp_path)
