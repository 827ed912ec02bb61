"""A really full disk: the node's storage on a small tmpfs (needs root to mount; skipped otherwise).

* Nearly full (below ``storage.min_free_mb``): new storage associations are refused with a transient
  "temporary congestion" rejection, C-ECHO still answers, stored data is untouched, /readyz and
  ``dicomnode health`` report the disk, the metric and the log say why; acceptance resumes when space
  returns.
* Completely full during a transfer (thresholds off): the C-STORE is answered 0xA700 (out of resources),
  no partial file is left, the failure is counted and the node keeps serving once space returns.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.factories import ct_series
from tests.fixtures_node import storescu
from tests.support import free_port

pytestmark = pytest.mark.integration


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """``small_disk(mb)`` → a fresh tmpfs of that size, unmounted at teardown (after the node is killed)."""
    mounts: list[Path] = []

    def make(size_mb: int) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        point = tmp_path / f"disk{len(mounts)}"
        point.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs",
                                 str(point)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounts.append(point)
        return point

    yield make
    for point in reversed(mounts):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def _fill(disk: Path, leave_mb: float) -> Path:
    """A ballast file that leaves about ``leave_mb`` free on ``disk``."""
    ballast = disk / "ballast"
    stat = os.statvfs(disk)
    size = stat.f_bavail * stat.f_frsize - int(leave_mb * 2**20)
    with open(ballast, "wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, size)
    return ballast


def _get(url: str) -> tuple[int, dict | str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read().decode(), exc.code
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def _digests(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.glob("spool/*/*/*.dcm")}


def test_nearly_full_disk_refuses_then_resumes(dicomnode_node, small_disk, tmp_path: Path) -> None:
    disk = small_disk(32)
    metrics_port = free_port()
    node = dicomnode_node(storage={"path": str(disk), "min_free_mb": 8, "max_used_percent": 100},
                          metrics={"host": "127.0.0.1", "port": metrics_port})
    base = f"http://127.0.0.1:{metrics_port}"
    first = ct_series(tmp_path / "first", seed="first", slices=3, rows=64, cols=64)
    assert storescu(node, *first).returncode == 0
    before = _digests(disk)
    assert len(before) == 3

    ballast = _fill(disk, leave_mb=4)
    second = ct_series(tmp_path / "second", seed="second", slices=2, rows=64, cols=64)
    refused = storescu(node, *second)
    assert refused.returncode != 0
    assert "Rejected Transient" in refused.stderr and "Temporary Congestion" in refused.stderr
    assert node.echo(), "C-ECHO must keep answering while the disk is full (monitoring)"
    assert _digests(disk) == before, "data stored before the disk filled was touched"

    status, ready = _get(base + "/readyz")
    assert status == 503 and isinstance(ready, dict)
    assert ready["checks"]["disk"]["ok"] is False and "min_free_mb=8" in ready["checks"]["disk"]["detail"]
    health = subprocess.run([sys.executable, "-m", "dicomnode", "health", "--config", str(node.config_path)],
                            capture_output=True, text=True, timeout=60)
    assert health.returncode == 1 and "disk:" in health.stderr
    _, metrics = _get(base + "/metrics")
    assert 'dicomnode_associations_rejected_total{reason="disk_full"} 1.0' in metrics
    assert "dicomnode_disk_full 1.0" in metrics
    refusals = [r for r in node.log_records() if "storage.min_free_mb" in r.get("message", "")]
    assert refusals and refusals[0]["level"] == "ERROR"

    ballast.unlink()  # space returns
    resumed = storescu(node, *second)
    assert resumed.returncode == 0, resumed.stderr
    assert len(_digests(disk)) == 5
    _, metrics = _get(base + "/metrics")
    assert "dicomnode_disk_full 0.0" in metrics
    assert _get(base + "/readyz")[0] == 200
    assert node.stop() == 0


def test_disk_full_during_a_transfer_fails_that_instance_only(dicomnode_node, small_disk,
                                                              tmp_path: Path) -> None:
    disk = small_disk(24)
    metrics_port = free_port()
    node = dicomnode_node(storage={"path": str(disk), "min_free_mb": 0, "max_used_percent": 100},
                          metrics={"host": "127.0.0.1", "port": metrics_port})
    small = ct_series(tmp_path / "small", seed="small", slices=1, rows=32, cols=32)
    assert storescu(node, *small).returncode == 0
    ballast = _fill(disk, leave_mb=0.25)
    big = ct_series(tmp_path / "big", seed="big", slices=1, rows=512, cols=512)  # 512 KB of pixels
    result = storescu(node, *big)
    assert "Received Store Response (Refused: OutOfResources)" in result.stderr, result.stderr
    assert len(_digests(disk)) == 1, "a partial or unacknowledged file reached the spool"
    assert not list((disk / "spool" / ".tmp").glob("*.part")), "a temporary file was left behind"
    _, metrics = _get(f"http://127.0.0.1:{metrics_port}/metrics")
    assert 'dicomnode_store_failures_total{reason="0xA700"} 1.0' in metrics

    ballast.unlink()
    deadline = time.monotonic() + 10
    while not node.echo() and time.monotonic() < deadline:
        time.sleep(0.2)
    again = storescu(node, *big)
    assert again.returncode == 0, again.stderr
    assert len(_digests(disk)) == 2
    assert node.stop() == 0
