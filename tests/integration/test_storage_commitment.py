"""Storage commitment (Push Model) with Orthanc as the SCP: a running node forwards a series, asks Orthanc to
commit to keeping it and takes Orthanc's N-EVENT-REPORT (sent on a new association to the node's listener):
every outbox row ends ``committed``. A failure report or a destination that never reports sends the
instances again (the row that was not committed stays as ``commit_failed``); retention waits for
commitment."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread

from dicomnode.config import Config
from dicomnode.database import Database
from dicomnode.send.outbox import MAX_COMMIT_REQUESTS, Outbox
from dicomnode.send.results import enqueue_results
from dicomnode.send.sender import Sender, build_destinations
from tests.fixtures_orthanc import Orthanc
from tests.support import shared_data

pytestmark = pytest.mark.integration

FORWARD_RULE = """
- name: forward-ct
  when: {tag: Modality, equals: CT}
  then: {forward: true, send_to: [pacs]}
"""


def ct_files(n: int) -> list[Path]:
    return sorted(shared_data("ct-abdomen-20", "dicom").glob("*.dcm"))[:n]


def test_forwarded_series_is_committed_by_the_pacs(dicomnode_node, tmp_path: Path) -> None:  # noqa: ANN001
    from tests.fixtures_node import storescu

    node = dicomnode_node(start=False, outbox={"backoff_initial_seconds": 1, "poll_seconds": 0.2},
                          completion={"series_quiet_seconds": 1, "study_quiet_seconds": 2,
                                      "check_interval_seconds": 0.2})
    pacs = Orthanc(tmp_path / "orthanc", extra={"DicomModalities": {"node": {
        "AET": node.ae_title, "Host": "127.0.0.1", "Port": node.port, "AllowStorageCommitment": True}}})
    try:
        pacs.start()
        import yaml

        config = yaml.safe_load(node.config_path.read_text())
        config["destinations"] = {"pacs": {"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port,
                                           "storage_commitment": True, "commitment_timeout": 30}}
        node.config_path.write_text(yaml.safe_dump(config))
        (node.root / "rules" / "rules.yaml").write_text(FORWARD_RULE)
        node.start()
        sent = storescu(node, *ct_files(3))
        assert sent.returncode == 0, sent.stderr
        deadline = time.monotonic() + 120
        states: list[str] = []
        while time.monotonic() < deadline:
            states = [r["state"] for r in node.query("SELECT state FROM outbox")]
            if len(states) == 3 and set(states) == {"committed"}:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"outbox states {states}; node log:\n{node.log_text()[-5000:]}")
        assert pacs.count_instances() == 3
        assert "Storage commitment report from" in node.log_text()
        assert node.stop() == 0
    finally:
        pacs.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_no_report_or_a_failure_report_sends_the_instances_again(tmp_path: Path) -> None:
    pacs = Orthanc(tmp_path / "orthanc")  # knows no modality: it accepts the request but cannot report
    try:
        pacs.start()
        config = Config.model_validate({
            "destinations": {"pacs": {"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port,
                                      "timeout": 10, "storage_commitment": True, "commitment_timeout": 60}},
            "outbox": {"backoff_initial_seconds": 1},
        })
        clock = Clock()
        outbox = Outbox(Database(tmp_path / "db.sqlite3"), config.outbox, clock=clock)
        sender = Sender(outbox, build_destinations(config), commitment={"pacs": 60.0})
        files = ct_files(2)
        enqueue_results(outbox, config, files, ["pacs"], job_id="job-1")
        study = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        sender.process_due()
        rows = outbox.list()
        assert {r.state for r in rows} == {"sent"} and {r.commit_requests for r in rows} == {1}
        assert outbox.undelivered(study) == {"awaiting commitment": 2}  # retention keeps the study
        for _ in range(MAX_COMMIT_REQUESTS - 1):  # no report: asked again after each timeout
            clock.now += 61
            sender.process_due()
        assert {r.commit_requests for r in outbox.list()} == {MAX_COMMIT_REQUESTS}
        clock.now += 61
        sender.process_due()  # given up: queued again as new rows ...
        rows = outbox.list()
        assert sorted(r.state for r in rows) == ["commit_failed", "commit_failed", "queued", "queued"]
        assert all("No storage commitment report" in r.last_error for r in rows if r.state == "commit_failed")
        sender.process_due()  # ... sent again, and their own commitment awaited
        fresh = [r for r in outbox.list() if r.state == "sent"]
        assert len(fresh) == 2 and pacs.count_instances() == 2

        # a failure report for one instance, a success for the other
        uid = "2.25.1234567890"
        outbox.await_commitment([r.id for r in fresh], uid, 60.0)
        report = Dataset()
        report.TransactionUID = uid
        ok, bad = Dataset(), Dataset()
        ok.ReferencedSOPClassUID = bad.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ok.ReferencedSOPInstanceUID = fresh[0].sop_instance_uid
        bad.ReferencedSOPInstanceUID, bad.FailureReason = fresh[1].sop_instance_uid, 0x0110
        report.ReferencedSOPSequence, report.FailedSOPSequence = [ok], [bad]
        sender.on_event_report("ORTHANC", "1.2.840.10008.1.20.1", 2, report)
        by_id = {r.id: r for r in outbox.list()}
        assert by_id[fresh[0].id].state == "committed"
        assert by_id[fresh[1].id].state == "commit_failed" and "0x0110" in by_id[fresh[1].id].last_error
        queued = [r for r in outbox.list() if r.state == "queued"]
        assert [r.sop_instance_uid for r in queued] == [fresh[1].sop_instance_uid]
        assert outbox.undelivered(study) == {"queued": 1}
    finally:
        pacs.close()
