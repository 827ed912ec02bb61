"""Jobs per state and per worker, read from the node database for ``dicomnode status``.

Works for both executors: the jobs table (:class:`~dicomnode.pipelines.jobstore.JobStore`) gives the
states; with the Celery executor the leases (:class:`~dicomnode.distributed.leases.LeaseStore`) add, per
worker, the attempts running now and those that ended in each state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dicomnode.database import Database
from dicomnode.distributed.leases import LeaseStore
from dicomnode.pipelines.jobstore import JobStore


def read_job_status(database_path: Path) -> dict[str, Any]:
    """``{"jobs": {state: count}, "workers": {worker: {lease state: count}}}`` (empty without a database)."""
    status: dict[str, Any] = {"jobs": {}, "workers": {}}
    if not Path(database_path).exists():
        return status
    db = Database(database_path)
    try:
        status["jobs"] = JobStore(db).counts()
        status["workers"] = LeaseStore(db).per_worker()
    finally:
        db.close()
    return status


def format_job_status(status: dict[str, Any]) -> list[str]:
    """Lines for the text output of ``dicomnode status`` (none when there are no jobs)."""
    if not status["jobs"]:
        return []
    lines = ["Jobs: " + ", ".join(f"{count} {state}" for state, count in sorted(status["jobs"].items()))]
    for worker, states in sorted(status["workers"].items()):
        lines.append(f"  worker {worker}: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())))
    return lines
