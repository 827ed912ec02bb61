"""End to end with ``processing.executor: celery``: storescu sends two CT series to ``dicomnode serve``,
the rules route them to two pipelines (the real ``liver-ct`` on the 20-slice CT; ``lung-ct`` played by a
stand-in on the 3-slice CT, ``tests.celery_targets``), two ``dicomnode worker`` processes run them, and
Orthanc ends up with exactly what the local executor produces from the same job specs: the same SOP
Instance UIDs (deterministic) and the same pixel data. ``dicomnode status`` shows the jobs per worker."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.fixtures_celery import WORKER_TARGET
from tests.fixtures_orthanc import Orthanc
from tests.support import REPO_ROOT, shared_data, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]
pytest.importorskip("celery", reason="celery is not installed (pip install -e .[celery])")

RULES = """
- name: liver
  when: {tag: PatientID, equals: TOTALSEG-EX-CT}
  then: {pipeline: liver-ct, send_to: [pacs]}
- name: lungs
  when: {tag: PatientID, equals: "99000"}
  then: {pipeline: lung-ct, send_to: [pacs]}
"""



def _pixels(data: bytes) -> tuple[str, bytes | None]:
    ds = dcmread(io.BytesIO(data))
    return str(ds.SOPInstanceUID), ds.get("PixelData")


def test_two_pipelines_on_celery_reach_the_pacs_exactly_as_with_the_local_executor(
    dicomnode_node, celery_workers, orthanc: Orthanc, tmp_path: Path  # noqa: ANN001
) -> None:
    from dicomnode.jobs import JobResult, JobSpec
    from dicomnode.pipelines.executor import LocalExecutor
    from tests.fixtures_node import storescu

    abdomen = shared_data("ct-abdomen-20", "dicom")
    small = sorted(shared_data("ct-3slice").glob("0*.dcm"))
    node = dicomnode_node(
        start=False,
        processing=celery_workers.processing(),
        destinations={"pacs": {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}},
        outbox={"backoff_initial_seconds": 1, "poll_seconds": 0.2},
        completion={"series_quiet_seconds": 1, "study_quiet_seconds": 2, "check_interval_seconds": 0.2},
    )
    (node.root / "rules" / "rules.yaml").write_text(RULES)
    node.start()
    for sent in (storescu(node, abdomen), storescu(node, *small)):
        assert sent.returncode == 0, sent.stderr

    # the local executor runs the very same job specs meanwhile (same target as the workers)
    wait_until(lambda: len(node.query("SELECT id FROM jobs")) == 2, "two jobs", log=node.log_text)
    specs = [JobSpec.from_json(r["spec"]) for r in node.query("SELECT spec FROM jobs ORDER BY pipeline")]
    assert [s.pipeline for s in specs] == ["liver-ct", "lung-ct"]
    local: dict[str, JobResult] = {}
    done = threading.Event()

    def finished(result: JobResult) -> None:
        local[result.job_id] = result
        if len(local) == len(specs):
            done.set()

    executor = LocalExecutor(1, 600, 1, target=WORKER_TARGET)
    executor.start()
    try:
        for spec in specs:
            executor.submit(replace(spec, output_dir=str(tmp_path / "local" / spec.job_id)), finished)

        def delivered() -> bool:
            jobs = node.query("SELECT state FROM jobs")
            pending = node.query("SELECT id FROM outbox WHERE state != 'sent'")
            sent = node.query("SELECT id FROM outbox")
            return all(j["state"] == "done" for j in jobs) and bool(sent) and not pending

        wait_until(delivered, "both jobs processed on the workers and sent", timeout=300, log=node.log_text)
        assert done.wait(300), "the local executor did not finish"
    finally:
        executor.stop()

    for spec in specs:
        reference = local[spec.job_id]
        assert reference.ok, reference.error
        expected = dict(_pixels(Path(f).read_bytes()) for f in reference.output_files)
        in_pacs = dict(_pixels(orthanc.instance_file(str(i["ID"])))
                       for i in orthanc.instances_of_study(spec.study_uid))
        assert set(in_pacs) == set(expected), spec.pipeline  # same deterministic UIDs, nothing else
        for uid, pixels in expected.items():
            assert in_pacs[uid] == pixels, f"{spec.pipeline}: pixel data of {uid} differs"
    kinds = {str(i["MainDicomTags"].get("Modality", "")) for i in orthanc.get_json("/series?expand")}  # type: ignore[union-attr]
    assert {"SEG", "SR", "CT"} <= kinds

    leases = node.query("SELECT job_id, state, worker, queue FROM job_leases")
    assert sorted(r["state"] for r in leases) == ["collected", "collected"]
    assert {r["queue"] for r in leases} == {"dicomnode.liver-ct", "dicomnode.lung-ct"}
    status = subprocess.run(
        [sys.executable, "-m", "dicomnode", "status", "--config", str(node.config_path), "--json"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert status.returncode == 0, status.stderr
    jobs = json.loads(status.stdout)["jobs"]
    assert jobs["jobs"] == {"done": 2}
    assert sum(states.get("collected", 0) for states in jobs["workers"].values()) == 2
    assert all(w.split("@")[0] in ("w1", "w2") for w in jobs["workers"])
    assert node.stop() == 0
