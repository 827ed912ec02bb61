"""Scale-out: a burst of small CT series through the local executor vs Celery workers; prints tables.

The series are the real 20-slice abdominal CT (``shared/data/ct-abdomen-20/dicom``) downsampled by
``--factor`` in-plane (default 4: 128×128×20) and given new UIDs, ``--series`` times (default 20). Each
runs the real ``--pipeline`` (default liver-ct) with one ITK/OpenMP thread per process:

* ``local`` — the embedded :class:`LocalExecutor` with 1 process (a spawned process per job);
* ``celery`` — a real Redis (append-only, noeviction) and one ``dicomnode worker`` with ``--concurrency``
  1, then 2 (prefork children), driven by :class:`CeleryExecutor` exactly as the node does.

Then the broker overhead per job: ``--overhead-jobs`` jobs whose target does nothing, one after another
through Celery (1 worker process); the round trip submit → collected (stage the series with its
manifest, publish, worker claims, copies and verifies the input, commits, node verifies and collects)
is all overhead. Targets: < 50 ms per job; 2 worker processes ≥ 1.7 × 1 (on a 2-core machine shared
with other work the ratio may not be reachable — the table says what was measured).

    python benchmarks/scale.py [--series 20] [--factor 4] [--pipeline liver-ct] [--overhead-jobs 20]
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dicomnode.jobs import JobResult, JobSpec  # noqa: E402

SOURCE = ROOT.parent / "shared" / "data" / "ct-abdomen-20" / "dicom"


def noop(spec: JobSpec) -> JobResult:
    """The overhead run's job target: does nothing, so the round trip is all dispatch/collect overhead."""
    return JobResult(spec.job_id, True, (), {"seconds": 0.0})


def make_series(folder: Path, count: int, factor: int) -> list[list[str]]:
    import numpy as np
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    sources = []
    for path in sorted(SOURCE.glob("*.dcm")):
        ds = dcmread(path)
        a = ds.pixel_array
        rows, cols = a.shape[0] // factor, a.shape[1] // factor
        small = a[:rows * factor, :cols * factor].reshape(rows, factor, cols, factor).mean(axis=(1, 3))
        ds.PixelData = np.round(small).astype(a.dtype).tobytes()
        ds.Rows, ds.Columns = rows, cols
        ds.PixelSpacing = [float(x) * factor for x in ds.PixelSpacing]
        sources.append(ds)
    series = []
    for n in range(count):
        study_uid = generate_uid(entropy_srcs=["scale", str(n), "study"])
        series_uid = generate_uid(entropy_srcs=["scale", str(n), "series"])
        target = folder / f"series{n:02d}"
        target.mkdir(parents=True)
        files = []
        for i, ds in enumerate(sources):
            ds = copy.deepcopy(ds)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
            ds.SOPInstanceUID = generate_uid(entropy_srcs=["scale", str(n), str(i)])
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            path = target / f"IM{i:04d}.dcm"
            ds.save_as(path)
            files.append(str(path))
        series.append(files)
    return series


def specs(series: list[list[str]], pipeline: str, out: Path, tag: str) -> list[JobSpec]:
    return [JobSpec(job_id=f"{tag}-{n:02d}", pipeline=pipeline, params={}, input_files=tuple(files),
                    output_dir=str(out / f"{tag}-{n:02d}"), study_uid=f"1.2.3.{n}",
                    series_uid=f"1.2.3.{n}.1") for n, files in enumerate(series)]


