"""The durable outbox: state machine, backoff, restart recovery, idempotency, dead letter, retry/purge."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from dicomnode.config import OutboxConfig
from dicomnode.database import Database
from dicomnode.errors import SendError
from dicomnode.send.destination import Destination, SendOutcome
from dicomnode.send.outbox import Outbox
from dicomnode.send.sender import Sender


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class FakeDestination:
    """Records what it was asked to send; refuses the SOP instances in ``refuse``; down when ``down``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.batches: list[list[Path]] = []
        self.refuse: set[Path] = set()
        self.permanent: set[Path] = set()
        self.down = False

    def send(self, files: Sequence[Path]) -> list[SendOutcome]:
        if self.down:
            raise SendError(f"Cannot deliver to destination '{self.name}': connection refused.")
        self.batches.append(list(files))
        return [SendOutcome(f, f.stem, f not in self.refuse and f not in self.permanent,
                            status=0xA700 if f in self.refuse else 0,
                            error="refused" if f in self.refuse | self.permanent else "",
                            permanent=f in self.permanent) for f in files]


def write_instance(path: Path, sop_uid: str | None = None, series: str = "1.2.3.4") -> Path:
    sop_uid = sop_uid or generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", series
    ds.PatientID = "P1"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def outbox(tmp_path: Path, clock: Clock) -> Outbox:
    cfg = OutboxConfig(backoff_initial_seconds=30, backoff_max_seconds=3600, max_attempts=4, batch_size=3)
    return Outbox(Database(tmp_path / "db.sqlite3"), cfg, clock=clock)


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    return [write_instance(tmp_path / "in" / f"{i}.dcm") for i in range(5)]


def test_fake_destination_satisfies_protocol() -> None:
    assert isinstance(FakeDestination("x"), Destination)


def test_enqueue_and_deliver_in_batches(outbox: Outbox, files: list[Path]) -> None:
    ids = outbox.enqueue("pacs", files, "result", job_id="job-1")
    assert len(ids) == 5 and outbox.depth_by_destination() == {"pacs": 5}
    dest = FakeDestination("pacs")
    sender = Sender(outbox, {"pacs": dest})
    assert sender.process_due() == 5
    assert [len(b) for b in dest.batches] == [3, 2]  # batch_size 3
    assert {i.state for i in outbox.list()} == {"sent"}
    assert outbox.depth_by_destination() == {}
    item = outbox.get(ids[0])
    assert item.job_id == "job-1" and item.origin == "result" and item.attempts == 1 and item.sent_at


def test_enqueue_is_idempotent_while_pending(outbox: Outbox, files: list[Path], tmp_path: Path) -> None:
    first = outbox.enqueue("pacs", files[:2], "result", job_id="run-1")
    # a rerun writes the same SOP instance to a new file: the pending row is reused and re-pointed
    rerun = write_instance(tmp_path / "rerun" / "a.dcm", sop_uid=outbox.get(first[0]).sop_instance_uid)
    again = outbox.enqueue("pacs", [rerun], "result", job_id="run-2")
    assert again == [first[0]]
    assert len(outbox.list()) == 2
    assert outbox.get(first[0]).file_path == rerun.resolve() and outbox.get(first[0]).job_id == "run-2"
    # another destination is a separate row
    assert outbox.enqueue("archive", [rerun], "forward") != again
    # once sent, enqueueing again sends again (a new row: the PACS replaces the same UID)
    Sender(outbox, {"pacs": FakeDestination("pacs"), "archive": FakeDestination("archive")}).process_due()
    assert outbox.enqueue("pacs", [rerun], "result") != again


def test_enqueue_during_sending_sends_again_afterwards(outbox: Outbox, files: list[Path]) -> None:
    (row,) = outbox.enqueue("pacs", files[:1], "result")
    (claimed,) = outbox.claim_due("pacs")
    assert claimed.state == "sending"
    assert outbox.enqueue("pacs", files[:1], "result") == [row]  # same row, flagged for a resend
    outbox.mark_sent([row])
    assert outbox.get(row).state == "queued"
    outbox.claim_due("pacs")
    outbox.mark_sent([row])
    assert outbox.get(row).state == "sent"


