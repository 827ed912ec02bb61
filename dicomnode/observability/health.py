"""Readiness checks for ``/readyz``: each check is a callable returning a :class:`CheckResult`.

The service passes the checks it has to :class:`dicomnode.observability.http.HealthServer`:

- :func:`listener_check` — the DICOM port is bound (given a callable that says so, or by connecting);
- :func:`database_check` — the node database accepts a write transaction;
- :func:`disk_check` — the spool's filesystem is below ``storage.max_used_percent`` and has at least
  ``storage.min_free_mb`` free (the same thresholds the listener uses to refuse associations).

A check that raises is reported as failed with the exception text; it never breaks the endpoint.
"""

from __future__ import annotations

import shutil
import socket
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from dicomnode.database import Database


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    detail: str


Check = Callable[[], CheckResult]


def run_checks(checks: Mapping[str, Check]) -> tuple[bool, dict[str, dict[str, object]]]:
    """Run every check; ``(all_ok, {name: {"ok": bool, "detail": str}})``."""
    results: dict[str, dict[str, object]] = {}
    for name, check in checks.items():
        try:
            result = check()
        except Exception as exc:  # a broken check is a failed check, reported with its reason
            result = CheckResult(False, f"check raised {type(exc).__name__}: {exc}")
        results[name] = {"ok": result.ok, "detail": result.detail}
    return all(r["ok"] for r in results.values()), results


def listener_check(host: str, port: int, is_bound: Callable[[], bool] | None = None) -> Check:
    """The DICOM listener is bound: ask ``is_bound()`` if given, else try a TCP connect to it."""
    target = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host

    def check() -> CheckResult:
        if is_bound is not None:
            bound = bool(is_bound())
        else:
            try:
                with socket.create_connection((target, port), timeout=2.0):
                    bound = True
            except OSError:
                bound = False
        where = f"{host}:{port}"
        return CheckResult(bound, f"listening on {where}" if bound else f"not listening on {where}")

    return check


def database_check(db: Database) -> Check:
    """The node database takes a write lock (``BEGIN IMMEDIATE``) within its busy timeout."""

    def check() -> CheckResult:
        try:
            with db.transaction() as conn:
                conn.execute("SELECT 1")
        except sqlite3.Error as exc:
            return CheckResult(False, f"database '{db.path}' is not writable: {exc}")
        return CheckResult(True, f"database '{db.path}' is writable")

    return check


def disk_check(path: Path, min_free_mb: int, max_used_percent: float) -> Check:
    """The filesystem holding ``path`` has room: free ≥ ``min_free_mb`` and fill ≤ ``max_used_percent``."""

    def check() -> CheckResult:
        probe = Path(path)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        usage = shutil.disk_usage(probe)
        free_mb = usage.free / 2**20
        used_percent = 100.0 * usage.used / usage.total if usage.total else 100.0
        detail = f"{free_mb:.0f} MB free, {used_percent:.1f}% used on the filesystem of '{path}'"
        if free_mb < min_free_mb:
            return CheckResult(False, f"{detail} (below storage.min_free_mb={min_free_mb})")
        if used_percent > max_used_percent:
            return CheckResult(False, f"{detail} (above storage.max_used_percent={max_used_percent})")
        return CheckResult(True, detail)

    return check
