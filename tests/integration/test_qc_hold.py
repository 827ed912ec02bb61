"""A result whose QC fails is held (on_qc_fail: hold, the default): nothing reaches Orthanc until an
operator releases it (CLI here; the console page in tests/unit/test_console_held.py); a destination or
rule with on_qc_fail: send gets it at once. The failing result is real: liver-ct on a fatty liver
(phantom liver shifted to 25 HU, below the spleen) grows into its neighbours and QC finds the volume
implausible."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from dicomnode.config import Config
from dicomnode.database import Database
from dicomnode.jobs import JobSpec
from dicomnode.observability.audit import AuditTrail
from dicomnode.pipelines.executor import LocalExecutor
from dicomnode.runtime.processing import Processing
from dicomnode.send.held import HeldResults, HeldState
from dicomnode.send.outbox import Outbox
from dicomnode.send.sender import Sender, build_destinations
from tests.fixtures_orthanc import Orthanc
from tests.phantoms import make_ct_phantom, write_dicom_series
from tests.support import REPO_ROOT, wait_until

pytestmark = pytest.mark.integration


def dicomnode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dicomnode", *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=120)



def fatty_liver_series(folder: Path, study_uid: str) -> tuple[str, ...]:
    ct = make_ct_phantom(shape=(32, 112, 112), spacing=(5.0, 3.0, 3.0), phase="native", lesions=False,
                         seed=21)
    image = ct.image.copy()
    image[ct.masks["liver"]] += 25.0 - 58.0  # steatosis: the liver darker than the spleen
    return tuple(str(p) for p in write_dicom_series(replace(ct, image=image), folder, study_uid=study_uid))


def test_a_failed_qc_result_is_held_until_released(orthanc: Orthanc, tmp_path: Path) -> None:
    pacs = {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}
    settings = {"storage": {"path": str(tmp_path / "data")},
                "destinations": {"pacs": pacs, "research": {**pacs, "on_qc_fail": "send"}}}
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(settings))
    config = Config.model_validate(settings)
    db = Database(config.storage.database_path)
    processing = Processing(config, db, executor=LocalExecutor(1, 300, 1), audit=AuditTrail(db))
    outbox, held = Outbox(db, config.outbox), HeldResults(db)
    sender = Sender(outbox, build_destinations(config))
    study_uid = "1.2.826.0.1.3680043.10.1307.1"
    files = fatty_liver_series(tmp_path / "series", study_uid)

    def spec(job_id: str, destinations: tuple[str, ...], on_qc_fail: str = "") -> JobSpec:
        return JobSpec(job_id, "liver-ct", {}, files, str(config.storage.jobs_dir / job_id),
                       study_uid=study_uid, series_uid="1.2.3.4", rule="liver", destinations=destinations,
                       on_qc_fail=on_qc_fail)

    processing.start()
    try:
        processing.submit(spec("job-held", ("pacs",)))
        wait_until(lambda: processing.jobs.get("job-held").state == "done", "job job-held done", timeout=180)
    finally:
        processing.stop()
    (item,) = held.list(HeldState.HELD)
    assert item.destination == "pacs" and item.qc["status"] == "fail"
    assert "Liver volume" in item.reason and "outside" in item.reason
    assert outbox.list() == []
    sender.process_due()
    assert orthanc.count_instances() == 0  # nothing reached the PACS

    shown = dicomnode("status", "--config", str(config_file))
    assert shown.returncode == 0, shown.stderr
    assert f"held {item.id}: job job-held (liver-ct) for pacs, QC failed: Liver: " in shown.stdout
    listed = dicomnode("queue", "held", "--config", str(config_file))
    assert "Liver volume" in listed.stdout

    released = dicomnode("queue", "release", str(item.id), "--config", str(config_file))
    assert released.returncode == 0, released.stderr
    assert f"Released held result {item.id} (job job-held → pacs" in released.stdout
    again = dicomnode("queue", "discard", str(item.id), "--config", str(config_file))
    assert again.returncode != 0 and "already released" in again.stderr
    sender.process_due()
    series = orthanc.series_of_study(study_uid)
    modalities = sorted(str(s["MainDicomTags"]["Modality"]) for s in series)  # type: ignore[index]
    assert "SEG" in modalities and "SR" in modalities
    operator = [e for e in AuditTrail(db).events(study_uid) if e["stage"] == "operator"]
    assert operator[-1]["detail"]["action"] == "release" and operator[-1]["detail"]["user"].startswith("cli:")
    assert held.get(item.id).state is HeldState.RELEASED


def test_on_qc_fail_send_delivers_at_once(orthanc: Orthanc, tmp_path: Path) -> None:
    pacs = {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}
    destinations = {"pacs": pacs, "research": {**pacs, "on_qc_fail": "send"}}
    config = Config.model_validate({"storage": {"path": str(tmp_path / "data")},
                                    "destinations": destinations})
    db = Database(config.storage.database_path)
    processing = Processing(config, db, executor=LocalExecutor(1, 300, 1), audit=AuditTrail(db))
    study_uid = "1.2.826.0.1.3680043.10.1307.2"
    files = fatty_liver_series(tmp_path / "series", study_uid)
    # the rule says send (overrides pacs's default hold); without it, research (on_qc_fail: send) still
    # gets the result while pacs holds it
    processing.start()
    try:
        jobs = config.storage.jobs_dir
        processing.submit(JobSpec("job-rule", "liver-ct", {}, files, str(jobs / "job-rule"),
                                  study_uid=study_uid, series_uid="1.2.3.4", destinations=("pacs",),
                                  on_qc_fail="send"))
        wait_until(lambda: processing.jobs.get("job-rule").state == "done", "job job-rule done", timeout=180)
        assert HeldResults(db).list() == []
        Sender(Outbox(db, config.outbox), build_destinations(config)).process_due()
        series = orthanc.series_of_study(study_uid)
        assert any(s["MainDicomTags"]["Modality"] == "SEG" for s in series)  # type: ignore[index]
        processing.submit(JobSpec("job-dest", "liver-ct", {}, files, str(jobs / "job-dest"),
                                  study_uid=study_uid, series_uid="1.2.3.4",
                                  destinations=("pacs", "research")))
        wait_until(lambda: processing.jobs.get("job-dest").state == "done", "job job-dest done", timeout=180)
    finally:
        processing.stop()
    assert [h.destination for h in HeldResults(db).list()] == ["pacs"]
    pending = Outbox(db, config.outbox).list(state="queued")
    assert pending and {i.destination for i in pending} == {"research"}
