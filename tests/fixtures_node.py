"""Fixtures and helpers for tests that run a real ``dicomnode serve`` subprocess.

    def test_x(dicomnode_node):
        node = dicomnode_node(completion={"series_quiet_seconds": 1})   # started, answering C-ECHO
        result = storescu(node, folder)                                   # /usr/bin/storescu +sd +sp *.dcm
        rows = node.query("SELECT * FROM spool_instances")
        node.stop()                                                       # SIGTERM; returns the exit code

Each node gets a free loopback port and its own storage folder under ``tmp_path``; every process
started is killed by PID in the fixture's finalizer.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import REPO_ROOT, dcmtk, free_port

NODE_AE = "DICOMNODE"
START_TIMEOUT = 30.0


@dataclass
class NodeProcess:
    root: Path
    port: int
    config_path: Path
    ae_title: str = NODE_AE
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    logs: list[Path] = field(default_factory=list)

    @property
    def storage(self) -> Path:
        return self.root / "data"

    @property
    def spool(self) -> Path:
        return self.storage / "spool"

    @property
    def database(self) -> Path:
        return self.storage / "dicomnode.sqlite3"

    @property
    def log_path(self) -> Path:
        return self.logs[-1]

    def start(self) -> NodeProcess:
        self.starts += 1
        log = self.root / f"node-{self.starts}.log"
        self.logs.append(log)
        env = dict(os.environ, TCP_NODELAY="1", PYTHONUNBUFFERED="1")
        env.pop("DICOMNODE_CONFIG", None)
        with open(log, "wb") as handle:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dicomnode", "serve", "--config", str(self.config_path)],
                cwd=self.root,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=env | {"PYTHONPATH": str(REPO_ROOT)},
            )
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                pytest.fail(f"dicomnode serve exited with {self.proc.returncode}:\n{self.log_text()}")
            if self.echo():
                return
            time.sleep(0.2)
        pytest.fail(f"dicomnode serve did not answer C-ECHO within {timeout} s:\n{self.log_text()}")

    def echo(self, calling: str = "ECHOSCU") -> bool:
        result = subprocess.run(
            [
                dcmtk("echoscu"),
                "-aet",
                calling,
                "-aec",
                self.ae_title,
                "-to",
                "5",
                "127.0.0.1",
                str(self.port),
            ],
            capture_output=True,
            timeout=30,
        )
        return result.returncode == 0

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait; returns the exit status (None if it was not running)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"dicomnode serve ignored SIGTERM for {timeout} s:\n{self.log_text()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def log_records(self) -> list[dict[str, Any]]:
        """The node's JSON log lines (the node logs JSON when stderr is not a terminal)."""
        records = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return records

    def query(self, sql: str, args: Sequence[object] = ()) -> list[dict[str, Any]]:
        return read_node_db(self.database, sql, args)


def read_node_db(database: Path, sql: str, args: Sequence[object] = ()) -> list[dict[str, Any]]:
    """Rows of a query against a node database (read-only; works while the node runs)."""
    if not database.exists():
        return []
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, tuple(args))]
    finally:
        conn.close()


def storescu(
    node: NodeProcess,
    *paths: Path,
    calling: str = "STORESCU",
    called: str | None = None,
    extra: Sequence[str] = (),
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Send files or folders with dcmtk's storescu (verbose, so each response status is in the output)."""
    args = [dcmtk("storescu"), "-v", "-aet", calling, "-aec", called or node.ae_title, *extra]
    if any(p.is_dir() for p in paths):
        args += ["+sd", "+r", "+sp", "*.dcm"]
    args += ["127.0.0.1", str(node.port), *map(str, paths)]
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, env=dict(os.environ, TCP_NODELAY="1")
    )


def node_config(root: Path, port: int, **sections: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {
        "node": {"ae_title": NODE_AE, "host": "127.0.0.1", "port": port},
        # small journal segments: every test node writes its segments at start-up
        "storage": {"path": str(root / "data"), "min_free_mb": 0, "max_used_percent": 100,
                    "journal": {"segment_mb": 8}},
        "completion": {"series_quiet_seconds": 2, "study_quiet_seconds": 3, "check_interval_seconds": 0.2},
        "rules": {"path": str(root / "rules"), "watch": False},
        "metrics": {"port": 0},
        "logging": {"level": "INFO", "format": "json"},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return config


@pytest.fixture
def dicomnode_node(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Factory: ``dicomnode_node(start=True, **sections)`` → a running :class:`NodeProcess`."""
    nodes: list[NodeProcess] = []

    def make(start: bool = True, **sections: dict[str, Any]) -> NodeProcess:
        root = tmp_path / f"node{len(nodes)}"
        (root / "rules").mkdir(parents=True)
        port = free_port()
        config_path = root / "dicomnode.yaml"
        config_path.write_text(yaml.safe_dump(node_config(root, port, **sections)))
        node = NodeProcess(
            root=root,
            port=port,
            config_path=config_path,
            ae_title=sections.get("node", {}).get("ae_title", NODE_AE),
        )
        nodes.append(node)
        return node.start() if start else node

    yield make
    for node in nodes:
        node.kill()
