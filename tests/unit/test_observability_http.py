"""Metrics, /healthz, /readyz and ``dicomnode health`` against a real HTTP server on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dicomnode.database import Database
from dicomnode.observability.health import CheckResult, database_check, disk_check, listener_check
from dicomnode.observability.http import HealthServer, ObservabilityError
from dicomnode.observability.metrics import Metrics, outbox_depth_from_database
from tests.support import free_port


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers["Content-Type"]


@pytest.fixture()
def db(tmp_path: Path) -> Database:
    return Database(tmp_path / "dicomnode.sqlite3")


@pytest.fixture()
def server(tmp_path: Path, db: Database):
    metrics = Metrics(spool_dir=tmp_path / "spool", outbox_depth=outbox_depth_from_database(db))
    for n, (destination, state) in enumerate(
        [("pacs", "queued"), ("pacs", "sending"), ("pacs", "sent"), ("pacs", "dead"), ("research", "failed")]
    ):
        db.conn.execute(
            "INSERT INTO outbox (destination, file_path, sop_instance_uid, origin, state, next_attempt_at, "
            "created_at, updated_at) VALUES (?, '/x.dcm', ?, 'forward', ?, 0, 0, 0)",
            (destination, f"1.{n}", state),
        )
    srv = HealthServer("127.0.0.1", 0, metrics, {"database": database_check(db)})
    srv.start()
    yield srv
    srv.stop()


def test_metrics_endpoint_reports_what_stages_recorded(server: HealthServer) -> None:
    m = server.metrics
    m.association_accepted()
    m.association_rejected("calling_aet")
    m.association_rejected("disk_full")
    m.association_rejected("disk_full")
    m.instance_received(1000)
    m.instance_received(500)
    m.store_failed("write_error")
    m.series_completed()
    m.rule_matched("ct-chest")
    m.pipeline_finished("ct_enhance", 12.0, ok=True)
    m.pipeline_finished("ct_enhance", 0.5, ok=False)
    m.step_timings("ct_enhance", {"segment": 0.3, "enhance": 1.2})
    m.send_failed("pacs")
    status, body, ctype = _get(server.url + "/metrics")
    text = body.decode()
    assert status == 200 and ctype.startswith("text/plain")
    expected = [
        "dicomnode_associations_accepted_total 1.0",
        'dicomnode_associations_rejected_total{reason="disk_full"} 2.0',
        'dicomnode_associations_rejected_total{reason="calling_aet"} 1.0',
        "dicomnode_instances_received_total 2.0",
        "dicomnode_received_bytes_total 1500.0",
        'dicomnode_store_failures_total{reason="write_error"} 1.0',
        "dicomnode_series_completed_total 1.0",
        'dicomnode_rule_matches_total{rule="ct-chest"} 1.0',
        'dicomnode_pipeline_runs_total{pipeline="ct_enhance"} 2.0',
        'dicomnode_pipeline_failures_total{pipeline="ct_enhance"} 1.0',
        'dicomnode_pipeline_duration_seconds_count{pipeline="ct_enhance"} 2.0',
        'dicomnode_pipeline_step_duration_seconds_count{pipeline="ct_enhance",step="segment"} 1.0',
        'dicomnode_send_failures_total{destination="pacs"} 1.0',
        # computed from the database at scrape time: 2 pending for pacs (the sent one is not counted)
        'dicomnode_outbox_depth{destination="pacs"} 2.0',
        'dicomnode_outbox_depth{destination="research"} 1.0',
    ]
    for line in expected:
        assert line in text, f"{line!r} missing from /metrics"
    assert "dicomnode_spool_filesystem_free_bytes" in text
    assert "dicomnode_spool_filesystem_used_ratio" in text


def test_outbox_depth_follows_the_database_between_scrapes(server: HealthServer, db: Database) -> None:
    db.conn.execute("UPDATE outbox SET state='sent' WHERE destination='pacs'")
    assert server.metrics.value("dicomnode_outbox_depth", {"destination": "pacs"}) is None
    assert server.metrics.value("dicomnode_outbox_depth", {"destination": "research"}) == 1.0


def test_registries_are_per_service() -> None:
    a, b = Metrics(), Metrics()
    a.series_completed()
    assert a.value("dicomnode_series_completed_total") == 1.0
    assert b.value("dicomnode_series_completed_total") == 0.0


def test_healthz_and_readyz(server: HealthServer) -> None:
    status, body, ctype = _get(server.url + "/healthz")
    assert status == 200 and ctype == "application/json" and json.loads(body)["status"] == "ok"
    status, body, _ = _get(server.url + "/readyz")
    answer = json.loads(body)
    assert status == 200 and answer["status"] == "ready" and answer["checks"]["database"]["ok"] is True
    status, body, _ = _get(server.url + "/nothing")
    assert status == 404 and "not an endpoint" in json.loads(body)["error"]


def test_readyz_fails_when_a_check_fails_or_raises(server: HealthServer) -> None:
    server.add_check("listener", lambda: CheckResult(False, "not listening on 0.0.0.0:11112"))

    def broken() -> CheckResult:
        raise OSError("disk vanished")

    server.add_check("disk", broken)
    status, body, _ = _get(server.url + "/readyz")
    answer = json.loads(body)
    assert status == 503 and answer["status"] == "not ready"
    assert answer["checks"]["listener"] == {"ok": False, "detail": "not listening on 0.0.0.0:11112"}
    assert answer["checks"]["disk"]["ok"] is False and "disk vanished" in answer["checks"]["disk"]["detail"]
    assert answer["checks"]["database"]["ok"] is True


def test_port_in_use_is_a_clear_error(server: HealthServer) -> None:
    other = HealthServer("127.0.0.1", server.port, Metrics())
    with pytest.raises(ObservabilityError, match=f"127.0.0.1:{server.port}"):
        other.start()


def test_checks(tmp_path: Path, db: Database) -> None:
    assert disk_check(tmp_path / "not-yet", 0, 100.0)().ok
    full = disk_check(tmp_path, 10**12, 100.0)()
    assert not full.ok and "min_free_mb" in full.detail
    assert not disk_check(tmp_path, 0, 0.0001)().ok
    assert database_check(db)().ok
    port = free_port()
    assert not listener_check("0.0.0.0", port)().ok
    assert listener_check("0.0.0.0", port, is_bound=lambda: True)().ok


def _health(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomnode", "health", *args], capture_output=True, text=True, timeout=60
    )


def test_health_command_exit_codes(server: HealthServer, tmp_path: Path) -> None:
    ok = _health("--url", server.url + "/readyz")
    assert ok.returncode == 0, ok.stderr
    assert "healthy" in ok.stdout

    server.add_check("disk", lambda: CheckResult(False, "3 MB free"))
    bad = _health("--url", server.url + "/readyz")
    assert bad.returncode == 1
    assert bad.stderr.startswith("dicomnode: error:") and "disk: 3 MB free" in bad.stderr
    live = _health("--url", server.url + "/healthz")
    assert live.returncode == 0, live.stderr

    config = tmp_path / "node.yaml"
    config.write_text(f"metrics: {{host: 127.0.0.1, port: {server.port}}}\n")
    via_config = _health("--config", str(config), "--live")
    assert via_config.returncode == 0, via_config.stderr

    down = _health("--url", f"http://127.0.0.1:{free_port()}/readyz", "--timeout", "2")
    assert down.returncode == 1 and "cannot be reached" in down.stderr
