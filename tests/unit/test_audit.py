"""The audit trail: events per stage, timings per stage, JSON export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dicomnode.database import Database
from dicomnode.observability.audit import AuditError, AuditTrail, format_timeline, study_timeline

T0 = 1_700_000_000.0
STUDY = "1.2.826.0.1.3680043.8.498.1"


@pytest.fixture()
def trail(tmp_path: Path) -> AuditTrail:
    trail = AuditTrail(Database(tmp_path / "db.sqlite3"))
    rec = trail.record
    rec("received", STUDY, series_uid="1.2.3.1", detail={"instances": 120, "calling_aet": "CT1"}, at=T0)
    rec("received", STUDY, series_uid="1.2.3.2", detail={"instances": 3}, at=T0 + 12)
    rec("completed", STUDY, series_uid="1.2.3.1", at=T0 + 40)
    rec("completed", STUDY, series_uid="1.2.3.2", at=T0 + 42)
    rec("routed", STUDY, series_uid="1.2.3.1", detail={"rule": "ct-abdomen"}, at=T0 + 42.5)
    rec("processed", STUDY, series_uid="1.2.3.1", job_id="j1", detail={"pipeline": "ct_enhance"}, at=T0 + 100)
    rec("sent", STUDY, job_id="j1", detail={"destination": "pacs", "instances": 122}, at=T0 + 104)
    rec("received", "9.9.9", series_uid="9.9.9.1", at=T0 + 5)  # another study
    return trail


def test_timeline_has_stages_in_order_with_durations(trail: AuditTrail) -> None:
    tl = study_timeline(trail.db, STUDY)
    assert list(tl["stages"]) == ["received", "completed", "routed", "processed", "sent"]
    assert tl["stages"]["received"]["count"] == 2
    assert tl["stages"]["received"]["first"] == "2023-11-14T22:13:20.000+00:00"
    assert tl["durations"] == {
        "received→completed": 30.0, "completed→routed": 0.5, "routed→processed": 57.5, "processed→sent": 4.0,
    }
    assert tl["receiving_seconds"] == 12.0 and tl["total_seconds"] == 104.0
    assert tl["state"] == "sent" and tl["failed"] is False
    assert len(tl["events"]) == 7 and all(e["study_uid"] == STUDY for e in tl["events"])
    assert tl["events"][0]["detail"] == {"calling_aet": "CT1", "instances": 120}
    json.dumps(tl)  # the --json output is serialisable


def test_failures_are_visible(trail: AuditTrail) -> None:
    failure = {"stage": "processing", "error": "timed out"}
    trail.record("failed", STUDY, job_id="j2", detail=failure, at=T0 + 200)
    tl = study_timeline(trail.db, STUDY)
    assert tl["failed"] is True and tl["state"] == "failed"
    text = format_timeline(tl)
    assert "(with failures)" in text and "timed out" in text and "received→completed 30.0s" in text


def test_export_json(trail: AuditTrail) -> None:
    everything = json.loads(trail.export_json())
    assert len(everything) == 8
    only = json.loads(trail.export_json(STUDY, since=T0 + 41))
    assert [e["stage"] for e in only] == ["completed", "routed", "processed", "sent"]


def test_bad_events_and_unknown_study(trail: AuditTrail) -> None:
    with pytest.raises(AuditError, match="'shipped' is not one of"):
        trail.record("shipped", STUDY)
    with pytest.raises(AuditError, match="needs a study UID"):
        trail.record("sent", "")
    with pytest.raises(AuditError, match="No audit events for study '1.2.3.404'"):
        study_timeline(trail.db, "1.2.3.404")
