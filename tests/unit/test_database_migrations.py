"""Schema steps per table owner: an old node database (as releases before schema versions wrote it)
upgrades in place at start-up, keeps every row, and ends with the schema a fresh database gets."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from dicomnode.assemble.assembler import SCHEMA as ASSEMBLY
from dicomnode.assemble.assembler import AssemblyRecords, AssemblyState, EventKind
from dicomnode.config import Config
from dicomnode.database import Database, DatabaseError, Schema, Step
from dicomnode.distributed.leases import SCHEMA as LEASES
from dicomnode.distributed.leases import LeaseState, LeaseStore
from dicomnode.observability.audit import SCHEMA as AUDIT
from dicomnode.observability.audit import AuditTrail
from dicomnode.pipelines.jobstore import SCHEMA as JOBS
from dicomnode.pipelines.jobstore import JobState, JobStore
from dicomnode.route.decisions import SCHEMA as DECISIONS
from dicomnode.route.decisions import DecisionLog, DecisionState
from dicomnode.send.outbox import SCHEMA as OUTBOX
from dicomnode.send.outbox import Origin, Outbox, OutboxState
from dicomnode.spool.index import SCHEMA as SPOOL
from dicomnode.spool.index import SpoolIndex

OLD_DDL = Path(__file__).parent / "data" / "node_db_before_versions.sql"
OWNERS = (SPOOL, ASSEMBLY, DECISIONS, JOBS, LEASES, OUTBOX, AUDIT)
STUDY, SERIES = "1.2.826.0.1.1", "1.2.826.0.1.1.1"


def old_database(path: Path) -> None:
    """A node database as the last release without schema versions left it, with a row in every table."""
    conn = sqlite3.connect(path)
    conn.executescript(OLD_DDL.read_text())
    conn.execute(
        "INSERT INTO spool_instances (sop_instance_uid, study_uid, series_uid, patient_id, modality, "
        "sop_class_uid, calling_aet, received_at, size, path) VALUES (?,?,?,?,?,?,?,?,?,?)",
        ("1.2.826.0.1.1.1.1", STUDY, SERIES, "P1", "CT", "1.2.840.10008.5.1.4.1.1.2", "SCANNER", 100.0, 512,
         f"{STUDY}/{SERIES}/1.2.826.0.1.1.1.1.dcm"))
    conn.execute(
        "INSERT INTO assembly_series (study_uid, series_uid, state, generation, instance_count, "
        "first_received_at, last_received_at, completed_at, reason) VALUES (?,?,?,?,?,?,?,?,?)",
        (STUDY, SERIES, "complete", 1, 1, 90.0, 100.0, 130.0, "quiet"))
    conn.execute(
        "INSERT INTO assembly_studies (study_uid, state, generation, instance_count, last_received_at, "
        "completed_at) VALUES (?,?,?,?,?,?)", (STUDY, "complete", 1, 1, 100.0, 160.0))
    conn.execute(
        "INSERT INTO assembly_events (kind, study_uid, series_uid, generation, reason, instance_count, "
        "emitted_at, handed_on_at) VALUES ('series', ?, ?, 1, 'quiet', 1, 130.0, NULL)", (STUDY, SERIES))
    for rule, state in (("ct-chest", "done"), ("ct-fail", "failed"), ("ct-wait", "pending")):
        conn.execute(
            "INSERT INTO route_decisions (decided_at, level, study_uid, series_uid, generation, rule, "
            "action, pipeline, params, destinations, job_id, state, error) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (140.0, "series", STUDY, SERIES, 1, rule, "pipeline", "ct_enhance", '{"sigma": 1.5}',
             '["pacs"]', f"job-{rule}", state, "boom" if state == "failed" else ""))
    conn.execute(
        "INSERT INTO jobs (id, pipeline, study_uid, series_uid, output_dir, params, spec, state, attempt, "
        "created_at) VALUES ('job-ct-chest', 'ct_enhance', ?, ?, '/jobs/job-ct-chest', '{}', '{}', "
        "'failed', 2, 141.0)", (STUDY, SERIES))
    conn.execute(
        "INSERT INTO job_leases (job_id, attempt, pipeline, queue, state, worker, created_at) "
        "VALUES ('job-ct-chest', 2, 'ct_enhance', 'dicomnode', 'running', 'w1', 142.0)")
    conn.execute(
        "INSERT INTO outbox (destination, file_path, sop_instance_uid, series_uid, study_uid, origin, "
        "job_id, state, attempts, next_attempt_at, created_at, updated_at) "
        "VALUES ('pacs', '/jobs/x.dcm', '9.9.9', ?, ?, 'result', 'job-ct-chest', 'failed', 3, 300.0, 150.0, "
        "150.0)", (SERIES, STUDY))
    conn.execute(
        "INSERT INTO audit (time, study_uid, series_uid, stage, detail) VALUES (150.0, ?, ?, 'failed', ?)",
        (STUDY, SERIES, json.dumps({"stage": "outbox"})))
    conn.commit()
    conn.close()


def schema_sql(path: Path) -> dict[str, str]:
    """The owners' tables and indexes as SQLite keeps them (whitespace and quoting normalised)."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%'"
        ).fetchall()
    finally:
        conn.close()
    return {name: re.sub(r"\s+", " ", sql.replace('"', "")).replace("( ", "(").replace(" )", ")")
            for name, sql in rows}


