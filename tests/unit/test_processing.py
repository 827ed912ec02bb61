"""The node's processing stage with real worker processes: jobs recorded, crashes contained and retried,
results queued per destination, interrupted jobs resumed after a restart."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dicomnode.config import Config
from dicomnode.database import Database
from dicomnode.jobs import JobSpec
from dicomnode.observability.audit import AuditTrail
from dicomnode.pipelines.executor import LocalExecutor
from dicomnode.runtime.processing import Processing, combined_profile
from dicomnode.send.outbox import Outbox
from tests.support import shared_data, wait_until


def _config(tmp_path: Path, **processing: object) -> Config:
    return Config.model_validate({
        "storage": {"path": str(tmp_path / "data")},
        "processing": {"max_attempts": 2, **processing},
        "destinations": {
            "pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 104},
            "viewer": {"ae_title": "VIEW", "host": "127.0.0.1", "port": 105,
                       "profile": {"secondary_capture": True, "seg_omit_empty_frames": False}},
        },
    })


def _spec(tmp_path: Path, job_id: str, pipeline: str = "liver-ct", destinations=("pacs",)) -> JobSpec:
    files = sorted(shared_data("ct-3slice").glob("0*.dcm"))
    return JobSpec(job_id=job_id, pipeline=pipeline, params={}, input_files=tuple(map(str, files)),
                   output_dir=str(tmp_path / "jobs" / job_id), study_uid="1.2.3", series_uid="1.2.3.4",
                   rule="r", destinations=tuple(destinations))



def _processing(tmp_path: Path, target: str, db: Database) -> Processing:
    config = _config(tmp_path)
    executor = LocalExecutor(1, 60, 1, target=target)
    return Processing(config, db, executor=executor, audit=AuditTrail(db))


def test_a_crashing_pipeline_fails_its_job_after_the_retries_and_queues_nothing(tmp_path: Path) -> None:
    db = Database(tmp_path / "db.sqlite3")
    processing = _processing(tmp_path, "tests.pipeline_targets:crash", db)
    processing.start()
    try:
        assert processing.submit(_spec(tmp_path, "job-crash")) == "queued"
        wait_until(lambda: processing.jobs.get("job-crash").state == "failed"
                   and processing.jobs.get("job-crash").attempt == 2, "job job-crash failed at attempt 2")
    finally:
        processing.stop()
    record = processing.jobs.get("job-crash")
    assert "exit code 3" in record.error
    assert Outbox(db, _config(tmp_path).outbox).list() == []
    failures = [e for e in AuditTrail(db).events("1.2.3") if e["stage"] == "failed"]
    assert [e["detail"]["attempt"] for e in failures] == [1, 2]


def test_results_are_queued_for_each_destination(tmp_path: Path) -> None:
    db = Database(tmp_path / "db.sqlite3")
    processing = _processing(tmp_path, "tests.pipeline_targets:copy_inputs", db)
    processing.start()
    try:
        processing.submit(_spec(tmp_path, "job-ok", destinations=("pacs",)))
        wait_until(lambda: processing.jobs.get("job-ok").state == "done", "job job-ok done")
        wait_until(lambda: len(Outbox(db, _config(tmp_path).outbox).list()) == 3, "three outbox rows")
        # the same job again (a re-delivered event) is not run twice
        assert processing.submit(_spec(tmp_path, "job-ok")) == "done"
    finally:
        processing.stop()
    rows = Outbox(db, _config(tmp_path).outbox).list()
    assert {r.destination for r in rows} == {"pacs"}
    assert all(Path(r.file_path).parent == tmp_path / "jobs" / "job-ok" for r in rows)


def test_interrupted_jobs_run_again_after_a_restart(tmp_path: Path) -> None:
    db = Database(tmp_path / "db.sqlite3")
    first = _processing(tmp_path, "tests.pipeline_targets:copy_inputs", db)
    first.jobs.create(_spec(tmp_path, "job-left"))  # recorded, never run: the node was killed
    first.jobs.mark_running("job-left")
    second = _processing(tmp_path, "tests.pipeline_targets:copy_inputs", db)
    second.start()
    try:
        wait_until(lambda: second.jobs.get("job-left").state == "done", "job job-left done")
    finally:
        second.stop()
    assert len(second.jobs.get("job-left").output_files) == 3


def test_forward_pipeline_queues_the_originals(tmp_path: Path) -> None:
    db = Database(tmp_path / "db.sqlite3")
    processing = _processing(tmp_path, "tests.pipeline_targets:crash", db)
    assert processing.submit(_spec(tmp_path, "job-fwd", pipeline="forward")) == "done"
    rows = Outbox(db, _config(tmp_path).outbox).list()
    assert len(rows) == 3 and all(r.origin == "forward" for r in rows)


def test_one_package_serves_every_destination_profile(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert combined_profile(config, ["pacs"])["secondary_capture"] is False
    both = combined_profile(config, ["pacs", "viewer"])
    assert both["secondary_capture"] is True and both["seg_omit_empty_frames"] is False
    with pytest.raises(Exception, match="nowhere"):
        combined_profile(config, ["nowhere"])


def test_refused_input_fails_the_job_with_its_reason_once_and_sends_nothing(tmp_path: Path) -> None:
    db = Database(tmp_path / "db.sqlite3")
    processing = Processing(_config(tmp_path), db, executor=LocalExecutor(1, 120, 1), audit=AuditTrail(db))
    processing.start()
    try:  # 3 slices (3 mm) of lung bases: lung-ct's 3-D filters need at least 4 slices
        processing.submit(_spec(tmp_path, "job-refused", pipeline="lung-ct"))
        wait_until(lambda: processing.jobs.get("job-refused").state == "failed", "job job-refused failed",
                   timeout=120)
        time.sleep(0.5)
    finally:
        processing.stop()
    record = processing.jobs.get("job-refused")
    assert record.attempt == 1  # a refusal is not retried: the same input is refused again
    assert "Pipeline 'lung-ct' works on volumes of at least 4 slices, but the series has 3 along one axis " \
           "(3.0 mm; 512x512x3 voxels): too thin to segment or measure." in record.error
    assert Outbox(db, _config(tmp_path).outbox).list() == []
    assert not list((tmp_path / "jobs" / "job-refused").glob("*.dcm"))
