"""Association policy on the wire: AE titles, the association limit and a full spool, seen by dcmtk."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.factories import ct_series
from tests.fixtures_node import storescu
from tests.support import dcmtk

pytestmark = pytest.mark.integration


def _echo(node, calling: str = "CT1", called: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            dcmtk("echoscu"),
            "-v",
            "-aet",
            calling,
            "-aec",
            called or node.ae_title,
            "127.0.0.1",
            str(node.port),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_ae_titles_and_association_limit(dicomnode_node) -> None:
    node = dicomnode_node(node={"allowed_calling_aets": ["CT1", "ECHOSCU"], "max_associations": 1})
    assert _echo(node, "CT1").returncode == 0

    wrong_calling = _echo(node, "INTRUDER")
    assert wrong_calling.returncode != 0
    assert "Rejected Permanent" in wrong_calling.stderr
    assert "Calling AE Title Not Recognized" in wrong_calling.stderr

    wrong_called = _echo(node, "CT1", called="SOMEONEELSE")
    assert wrong_called.returncode != 0
    assert "Called AE Title Not Recognized" in wrong_called.stderr

    held = AE(ae_title="CT1")
    held.add_requested_context(Verification)
    assoc = held.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        over = _echo(node, "CT1")
        assert over.returncode != 0
        assert "Rejected Transient" in over.stderr and "Local Limit Exceeded" in over.stderr
    finally:
        assoc.release()
    assert _echo(node, "CT1").returncode == 0  # the slot is free again


def test_full_spool_refuses_storage_but_answers_echo(dicomnode_node, tmp_path: Path) -> None:
    node = dicomnode_node(storage={"min_free_mb": 10**9})
    files = ct_series(tmp_path / "s", slices=1, rows=16, cols=16, seed="full")
    result = storescu(node, *files)
    assert result.returncode != 0
    assert "Rejected Transient" in result.stderr and "Temporary Congestion" in result.stderr
    assert _echo(node).returncode == 0
    assert "storage.min_free_mb" in node.log_text()
    assert not list(node.spool.glob("*/*/*.dcm"))
