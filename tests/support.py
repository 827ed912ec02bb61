"""Plain helpers shared by tests (importable; fixtures live in conftest.py and tests/fixtures_*.py)."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
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


#: what ``systemd-analyze verify`` says about the machine rather than the unit (no systemd as PID 1, no bus)
SYSTEMD_MACHINE_NOISE = re.compile(r"Failed to (connect to|create) bus|System has not been booted"
                                   r"|Failed to setup working|No such file or directory.*/etc/systemd"
                                   r"|RemoveIPC=.*user|Unknown user|unknown group")


def systemd_verify(unit: Path, folder: Path, edit: Callable[[str], str] = str) -> list[str]:
    """``systemd-analyze verify`` of a copy of ``unit`` (in ``folder``, changed by ``edit``) whose
    ``/usr/local/bin/dicomnode`` is a binary that exists here: the lines about the unit, machine noise left
    out. Skips where systemd-analyze is missing."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is missing (Debian package 'systemd'; scripts/run-tests installs it)")
    text = unit.read_text()
    assert "/usr/local/bin/dicomnode" in text, f"{unit} does not start /usr/local/bin/dicomnode"
    copy = folder / unit.name
    copy.write_text(edit(text.replace("/usr/local/bin/dicomnode", shutil.which("true") or "/bin/true")))
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    return [ln for ln in lines if ln.strip() and not SYSTEMD_MACHINE_NOISE.search(ln)]
