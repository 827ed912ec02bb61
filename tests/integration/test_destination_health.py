"""``dicomnode health`` and the destination gauges of a running node whose PACS is on a closed port:
storescu → ``dicomnode serve`` (a forward rule) → nothing listening; past
``health.destination_unreachable_minutes`` the command exits 3 naming it while ``/readyz`` stays ready."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.factories import ct_series
from tests.support import free_port

pytestmark = pytest.mark.integration

THRESHOLD_S = 3.0
FORWARD_ALL = "- name: everything\n  fallback: true\n  then: {forward: true, send_to: [pacs]}\n"


def _health(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dicomnode", "health", *args], capture_output=True,
                          text=True, timeout=60)


def test_health_names_a_destination_on_a_closed_port(dicomnode_node, tmp_path) -> None:  # noqa: ANN001
    from tests.fixtures_node import storescu

    metrics_port = free_port()
    node = dicomnode_node(
        start=False,
        destinations={"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": free_port(), "timeout": 2},
                      "archive": {"ae_title": "ARCHIVE", "host": "127.0.0.1", "port": free_port()}},
        outbox={"backoff_initial_seconds": 0.5, "backoff_max_seconds": 1, "poll_seconds": 0.2},
        completion={"series_quiet_seconds": 0.5, "study_quiet_seconds": 0.5, "check_interval_seconds": 0.2},
        metrics={"host": "127.0.0.1", "port": metrics_port},
        health={"destination_unreachable_minutes": THRESHOLD_S / 60},
    )
    (node.root / "rules" / "rules.yaml").write_text(FORWARD_ALL)
    node.start()
    sent = storescu(node, *ct_series(tmp_path / "series", seed="health", slices=3, rows=16, cols=16))
    assert sent.returncode == 0, sent.stderr

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not node.query("SELECT id FROM outbox WHERE attempts >= 1"):
        time.sleep(0.2)
    early = _health("--config", str(node.config_path))
    first = min(float(r["created_at"]) for r in node.query("SELECT created_at FROM outbox"))
    if time.time() < first + THRESHOLD_S - 1:  # (a slow machine may have taken longer than that already)
        assert early.returncode == 0, early.stderr  # failing, but not for long enough yet
        assert "destination pacs: failing" in early.stdout
    assert "destination archive: reachable" in early.stdout
    time.sleep(max(0.0, first + THRESHOLD_S + 0.2 - time.time()))

    late = _health("--config", str(node.config_path))
    assert late.returncode == 3, (late.stdout, late.stderr)
    assert "destination(s) unreachable" in late.stderr and "pacs" in late.stderr
    assert "archive" not in late.stderr
    assert "healthy:" in late.stdout and "destination pacs: UNREACHABLE" in late.stdout
    assert "Connection refused" in late.stdout or "refused" in late.stdout.lower()
    as_json = _health("--config", str(node.config_path), "--json")
    answer = json.loads(as_json.stdout)
    assert as_json.returncode == 3 and answer["status"] == "ready"
    assert answer["destinations"]["pacs"]["unreachable"] is True
    assert answer["destinations"]["archive"]["unreachable"] is False
    assert _health("--config", str(node.config_path), "--node-only").returncode == 0  # the Docker check

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    assert 'dicomnode_destination_unreachable{destination="pacs"} 1.0' in text
    assert 'dicomnode_destination_unreachable{destination="archive"} 0.0' in text
    gauge = 'dicomnode_destination_failing_seconds{destination="pacs"}'
    failing = [ln for ln in text.splitlines() if ln.startswith(gauge)]
    assert failing and float(failing[0].split()[-1]) >= THRESHOLD_S
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=10) as response:
        assert response.status == 200  # /readyz stays about the node itself
    node.stop()
