"""Plain helpers shared by tests (importable; fixtures live in conftest.py and tests/fixtures_*.py)."""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# dcmtk by absolute path: pynetdicom installs console scripts with the same names into the venv.
DCMTK_BIN = Path("/usr/bin")

T = TypeVar("T")


def dcmtk(tool: str) -> str:
    path = DCMTK_BIN / tool
    if not path.exists():
        pytest.skip(f"dcmtk tool {path} is not installed (scripts/run-tests installs it as root)")
    return str(path)


def require_tool(path: str) -> str:
    found = shutil.which(path) if "/" not in path else (path if Path(path).exists() else None)
    if not found:
        pytest.skip(f"{path} is not installed (scripts/run-tests installs it as root)")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data {path} is missing")
    return path


def wait_until(predicate: Callable[[], T], what: str, *, timeout: float = 60.0, every: float = 0.2,
               log: Callable[[], str] | None = None) -> T:
    """Poll ``predicate`` every ``every`` seconds until it returns something true, and return that; after
    ``timeout`` seconds fail with ``what`` and the tail of ``log()`` (e.g. ``node.log_text``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            tail = f"; log:\n{log()[-6000:]}" if log is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{tail}")
        time.sleep(every)
