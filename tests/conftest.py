"""Root fixtures. Fixture modules of each area are imported here (one line each)."""

from __future__ import annotations

import os

os.environ.setdefault("TCP_NODELAY", "1")  # dcmtk/Orthanc on loopback stall ~45 ms per C-STORE without it
from tests.fixtures_celery import *  # noqa: F401,F403
from tests.fixtures_console import *  # noqa: F401,F403
from tests.fixtures_node import *  # noqa: F401,F403
from tests.fixtures_orthanc import *  # noqa: F401,F403
from tests.fixtures_results import *  # noqa: F401,F403
