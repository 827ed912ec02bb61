"""The worker pool: a crash or a timeout fails only its own job, with the reason; the pool goes on."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from dicomnode.jobs import JobResult, JobSpec
from dicomnode.pipelines.executor import LocalExecutor

TARGET = "tests.unit.test_pipelines_executor:fake_job"


def fake_job(spec: JobSpec) -> JobResult:
    """Runs in the spawned worker: behaves as the job's ``mode`` parameter says."""
    mode = spec.params["mode"]
    if mode == "crash":
        os._exit(3)
    if mode == "segfault":
        import ctypes

        ctypes.string_at(0)
    if mode == "hang":
        time.sleep(60)
    if mode == "lost-after-result":  # the result written, then the status the fork server reports when lost
        JobResult(spec.job_id, True, (), {"written": True}).write(Path(spec.output_dir))
        os._exit(255)
    if mode == "lost":
        os._exit(255)
    threads = os.environ.get("OMP_NUM_THREADS", "")
    return JobResult(spec.job_id, True, (), {"threads": threads})


def run_all(executor: LocalExecutor, specs: list[JobSpec], timeout: float = 60.0) -> dict[str, JobResult]:
    results: dict[str, JobResult] = {}
    done = threading.Event()

    def on_done(result: JobResult) -> None:
        results[result.job_id] = result
        if len(results) == len(specs):
            done.set()

    for spec in specs:
        executor.submit(spec, on_done)
    assert done.wait(timeout), f"only {sorted(results)} finished"
    return results


def spec(tmp_path: Path, job_id: str, mode: str) -> JobSpec:
    return JobSpec(job_id, "test", {"mode": mode}, (), str(tmp_path / job_id))


def test_crash_and_timeout_fail_only_their_own_jobs(tmp_path) -> None:
    executor = LocalExecutor(workers=2, timeout=4.0, itk_threads=1, target=TARGET)  # the hang waits it out
    executor.start()
    try:
        results = run_all(
            executor,
            [spec(tmp_path, "crash", "crash"), spec(tmp_path, "segv", "segfault"),
             spec(tmp_path, "hang", "hang"), spec(tmp_path, "fine", "ok")],
        )
        # (multiprocessing's fork server may lose a child's status under load and report 255 for it,
        # CPython gh-140867: the job still fails, and the message says the status was lost)
        crash = results["crash"].error
        assert not results["crash"].ok and ("died (exit code 3)" in crash or "status was lost" in crash)
        assert not results["segv"].ok and "SIGSEGV" in results["segv"].error
        assert not results["hang"].ok and "timed out after 4 s" in results["hang"].error
        assert results["fine"].ok and results["fine"].summary["threads"] == "1"
        after = run_all(executor, [spec(tmp_path, "after", "ok")])  # the pool survived
        assert after["after"].ok
        assert executor.running_jobs() == []
    finally:
        executor.stop()


def test_invalid_settings_are_refused() -> None:
    from dicomnode.errors import PipelineError

    with pytest.raises(PipelineError, match="workers=0"):
        LocalExecutor(workers=0)



def test_a_lost_exit_status_keeps_the_result_the_worker_wrote(tmp_path) -> None:
    """The fork server reports 255 when a child's status is lost (CPython gh-140867): a worker that wrote its
    result.json before its status was lost keeps its result; one that wrote none fails, saying so."""
    executor = LocalExecutor(workers=1, timeout=20.0, itk_threads=1, target=TARGET)
    executor.start()
    try:
        results = run_all(executor, [spec(tmp_path, "wrote", "lost-after-result"),
                                     spec(tmp_path, "none", "lost")])
    finally:
        executor.stop()
    assert results["wrote"].ok and results["wrote"].summary == {"written": True}
    assert not results["none"].ok and "status was lost" in results["none"].error
