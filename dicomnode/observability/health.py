"""Readiness checks for ``/readyz``: each check is a callable returning a :class:`CheckResult`.

The service passes the checks it has to :class:`dicomnode.observability.http.HealthServer`:

- :func:`listener_check` — the DICOM port is bound (given a callable that says so, or by connecting);
- :func:`database_check` — the node database accepts a write transaction;
- :func:`disk_check` — the spool's filesystem is below ``storage.max_used_percent`` and has at least
  ``storage.min_free_mb`` free (the same thresholds the listener uses to refuse associations).

A check that raises is reported as failed with the exception text; it never breaks the endpoint.

``/readyz`` is about the node itself. Whether the *destinations* are reachable is a separate question,
answered by :func:`destination_health` from the outbox's record of deliveries and failed attempts: a
destination is *unreachable* when its attempts have failed without an answer (connection refused, timeout,
association rejected) for longer than ``health.destination_unreachable_minutes`` with no delivery since.
``dicomnode health`` and the ``dicomnode_destination_*`` gauges report it.
"""

from __future__ import annotations

import shutil
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from dicomnode.database import Database
from dicomnode.send.outbox import DestinationContact


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


@dataclass(frozen=True)
class DestinationHealth:
    """One configured destination as the outbox knows it (``None``: not known yet)."""

    destination: str
    unreachable: bool
    failing_seconds: float | None  # how long its attempts have been failing (None: the last one succeeded)
    seconds_since_success: float | None  # since the last delivery (None: none recorded)
    last_error: str

    def describe(self, threshold_seconds: float) -> str:
        since = ("never delivered to" if self.seconds_since_success is None
                 else f"last delivery {_duration(self.seconds_since_success)} ago")
        if self.failing_seconds is None:
            return f"{self.destination}: reachable ({since})"
        state = "UNREACHABLE" if self.unreachable else "failing"
        return (f"{self.destination}: {state} for {_duration(self.failing_seconds)} (threshold "
                f"{_duration(threshold_seconds)}; {since}): {self.last_error or 'no error recorded'}")

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def destination_health(
    contacts: Mapping[str, DestinationContact], destinations: Iterable[str], threshold_seconds: float,
    now: float | None = None,
) -> list[DestinationHealth]:
    """The health of each of ``destinations`` from the outbox's ``contacts`` (``Outbox.contacts()``)."""
    now = time.time() if now is None else now
    out = []
    for name in sorted(destinations):
        contact = contacts.get(name)
        if contact is None:
            out.append(DestinationHealth(name, False, None, None, ""))
            continue
        failing = None if contact.failing_since is None else now - contact.failing_since
        since = None if contact.last_success is None else now - contact.last_success
        out.append(DestinationHealth(name, failing is not None and failing >= threshold_seconds, failing,
                                     since, contact.last_error))
    return out
