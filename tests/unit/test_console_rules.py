"""Rules page of the web console: the active set highlighted with its version, the validator's line numbers,
the dry-run tester (stored study, uploaded files) and atomic editing that refuses an invalid set."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from dicomnode.console.app import create_app
from dicomnode.route.ruleset import load_ruleset
from dicomnode.route.watcher import RuleBook
from tests.fixtures_console import INVALID_RULES, RULES, Fabricated, csrf_of, login, page_text


@pytest.fixture
def client(fab: Fabricated) -> TestClient:  # logged in: every test here edits or tests rules
    client = TestClient(create_app(fab.node))
    login(client)
    return client


def _post(client: TestClient, path: str, **data: object) -> object:
    token = csrf_of(client.get("/rules").text)
    return client.post(path, data={"csrf_token": token, **data})


def test_rules_page_shows_the_active_set_highlighted_with_version(fab: Fabricated) -> None:
    anonymous = TestClient(create_app(fab.node))
    page = anonymous.get("/rules").text
    version = load_ruleset(fab.config.rules.path).version
    assert f'id="ruleset-version">{version}<' in page
    assert 'class="hl"' in page and '<span class="nt">name</span>' in page  # pygments YAML tokens
    text = page_text(page)
    assert "ct-liver" in text and "pipeline liver-ct → pacs" in text and "routing.yaml:1" in text
    assert "Log in to edit, validate or test rules." in text
    assert 'id="edit-form"' not in page


def test_validator_shows_the_line_of_each_error(fab: Fabricated, client: TestClient) -> None:
    response = _post(client, "/rules/validate", file="routing.yaml", text=INVALID_RULES)
    assert response.status_code == 422
    text = page_text(response.text)
    assert "The edited rule set is invalid — nothing was applied" in text
    assert "routing.yaml:4 rule 'broken':" in text and "equalz" in text
    assert re.search(r'<span class="hll">.*equalz', response.text)  # line 4 marked in the listing
    assert fab.rules_file.read_text() == RULES
    ok = _post(client, "/rules/validate", file="routing.yaml", text=RULES)
    assert ok.status_code == 200 and 'id="valid"' in ok.text


def test_validator_reports_yaml_syntax_and_reference_errors_with_lines(client: TestClient) -> None:
    broken_yaml = "- name: x\n  when: {tag: Modality, equals: CT\n  then: {discard: true}\n"
    text = page_text(_post(client, "/rules/validate", file="extra.yaml", text=broken_yaml).text)
    assert re.search(r"extra\.yaml:3 ?: invalid YAML: did not find expected ',' or '}'", text)
    unknown = ("- name: y\n  when: {tag: Modality, equals: MR}\n"
               "  then:\n    send_to: [nowhere]\n    forward: true\n")
    text = page_text(_post(client, "/rules/validate", file="extra.yaml", text=unknown).text)
    assert "extra.yaml:4 rule 'y': then.send_to: destination 'nowhere' is not configured" in text


def test_saving_an_invalid_set_is_refused_and_the_file_is_unchanged(
    fab: Fabricated, client: TestClient
) -> None:
    before = fab.rules_file.read_bytes()
    response = _post(client, "/rules/save", file="routing.yaml", text=INVALID_RULES)
    assert response.status_code == 422 and "routing.yaml:4" in page_text(response.text)
    assert fab.rules_file.read_bytes() == before
    assert sorted(p.name for p in fab.config.rules.path.iterdir()) == ["routing.yaml"]  # no temp file left
    bad_name = _post(client, "/rules/save", file="../escape.yaml", text=RULES)
    assert bad_name.status_code == 400 and "is not allowed" in bad_name.text
    assert not (fab.config.rules.path.parent / "escape.yaml").exists()


def test_saving_a_valid_set_writes_atomically_and_reloads_the_book(fab: Fabricated) -> None:
    book = RuleBook(fab.config.rules.path, lambda: load_ruleset(fab.config.rules.path))
    book.reload()
    old = book.current.version
    fab.node.book = book
    client = TestClient(create_app(fab.node))
    login(client)
    edited = RULES.replace("priority: 10", "priority: 20")
    response = _post(client, "/rules/save", file="routing.yaml", text=edited)
    assert response.status_code == 200
    assert fab.rules_file.read_text() == edited
    assert book.current.version != old
    assert book.current.ordered("series")[0].rule.priority == 20
    assert f"rule set version {book.current.version} is in force" in response.text
    assert sorted(p.name for p in fab.config.rules.path.iterdir()) == ["routing.yaml"]


def test_tester_explains_matches_on_a_stored_study_without_changing_the_set(
    fab: Fabricated, client: TestClient
) -> None:
    before = fab.rules_file.read_bytes()
    response = _post(client, "/rules/test", study_uid=fab.study_uid)
    assert response.status_code == 200
    text = page_text(response.text)
    assert f"Tested: stored study {fab.study_uid}" in text
    assert "MATCH ct-liver [priority 10] → pipeline liver-ct → pacs" in text
    assert "✓ Modality" in text and "CT" in text
    assert "no phantom" in text and "✗ SeriesDescription" in text
    assert "⇒ ct-liver (pipeline liver-ct → pacs)" in text
    assert fab.rules_file.read_bytes() == before


def test_tester_on_uploaded_files(fab: Fabricated, client: TestClient) -> None:
    token = csrf_of(client.get("/rules").text)
    files = [("files", (p.name, p.read_bytes(), "application/dicom")) for p in fab.files[:2]]
    response = client.post("/rules/test", data={"csrf_token": token, "calling_ae": "MODALITY"}, files=files)
    text = page_text(response.text)
    assert "Tested: 2 uploaded file(s)" in text
    assert "no ct-liver" in text and "instances" in text  # 2 instances < min 3: the explanation says so
    assert "unrouted: no rule matched and no fallback applies" in text
    junk = client.post("/rules/test", data={"csrf_token": token},
                       files=[("files", ("x.dcm", b"not dicom", "application/dicom"))])
    assert junk.status_code == 400
    assert "Tested: upload 'x.dcm' is not a readable DICOM file" in page_text(junk.text)


def test_tester_says_the_nodes_own_output_is_ignored(fab: Fabricated, client: TestClient) -> None:
    import io

    import pydicom

    from dicomnode.outputs.api import Provenance
    from dicomnode.outputs.provenance import apply_provenance

    uploads = []
    for path in fab.files[:3]:
        ds = pydicom.dcmread(path)
        apply_provenance(ds, Provenance("liver-ct", "2.0", {}, "0" * 64, "0.9.0"))
        buffer = io.BytesIO()
        ds.save_as(buffer)
        uploads.append(("files", (path.name, buffer.getvalue(), "application/dicom")))
    token = csrf_of(client.get("/rules").text)
    text = page_text(client.post("/rules/test", data={"csrf_token": token}, files=uploads).text)
    assert "Tested: 3 uploaded file(s)" in text
    assert "⇒ ignored: own output, not routed:" in text and "provenance block (pipeline liver-ct" in text
    assert "unrouted" not in text
