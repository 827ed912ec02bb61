"""Series/study completion in a running node: quiet period, content evidence, late instances, restart."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from tests.factories import ct_series, uid
from tests.fixtures_node import storescu

pytestmark = pytest.mark.integration


def _wait_for(node, sql: str, args=(), *, count: int = 1, timeout: float = 20.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = node.query(sql, args)
        if len(rows) >= count:
            return rows
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {count} row(s) of {sql!r} {args}:\n{node.log_text()[-3000:]}")


def _ready_lines(node, series_uid: str, log_index: int | None = None) -> list[str]:
    records = node.log_records() if log_index is None else _records(node.logs[log_index])
    return [
        r["message"]
        for r in records
        if r["message"].startswith("Series ready") and series_uid in r["message"]
    ]


def _records(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


SERIES_EVENTS = "SELECT * FROM assembly_events WHERE kind = 'series' AND series_uid = ? ORDER BY generation"
# Completions already handed on (the condition must precede ORDER BY, or it becomes part of the sort key).
HANDED_ON = (
    "SELECT * FROM assembly_events WHERE kind = 'series' AND series_uid = ? AND handed_on_at IS NOT NULL"
    " ORDER BY generation"
)


def test_quiet_completion_late_instance_and_restart(dicomnode_node, tmp_path: Path) -> None:
    node = dicomnode_node(
        completion={"series_quiet_seconds": 1.5, "study_quiet_seconds": 2.5, "content_quiet_seconds": 600}
    )
    series_uid = uid("quiet", "series", 1)
    files = ct_series(tmp_path / "a", slices=8, rows=16, cols=16, seed="quiet", indices=[0, 2, 5])  # gaps
    assert storescu(node, *files).returncode == 0

    (first,) = _wait_for(node, HANDED_ON, (series_uid,))
    assert (first["generation"], first["reason"], first["instance_count"]) == (1, "quiet", 3)
    _wait_for(node, "SELECT * FROM assembly_events WHERE kind = 'study'")
    time.sleep(2)  # several more quiet periods: still exactly one completion
    assert len(node.query(SERIES_EVENTS, (series_uid,))) == 1
    assert len(_ready_lines(node, series_uid)) == 1

    late = ct_series(tmp_path / "late", slices=8, rows=16, cols=16, seed="quiet", indices=[7])
    assert storescu(node, *late).returncode == 0
    rows = _wait_for(node, HANDED_ON, (series_uid,), count=2)
    assert [(r["generation"], r["instance_count"]) for r in rows] == [(1, 3), (2, 4)]
    _wait_for(node, "SELECT * FROM assembly_events WHERE kind = 'study' AND generation = 2")

    # A completion recorded but not handed on when the node went down is emitted again after restart.
    assert node.stop() == 0
    conn = sqlite3.connect(node.database)
    with conn:
        conn.execute(
            "UPDATE assembly_events SET handed_on_at = NULL WHERE series_uid = ? AND generation = 2",
            (series_uid,),
        )
    conn.close()
    node.start()
    rows = _wait_for(node, HANDED_ON, (series_uid,), count=2)
    assert [(r["generation"], r["emit_count"]) for r in rows] == [(1, 1), (2, 2)]
    time.sleep(1)
    again = _ready_lines(node, series_uid, log_index=-1)
    assert len(again) == 1 and "generation 2" in again[0] and "recovered" in again[0]
    assert node.stop() == 0


def test_content_evidence_completes_early(dicomnode_node, tmp_path: Path) -> None:
    node = dicomnode_node(
        completion={"series_quiet_seconds": 600, "study_quiet_seconds": 600, "content_quiet_seconds": 1}
    )
    declared = ct_series(
        tmp_path / "d", slices=4, rows=16, cols=16, seed="declared", images_in_acquisition=True
    )
    contiguous = ct_series(tmp_path / "c", slices=5, rows=16, cols=16, seed="contiguous")
    gappy = ct_series(tmp_path / "g", slices=6, rows=16, cols=16, seed="gappy", indices=[0, 1, 3])
    start = time.monotonic()
    assert storescu(node, *declared, *contiguous, *gappy).returncode == 0
    for seed in ("declared", "contiguous"):
        (row,) = _wait_for(node, SERIES_EVENTS, (uid(seed, "series", 1),), timeout=15)
        assert row["reason"] == "content"
    assert time.monotonic() - start < 30  # far below the 600 s quiet period
    assert node.query(SERIES_EVENTS, (uid("gappy", "series", 1),)) == []  # no evidence: keeps waiting
