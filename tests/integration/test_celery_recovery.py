"""The Celery executor when things go wrong, with a real Redis and two real ``dicomnode worker`` processes
(prefork pool); the node's side (processing stage, collector, outbox, sender to Orthanc) runs in this
process. Stand-in jobs copy the 3-slice CT (``tests.celery_targets``); limits and leases are short.

* a job hung in C code (GIL held, signals blocked) is killed by the hard limit, retried, and the worker
  keeps serving;
* SIGKILL of a worker (main process and children) mid-job: the lease expires, the job is re-dispatched,
  and exactly one result is collected and sent once;
* Redis flushed, then restarted, mid-run: every job is recovered, nothing lost, nothing sent twice;
* a result folder whose file does not match its manifest is rejected and the job retried.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import shared_data, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]
pytest.importorskip("celery", reason="celery is not installed (pip install -e .[celery])")

from dicomnode.config import Config  # noqa: E402
from dicomnode.database import Database  # noqa: E402
from dicomnode.distributed.executor import CeleryExecutor  # noqa: E402
from dicomnode.distributed.leases import LeaseStore  # noqa: E402
from dicomnode.jobs import JobResult, JobSpec  # noqa: E402
from dicomnode.observability.audit import AuditTrail  # noqa: E402
from dicomnode.observability.metrics import Metrics  # noqa: E402
from dicomnode.runtime.processing import Processing  # noqa: E402
from dicomnode.send.outbox import Outbox  # noqa: E402
from dicomnode.send.sender import Sender  # noqa: E402

STANDIN = "brain-mr"  # stand-in jobs: their own queue and short limits (soft 5 s, hard 6 s)


@dataclass
class Node:
    config: Config
    db: Database
    metrics: Metrics
    processing: Processing
    sender: Sender | None

    def submit(self, job_id: str, **params: Any) -> None:
        files = sorted(shared_data("ct-3slice").glob("0*.dcm"))
        self.processing.submit(JobSpec(
            job_id=job_id, pipeline=STANDIN, params=params, input_files=tuple(map(str, files)),
            output_dir=str(self.config.storage.jobs_dir / job_id), study_uid="1.2.3", series_uid="1.2.3.4",
            rule="test", destinations=tuple(self.config.destinations)))

    def state(self, job_id: str) -> str:
        return self.processing.jobs.get(job_id).state

    def leases(self, job_id: str) -> list[Any]:
        return LeaseStore(self.db).of_job(job_id)

    def outbox(self, job_id: str) -> list[Any]:
        return [r for r in Outbox(self.db, self.config.outbox).list() if r.job_id == job_id]

    def attempts(self, outcome: str) -> float:
        return self.metrics.value("dicomnode_job_attempts_total",
                                  {"pipeline": STANDIN, "outcome": outcome}) or 0.0



@pytest.fixture
def node(celery_workers, tmp_path: Path) -> Iterator[Callable[..., Node]]:  # noqa: ANN001
    started: list[Node] = []

    def make(orthanc: Any = None) -> Node:
        sections: dict[str, Any] = {}
        if orthanc is not None:
            sections["destinations"] = {"pacs": {"ae_title": orthanc.aet, "host": "127.0.0.1",
                                                 "port": orthanc.dicom_port}}
            sections["outbox"] = {"backoff_initial_seconds": 1, "poll_seconds": 0.2}
        config = celery_workers.node_config(tmp_path, **sections)
        db = Database(config.storage.database_path)
        metrics = Metrics()
        sender = Sender.from_config(config, db, metrics=metrics) if orthanc is not None else None
        executor = CeleryExecutor(config, db, metrics=metrics)
        processing = Processing(config, db, executor=executor, metrics=metrics, audit=AuditTrail(db),
                                wake_sender=sender.wake if sender else None)
        result = Node(config, db, metrics, processing, sender)
        processing.start()
        if sender is not None:
            sender.start()
        started.append(result)
        return result

    yield make
    for n in started:
        n.processing.stop()
        if n.sender is not None:
            n.sender.stop()


def test_a_job_hung_in_c_code_is_killed_by_the_hard_limit_retried_and_the_worker_keeps_serving(
    node, celery_workers  # noqa: ANN001
) -> None:
    n = node()
    n.submit("hang-1", behaviour="hang-first")
    n.submit("after-hang", behaviour="copy")
    logs = celery_workers.log("w1") + celery_workers.log("w2")
    wait_until(lambda: n.state("hang-1") == "done" and n.state("after-hang") == "done", "both jobs done",
               timeout=40, log=lambda: logs)
    first, second = n.leases("hang-1")
    assert first.state == "failed" and "hard time limit of 6 s exceeded" in first.error
    assert second.state == "collected"
    assert n.processing.jobs.get("hang-1").attempt == 2
    failures = [e for e in AuditTrail(n.db).events("1.2.3") if e["stage"] == "failed"]
    assert any("hard time limit" in e["detail"]["error"] for e in failures)
    assert len(n.outbox("hang-1")) == 0  # no destinations: nothing to send, but the result is there
    assert len(n.processing.jobs.get("hang-1").output_files) == 3
    # the worker whose child was killed goes on: both workers alive, later jobs still run
    assert all(p.poll() is None for p in celery_workers.workers.values())
    n.submit("after-hang-2", behaviour="copy")
    wait_until(lambda: n.state("after-hang-2") == "done", "a job after the kill", timeout=20)
    assert n.attempts("killed") == 1 and n.attempts("ok") == 3


def test_sigkill_of_a_worker_mid_job_expires_its_lease_and_the_result_is_sent_once(
    node, celery_workers, orthanc  # noqa: ANN001
) -> None:
    n = node(orthanc)
    n.submit("killed-1", behaviour="slow-first", seconds=5)
    wait_until(lambda: n.leases("killed-1")[0].state == "running", "the first attempt to be claimed",
               timeout=20)
    worker = n.leases("killed-1")[0].worker
    name = worker.split("@")[0]
    celery_workers.kill_worker(name)
    wait_until(lambda: n.state("killed-1") == "done" and n.outbox("killed-1"),
               "the job after the worker died", timeout=40)
    first, second = n.leases("killed-1")
    assert first.state == "expired" and "presumed dead" in first.error and first.worker == worker
    assert second.state == "collected" and second.worker != worker
    rows = n.outbox("killed-1")
    wait_until(lambda: all(r.state == "sent" for r in n.outbox("killed-1")), "the results to be sent",
               timeout=30)
    assert len(rows) == 3
    assert n.metrics.value("dicomnode_instances_sent_total", {"destination": "pacs"}) == 3
    assert orthanc.count_instances() == 3
    assert all(Path(f).parent.name == "attempt-2" for f in n.processing.jobs.get("killed-1").output_files)


def test_redis_flushed_then_restarted_mid_run_loses_nothing_and_sends_nothing_twice(
    node, celery_workers, orthanc  # noqa: ANN001
) -> None:
    n = node(orthanc)
    flushed = [f"flush-{i}" for i in range(4)]
    for job_id in flushed:
        n.submit(job_id, behaviour="slow", seconds=1.5)
    wait_until(lambda: sum(n.leases(j)[0].state == "running" for j in flushed) == 2, "two jobs running",
               timeout=20)
    depth = {"queue": "dicomnode.brain-mr"}
    assert n.metrics.value("dicomnode_celery_queue_depth", depth) == 2  # waiting: prefetch multiplier 1
    assert n.metrics.value("dicomnode_celery_active_attempts", {"state": "running"}) == 2
    celery_workers.redis.flushall()  # the two waiting messages are gone
    restarted = [f"restart-{i}" for i in range(3)]
    wait_until(lambda: all(n.state(j) == "done" and n.outbox(j) for j in flushed), "the flushed jobs",
               timeout=40)
    for job_id in restarted:
        n.submit(job_id, behaviour="slow", seconds=1.5)
    wait_until(lambda: any(n.leases(j)[0].state == "running" for j in restarted), "a job running", timeout=20)
    celery_workers.redis.restart()  # append-only file: the waiting messages survive
    wait_until(lambda: all(n.state(j) == "done" and n.outbox(j) for j in restarted),
               "the jobs across the restart", timeout=60, log=lambda: celery_workers.log("w1"))
    lost = [lease for j in flushed for lease in n.leases(j) if lease.state == "lost"]
    assert len(lost) == 2 and all("no longer on the broker" in lease.error for lease in lost)
    for job_id in flushed + restarted:
        assert [lease.state for lease in n.leases(job_id)].count("collected") == 1, job_id
        assert len(n.outbox(job_id)) == 3, job_id
    wait_until(lambda: all(r.state == "sent" for j in flushed + restarted for r in n.outbox(j)), "sends",
               timeout=30)
    assert n.metrics.value("dicomnode_instances_sent_total", {"destination": "pacs"}) == 3 * 7
    assert orthanc.count_instances() == 3 * 7
    assert n.attempts("lost") == 2 and n.attempts("ok") == 7


def test_a_result_folder_with_a_wrong_hash_is_rejected_and_the_job_retried(
    node, celery_workers  # noqa: ANN001
) -> None:
    from dicomnode.distributed.staging import JobLayout, commit_attempt

    n = node()
    n.submit("hash-1", behaviour="slow-first", seconds=3)
    wait_until(lambda: n.leases("hash-1")[0].state == "running", "the first attempt to be claimed",
               timeout=20)
    # a result folder for attempt 1 whose file was damaged after the manifest was written (e.g. on NFS)
    layout = JobLayout(celery_workers.shared, "hash-1")
    source = sorted(shared_data("ct-3slice").glob("0*.dcm"))[0]
    forged = Path(n.config.storage.path) / "forged.dcm"
    forged.write_bytes(source.read_bytes())
    commit_attempt(layout, 1, "forged", JobResult("hash-1", True, (str(forged),), {}))
    damaged = layout.committed(1) / forged.name
    damaged.write_bytes(damaged.read_bytes()[:-16] + b"\0" * 16)
    wait_until(lambda: n.state("hash-1") == "done", "the retried job", timeout=30)
    first, second = n.leases("hash-1")
    assert first.state == "rejected" and "sha256" in first.error and "forged.dcm" in first.error
    assert second.state == "collected"
    record = n.processing.jobs.get("hash-1")
    assert record.attempt == 2 and len(record.output_files) == 3
    # the accepted result was moved into the node's own job folder; the shared one is cleaned up
    local = n.config.storage.jobs_dir / "hash-1" / "attempt-2"
    assert all(Path(f).parent == local for f in record.output_files)
    assert not layout.root.exists()
    assert all("forged" not in f for f in record.output_files)
    assert n.attempts("rejected") == 1


def test_a_result_committed_while_the_node_was_down_is_collected_after_its_restart(
    node, celery_workers  # noqa: ANN001
) -> None:
    from dicomnode.distributed.staging import JobLayout

    first = node()
    first.submit("node-down-1", behaviour="slow", seconds=2)
    wait_until(lambda: first.leases("node-down-1")[0].state == "running", "the attempt to be claimed",
               timeout=20)
    first.processing.stop()  # the node goes down; the worker goes on and commits
    layout = JobLayout(celery_workers.shared, "node-down-1")
    wait_until(lambda: layout.committed(1).is_dir(), "the commit while the node is down", timeout=20)
    second = node()  # the same database and folders: a restarted node
    wait_until(lambda: second.state("node-down-1") == "done", "the job after the restart", timeout=20)
    assert [lease.state for lease in second.leases("node-down-1")] == ["collected"]  # not run again
    record = second.processing.jobs.get("node-down-1")
    assert record.attempt == 1 and len(record.output_files) == 3