def start_node(path: Path) -> Database:
    """What start-up does to the database: every owner is constructed (and migrates its tables)."""
    db = Database(path)
    SpoolIndex(db, path.parent / "spool")
    AssemblyRecords(db)
    DecisionLog(db)
    JobStore(db)
    LeaseStore(db)
    Outbox(db, Config().outbox)
    AuditTrail(db)
    return db


def test_an_old_database_upgrades_in_place_at_start_up_without_losing_a_row(tmp_path: Path) -> None:
    old = tmp_path / "old" / "dicomnode.sqlite3"
    old.parent.mkdir()
    old_database(old)
    assert sqlite3.connect(old).execute("PRAGMA user_version").fetchone()[0] == 0

    db = start_node(old)

    assert db.schema_versions() == {s.owner: s.version for s in OWNERS}
    assert db.user_version() == sum(s.version for s in OWNERS)
    # every row is still there, read through the owners
    index = SpoolIndex(db, tmp_path / "spool")
    assert [(s.series_uid, s.instance_count, s.size) for s in index.series_of(STUDY)] == [(SERIES, 1, 512)]
    assert index.senders(STUDY) == [("SCANNER", 1, 100.0)]
    records = AssemblyRecords(db)
    assert records.study_states() == {STUDY: (AssemblyState.COMPLETE, 1)}
    assert records.series_states(STUDY) == {(STUDY, SERIES): (AssemblyState.COMPLETE, 1)}
    assert records.arrival(STUDY, SERIES) == (90.0, 100.0, 1)
    assert records.not_handed_on(STUDY) == 1
    decisions = DecisionLog(db)
    recent = decisions.recent()
    assert {d["rule"]: (d["state"], d["params"], d["destinations"], d["error"]) for d in recent} == {
        "ct-chest": ("done", {"sigma": 1.5}, ["pacs"], ""),
        "ct-fail": ("failed", {"sigma": 1.5}, ["pacs"], "boom"),
        "ct-wait": ("pending", {"sigma": 1.5}, ["pacs"], ""),
    }
    assert decisions.not_done(STUDY) == {DecisionState.FAILED: 1, DecisionState.PENDING: 1}
    assert JobStore(db).unfinished(STUDY) == {JobState.FAILED: 1}
    assert LeaseStore(db).per_worker() == {"w1": {"running": 1}}
    assert Outbox(db, Config().outbox).undelivered(STUDY) == {OutboxState.FAILED: 1}
    assert AuditTrail(db).unresolved_failure(STUDY)
    # ids of AUTOINCREMENT tables go on from where they were (a rebuilt table keeps its sequence)
    before = {d["id"] for d in decisions.recent()}
    decisions.record([])
    db.conn.execute(
        "INSERT INTO route_decisions (decided_at, level, study_uid, generation, action) "
        "VALUES (1, 'series', 'x', 1, 'none')")
    assert max(d["id"] for d in decisions.recent()) == max(before) + 1
    db.close()

    fresh = tmp_path / "fresh" / "dicomnode.sqlite3"
    start_node(fresh).close()
    assert schema_sql(old) == schema_sql(fresh)