def run_batch(  # noqa: ANN001
    executor, jobs: list[JobSpec], serial: bool = False
) -> tuple[float, list[JobResult], list[float]]:
    """Submit ``jobs`` (all at once, or one after another) and wait: (wall s, results, round trips)."""
    results: list[JobResult] = []
    trips: list[float] = []
    lock = threading.Lock()
    finished = threading.Event()
    one_done = threading.Event()
    sent: dict[str, float] = {}

    def on_done(result: JobResult) -> None:
        with lock:
            results.append(result)
            trips.append(time.perf_counter() - sent[result.job_id])
            if len(results) == len(jobs):
                finished.set()
        one_done.set()

    started = time.perf_counter()
    for spec in jobs:
        one_done.clear()
        sent[spec.job_id] = time.perf_counter()
        executor.submit(spec, on_done)
        if serial and not one_done.wait(120):
            raise SystemExit(f"job {spec.job_id} did not finish within 120 s")
    if not finished.wait(3600):
        raise SystemExit("the batch did not finish within an hour")
    return time.perf_counter() - started, results, trips


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Cluster:
    """redis-server and one ``dicomnode worker`` at a time, stopped by PID."""

    def __init__(self, work: Path, pipeline: str) -> None:
        self.work = work
        (work / "shared").mkdir(parents=True)
        self.port = free_port()
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(work),
             "--appendonly", "yes", "--maxmemory-policy", "noeviction", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        if self.redis.poll() is not None:
            raise SystemExit(f"redis-server exited with {self.redis.returncode}")
        import yaml

        from dicomnode.config import Config

        self.config_data = {
            "storage": {"path": str(work / "node")},
            "logging": {"level": "INFO", "format": "text"},
            "processing": {"executor": "celery", "broker_url": f"redis://127.0.0.1:{self.port}/0",
                           "max_attempts": 1,
                           "celery": {"shared_dir": str(work / "shared"), "hard_time_limit_seconds": 600,
                                      "visibility_timeout_seconds": 6000, "reconcile_seconds": 1}},
        }
        self.config_path = work / "dicomnode.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config_data))
        self.config = Config.model_validate(self.config_data)
        self.worker: subprocess.Popen[bytes] | None = None
        self.log = work / "worker.log"

    def start_worker(self, concurrency: int, target: str | None = None) -> None:
        with self.log.open("a") as log:
            log.write("\n--- start ---\n")
        log = self.log.open("ab")
        args = [sys.executable, "-m", "dicomnode", "worker", "--config", str(self.config_path),
                "--concurrency", str(concurrency), "--hostname", f"bench{concurrency}@%h"]
        if target:
            args += ["--target", target]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.worker = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + 60
        while " ready." not in self.log.read_text(errors="replace").split("--- start ---")[-1]:
            if self.worker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the worker did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def stop_worker(self) -> None:
        if self.worker is None:
            return
        children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.worker.pid)],
                                  capture_output=True, text=True).stdout.split()
        self.worker.send_signal(signal.SIGTERM)
        try:
            self.worker.wait(30)
        except subprocess.TimeoutExpired:
            for pid in [self.worker.pid, *map(int, children)]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
            self.worker.wait(10)
        self.worker = None

    def executor(self):  # noqa: ANN201
        from dicomnode.database import Database
        from dicomnode.distributed.executor import CeleryExecutor

        executor = CeleryExecutor(self.config, Database(self.config.storage.database_path))
        executor.start()
        return executor

    def stop(self) -> None:
        self.stop_worker()
        self.redis.terminate()
        self.redis.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=20)
    parser.add_argument("--factor", type=int, default=4, help="in-plane downsampling of the 512×512 slices")
    parser.add_argument("--pipeline", default="liver-ct")
    parser.add_argument("--overhead-jobs", type=int, default=20)
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    from dicomnode.pipelines.executor import LocalExecutor

    work = Path(tempfile.mkdtemp(prefix="dicomnode-scale-"))
    try:
        series = make_series(work / "series", args.series, args.factor)
        print(f"{args.series} series of {len(series[0])} real CT slices downsampled ×{args.factor} in-plane "
              f"({512 // args.factor}×{512 // args.factor}), pipeline {args.pipeline}, 1 ITK thread/process, "
              f"{os.cpu_count()} CPUs (shared)")
        rows = []
        local = LocalExecutor(1, 600, 1)
        local.start()
        wall, results, _ = run_batch(local, specs(series, args.pipeline, work / "out", "local"))
        local.stop()
        rows.append(("local", 1, wall, results))

        cluster = Cluster(work / "celery", args.pipeline)
        try:
            executor = cluster.executor()
            for concurrency in (1, 2):
                cluster.start_worker(concurrency)
                wall, results, _ = run_batch(executor, specs(series, args.pipeline, work / "out",
                                                              f"celery{concurrency}"))
                rows.append(("celery", concurrency, wall, results))
                cluster.stop_worker()
            cluster.start_worker(1, target="benchmarks.scale:noop")
            run_batch(executor, specs(series[:2], args.pipeline, work / "out", "warm"), serial=True)
            burst = [series[n % len(series)] for n in range(args.overhead_jobs)]
            _, results, trips = run_batch(executor, specs(burst, args.pipeline, work / "out", "noop"),
                                          serial=True)
            executor.stop()
        finally:
            cluster.stop()

        print(f"\n{'executor':<10}{'processes':>10}{'series':>8}{'failed':>8}{'wall s':>9}{'series/min':>12}")
        for name, processes, wall, batch in rows:
            failed = sum(not r.ok for r in batch)
            rate = len(batch) / wall * 60
            print(f"{name:<10}{processes:>10}{len(batch):>8}{failed:>8}{wall:>9.1f}{rate:>12.1f}")
        celery1, celery2 = rows[1][2], rows[2][2]
        print(f"\nscaling, celery 2 vs 1 worker processes: {celery1 / celery2:.2f}x (target >= 1.7x)")
        print(f"celery 1 process vs local 1 process:      {rows[0][2] / celery1:.2f}x "
              "(local forks a fresh process per job from its fork server; prefork children are reused)")
        ms = [t * 1000 for t in trips]
        print(f"\nbroker overhead per job ({len(ms)} no-op jobs of {len(series[0])} files, one at a time, "
              f"submit -> collected): median {statistics.median(ms):.1f} ms, "
              f"mean {statistics.mean(ms):.1f} ms, max {max(ms):.1f} ms (target < 50 ms)")
        worker_ms = [float(r.summary.get("worker_seconds", 0.0)) * 1000 for r in results]
        print(f"  of which inside the worker (claim, copy + verify input, run, commit): median "
              f"{statistics.median(worker_ms):.1f} ms")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
