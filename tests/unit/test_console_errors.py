"""The console's one answer to the project's errors (error page or JSON with the message) and its preview
cache (rendered once, again when the result is rewritten, bounded)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from fastapi.testclient import TestClient

from dicomnode.console.app import create_app
from dicomnode.console.jobs import find_job
from dicomnode.console.preview import PreviewCache
from tests.fixtures_console import JOB_ID, Fabricated

HTML = {"accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
JSON = {"accept": "application/json"}


def test_a_refused_request_gets_the_error_page_or_json_with_the_message(fab: Fabricated) -> None:
    client = TestClient(create_app(fab.node))
    page = client.get("/queue?state=lost", headers=HTML)
    assert page.status_code == 400 and page.headers["content-type"].startswith("text/html")
    assert "<title>Queue" in page.text and "Outbox state &#39;lost&#39; is not one of" in page.text
    answer = client.get("/queue?state=lost", headers=JSON)
    assert answer.status_code == 400 and answer.json()["detail"].startswith("Outbox state 'lost' is not one")
    assert client.get("/queue?state=dead", headers=HTML).status_code == 200


def test_a_result_whose_source_is_gone_is_a_server_side_error(fab: Fabricated) -> None:
    shutil.rmtree(fab.config.storage.spool_dir / fab.study_uid)
    client = TestClient(create_app(fab.node))
    png = client.get(f"/preview/{fab.study_uid}/{JOB_ID}/axial.png", headers=JSON)
    assert png.status_code == 500 and "Cannot read DICOM file" in png.json()["detail"]
    page = client.get(f"/studies/{fab.study_uid}/series/{fab.series_uid}/preview", headers=HTML)
    assert page.status_code == 200 and "Cannot read DICOM file" in page.text  # measurements still shown


def test_previews_are_rendered_once_again_after_a_rewrite_and_the_cache_is_bounded(fab: Fabricated) -> None:
    job = find_job(fab.node, fab.study_uid, JOB_ID)
    assert job is not None and job.seg is not None
    reads: list[str] = []

    def series_files(study_uid: str, series_uid: str) -> list[Path]:
        reads.append(series_uid)
        return fab.node.index.series_files(study_uid, series_uid)

    cache = PreviewCache(series_files, size=2)
    first = cache.get(fab.study_uid, fab.series_uid, job.seg)
    assert cache.get(fab.study_uid, fab.series_uid, job.seg) is first and len(reads) == 1
    stat = job.seg.stat()
    os.utime(job.seg, (stat.st_atime, stat.st_mtime + 10))  # the job was run again
    assert cache.get(fab.study_uid, fab.series_uid, job.seg) is not first and len(reads) == 2
    copies = []
    for name in ("a.dcm", "b.dcm"):
        copies.append(job.seg.with_name(name))
        shutil.copy(job.seg, copies[-1])
        cache.get(fab.study_uid, fab.series_uid, copies[-1])
    assert len(reads) == 4
    cache.get(fab.study_uid, fab.series_uid, job.seg)  # evicted by the two newer ones: rendered again
    assert len(reads) == 5
