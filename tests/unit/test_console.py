"""Web console over HTTP (FastAPI TestClient) on a fabricated node database (``tests/fixtures_console.py``):
authentication (anonymous writes refused, CSRF), every page's content, the results preview, the operator
actions and the queue.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from dicomnode.config import ConsoleConfig, load_config
from dicomnode.console.app import create_app
from dicomnode.console.auth import hash_password, verify_password
from dicomnode.console.server import ConsoleServer
from dicomnode.errors import ConfigError, ConsoleError
from dicomnode.jobs import JobResult, JobSpec
from tests.fixtures_console import (
    JOB_ID,
    PASSWORD,
    RULES,
    Fabricated,
    copy_fabricated,
    csrf_of,
    login,
    page_text,
)
from tests.support import free_port


def _outbox_states(fab: Fabricated) -> dict[str, dict[str, int]]:
    return fab.node.outbox.counts()


# -- passwords and the CLI --------------------------------------------------------------------------------
def test_password_hash_format_and_verification() -> None:
    encoded = hash_password("s3cret", n=2**10)
    assert re.fullmatch(r"scrypt\$1024\$8\$1\$[A-Za-z0-9_-]+\$[A-Za-z0-9_-]+", encoded)
    assert verify_password("s3cret", encoded)
    assert not verify_password("s3cret ", encoded)
    assert hash_password("s3cret", n=2**10) != encoded  # random salt
    with pytest.raises(ConsoleError, match="scrypt"):
        verify_password("s3cret", "plain-text-password")


def test_config_refuses_a_plain_password(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("console:\n  admin_password_hash: hunter2\n")
    with pytest.raises(ConfigError, match="console.admin_password_hash.*hash-password"):
        load_config(config, environ={})


def test_hash_password_command_prints_a_verifiable_hash() -> None:
    from typer.testing import CliRunner

    from dicomnode.cli import build_app

    result = CliRunner().invoke(build_app(), ["console", "hash-password", "--stdin"], input="pa55 word\n")
    assert result.exit_code == 0, result.output
    line = result.output.strip().splitlines()[-1]
    assert verify_password("pa55 word", line) and not verify_password("pa55", line)
    assert ConsoleConfig(admin_password_hash=line).admin_password_hash == line


# -- authentication -----------------------------------------------------------------------------------------
WRITES = [
    ("/studies/{study}/resend", {}),
    ("/studies/{study}/discard", {}),
    ("/studies/{study}/rerun", {"decision_id": "{decision}"}),
    ("/rules/save", {"file": "routing.yaml", "text": "[]\n"}),
    ("/rules/validate", {"file": "routing.yaml", "text": "[]\n"}),
    ("/rules/test", {"study_uid": "{study}"}),
    ("/queue/retry", {"item_id": "{dead}"}),
    ("/queue/retry-failed", {}),
    ("/queue/purge", {}),
    ("/logout", {}),
]


def _fill(fab: Fabricated, text: str) -> str:
    dead = fab.node.outbox.list("dead")[0].id
    return text.format(study=fab.study_uid, decision=fab.decision_id, dead=dead)


@pytest.mark.parametrize(("path", "form"), WRITES)
def test_anonymous_writes_are_redirected_to_login_and_change_nothing(
    fab: Fabricated, client: TestClient, path: str, form: dict[str, str]
) -> None:
    before_rules, before_outbox = fab.rules_file.read_bytes(), _outbox_states(fab)
    token = csrf_of(client.get("/login").text)  # even with the anonymous session's valid token
    data = {k: _fill(fab, v) for k, v in form.items()} | {"csrf_token": token}
    response = client.post(_fill(fab, path), data=data, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login")
    assert fab.rules_file.read_bytes() == before_rules
    assert _outbox_states(fab) == before_outbox
    assert not [e for e in fab.node.audit.events(fab.study_uid) if e["stage"] == "operator"]


@pytest.mark.parametrize("token", [None, "", "0" * 64, "forged"])
def test_missing_or_wrong_csrf_token_is_403_and_changes_nothing(
    fab: Fabricated, client: TestClient, token: str | None
) -> None:
    login(client)
    before = _outbox_states(fab)
    data = {} if token is None else {"csrf_token": token}
    response = client.post(f"/studies/{fab.study_uid}/resend", data=data, follow_redirects=False)
    assert response.status_code == 403
    assert "CSRF" in response.text
    assert _outbox_states(fab) == before
    response = client.post("/rules/save", data={**data, "file": "routing.yaml", "text": "[]\n"})
    assert response.status_code == 403 and fab.rules_file.read_text() == RULES


def test_csrf_token_of_another_session_is_refused(fab: Fabricated, client: TestClient) -> None:
    other = TestClient(create_app(fab.node))
    foreign = csrf_of(other.get("/login").text)
    login(client)
    response = client.post(f"/studies/{fab.study_uid}/discard", data={"csrf_token": foreign})
    assert response.status_code == 403
    assert _outbox_states(fab)["pacs"]["dead"] == 1


def test_login_needs_the_right_password_and_a_csrf_token(fab: Fabricated, client: TestClient) -> None:
    token = csrf_of(client.get("/login").text)
    wrong = client.post("/login", data={"username": "admin", "password": "guess", "csrf_token": token})
    assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text
    no_token = client.post("/login", data={"username": "admin", "password": PASSWORD})
    assert no_token.status_code == 403
    assert "not logged in" in client.get("/").text
    login(client)
    page = client.get("/").text
    assert 'id="user-name">admin<' in page


def test_login_issues_a_new_session_and_logout_ends_it(fab: Fabricated, client: TestClient) -> None:
    client.get("/")
    anonymous_cookie = client.cookies.get("dicomnode_session")
    login(client)
    assert client.cookies.get("dicomnode_session") != anonymous_cookie  # no session fixation
    token = csrf_of(client.get("/").text)
    assert client.post("/logout", data={"csrf_token": token}, follow_redirects=False).status_code == 303
    assert "not logged in" in client.get("/").text
    stale = TestClient(create_app(fab.node), cookies={"dicomnode_session": anonymous_cookie + "x"})
    assert "not logged in" in stale.get("/").text  # a tampered cookie is no session


def test_patient_names_only_for_logged_in_users(fab: Fabricated, client: TestClient) -> None:
    pages = ["/studies", f"/studies/{fab.study_uid}", "/rules"]
    for page in pages:
        html = client.get(page).text
        assert "Console" not in html and "DN-TEST-001" not in html, page
    assert fab.study_uid in client.get("/studies?patient=Console").text  # the patient filter is ignored
    login(client)
    assert "Console Test" in client.get(f"/studies/{fab.study_uid}").text
    assert "Console Test" in client.get("/studies?patient=console").text
    assert fab.study_uid not in client.get("/studies?patient=Nobody").text


def test_anonymous_read_can_be_switched_off(console_template: Fabricated, tmp_path: Path) -> None:
    fab = copy_fabricated(console_template, tmp_path / "node", anonymous_read=False)
    client = TestClient(create_app(fab.node))
    for page in ["/", "/studies", f"/studies/{fab.study_uid}", "/rules", "/queue"]:
        response = client.get(page, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"].startswith("/login"), page
    login(client)
    assert client.get("/queue").status_code == 200


def test_proxy_header_identifies_the_user(console_template: Fabricated, tmp_path: Path) -> None:
    fab = copy_fabricated(console_template, tmp_path / "node", proxy_user_header="X-Remote-User",
                          admin_password_hash=None)
    client = TestClient(create_app(fab.node))
    headers = {"X-Remote-User": "dr.house"}
    token = csrf_of(client.get("/", headers=headers).text)  # the session's token, from the logout form
    anonymous = client.post(f"/studies/{fab.study_uid}/resend", data={"csrf_token": token},
                            follow_redirects=False)
    assert anonymous.status_code == 303
    assert "dr.house" in client.get("/", headers=headers).text
    assert client.post(f"/studies/{fab.study_uid}/resend", headers=headers,
                       data={}).status_code == 403  # CSRF still required
    done = client.post(f"/studies/{fab.study_uid}/resend", headers=headers, data={"csrf_token": token},
                       follow_redirects=False)
    assert done.status_code == 303
    operator = [e for e in fab.node.audit.events(fab.study_uid) if e["stage"] == "operator"]
    assert operator[-1]["detail"]["user"] == "dr.house"


def test_security_headers(client: TestClient) -> None:
    response = client.get("/")
    assert response.headers["x-frame-options"] == "DENY"
    assert "script-src 'self'" in response.headers["content-security-policy"]
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie


# -- pages ------------------------------------------------------------------------------------------------
def test_dashboard_shows_the_node_figures(fab: Fabricated, client: TestClient) -> None:
    text = page_text(client.get("/").text)
    assert "not known (the console is not running inside the node)" in text
    assert "8 stored in 1 studies" in text
    assert "pacs: 1 pending" not in text and "nothing pending" in text  # 7 sent, 1 dead: none pending
    assert "1 dead" in text
    assert re.search(r"Failures, 24 h 1 1 audit, 0 routing", text)
    html = client.get("/").text
    assert '<svg class="chart"' in html and html.count('class="bar"') >= 1


def test_studies_list_filters(fab: Fabricated, client: TestClient) -> None:
    html = client.get("/studies").text
    assert fab.study_uid in html and "2024-01-02" in html and ">failed<" in html
    assert fab.study_uid in client.get("/studies?modality=ct&date_from=2024-01-01&date_to=2024-01-31").text
    assert fab.study_uid not in client.get("/studies?modality=MR").text
    assert fab.study_uid not in client.get("/studies?date_from=2024-02-01").text
    assert fab.study_uid in client.get("/studies?state=failed").text
    assert fab.study_uid not in client.get("/studies?state=delivered").text


def test_study_page_shows_series_decisions_jobs_and_delivery(fab: Fabricated, client: TestClient) -> None:
    text = page_text(client.get(f"/studies/{fab.study_uid}").text)
    assert fab.series_uid in text and "CT Abdomen" in text
    assert "ct-liver pipeline liver-ct → pacs" in text and "abc123abc123" in text
    assert "Modality equals 'CT'" in text
    assert "liver-ct done job-console-1" in text
    assert "threshold 1.25" in text and "largest-component 0.50" in text and "3.5 s" in text
    assert "seg ×1, sr ×1" in text
    assert "pacs: 7 sent 1 dead" in text and "association rejected" in text
    assert "failed" in text and "error=boom" in text
    assert client.get("/studies/1.2.3.4").status_code == 404


def test_study_page_shows_the_comparison_with_the_prior_study(fab: Fabricated, client: TestClient) -> None:
    job_dir = fab.config.storage.jobs_dir / JOB_ID
    result = JobResult.from_json((job_dir / "result.json").read_text())
    comparison = {
        "status": "compared", "prior_study_uid": "1.2.3.99", "prior_study_date": "20200110",
        "interval_days": 1456,
        "findings": {
            "Liver": {"status": "compared", "volume_ml": {"prior": 1500.0, "current": 1530.0, "change": 30.0,
                                                          "change_percent": 2.0},
                      "mean_hu": {"prior": 104.0, "current": 101.0, "change": -3.0}},
            "Lesion 1": {"status": "new", "volume_ml": {"prior": None, "current": 4.2},
                         "mean_hu": {"prior": None, "current": 55.0}},
        },
    }
    summary = {**result.summary, "comparison": comparison}
    JobResult(result.job_id, True, result.output_files, summary).write(job_dir)
    page = client.get(f"/studies/{fab.study_uid}").text
    if os.environ.get("DICOMNODE_SAVE_PAGES"):  # for a look in a browser
        Path(os.environ["DICOMNODE_SAVE_PAGES"], "study-comparison.html").write_text(page)
    text = page_text(page)
    assert "Comparison with the prior study: compared (2020-01-10, 1456 days earlier)" in text
    assert "Liver compared 1500.0 ml 1530.0 ml +2.0 % 104 HU 101 HU" in text
    assert "Lesion 1 new – 4.2 ml – – 55 HU" in text
    svg = page[page.index("<svg"):page.index("</svg>")]
    assert svg.count("<circle") == 3 and "2020-01-10" in svg and "Lesion 1" in svg
    # priors.count 2: an older study's values are charted too (the liver gets three points on one line)
    comparison["history"] = [{"study_uid": "1.2.3.98", "study_date": "20180105", "interval_days": 2191,
                              "findings": {"Liver": {"volume_ml": 1450.0, "mean_hu": 100.0}}}]
    summary = {**result.summary, "comparison": comparison}
    JobResult(result.job_id, True, result.output_files, summary).write(job_dir)
    svg = client.get(f"/studies/{fab.study_uid}").text
    svg = svg[svg.index("<svg"):svg.index("</svg>")]
    assert svg.count("<circle") == 4 and "2018-01-05" in svg and "Liver: 1450.0 ml (2018-01-05)" in svg
    assert svg.count("<polyline") == 1  # the liver; the new lesion has one point


def test_results_preview_thumbnails_and_measurements(fab: Fabricated, client: TestClient) -> None:
    page = client.get(f"/studies/{fab.study_uid}/series/{fab.series_uid}/preview")
    assert page.status_code == 200
    for plane in ("axial", "coronal", "sagittal"):
        assert f'id="thumb-{plane}"' in page.text
        png = client.get(f"/preview/{fab.study_uid}/{JOB_ID}/{plane}.png")
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        image = Image.open(io.BytesIO(png.content)).convert("RGB")
        pixels = np.asarray(image).reshape(-1, 3).astype(int)
        reddish = (pixels[:, 0] > 150) & (pixels[:, 0] - pixels[:, 1] > 60)  # the outline colour
        assert reddish.sum() > 10, f"no segment outline drawn in the {plane} thumbnail"
    text = page_text(page.text)
    assert "Liver (" in text
    expected_ml = np.count_nonzero(_liver_mask()) * 2.0 * 0.75 * 0.75 / 1000
    assert f"Liver Volume {expected_ml:.2f} ml" in text  # as people read it: no exponent, no UCUM
    assert "Liver Mean 40.5 HU" in text and "hnsf" not in text
    assert client.get(f"/preview/{fab.study_uid}/{JOB_ID}/oblique.png").status_code == 404
    assert client.get(f"/preview/{fab.study_uid}/nojob/axial.png").status_code == 404


def _liver_mask() -> np.ndarray:
    zz, yy, xx = np.mgrid[0:8, 0:32, 0:40]
    return ((zz - 4) / 3.0) ** 2 + ((yy - 16) / 8.0) ** 2 + ((xx - 20) / 6.0) ** 2 <= 1


def test_queue_page_and_actions(fab: Fabricated, client: TestClient) -> None:
    text = page_text(client.get("/queue").text)
    assert "pacs 0 0 0 0 1 7" in text
    login(client)
    token = csrf_of(client.get("/queue").text)
    dead = fab.node.outbox.list("dead")[0]
    response = client.post("/queue/retry", data={"item_id": dead.id, "csrf_token": token})
    assert response.status_code == 200 and f"Entry {dead.id} queued again." in response.text
    assert fab.node.outbox.get(dead.id).state == "queued"
    again = client.post("/queue/retry", data={"item_id": dead.id, "csrf_token": token})
    assert "only failed or dead entries can be retried" in again.text
    purged = client.post("/queue/purge", data={"destination": "pacs", "csrf_token": token})
    assert "7 entries purged." in purged.text
    assert fab.node.outbox.counts() == {"pacs": {"queued": 1}}


# -- study actions ------------------------------------------------------------------------------------------
def _operator_events(fab: Fabricated) -> list[dict[str, object]]:
    return [e for e in fab.node.audit.events(fab.study_uid) if e["stage"] == "operator"]


def test_resend_queues_the_delivered_objects_again_and_is_audited(
    fab: Fabricated, client: TestClient
) -> None:
    login(client)
    token = csrf_of(client.get(f"/studies/{fab.study_uid}").text)
    response = client.post(f"/studies/{fab.study_uid}/resend", data={"csrf_token": token, "destination": ""})
    assert "8 object(s) queued again." in response.text
    counts = fab.node.outbox.counts()["pacs"]
    assert counts == {"sent": 7, "dead": 1, "queued": 8}
    event = _operator_events(fab)[-1]
    assert event["detail"]["action"] == "resend" and event["detail"]["user"] == "admin"
    assert event["detail"]["queued"] == 8


def test_discard_drops_pending_deliveries_and_is_audited(fab: Fabricated, client: TestClient) -> None:
    login(client)
    fab.node.outbox.enqueue("pacs", fab.files[:2], "forward")  # two new pending sends
    token = csrf_of(client.get(f"/studies/{fab.study_uid}").text)
    response = client.post(f"/studies/{fab.study_uid}/discard", data={"csrf_token": token})
    assert "3 pending or dead deliveries removed" in response.text
    assert fab.node.outbox.counts() == {"pacs": {"sent": 7}}
    assert _operator_events(fab)[-1]["detail"]["action"] == "discard"


def test_rerun_submits_the_pipeline_again_and_is_audited(fab: Fabricated) -> None:
    submitted: list[tuple[JobSpec, int]] = []

    class Router:  # what the console needs of the running node's router: its job submitter
        def submit_job(self, spec: JobSpec, *, priority: int) -> None:
            submitted.append((spec, priority))

    fab.node.router = Router()
    client = TestClient(create_app(fab.node))
    login(client)
    token = csrf_of(client.get(f"/studies/{fab.study_uid}").text)
    response = client.post(f"/studies/{fab.study_uid}/rerun",
                           data={"csrf_token": token, "decision_id": fab.decision_id})
    assert "Re-run submitted as job job-console-1-r" in response.text
    spec, priority = submitted[0]
    assert spec.pipeline == "liver-ct" and spec.series_uid == fab.series_uid and priority == 10
    assert sorted(spec.input_files) == sorted(map(str, fab.files)) and spec.destinations == ("pacs",)
    assert Path(spec.output_dir).parent == fab.config.storage.jobs_dir
    event = _operator_events(fab)[-1]
    assert event["job_id"] == spec.job_id and event["detail"]["previous_job"] == JOB_ID
    assert spec.job_id in client.get(f"/studies/{fab.study_uid}").text  # listed as a job of the study
    assert spec.on_qc_fail == ""  # the decision's job is not in the jobs table: the destination decides


def test_rerun_keeps_the_rules_qc_policy_of_the_job_it_repeats(fab: Fabricated) -> None:
    submitted: list[JobSpec] = []

    class Router:
        def submit_job(self, spec: JobSpec, *, priority: int) -> None:
            submitted.append(spec)

    assert fab.node.jobs is not None
    fab.node.jobs.create(JobSpec(
        job_id=JOB_ID, pipeline="liver-ct", params={}, input_files=(),
        output_dir=str(fab.config.storage.jobs_dir / JOB_ID), study_uid=fab.study_uid,
        series_uid=fab.series_uid, on_qc_fail="send"))
    fab.node.router = Router()
    client = TestClient(create_app(fab.node))
    login(client)
    token = csrf_of(client.get(f"/studies/{fab.study_uid}").text)
    client.post(f"/studies/{fab.study_uid}/rerun", data={"csrf_token": token, "decision_id": fab.decision_id})
    assert submitted[0].on_qc_fail == "send" and submitted[0].job_id.startswith(f"{JOB_ID}-r")


def test_rerun_without_an_executor_says_so(fab: Fabricated, client: TestClient) -> None:
    login(client)
    token = csrf_of(client.get(f"/studies/{fab.study_uid}").text)
    response = client.post(f"/studies/{fab.study_uid}/rerun",
                           data={"csrf_token": token, "decision_id": fab.decision_id})
    assert "No pipeline executor is connected" in response.text
    assert not _operator_events(fab)


# -- the server component ---------------------------------------------------------------------------------
def test_console_server_serves_on_loopback_and_stops(fab: Fabricated) -> None:
    import httpx

    server = ConsoleServer(fab.node, "127.0.0.1", free_port())
    server.start()
    try:
        response = httpx.get(server.url + "/studies", timeout=10)
        assert response.status_code == 200 and fab.study_uid in response.text
        taken = ConsoleServer(fab.node, "127.0.0.1", server.port)
        with pytest.raises(ConsoleError, match=f"Cannot serve the web console on 127.0.0.1:{server.port}"):
            taken.start()
    finally:
        server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/", timeout=2)