def test_a_second_start_applies_nothing_and_a_state_outside_the_enum_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dicomnode.sqlite3"
    old_database(path)
    start_node(path).close()
    db = start_node(path)
    assert db.user_version() == sum(s.version for s in OWNERS)
    assert all(db.migrate(s) == s.version for s in OWNERS)  # the version found at start-up
    for sql in (
        "UPDATE route_decisions SET state = 'held'",
        "UPDATE assembly_series SET state = 'closed'",
        "UPDATE assembly_studies SET state = 'closed'",
        "UPDATE assembly_events SET kind = 'patient'",
        "UPDATE jobs SET state = 'succeeded'",
        "UPDATE job_leases SET state = 'done'",
        "UPDATE outbox SET state = 'delivered'",
    ):
        with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
            db.conn.execute(sql)


@pytest.mark.parametrize(("table", "column", "values"), [
    ("route_decisions", "state", DecisionState), ("assembly_series", "state", AssemblyState),
    ("assembly_studies", "state", AssemblyState), ("assembly_events", "kind", EventKind),
    ("jobs", "state", JobState), ("job_leases", "state", LeaseState), ("outbox", "state", OutboxState),
    ("outbox", "origin", Origin),
])
def test_the_check_constraints_are_generated_from_the_state_enums(
    tmp_path: Path, table: str, column: str, values: type
) -> None:
    path = tmp_path / "dicomnode.sqlite3"
    start_node(path).close()
    sql = schema_sql(path)[table]
    listed = re.search(rf"{column} TEXT NOT NULL(?: DEFAULT '\w+')? CHECK \({column} IN \(([^)]*)\)\)", sql)
    assert listed is not None, sql
    assert [v.strip().strip("'") for v in listed.group(1).split(",")] == [str(v) for v in values]


def test_a_database_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dicomnode.sqlite3"
    start_node(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_versions SET version = 7 WHERE owner = 'outbox'")
    conn.commit()
    conn.close()
    with pytest.raises(DatabaseError, match="version 7 of the 'outbox' schema, newer than this dicomnode"):
        Outbox(Database(path), Config().outbox)


def test_a_failing_step_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "dicomnode.sqlite3"
    v1 = Schema("demo", ("demo",), (Step("demo", "CREATE TABLE IF NOT EXISTS demo (a INTEGER);"),))
    db = Database(path)
    db.migrate(v1)
    db.conn.execute("INSERT INTO demo (a) VALUES (1)")
    broken = Schema("demo", ("demo",), (
        *v1.steps,
        Step("add b", "ALTER TABLE demo ADD COLUMN b INTEGER;"),
        Step("broken", "ALTER TABLE no_such_table ADD COLUMN c INTEGER;"),
    ))
    with pytest.raises(DatabaseError, match=r"Schema step 3 of 'demo' \(broken\) failed"):
        Database(path).migrate(broken)
    again = Database(path)
    assert again.schema_versions() == {"demo": 1}
    assert [r[1] for r in again.conn.execute("PRAGMA table_info(demo)")] == ["a"]
    assert again.conn.execute("SELECT a FROM demo").fetchall()[0][0] == 1
