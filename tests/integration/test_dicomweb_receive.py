"""STOW-RS reception by a real ``dicomnode serve``: the shared CT uploaded with ``dicomweb-client`` is stored,
indexed and processed like a C-STORE'd series (liver-ct results reach Orthanc); uploads without a valid
token are refused with 401 and store nothing; bad parts, a study mismatch, another media type and an
oversized instance get their own per-instance FailureReason or HTTP status."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread

from tests.fixtures_orthanc import Orthanc
from tests.support import free_port, shared_data

pytestmark = pytest.mark.integration

TOKEN = "tok-" + "a1b2c3d4e5f6a7b8c9d0"
LIVER_RULE = """
- name: liver
  when: {tag: Modality, equals: CT}
  then: {pipeline: liver-ct, send_to: [pacs]}
"""


def ct_files(n: int = 20) -> list[Path]:
    return sorted(shared_data("ct-abdomen-20", "dicom").glob("*.dcm"))[:n]


def stow_node(dicomnode_node, tmp_path: Path, **sections):  # noqa: ANN001, ANN003, ANN201
    tokens = tmp_path / "stow-tokens"
    tokens.write_text(f"# client token\nradiology {TOKEN}\n")
    port = free_port()
    node = dicomnode_node(start=False, dicomweb={"enabled": True, "host": "127.0.0.1", "port": port,
                                                  "bearer_tokens_file": str(tokens), "max_instance_mb": 2},
                          **sections)
    node.stow_url = f"http://127.0.0.1:{port}/dicom-web"
    return node


def multipart(parts: list[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
                    for p in parts) + b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def test_stow_rs_upload_is_stored_and_processed_like_a_c_store(
    dicomnode_node, orthanc: Orthanc, tmp_path: Path  # noqa: ANN001
) -> None:
    node = stow_node(
        dicomnode_node, tmp_path,
        destinations={"pacs": {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}},
        outbox={"backoff_initial_seconds": 1, "poll_seconds": 0.2},
        completion={"series_quiet_seconds": 1, "study_quiet_seconds": 2, "check_interval_seconds": 0.2},
    )
    (node.root / "rules" / "rules.yaml").write_text(LIVER_RULE)
    node.start()
    files = ct_files()
    client = DICOMwebClient(node.stow_url, headers={"Authorization": f"Bearer {TOKEN}"})
    response = client.store_instances([dcmread(p) for p in files])
    stored = {str(item.ReferencedSOPInstanceUID) for item in response.ReferencedSOPSequence}
    assert stored == {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    assert "FailedSOPSequence" not in response
    rows = node.query("SELECT calling_aet FROM spool_instances")
    assert len(rows) == 20 and {r["calling_aet"] for r in rows} == {"STOW:radiology"}

    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        modalities = {str(s["MainDicomTags"]["Modality"]) for s in orthanc.series_of_study(study_uid)}  # type: ignore[index]
        if {"SEG", "SR"} <= modalities:
            break
        time.sleep(0.25)
    else:
        raise AssertionError(f"no liver-ct results in Orthanc; node log:\n{node.log_text()[-4000:]}")
    assert node.stop() == 0


def test_stow_rs_refusals_are_per_request_or_per_instance(dicomnode_node, tmp_path: Path) -> None:  # noqa: ANN001
    node = stow_node(dicomnode_node, tmp_path)
    node.start()
    url = f"{node.stow_url}/studies"
    one = ct_files(1)[0]
    body, content_type = multipart([one.read_bytes()])
    with httpx.Client(timeout=30) as http:
        refused = ({}, {"Authorization": "Bearer forged-token-0000000000"}, {"Authorization": "Basic eDp5"})
        for headers in refused:
            answer = http.post(url, content=body, headers={"Content-Type": content_type, **headers})
            assert answer.status_code == 401
            assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        assert node.query("SELECT COUNT(*) AS n FROM spool_instances")[0]["n"] == 0

        auth = {"Authorization": f"Bearer {TOKEN}"}
        answer = http.post(url, content=body, headers={"Content-Type": "application/dicom", **auth})
        assert answer.status_code == 415

        garbage, ct_garbage = multipart([b"not a dicom file" * 20])
        answer = http.post(url, content=garbage, headers={"Content-Type": ct_garbage, **auth})
        assert answer.status_code == 409
        (failed,) = answer.json()["00081198"]["Value"]
        assert failed["00081197"]["Value"] == [0xC000]

        answer = http.post(f"{url}/1.2.3.4.5", content=body, headers={"Content-Type": content_type, **auth})
        assert answer.status_code == 409
        (failed,) = answer.json()["00081198"]["Value"]
        assert failed["00081197"]["Value"] == [0xA900]

        big, ct_big = multipart([one.read_bytes() * 5])  # ~2.6 MB part, max_instance_mb is 2
        answer = http.post(url, content=big, headers={"Content-Type": ct_big, **auth})
        assert answer.status_code == 413 and "max_instance_mb" in answer.json()["error"]
        assert node.query("SELECT COUNT(*) AS n FROM spool_instances")[0]["n"] == 0

        mixed, ct_mixed = multipart([one.read_bytes(), b"garbage" * 30])
        answer = http.post(url, content=mixed, headers={"Content-Type": ct_mixed, **auth})
        assert answer.status_code == 202
        assert len(answer.json()["00081199"]["Value"]) == 1 and len(answer.json()["00081198"]["Value"]) == 1
    assert node.query("SELECT COUNT(*) AS n FROM spool_instances")[0]["n"] == 1
    assert (node.spool).exists() and len(list(node.spool.rglob("*.dcm"))) == 1
    assert node.stop() == 0