def test_enqueue_rejects_non_dicom(outbox: Outbox, tmp_path: Path) -> None:
    bad = tmp_path / "notdicom.dcm"
    bad.write_text("hello")
    with pytest.raises(SendError, match="notdicom.dcm"):
        outbox.enqueue("pacs", [bad], "result")
    assert outbox.list() == []
    with pytest.raises(SendError, match="origin 'bogus'"):
        outbox.enqueue("pacs", [], "bogus")  # type: ignore[arg-type]


def test_backoff_doubles_to_max_then_dead_letter(outbox: Outbox, files: list[Path], clock: Clock) -> None:
    assert [outbox.backoff(n) for n in (1, 2, 3, 4, 10)] == [30, 60, 120, 240, 3600]
    (row,) = outbox.enqueue("pacs", files[:1], "result")
    dest = FakeDestination("pacs")
    dest.down = True
    sender = Sender(outbox, {"pacs": dest})
    expected_delays = [30, 60, 120]
    for delay in expected_delays:
        assert sender.process_due() == 1
        item = outbox.get(row)
        assert item.state == "failed" and "connection refused" in item.last_error
        assert item.next_attempt_at == clock.now + delay
        assert sender.process_due() == 0  # not due yet
        clock.now += delay
    assert sender.process_due() == 1
    item = outbox.get(row)
    assert item.state == "dead" and item.attempts == 4
    clock.now += 10_000
    assert sender.process_due() == 0  # dead rows are never retried automatically
    dest.down = False
    outbox.retry(row)
    assert outbox.get(row).attempts == 0
    assert sender.process_due() == 1 and outbox.get(row).state == "sent"


def test_per_instance_failure_is_retried_alone(outbox: Outbox, files: list[Path], clock: Clock) -> None:
    outbox.enqueue("pacs", files[:3], "result")
    dest = FakeDestination("pacs")
    dest.refuse = {files[1].resolve()}
    sender = Sender(outbox, {"pacs": dest})
    sender.process_due()
    states = {i.file_path: (i.state, i.last_status) for i in outbox.list()}
    assert states[files[0].resolve()] == ("sent", 0)
    assert states[files[1].resolve()] == ("failed", 0xA700)
    dest.refuse = set()
    clock.now += 30
    sender.process_due()
    assert dest.batches[-1] == [files[1].resolve()]  # only the failed one went again
    assert {i.state for i in outbox.list()} == {"sent"}


def test_permanent_failure_goes_straight_to_dead(outbox: Outbox, files: list[Path]) -> None:
    (row,) = outbox.enqueue("research", files[:1], "result")
    dest = FakeDestination("research")
    dest.permanent = {files[0].resolve()}
    Sender(outbox, {"research": dest}).process_due()
    assert outbox.get(row).state == "dead" and outbox.get(row).last_error == "refused"


def test_one_destination_down_does_not_block_another(outbox: Outbox, files: list[Path]) -> None:
    outbox.enqueue("down", files[:2], "result")
    outbox.enqueue("up", files[:2], "forward")
    down, up = FakeDestination("down"), FakeDestination("up")
    down.down = True
    Sender(outbox, {"down": down, "up": up}).process_due()
    assert {i.state for i in outbox.list(destination="up")} == {"sent"}
    assert {i.state for i in outbox.list(destination="down")} == {"failed"}


def test_restart_requeues_interrupted_sends(tmp_path: Path, files: list[Path], clock: Clock) -> None:
    cfg = OutboxConfig(batch_size=10)
    db_path = tmp_path / "db.sqlite3"
    first = Outbox(Database(db_path), cfg, clock=clock)
    first.enqueue("pacs", files, "result")
    assert len(first.claim_due("pacs")) == 5  # the process "crashes" with these in flight
    # a new process on the same database
    second = Outbox(Database(db_path), cfg, clock=clock)
    assert second.claim_due("pacs") == []  # still marked in flight until recovery
    dest = FakeDestination("pacs")
    sender = Sender(second, {"pacs": dest})
    assert second.recover_interrupted() == 5
    sender.process_due()
    assert [len(b) for b in dest.batches] == [5]  # each instance sent exactly once more
    assert {i.state for i in second.list()} == {"sent"} and len(second.list()) == 5


