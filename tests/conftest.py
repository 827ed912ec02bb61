"""Root fixtures. Fixture modules of each area are imported here (one line each)."""

from __future__ import annotations

import gc
import os

import pytest

os.environ.setdefault("TCP_NODELAY", "1")  # dcmtk/Orthanc on loopback stall ~45 ms per C-STORE without it

from tests.fixtures_celery import *  # noqa: F401,F403
from tests.fixtures_console import *  # noqa: F401,F403
from tests.fixtures_node import *  # noqa: F401,F403
from tests.fixtures_orthanc import *  # noqa: F401,F403
from tests.fixtures_results import *  # noqa: F401,F403


def _freeze_survivors(phase: str, info: dict[str, int]) -> None:
    """After each full collection, what survived it (modules, session fixtures, caches) leaves the collector's
    reach, so the next full pass walks only what the tests made since: the full passes over the session's
    whole heap took ~10 % of the CPU of in-process tests (2.7 of 24 s on test_outputs, test_console, …);
    with this ~2 %, peak memory the same."""
    if phase == "stop" and info["generation"] == 2:
        gc.freeze()


gc.callbacks.append(_freeze_survivors)


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """At the end of each test module the frozen survivors go back to the collector, so that a cycle that
    became garbage meanwhile (a client holding a socket, …) is freed at the next full pass, not at exit."""
    if nextitem is None or getattr(nextitem, "module", None) is not getattr(item, "module", None):
        gc.unfreeze()
