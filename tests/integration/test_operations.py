"""A real ``dicomnode serve``: sd_notify, /metrics, /readyz, health command, audit, PHI-free logs."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.factories import ct_series, uid
from tests.support import REPO_ROOT, free_port

pytestmark = pytest.mark.integration


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dicomnode", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO_ROOT)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_running_node_is_observable(dicomnode_node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fixtures_node import storescu

    notify_path = str(tmp_path / "notify.sock")
    notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_sock.bind(notify_path)
    notify_sock.settimeout(20)
    monkeypatch.setenv("NOTIFY_SOCKET", notify_path)
    metrics_port = free_port()
    node = dicomnode_node(metrics={"host": "127.0.0.1", "port": metrics_port},
                          completion={"series_quiet_seconds": 1, "study_quiet_seconds": 1,
                                      "check_interval_seconds": 0.2})
    base = f"http://127.0.0.1:{metrics_port}"
    try:
        # systemd readiness: READY=1 arrives, and only once the DICOM port answers (fixture waited for it).
        assert notify_sock.recv(4096).decode().splitlines()[0] == "READY=1"

        files = ct_series(tmp_path / "series", seed="ops", slices=4, rows=32, cols=32)
        study_uid = uid("ops", "study")
        result = storescu(node, *files)
        assert result.returncode == 0, result.stderr

        status, body = _get(base + "/readyz")
        ready = json.loads(body)
        assert status == 200 and ready["status"] == "ready", body
        assert set(ready["checks"]) == {"listener", "database", "disk"}

        health = _cli("health", "--config", str(node.config_path))
        assert health.returncode == 0, health.stderr

        deadline = time.monotonic() + 30
        text = ""
        while time.monotonic() < deadline:
            text = _get(base + "/metrics")[1]
            if "dicomnode_series_completed_total 1.0" in text:
                break
            time.sleep(0.3)
        assert "dicomnode_series_completed_total 1.0" in text, text
        spool_bytes = [ln for ln in text.splitlines() if ln.startswith("dicomnode_spool_bytes ")]
        assert spool_bytes and float(spool_bytes[0].split()[1]) >= sum(f.stat().st_size for f in files) * 0.9
        assert "dicomnode_spool_filesystem_free_bytes" in text
        assert "dicomnode_instances_received_total 4.0" in text
        received = [ln for ln in text.splitlines() if ln.startswith("dicomnode_received_bytes_total ")]
        assert float(received[0].split()[1]) > 4 * 32 * 32 * 2

        view = _cli("status", "--config", str(node.config_path), "--study", study_uid, "--json")
        assert view.returncode == 0, view.stderr
        timeline = json.loads(view.stdout)
        assert timeline["stages"]["received"]["count"] == 1
        assert timeline["events"][0]["detail"]["instances"] == 4
        assert "completed" in timeline["stages"] and "received→completed" in timeline["durations"]
        text_view = _cli("status", "--config", str(node.config_path), "--study", study_uid)
        assert text_view.returncode == 0 and f"Study {study_uid}" in text_view.stdout
        unknown = _cli("status", "--config", str(node.config_path), "--study", "1.2.3.404")
        assert unknown.returncode == 2 and "No audit events for study '1.2.3.404'" in unknown.stderr

        exported = tmp_path / "audit.json"
        export = _cli("audit", "export", "--config", str(node.config_path), "-o", str(exported))
        assert export.returncode == 0, export.stderr
        assert {e["stage"] for e in json.loads(exported.read_text())} >= {"received", "completed"}
    finally:
        code = node.stop()
    assert code == 0
    assert notify_sock.recv(4096).decode().startswith("STOPPING=1")
    notify_sock.close()

    records = node.log_records()
    assert records, node.log_text()
    log_text = node.log_text()
    for phi in ("Factory^CT", "Factory CT", "DN-TEST-001"):
        assert phi not in log_text, f"{phi!r} in the node's log"
    with_study = [r for r in records if r.get("study_uid") == study_uid]
    assert with_study, "no log line carries the study UID"