def test_sender_thread_delivers_and_stops(outbox: Outbox, files: list[Path]) -> None:
    dest = FakeDestination("pacs")
    sender = Sender(outbox, {"pacs": dest}, poll_seconds=0.05)
    sender.start()
    try:
        outbox.enqueue("pacs", files, "result")
        sender.wake("pacs")
        import time

        deadline = time.monotonic() + 10
        while outbox.depth_by_destination() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sender.stop()
    assert {i.state for i in outbox.list()} == {"sent"}


def test_retry_failed_and_purge(outbox: Outbox, files: list[Path]) -> None:
    ids = outbox.enqueue("pacs", files[:3], "result")
    for i in outbox.claim_due("pacs"):
        outbox.mark_failed(i.id, "boom", permanent=i.id == ids[0])
    assert [outbox.get(i).state for i in ids] == ["dead", "failed", "failed"]
    with pytest.raises(SendError, match="only failed or dead"):
        outbox.enqueue("pacs", files[3:4], "result") and outbox.retry(outbox.list(state="queued")[0].id)
    assert outbox.retry_failed() == 3
    assert {outbox.get(i).state for i in ids} == {"queued"}
    with pytest.raises(SendError, match="in flight"):
        outbox.purge(state="sending")
    with pytest.raises(SendError, match="'nonsense'"):
        outbox.purge(state="nonsense")
    assert outbox.purge() == 0  # default: only finished (sent, dead) rows
    assert outbox.purge(state="queued", destination="other") == 0
    assert outbox.purge(state="queued", destination="pacs") == 4
    assert outbox.list() == []
    with pytest.raises(SendError, match="Outbox entry 999 does not exist"):
        outbox.retry(999)


def test_sender_reports_metrics_and_audit(outbox: Outbox, files: list[Path]) -> None:
    from dicomnode.observability.audit import AuditTrail
    from dicomnode.observability.metrics import Metrics

    metrics, audit = Metrics(), AuditTrail(outbox.db)
    outbox.enqueue("pacs", files[:3], "result", job_id="job-9")
    dest = FakeDestination("pacs")
    dest.permanent = {files[2].resolve()}
    Sender(outbox, {"pacs": dest}, metrics=metrics, audit=audit).process_due()
    value = metrics.registry.get_sample_value
    assert value("dicomnode_instances_sent_total", {"destination": "pacs"}) == 2
    assert value("dicomnode_send_failures_total", {"destination": "pacs"}) == 1
    events = audit.events("1.2.3")
    sent = [e for e in events if e["stage"] == "sent"]
    failed = [e for e in events if e["stage"] == "failed"]
    assert len(sent) == 1 and sent[0]["job_id"] == "job-9"
    assert sent[0]["detail"] == {"destination": "pacs", "instances": 2}
    assert failed[0]["detail"]["stage"] == "send" and failed[0]["detail"]["error"] == "refused"


def test_results_are_filtered_by_viewer_profile(outbox: Outbox, tmp_path: Path) -> None:
    from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage, SegmentationStorage

    from dicomnode.config import Config
    from dicomnode.errors import ConfigError
    from dicomnode.send.results import enqueue_results

    def typed(name: str, sop_class: str) -> Path:
        path = write_instance(tmp_path / "out" / f"{name}.dcm")
        from pydicom import dcmread

        ds = dcmread(path)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.save_as(path)
        return path

    files = [typed("seg", SegmentationStorage), typed("sr", ComprehensiveSRStorage),
             typed("sc", SecondaryCaptureImageStorage), typed("ct", CTImageStorage)]
    dest = {"ae_title": "X", "host": "127.0.0.1", "port": 104}
    config = Config.model_validate({"destinations": {
        "pacs": dest,
        "legacy": {**dest, "profile": {"send_seg": False, "send_sr": False, "secondary_capture": True}},
    }})
    queued = enqueue_results(outbox, config, files, ["pacs", "legacy"], job_id="j")
    by_id = {i.id: i.file_path.stem for i in outbox.list()}
    assert sorted(by_id[i] for i in queued["pacs"]) == ["ct", "seg", "sr"]
    assert sorted(by_id[i] for i in queued["legacy"]) == ["ct", "sc"]
    with pytest.raises(ConfigError, match="Destination 'nowhere' is not configured"):
        enqueue_results(outbox, config, files, ["nowhere"])
