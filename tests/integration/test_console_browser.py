"""End to end in a real browser: Playwright drives Debian's headless Chromium against a ``dicomnode serve``
started with the console enabled and a dcmtk storescp as its PACS.

storescu sends the real abdominal CT → the study appears on the Studies page → its page shows the rule
decision and the forward delivered → the results preview shows the thumbnails with outlines → the rule
tester explains the match on the stored study → a re-send from the study page is delivered again and
audited. Screenshots of every page go to ``test-artifacts/console/`` for review.

The node runs the real ``liver-ct`` pipeline on the study; the test waits for its result and for every
queued object (forwarded originals and results) to be delivered before it looks at the pages.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dicomnode.console.auth import hash_password
from tests.support import REPO_ROOT, free_port, shared_data

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO_ROOT / "test-artifacts" / "console"
PASSWORD = "browser-test-password"
RULES = """\
- name: abdomen-ct
  description: CT of the abdomen → liver pipeline; the originals are forwarded too
  when:
    all:
      - {tag: Modality, equals: CT}
      - {instances: {min: 10}}
  then:
    pipeline: liver-ct
    forward: true
    send_to: [pacs]
- name: phantom
  when: {tag: SeriesDescription, regex: "(?i)phantom"}
  then: {discard: true}
"""


def _wait(what: str, check: Callable[[], object], timeout: float = 30.0, every: float = 0.25) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def _sent(node) -> int:  # noqa: ANN001
    return int(node.query("SELECT COUNT(*) AS n FROM outbox WHERE state = 'sent'")[0]["n"])


def _all_delivered(node) -> bool:  # noqa: ANN001
    rows = node.query("SELECT state, COUNT(*) AS n FROM outbox GROUP BY state")
    counts = {r["state"]: r["n"] for r in rows}
    return counts.get("sent", 0) > 0 and set(counts) == {"sent"}


def test_console_in_a_browser(dicomnode_node, storescp, tmp_path: Path) -> None:  # noqa: ANN001
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (scripts/run-tests installs Debian's chromium as root)")
    ct = shared_data("ct-abdomen-20", "dicom")
    from tests.fixtures_node import storescu

    pacs = storescp(aet="PACS")
    port = free_port()
    node = dicomnode_node(
        start=False,
        console={"enabled": True, "host": "127.0.0.1", "port": port, "secret_key": "browser-test",
                 "admin_password_hash": hash_password(PASSWORD, n=2**12)},
        destinations={"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}},
        outbox={"backoff_initial_seconds": 1, "poll_seconds": 0.2},
        completion={"series_quiet_seconds": 1, "study_quiet_seconds": 2, "check_interval_seconds": 0.2},
    )
    (node.root / "rules" / "routing.yaml").write_text(RULES)
    node.start()
    url = f"http://127.0.0.1:{port}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(15000)

            page.goto(url + "/")
            assert "listening on 127.0.0.1" in page.locator("#listener").inner_text()
            page.click("text=Log in")
            page.fill("input[name=username]", "admin")
            page.fill("input[name=password]", PASSWORD)
            page.click("button:has-text('Log in')")
            assert page.locator("#user-name").inner_text() == "admin"

            sent = storescu(node, ct)
            assert sent.returncode == 0, sent.stderr
            study_uid = node.query("SELECT DISTINCT study_uid FROM spool_instances")[0]["study_uid"]

            def study_listed() -> bool:
                page.goto(url + "/studies")
                return page.locator(f"a:has-text('{study_uid}')").count() > 0

            _wait("the study on the Studies page", study_listed, timeout=20, every=0.5)
            decision = _wait("the routing decision", lambda: node.query(
                "SELECT job_id FROM route_decisions WHERE study_uid = ? AND rule = 'abdomen-ct'",
                (study_uid,)))
            job_dir = node.storage / "jobs" / decision[0]["job_id"]
            _wait("the pipeline result", lambda: (job_dir / "result.json").is_file(), timeout=240)
            result = json.loads((job_dir / "result.json").read_text())
            assert result["ok"], result["error"]
            _wait("the forward delivered", lambda: node.query(
                "SELECT COUNT(*) AS n FROM outbox WHERE state = 'sent' AND origin = 'forward'")[0]["n"] == 20)
            outputs = len(result["output_files"])
            _wait("the results queued", lambda: node.query(
                "SELECT COUNT(*) AS n FROM outbox WHERE origin = 'result'")[0]["n"] == outputs)
            _wait("every queued object delivered", lambda: _all_delivered(node), timeout=60)
            delivered = _sent(node)
            assert delivered == 20 + len(result["output_files"])
            page.goto(url + "/studies")
            # logged in, so patient names are shown
            assert "TotalSegmentator Example" in page.locator("#studies").inner_text()
            page.screenshot(path=str(ARTIFACTS / "studies.png"), full_page=True)

            page.click(f"a:has-text('{study_uid}')")
            assert "abdomen-ct" in page.locator("#decisions").inner_text()
            assert f"pacs: {delivered} sent" in page.inner_text("body")
            page.screenshot(path=str(ARTIFACTS / "study.png"), full_page=True)

            page.click("a.preview-link")
            for plane in ("axial", "coronal", "sagittal"):
                image = page.locator(f"#thumb-{plane}")
                image.wait_for()
                _wait(f"the {plane} thumbnail",
                      lambda img=image: img.evaluate("i => i.complete && i.naturalWidth"))
            legend = page.inner_text("p.legend")
            assert "Liver" in legend, legend
            page.screenshot(path=str(ARTIFACTS / "preview.png"), full_page=True)

            page.goto(url + "/rules")
            page.select_option("select[name=study_uid]", study_uid)
            page.click("#test")
            results = page.locator("#test-results").inner_text()
            assert "MATCH abdomen-ct" in results and "⇒ abdomen-ct" in results, results
            page.screenshot(path=str(ARTIFACTS / "rules.png"), full_page=True)

            page.goto(url + f"/studies/{study_uid}")
            page.click("#resend")
            assert f"{delivered} object(s) queued again." in page.locator(".flash").inner_text()
            _wait("the re-send delivered", lambda: _sent(node) == 2 * delivered)
            operator = node.query("SELECT detail FROM audit WHERE stage = 'operator' AND study_uid = ?",
                                  (study_uid,))
            assert json.loads(operator[-1]["detail"])["user"] == "admin"

            page.goto(url + "/queue")
            assert "pacs" in page.locator("#destinations").inner_text()
            page.screenshot(path=str(ARTIFACTS / "queue.png"), full_page=True)
            page.goto(url + "/")
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        finally:
            browser.close()
    assert node.stop() == 0
