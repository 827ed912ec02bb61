"""A Celery cluster on one machine for the scale-out tests: Debian ``redis-server`` (append-only file,
``noeviction``) on a free loopback port with a throwaway folder, and two ``dicomnode worker``
subprocesses (prefork pool, ``--concurrency 1``) sharing one job folder. Every process is stopped by PID
in the fixture's finalizer.

    def test_x(celery_cluster):
        config = celery_cluster.node_config(tmp_path, time_limits={...})   # a node Config using the cluster
        celery_cluster.kill_worker("w1")                                   # SIGKILL its main + children
        celery_cluster.redis.flushall(); celery_cluster.redis.restart()
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import REPO_ROOT, free_port, require_tool

WORKER_TARGET = "tests.celery_targets:dispatch"
# Stand-in jobs run as pipeline brain-mr with short limits; the real liver-ct gets room to finish.
PROCESSING: dict[str, Any] = {
    "executor": "celery",
    "max_attempts": 3,
    "celery": {
        "hard_time_limit_seconds": 8,
        "soft_time_limit_seconds": 7,
        "time_limits": {"brain-mr": {"soft_seconds": 5, "hard_seconds": 6},
                        "liver-ct": {"soft_seconds": 170, "hard_seconds": 180}},
        "visibility_timeout_seconds": 1800,
        "lease_seconds": 2,
        "reconcile_seconds": 0.5,
    },
}


class RedisServer:
    def __init__(self, workdir: Path) -> None:
        self.binary = require_tool("/usr/bin/redis-server")
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        log = (self.workdir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
             "--appendonly", "yes", "--appendfsync", "always", "--maxmemory-policy", "noeviction",
             "--save", "", "--protected-mode", "yes"],
            stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                if self.client().ping():
                    return
            except Exception:  # redis.ConnectionError while it starts
                time.sleep(0.05)
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def client(self) -> Any:  # noqa: ANN401 - redis.Redis
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5)

    def flushall(self) -> None:
        self.client().flushall()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # redis-server fsyncs its append-only file and exits
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()


class CeleryCluster:
    def __init__(self, root: Path) -> None:
        pytest.importorskip("celery", reason="celery is not installed (pip install -e .[celery])")
        self.root = root
        self.shared = root / "shared"
        self.shared.mkdir(parents=True)
        self.redis = RedisServer(root / "redis")
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.config_path = root / "worker.yaml"

    def processing(self, **celery: Any) -> dict[str, Any]:
        section = {**PROCESSING, "broker_url": self.redis.url}
        section["celery"] = {**PROCESSING["celery"], "shared_dir": str(self.shared), **celery}
        return section

    def node_config(self, root: Path, **sections: Any) -> Any:  # noqa: ANN401 - dicomnode.config.Config
        from dicomnode.config import Config

        return Config.model_validate({
            "storage": {"path": str(root / "data"), "min_free_mb": 0, "max_used_percent": 100},
            "processing": self.processing(),
            **sections,
        })

    def start(self) -> None:
        self.redis.start()
        self.config_path.write_text(yaml.safe_dump({
            "storage": {"path": str(self.root / "worker-data")},
            "logging": {"level": "INFO", "format": "text"},
            "processing": self.processing(),
        }))
        for name in ("w1", "w2"):
            self.start_worker(name)
        self.wait_workers_ready()

    def start_worker(self, name: str) -> None:
        log = (self.root / f"{name}.log").open("ab")
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
        env.pop("DICOMNODE_CONFIG", None)
        self.workers[name] = subprocess.Popen(
            [sys.executable, "-m", "dicomnode", "worker", "--config", str(self.config_path),
             "--concurrency", "1", "--hostname", f"{name}@%h", "--target", WORKER_TARGET],
            cwd=REPO_ROOT, stdout=log, stderr=log, env=env)

    def wait_workers_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        pending = set(self.workers)
        while pending and time.monotonic() < deadline:
            for name in list(pending):
                proc = self.workers[name]
                if proc.poll() is not None:
                    raise AssertionError(f"worker {name} exited with {proc.returncode}:\n{self.log(name)}")
                if " ready." in self.log(name).split("--- start ---")[-1]:
                    pending.discard(name)
            time.sleep(0.2)
        if pending:
            raise AssertionError(f"workers {sorted(pending)} not ready after {timeout} s")

    def ensure_workers(self) -> None:
        """Restart any worker a test killed."""
        for name, proc in list(self.workers.items()):
            if proc.poll() is not None:
                (self.root / f"{name}.log").open("a").write("\n--- start ---\n")
                self.start_worker(name)
        self.wait_workers_ready()

    def children(self, name: str) -> list[int]:
        proc = self.workers[name]
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def kill_worker(self, name: str) -> None:
        """SIGKILL the worker's main process and its pool children (by PID), as when its machine dies."""
        proc = self.workers[name]
        pids = [proc.pid, *self.children(name)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(10)

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """The end of the module: SIGKILL the workers and their pool children (the cluster is thrown away;
        a worker takes ~4 s to exit on SIGTERM), then stop Redis."""
        for name, proc in self.workers.items():
            if proc.poll() is None:
                self.kill_worker(name)
        self.redis.stop()


@pytest.fixture(scope="module")
def celery_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CeleryCluster]:
    """Redis + two ``dicomnode worker`` processes (``--target tests.celery_targets:dispatch``), shared by
    the tests of one module; a worker a test killed is restarted before the next test."""
    cluster = CeleryCluster(tmp_path_factory.mktemp("celery"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def celery_workers(celery_cluster: CeleryCluster) -> CeleryCluster:
    celery_cluster.ensure_workers()
    return celery_cluster
