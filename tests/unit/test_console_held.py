"""The console's held-results page (console/held.py): results held back by QC are listed with their
reasons, shown on the study page, and released (queued for their destination) or discarded by a
logged-in operator only; both decisions are audited."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from dicomnode.imaging.qc import QCFlag, QCReport, QCStatus, SegmentQC
from dicomnode.send.held import HeldResults, HeldState
from tests.fixtures_console import JOB_ID, Fabricated, csrf_of, login, page_text

REASON = "Liver volume 6027 ml is outside 600-3200 ml, the plausible range for a body 26 cm across."
QC = QCReport({"Liver": SegmentQC(QCStatus.FAIL, (QCFlag.IMPLAUSIBLE_VOLUME,), (REASON,))}).to_json()


def _hold(fab: Fabricated) -> tuple[int, int]:
    job_dir = fab.config.storage.jobs_dir / JOB_ID
    result = json.loads((job_dir / "result.json").read_text())
    result["summary"]["qc"] = QC
    (job_dir / "result.json").write_text(json.dumps(result))
    files = [str(p) for p in sorted(job_dir.rglob("*.dcm"))]
    held = HeldResults(fab.node.database)
    first = held.hold(JOB_ID, "pacs", files, QC, study_uid=fab.study_uid, series_uid=fab.series_uid,
                      pipeline="liver-ct")
    second = held.hold(JOB_ID, "archive", files, QC, study_uid=fab.study_uid, series_uid=fab.series_uid,
                       pipeline="liver-ct")
    return first, second


def test_held_results_are_listed_and_shown_on_the_study_page(fab: Fabricated, client: TestClient) -> None:
    first, _ = _hold(fab)
    page = page_text(client.get("/held").text)
    assert "Waiting 2" in page and "liver-ct → pacs QC fail" in page
    assert "Liver volume 6027 ml is outside 600-3200 ml" in page and "Log in to release or discard" in page
    study = client.get(f"/studies/{fab.study_uid}").text
    assert f'href="/held#held-{first}">held for pacs' in study
    assert "implausible_volume" in page_text(study)
    series = fab.series_uid
    preview = page_text(client.get(f"/studies/{fab.study_uid}/series/{series}/preview?job={JOB_ID}").text)
    assert "Quality control fail" in preview and "Liver volume 6027 ml" in preview


def test_only_a_logged_in_operator_releases_or_discards(fab: Fabricated, client: TestClient) -> None:
    first, second = _hold(fab)
    token = csrf_of(client.get("/login").text)
    anonymous = client.post(f"/held/{first}/release", data={"csrf_token": token}, follow_redirects=False)
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login")
    held = HeldResults(fab.node.database)
    assert held.get(first).state is HeldState.HELD
    before = len(fab.node.outbox.list(destination="pacs"))

    login(client)
    token = csrf_of(client.get("/held").text)
    released = client.post(f"/held/{first}/release", data={"csrf_token": token})
    assert f"Held result {first} released: its files are queued for pacs." in page_text(released.text)
    queued = [i for i in fab.node.outbox.list(destination="pacs") if i.job_id == JOB_ID]
    assert len(fab.node.outbox.list(destination="pacs")) > before and queued
    assert {i.state for i in queued} == {"queued"}
    discarded = client.post(f"/held/{second}/discard", data={"csrf_token": token})
    assert f"Held result {second} discarded; nothing goes to archive." in page_text(discarded.text)
    assert fab.node.outbox.list(destination="archive") == []
    again = client.post(f"/held/{first}/discard", data={"csrf_token": token})
    assert f"Held result {first} is already released" in page_text(again.text)
    decisions = [e["detail"] for e in fab.node.audit.events(fab.study_uid) if e["stage"] == "operator"]
    assert [(d["action"], d["user"], d["destination"]) for d in decisions] == [
        ("release", "admin", "pacs"), ("discard", "admin", "archive")]
    page = page_text(client.get("/held").text)
    assert "Nothing is held." in page and "discarded admin" in page
