"""The SQLite index of the spool: one row per stored instance, owned by the spool.

Table ``spool_instances`` (owned here: other stages call the :class:`SpoolIndex` methods, never its SQL)::

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
from typing import Any

from dicomnode.database import Database, Schema, Step
from dicomnode.spool.header import InstanceHeader

#: Step 1 is the table as every release before schema versions created it: never edit it, append a step.
DDL_V1 = """
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

SCHEMA = Schema("spool_index", ("spool_instances",), (Step("spool_instances", DDL_V1),))

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
        self._root_prefix = f"{self.root}/"
        database.migrate(SCHEMA)

    def _relative(self, path: Path) -> str:
        """``path`` relative to the root, as POSIX text (string slicing for the usual case: ``relative_to``
        cost ~10 µs on every received instance)."""
        text = str(path)
        if text.startswith(self._root_prefix) and "/../" not in text and "/./" not in text:
            return text[len(self._root_prefix):]
        return path.relative_to(self.root).as_posix()

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
                self._relative(path),
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

    # -- what the other stages ask of the index ------------------------------------------------------
    def series_counts(self) -> dict[tuple[str, str], int]:
        """Instances per (study, series) over the whole index."""
        rows = self.database.conn.execute(
            "SELECT study_uid, series_uid, COUNT(*) AS n FROM spool_instances GROUP BY study_uid, series_uid"
        ).fetchall()
        return {(r["study_uid"], r["series_uid"]): int(r["n"]) for r in rows}

    def all_series(self) -> list[SeriesSummary]:
        """Every series of every study, in order of first arrival."""
        rows = self.database.conn.execute(
            """SELECT study_uid, series_uid, MAX(modality) AS modality, MIN(series_number) AS series_number,
                      COUNT(*) AS instance_count, SUM(size) AS size, MAX(received_at) AS last_received_at
               FROM spool_instances GROUP BY study_uid, series_uid ORDER BY MIN(received_at)"""
        ).fetchall()
        return [SeriesSummary(**dict(r)) for r in rows]

    def search(
        self, *, patient_pattern: str = "", date_from: str = "", date_to: str = "", modality: str = "",
        study_uid: str = "", limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Studies newest first with patient name/ID, date, modalities, counts and last arrival; filtered by
        a LIKE pattern on patient name or ID, a StudyDate range (YYYYMMDD), a modality or one study UID."""
        where: list[str] = []
        args: list[Any] = []
        if patient_pattern:
            where.append("study_uid IN (SELECT study_uid FROM spool_instances "
                         "WHERE patient_name LIKE ? OR patient_id LIKE ?)")
            args += [patient_pattern, patient_pattern]
        if date_from:
            where.append("study_date >= ?")
            args.append(date_from)
        if date_to:
            where.append("study_date <= ?")
            args.append(date_to)
        if modality:
            where.append("study_uid IN (SELECT study_uid FROM spool_instances WHERE modality = ?)")
            args.append(modality)
        if study_uid:
            where.append("study_uid = ?")
            args.append(study_uid)
        sql = (
            "SELECT study_uid, MAX(patient_name) AS patient_name, MAX(patient_id) AS patient_id, "
            "MAX(study_date) AS study_date, GROUP_CONCAT(DISTINCT modality) AS modalities, "
            "COUNT(DISTINCT series_uid) AS series_count, COUNT(*) AS instance_count, "
            "MAX(received_at) AS last_received_at FROM spool_instances"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " GROUP BY study_uid ORDER BY last_received_at DESC LIMIT ?"
        )
        return [dict(r) for r in self.database.conn.execute(sql, [*args, limit]).fetchall()]

    def received_per_minute(self, start: float, end: float) -> dict[int, int]:
        """Instances stored in ``(start, end]`` per whole minute since ``start`` (bucket → count)."""
        rows = self.database.conn.execute(
            "SELECT CAST((received_at - ?) / 60 AS INTEGER) AS bucket, COUNT(*) AS n FROM spool_instances "
            "WHERE received_at > ? AND received_at <= ? GROUP BY bucket", (start, start, end),
        ).fetchall()
        return {int(r["bucket"]): int(r["n"]) for r in rows}

    def received_since(self, since: float) -> int:
        return int(self.database.conn.execute(
            "SELECT COUNT(*) FROM spool_instances WHERE received_at > ?", (since,)).fetchone()[0])

    def totals(self) -> tuple[int, int, int]:
        """(instances, studies, bytes) in the whole index."""
        row = self.database.conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT study_uid), COALESCE(SUM(size), 0) FROM spool_instances"
        ).fetchone()
        return int(row[0]), int(row[1]), int(row[2])

    def total_bytes(self) -> int:
        return self.totals()[2]

    def senders(self, study_uid: str, series_uid: str | None = None) -> list[tuple[str, int, float]]:
        """(calling AE title, instances, last receive time) of a study or series, most instances first."""
        sql = (
            "SELECT calling_aet, COUNT(*) AS n, MAX(received_at) AS last FROM spool_instances "
            "WHERE study_uid = ?" + (" AND series_uid = ?" if series_uid else "")
            + " GROUP BY calling_aet ORDER BY n DESC"
        )
        args = (study_uid, series_uid) if series_uid else (study_uid,)
        rows = self.database.conn.execute(sql, args).fetchall()
        return [(str(r["calling_aet"] or ""), int(r["n"]), float(r["last"])) for r in rows]

    def study_instances(self, study_uid: str) -> list[sqlite3.Row]:
        """The study's rows by SeriesNumber, series and InstanceNumber."""
        return self.database.conn.execute(
            """SELECT * FROM spool_instances WHERE study_uid = ?
               ORDER BY series_number, series_uid, instance_number""",
            (study_uid,),
        ).fetchall()

    def study_size(self, study_uid: str, conn: sqlite3.Connection | None = None) -> tuple[int, int]:
        """(instances, bytes) of a study."""
        row = (conn or self.database.conn).execute(
            "SELECT COUNT(*) AS n, COALESCE(SUM(size), 0) AS bytes FROM spool_instances WHERE study_uid = ?",
            (study_uid,),
        ).fetchone()
        return int(row["n"]), int(row["bytes"])

    def last_received(self, study_uid: str, conn: sqlite3.Connection | None = None) -> float | None:
        row = (conn or self.database.conn).execute(
            "SELECT MAX(received_at) FROM spool_instances WHERE study_uid = ?", (study_uid,)
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def last_received_by_study(self) -> dict[str, float]:
        rows = self.database.conn.execute(
            "SELECT study_uid, MAX(received_at) AS last FROM spool_instances GROUP BY study_uid"
        ).fetchall()
        return {r["study_uid"]: float(r["last"]) for r in rows}

    def study_paths(self, study_uid: str) -> list[str]:
        """Paths (relative to the spool root) of the study's indexed files."""
        return [r["path"] for r in self.database.conn.execute(
            "SELECT path FROM spool_instances WHERE study_uid = ?", (study_uid,))]

    def forget_study(self, study_uid: str, conn: sqlite3.Connection) -> int:
        """Delete the study's rows (retention, inside its removal transaction); returns how many."""
        return conn.execute("DELETE FROM spool_instances WHERE study_uid = ?", (study_uid,)).rowcount
