"""Retention on a fabricated node database (the real table layouts) and spool folder."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from dicomnode.assemble.assembler import SCHEMA as ASSEMBLY_SCHEMA
from dicomnode.config import Config
from dicomnode.database import Database
from dicomnode.observability.audit import AuditTrail
from dicomnode.observability.metrics import Metrics
from dicomnode.pipelines.jobstore import SCHEMA as JOBS_SCHEMA
from dicomnode.route.decisions import SCHEMA as DECISIONS_SCHEMA
from dicomnode.runtime.retention import DAY, Retention
from dicomnode.send.outbox import SCHEMA as OUTBOX_SCHEMA
from dicomnode.spool.index import SCHEMA as SPOOL_SCHEMA
from dicomnode.spool.index import SpoolIndex
from dicomnode.spool.recovery import recover
from dicomnode.spool.store import Spool

NOW = 1_800_000_000.0
OLD = NOW - 40 * DAY  # keep_days is 30
RECENT = NOW - 2 * DAY


class Site:
    def __init__(self, root: Path) -> None:
        self.config = Config.model_validate(
            {"storage": {"path": str(root)}, "retention": {"enabled": True, "keep_days": 30}}
        )
        self.db = Database(self.config.storage.database_path)
        for schema in (SPOOL_SCHEMA, ASSEMBLY_SCHEMA, OUTBOX_SCHEMA, JOBS_SCHEMA, DECISIONS_SCHEMA):
            self.db.migrate(schema)
        self.audit = AuditTrail(self.db)
        self.spool = self.config.storage.spool_dir

    def study(self, uid: str, *, at: float, series_state: str = "complete", handed_on: bool = True,
              sends: tuple[str, ...] = (), instances: int = 3, job: str | None = None,
              decision: str = "done") -> None:
        conn = self.db.conn
        series = f"{uid}.1"
        for n in range(instances):
            sop = f"{series}.{n + 1}"
            rel = f"{uid}/{series}/{sop}.dcm"
            path = self.spool / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\0" * 128 + b"DICM" + bytes(100))
            conn.execute(
                "INSERT INTO spool_instances (sop_instance_uid, study_uid, series_uid, sop_class_uid, "
                "received_at, size, path) VALUES (?,?,?,?,?,?,?)",
                (sop, uid, series, "1.2.840.10008.5.1.4.1.1.2", at, 232, rel),
            )
        conn.execute(
            "INSERT INTO assembly_series (study_uid, series_uid, state, generation, instance_count, "
            "first_received_at, last_received_at, completed_at) VALUES (?,?,?,?,?,?,?,?)",
            (uid, series, series_state, 1, instances, at, at, at + 30),
        )
        conn.execute(
            "INSERT INTO assembly_studies (study_uid, state, generation, instance_count, last_received_at, "
            "completed_at) VALUES (?,?,?,?,?,?)",
            (uid, "complete" if series_state == "complete" else "open", 1, instances, at, at + 60),
        )
        conn.execute(
            "INSERT INTO assembly_events (kind, study_uid, generation, reason, instance_count, emitted_at, "
            "handed_on_at) VALUES ('study', ?, 1, 'quiet', ?, ?, ?)",
            (uid, instances, at + 60, at + 61 if handed_on else None),
        )
        conn.execute(
            "INSERT INTO route_decisions (decided_at, level, study_uid, series_uid, generation, action, "
            "state) VALUES (?, 'series', ?, ?, 1, 'pipeline', ?)", (at + 61, uid, series, decision),
        )
        if job is not None:
            out_dir = self.config.storage.jobs_dir / f"job-{uid}"
            out_dir.mkdir(parents=True, exist_ok=True)
            conn.execute(
                "INSERT INTO jobs (id, pipeline, study_uid, series_uid, output_dir, params, spec, state, "
                "created_at) VALUES (?, 'liver-ct', ?, ?, ?, '{}', '{}', ?, ?)",
                (f"job-{uid}", uid, series, str(out_dir), job, at),
            )
        for k, state in enumerate(sends):
            job = f"job-{uid}-{k}"
            out = self.config.storage.jobs_dir / job / "seg.dcm"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(b"result")
            conn.execute(
                "INSERT INTO outbox (destination, file_path, sop_instance_uid, series_uid, study_uid, "
                "origin, job_id, state, next_attempt_at, created_at, updated_at, sent_at) "
                "VALUES ('pacs', ?, ?, ?, ?, 'result', ?, ?, ?, ?, ?, ?)",
                (str(out), f"{uid}.9.{k}", f"{uid}.9", uid, job, state, at, at, at,
                 at + 100 if state == "sent" else None),
            )

    def rows(self, table: str, uid: str) -> int:
        sql = f"SELECT COUNT(*) FROM {table} WHERE study_uid = ?"
        return int(self.db.conn.execute(sql, (uid,)).fetchone()[0])


@pytest.fixture()
def site(tmp_path: Path) -> Site:
    site = Site(tmp_path / "data")
    site.study("1.1", at=OLD, sends=("sent", "sent"))          # delivered → removed
    site.study("1.2", at=OLD)                                   # nothing routed, nothing pending → removed
    site.study("2.1", at=OLD, sends=("sent", "dead"))           # dead letter → kept
    site.study("2.2", at=OLD, sends=("failed",))                # retry scheduled → kept
    site.study("2.3", at=OLD, sends=("queued",))                # not yet sent → kept
    site.study("2.4", at=OLD, series_state="open")              # never completed → kept
    site.study("2.5", at=OLD, handed_on=False)                  # completion not yet routed → kept
    site.study("2.6", at=OLD)                                   # failed processing (audit) → kept
    site.audit.record("failed", "2.6", job_id="j", detail={"error": "timeout"}, at=OLD + 200)
    site.study("2.7", at=OLD)                                   # failed, then processed ok → removed
    site.audit.record("failed", "2.7", job_id="j1", at=OLD + 200)
    site.audit.record("processed", "2.7", job_id="j2", at=OLD + 300)
    site.study("2.8", at=OLD, job="failed")                     # job failed → kept
    site.study("2.9", at=OLD, job="running")                    # job still running → kept
    site.study("2.10", at=OLD, decision="failed")               # unroutable (no valid rules) → kept
    site.study("2.11", at=OLD, decision="pending")              # decision's action not run → kept
    site.study("1.3", at=OLD, job="done", sends=("sent",))      # processed and delivered → removed
    site.study("3.1", at=RECENT, sends=("sent",))               # delivered but recent → kept
    return site


def test_removes_only_processed_and_delivered_old_studies(site: Site) -> None:
    metrics = Metrics()
    retention = Retention(site.config, site.db, metrics=metrics, audit=site.audit)
    report = retention.run_once(now=NOW)
    assert sorted(report.removed) == ["1.1", "1.2", "1.3", "2.7"]
    assert report.files == 12 and report.bytes == 12 * 232
    kept = {"2.1", "2.2", "2.3", "2.5", "2.6", "2.8", "2.9", "2.10", "2.11"}
    assert set(report.kept) == kept  # 2.4 is not even a candidate (open)
    assert "1 failed" in report.kept["2.8"] and "1 running" in report.kept["2.9"]
    assert "routing decisions" in report.kept["2.10"] and "1 pending" in report.kept["2.11"]
    assert "1 dead" in report.kept["2.1"] and "1 failed" in report.kept["2.2"]
    assert "1 queued" in report.kept["2.3"]
    assert "routing" in report.kept["2.5"] and "failure" in report.kept["2.6"]
    for uid in ("1.1", "1.2", "1.3", "2.7"):
        assert not (site.spool / uid).exists()
        for table in ("spool_instances", "assembly_series", "assembly_studies", "assembly_events", "outbox",
                      "jobs", "route_decisions"):
            assert site.rows(table, uid) == 0, (uid, table)
        removed = [e for e in site.audit.events(uid) if e["stage"] == "removed"]
        assert removed and removed[0]["detail"]["files"] == 3
    assert not (site.config.storage.jobs_dir / "job-1.1-0").exists()
    assert not (site.config.storage.jobs_dir / "job-1.3").exists()
    assert (site.config.storage.jobs_dir / "job-2.8").exists()
    for uid in sorted(kept | {"2.4", "3.1"}):
        assert len(list((site.spool / uid).rglob("*.dcm"))) == 3, uid
        assert site.rows("spool_instances", uid) == 3
    assert (site.config.storage.jobs_dir / "job-2.1-1").exists()  # the dead letter's file stays
    assert site.rows("outbox", "2.1") == 2
    assert metrics.value("dicomnode_retention_removed_studies_total") == 4
    assert not any((site.spool / ".trash").iterdir())
    # Spool recovery at the next start does not bring anything back.
    assert recover(Spool(site.spool), SpoolIndex(site.db, site.spool)).indexed == []
    assert retention.run_once(now=NOW).removed == []


def test_dry_run_removes_nothing(site: Site) -> None:
    report = Retention(site.config, site.db).run_once(now=NOW, dry_run=True)
    assert sorted(report.removed) == ["1.1", "1.2", "1.3", "2.7"]
    assert (site.spool / "1.1").is_dir() and site.rows("spool_instances", "1.1") == 3


def test_later_arrival_keeps_the_study(site: Site) -> None:
    site.db.conn.execute("UPDATE spool_instances SET received_at = ? WHERE sop_instance_uid = '1.1.1.1'",
                         (RECENT,))
    assert "1.1" not in Retention(site.config, site.db).run_once(now=NOW).removed
    assert site.rows("spool_instances", "1.1") == 3


def test_finishes_a_removal_interrupted_by_a_crash(site: Site) -> None:
    # The crash came after the folder went to the trash and before the rows were deleted.
    trash = site.spool / ".trash"
    trash.mkdir()
    (site.spool / "1.1").rename(trash / "1.1.deadbeef")
    report = Retention(site.config, site.db).run_once(now=NOW)
    assert "1.1" in report.removed and site.rows("spool_instances", "1.1") == 0
    assert not any(trash.iterdir())


def test_disabled_component_does_not_start(site: Site) -> None:
    config = site.config.model_copy(update={"retention": site.config.retention.model_copy(
        update={"enabled": False})})
    retention = Retention(config, site.db)
    retention.start()
    retention.stop()
    assert (site.spool / "1.1").is_dir()


def test_component_runs_in_the_background(site: Site) -> None:
    retention = Retention(site.config, site.db, clock=lambda: NOW)
    retention.start()
    try:
        deadline = time.monotonic() + 10
        while (site.spool / "1.1").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        retention.stop()
    assert not (site.spool / "1.1").exists()
    assert json.loads(site.audit.export_json("1.1"))[-1]["stage"] == "removed"
