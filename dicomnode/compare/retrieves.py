"""Series the node asked a PACS to C-MOVE to itself for a comparison: the ``prior_retrieves`` table.

With ``priors.method: c-move`` the prior arrives at the node's own listener like any incoming series and
would be routed as a new study (its pipeline run twice: once by the comparison, once by the rules). Before
the comparison sends its C-MOVE it records the series here; the router asks
:meth:`PendingRetrieves.requested_by` for every ready series and records such a series as ``ignored`` with
the reason instead of routing it. An entry counts for ``TTL_SECONDS`` after the request (a PACS that later
sends the same series on its own gets it routed again).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from dicomnode.database import Database, Schema, Step

log = logging.getLogger(__name__)

TTL_SECONDS = 24 * 3600.0

DDL_V1 = """
CREATE TABLE IF NOT EXISTS prior_retrieves (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    job_id TEXT NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    requested_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS prior_retrieves_requested ON prior_retrieves (requested_at);
"""

SCHEMA = Schema("prior_retrieves", ("prior_retrieves",), (Step("prior_retrieves", DDL_V1),))


class PendingRetrieves:
    """The ``prior_retrieves`` table of the node database."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self._clock = clock
        db.migrate(SCHEMA)

    def expect(self, study_uid: str, series_uid: str, job_id: str, source: str = "") -> None:
        """Record that ``job_id`` asked ``source`` to C-MOVE the series to the node (and drop old entries)."""
        now = self._clock()
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM prior_retrieves WHERE requested_at < ?", (now - TTL_SECONDS,))
            conn.execute(
                "INSERT INTO prior_retrieves (series_uid, study_uid, job_id, source, requested_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (series_uid) DO UPDATE SET "
                "study_uid = excluded.study_uid, job_id = excluded.job_id, source = excluded.source, "
                "requested_at = excluded.requested_at",
                (series_uid, study_uid, job_id, source, now),
            )

    def requested_by(self, series_uid: str) -> str | None:
        """The job that asked for the series by C-MOVE within ``TTL_SECONDS``, else None."""
        row = self.db.conn.execute(
            "SELECT job_id FROM prior_retrieves WHERE series_uid = ? AND requested_at >= ?",
            (series_uid, self._clock() - TTL_SECONDS)).fetchone()
        return str(row["job_id"]) if row is not None else None
