-- The node database's tables exactly as dicomnode created them before schema versions (main at d09ebb4,
-- PRAGMA user_version 0, no schema_versions table): the 'old file' the migration tests upgrade.
CREATE TABLE IF NOT EXISTS spool_instances (
    sop_instance_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    patient_id TEXT NOT NULL DEFAULT '',
    patient_name TEXT NOT NULL DEFAULT '',
    modality TEXT NOT NULL DEFAULT '',
    study_date TEXT NOT NULL DEFAULT '',
    series_number INTEGER,
    instance_number INTEGER,
    acquisition_number INTEGER,
    images_in_acquisition INTEGER,
    number_of_slices INTEGER,
    slice_position REAL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL DEFAULT '',
    calling_aet TEXT NOT NULL DEFAULT '',
    received_at REAL NOT NULL,
    size INTEGER NOT NULL,
    path TEXT NOT NULL,
    duplicates INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS spool_instances_series ON spool_instances (study_uid, series_uid);
CREATE TABLE IF NOT EXISTS assembly_series (
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'open',
    generation INTEGER NOT NULL DEFAULT 0,
    instance_count INTEGER NOT NULL DEFAULT 0,
    first_received_at REAL NOT NULL,
    last_received_at REAL NOT NULL,
    completed_at REAL,
    reason TEXT,
    evidence TEXT,
    checked_count INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (study_uid, series_uid)
);
CREATE INDEX IF NOT EXISTS assembly_series_state ON assembly_series (state);
CREATE TABLE IF NOT EXISTS assembly_studies (
    study_uid TEXT PRIMARY KEY,
    state TEXT NOT NULL DEFAULT 'open',
    generation INTEGER NOT NULL DEFAULT 0,
    instance_count INTEGER NOT NULL DEFAULT 0,
    last_received_at REAL NOT NULL,
    completed_at REAL
);
CREATE TABLE IF NOT EXISTS assembly_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL DEFAULT '',
    generation INTEGER NOT NULL,
    reason TEXT NOT NULL,
    instance_count INTEGER NOT NULL,
    emitted_at REAL NOT NULL,
    emit_count INTEGER NOT NULL DEFAULT 1,
    handed_on_at REAL,
    UNIQUE (kind, study_uid, series_uid, generation)
);
CREATE TABLE IF NOT EXISTS route_decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    decided_at REAL NOT NULL,
    level TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL DEFAULT '',
    generation INTEGER NOT NULL,
    rule TEXT NOT NULL DEFAULT '',
    rule_file TEXT NOT NULL DEFAULT '',
    ruleset_hash TEXT NOT NULL DEFAULT '',
    action TEXT NOT NULL,
    pipeline TEXT,
    params TEXT NOT NULL DEFAULT '{}',
    destinations TEXT NOT NULL DEFAULT '[]',
    priority INTEGER NOT NULL DEFAULT 0,
    fallback INTEGER NOT NULL DEFAULT 0,
    quiet_seconds REAL,
    job_id TEXT,
    instance_count INTEGER NOT NULL DEFAULT 0,
    explanation TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL DEFAULT 'pending',
    error TEXT NOT NULL DEFAULT '',
    UNIQUE (level, study_uid, series_uid, generation, rule)
);
CREATE INDEX IF NOT EXISTS route_decisions_series ON route_decisions (study_uid, series_uid);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    study_uid TEXT NOT NULL DEFAULT '',
    series_uid TEXT NOT NULL DEFAULT '',
    output_dir TEXT NOT NULL DEFAULT '',
    params TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
    attempt INTEGER NOT NULL DEFAULT 1,
    error TEXT NOT NULL DEFAULT '',
    output_files TEXT NOT NULL DEFAULT '[]',
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    seconds REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE TABLE IF NOT EXISTS job_leases (
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    pipeline TEXT NOT NULL,
    queue TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'queued', 'running', 'collected', 'failed', 'expired',
                                         'lost', 'rejected', 'superseded')),
    task_id TEXT NOT NULL DEFAULT '',
    manifest_sha256 TEXT NOT NULL DEFAULT '',
    worker TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    misses INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    dispatched_at REAL,
    claimed_at REAL,
    finished_at REAL,
    PRIMARY KEY (job_id, attempt)
);
CREATE INDEX IF NOT EXISTS job_leases_state ON job_leases (state);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    file_path TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL DEFAULT '',
    study_uid TEXT NOT NULL DEFAULT '',
    origin TEXT NOT NULL CHECK (origin IN ('result', 'forward')),
    job_id TEXT,
    state TEXT NOT NULL CHECK (state IN ('queued', 'sending', 'sent', 'failed', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    last_status INTEGER,
    resend INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    sent_at REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS outbox_pending_sop ON outbox (destination, sop_instance_uid)
    WHERE state IN ('queued', 'sending', 'failed');
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, destination, next_attempt_at);
CREATE TABLE IF NOT EXISTS audit (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    time       REAL NOT NULL,
    study_uid  TEXT NOT NULL,
    series_uid TEXT,
    job_id     TEXT,
    stage      TEXT NOT NULL,
    detail     TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS audit_study_time ON audit (study_uid, time);
CREATE INDEX IF NOT EXISTS audit_time ON audit (time);
