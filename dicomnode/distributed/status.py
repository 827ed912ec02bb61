"""Jobs per state and per worker, read (read-only) from the node database for ``dicomnode status``.

Works for both executors: the ``jobs`` table gives the states; with the Celery executor the
``job_leases`` table adds, per worker, the attempts running now and those that ended in each state.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any


def read_job_status(database_path: Path) -> dict[str, Any]:
    """``{"jobs": {state: count}, "workers": {worker: {lease state: count}}}`` (empty when no tables)."""
    status: dict[str, Any] = {"jobs": {}, "workers": {}}
    if not Path(database_path).exists():
        return status
    conn = sqlite3.connect(f"file:{database_path}?mode=ro", uri=True)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "jobs" in tables:
            status["jobs"] = dict(conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"))
        if "job_leases" in tables:
            rows = conn.execute(
                "SELECT CASE WHEN worker = '' THEN '(not claimed)' ELSE worker END, state, COUNT(*) "
                "FROM job_leases GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
            for worker, state, count in rows:
                status["workers"].setdefault(worker, {})[state] = count
    finally:
        conn.close()
    return status


def format_job_status(status: dict[str, Any]) -> list[str]:
    """Lines for the text output of ``dicomnode status`` (none when there are no jobs)."""
    if not status["jobs"]:
        return []
    lines = ["Jobs: " + ", ".join(f"{count} {state}" for state, count in sorted(status["jobs"].items()))]
    for worker, states in sorted(status["workers"].items()):
        lines.append(f"  worker {worker}: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())))
    return lines
