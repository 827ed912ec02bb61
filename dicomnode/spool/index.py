"""The SQLite index of the spool: one row per stored instance, owned by the spool.

Table ``spool_instances`` (stable; other stages read it — prefer the :class:`SpoolIndex` methods)::

    sop_instance_uid TEXT PRIMARY KEY   SOP Instance UID (file name without .dcm)
    study_uid, series_uid TEXT          Study/Series Instance UID (the folders)
    patient_id, patient_name TEXT       as received (patient_name is PHI: never log it by default)
    modality, study_date TEXT
    series_number, instance_number, acquisition_number INTEGER (NULL when absent)
    images_in_acquisition, number_of_slices INTEGER            (content evidence for completion)
    slice_position REAL                 ImagePositionPatient · slice normal, mm (NULL when absent)
    sop_class_uid, transfer_syntax TEXT as received (the file is stored in this transfer syntax)
    calling_aet TEXT                    the sender's AE title ('(recovered)' for files indexed by recovery)
    received_at REAL                    UNIX time the instance was stored
    size INTEGER                        file size in bytes (Part 10 file, meta included)
    path TEXT                           relative to the spool root: <study>/<series>/<sop>.dcm
    duplicates INTEGER                  how many more times the same SOP Instance UID was received

Index ``spool_instances_series`` on (study_uid, series_uid).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from dicomnode.database import Database
from dicomnode.spool.header import InstanceHeader

SCHEMA = """
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
"""

RECOVERED_AET = "(recovered)"


@dataclass(frozen=True)
class StudySummary:
    study_uid: str
    patient_id: str
    study_date: str
    series_count: int
    instance_count: int
    last_received_at: float


@dataclass(frozen=True)
class SeriesSummary:
    study_uid: str
    series_uid: str
    modality: str
    series_number: int | None
    instance_count: int
    size: int
    last_received_at: float


class SpoolIndex:
    """Reads and writes ``spool_instances``; paths are resolved against the spool ``root``."""

    def __init__(self, database: Database, root: Path) -> None:
        self.database = database
        self.root = Path(root)
        database.ensure_schema(SCHEMA)

    def add(
        self,
        header: InstanceHeader,
        *,
        path: Path,
        size: int,
        transfer_syntax: str,
        calling_aet: str,
        received_at: float | None = None,
        conn: sqlite3.Connection | None = None,
    ) -> bool:
        """Index one stored instance; returns False (and counts a duplicate) if it was indexed already."""
        conn = conn or self.database.conn
        conn.execute(
            """INSERT INTO spool_instances (sop_instance_uid, study_uid, series_uid, patient_id, patient_name,
                   modality, study_date, series_number, instance_number, acquisition_number,
                   images_in_acquisition, number_of_slices, slice_position, sop_class_uid, transfer_syntax,
                   calling_aet, received_at, size, path)
               VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)
               ON CONFLICT(sop_instance_uid) DO UPDATE SET duplicates = duplicates + 1""",
            (
                header.sop_instance_uid,
                header.study_uid,
                header.series_uid,
                header.patient_id,
                header.patient_name,
                header.modality,
                header.study_date,
                header.series_number,
                header.instance_number,
                header.acquisition_number,
                header.images_in_acquisition,
                header.number_of_slices,
                header.slice_position,
                header.sop_class_uid,
                transfer_syntax,
                calling_aet,
                time.time() if received_at is None else received_at,
                size,
                path.relative_to(self.root).as_posix(),
            ),
        )
        # RETURNING cannot tell insert from update; the row's duplicates counter can.
        row = conn.execute(
            "SELECT duplicates FROM spool_instances WHERE sop_instance_uid = ?", (header.sop_instance_uid,)
        ).fetchone()
        return row is not None and row["duplicates"] == 0

    def has(self, sop_instance_uid: str) -> bool:
        row = self.database.conn.execute(
            "SELECT 1 FROM spool_instances WHERE sop_instance_uid = ?", (sop_instance_uid,)
        ).fetchone()
        return row is not None

    def indexed_paths(self) -> set[str]:
        return {r["path"] for r in self.database.conn.execute("SELECT path FROM spool_instances")}

    def studies(self) -> list[StudySummary]:
        rows = self.database.conn.execute(
            """SELECT study_uid, MAX(patient_id) AS patient_id, MAX(study_date) AS study_date,
                      COUNT(DISTINCT series_uid) AS series_count, COUNT(*) AS instance_count,
                      MAX(received_at) AS last_received_at
               FROM spool_instances GROUP BY study_uid ORDER BY MIN(received_at)"""
        ).fetchall()
        return [StudySummary(**dict(r)) for r in rows]

    def series_of(self, study_uid: str) -> list[SeriesSummary]:
        rows = self.database.conn.execute(
            """SELECT study_uid, series_uid, MAX(modality) AS modality, MIN(series_number) AS series_number,
                      COUNT(*) AS instance_count, SUM(size) AS size, MAX(received_at) AS last_received_at
               FROM spool_instances WHERE study_uid = ? GROUP BY series_uid
               ORDER BY series_number, MIN(received_at)""",
            (study_uid,),
        ).fetchall()
        return [SeriesSummary(**dict(r)) for r in rows]

    def instances(self, study_uid: str, series_uid: str) -> list[sqlite3.Row]:
        """The series' rows ordered by InstanceNumber, then slice position, then arrival."""
        return self.database.conn.execute(
            """SELECT * FROM spool_instances WHERE study_uid = ? AND series_uid = ?
               ORDER BY instance_number IS NULL, instance_number, slice_position, received_at""",
            (study_uid, series_uid),
        ).fetchall()

    def series_files(self, study_uid: str, series_uid: str) -> list[Path]:
        """Absolute paths of the series' files, in :meth:`instances` order."""
        return [self.root / r["path"] for r in self.instances(study_uid, series_uid)]

    def instance_count(self, study_uid: str, series_uid: str | None = None) -> int:
        if series_uid is None:
            sql, args = "SELECT COUNT(*) FROM spool_instances WHERE study_uid = ?", (study_uid,)
        else:
            sql = "SELECT COUNT(*) FROM spool_instances WHERE study_uid = ? AND series_uid = ?"
            args = (study_uid, series_uid)
        return int(self.database.conn.execute(sql, args).fetchone()[0])
