"""The web console's fabricated node, shared by the console tests (``tests/unit/test_console*.py``).

One CT study (patient ``Console^Test``) of 8 small slices in the spool, indexed by ``SpoolIndex.add``;
a routing decision (pipeline ``liver-ct`` + forward to ``pacs``) recorded by ``DecisionLog``; the job's
result package (SEG + SR written by ``outputs.write_result_package``) and ``result.json`` with step
timings in ``<storage>/jobs/<job id>``; outbox rows (forwarded originals: sent, one dead) and an audit
``failed`` event. All filled through the stages' own APIs.

Fixtures: ``console_template`` (fabricated once per session: it takes seconds), ``fab`` (a private copy
of it per test: milliseconds) and ``client`` (a FastAPI ``TestClient`` on that copy, not logged in).
"""

from __future__ import annotations

import html
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread

from dicomnode.config import Config
from dicomnode.console.app import create_app
from dicomnode.console.auth import hash_password
from dicomnode.console.node import ConsoleNode
from dicomnode.jobs import JobResult
from dicomnode.outputs.api import ProcessedSeries, Provenance, Segment
from dicomnode.outputs.package import write_result_package
from dicomnode.route.decisions import Decision
from dicomnode.spool.header import read_header
from tests.factories import ct_series

PASSWORD = "correct horse battery staple"
PATIENT = "Console^Test"
RULES = """\
- name: ct-liver
  priority: 10
  when:
    all:
      - {tag: Modality, equals: CT}
      - {instances: {min: 3}}
  then:
    pipeline: liver-ct
    send_to: [pacs]
- name: phantom
  when: {tag: SeriesDescription, regex: "(?i)phantom"}
  then: {discard: true}
"""
INVALID_RULES = """\
- name: broken
  when:
    all:
      - {tag: Modality, equalz: CT}
  then: {forward: true, send_to: [pacs]}
"""  # line 4 has the unknown operator
JOB_ID = "job-console-1"


@dataclass
class Fabricated:
    node: ConsoleNode
    config: Config
    study_uid: str
    series_uid: str
    files: list[Path]
    rules_file: Path
    decision_id: int
    outbox_ids: list[int]


def make_config(root: Path, **console: object) -> Config:
    (root / "rules").mkdir(parents=True, exist_ok=True)
    return Config.model_validate({
        "node": {"ae_title": "DICOMNODE"},
        "storage": {"path": str(root / "data")},
        "rules": {"path": str(root / "rules"), "watch": False},
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 4242}},
        "console": {"enabled": True, "admin_password_hash": hash_password(PASSWORD, n=2**10),
                    "secret_key": "test-secret", **console},
    })


def _write_results(files: list[Path], output_dir: Path) -> list[Path]:
    sources = [dcmread(f) for f in files]
    sources.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    shape = (len(sources), int(sources[0].Rows), int(sources[0].Columns))
    zz, yy, xx = np.mgrid[0:shape[0], 0:shape[1], 0:shape[2]]
    mask = ((zz - 4) / 3.0) ** 2 + ((yy - 16) / 8.0) ** 2 + ((xx - 20) / 6.0) ** 2 <= 1
    image = np.stack([ds.pixel_array.astype(np.float32) - 1024 for ds in sources])
    processed = ProcessedSeries(
        sources=tuple(sources), segments=(Segment("Liver", "liver", mask, (200, 80, 60)),),
        provenance=Provenance("liver-ct", "1", {}, "0" * 64, "0.1.0", ("threshold",), "ct-liver", "abc"),
        image=image, spacing=(2.0, 0.75, 0.75),
        measurements={"Liver": {"original_firstorder_Mean": 40.5}},
    )
    return write_result_package(processed, output_dir, features=("volume_ml", "original_firstorder_Mean"))


def fabricate(root: Path, **console: object) -> Fabricated:
    config = make_config(root, **console)
    rules_file = config.rules.path / "routing.yaml"
    rules_file.write_text(RULES)
    node = ConsoleNode.for_config(config)
    staged = ct_series(root / "staged", seed="console", slices=8, rows=32, cols=40)
    study_uid = str(dcmread(staged[0]).StudyInstanceUID)
    series_uid = str(dcmread(staged[0]).SeriesInstanceUID)
    files = []
    for path in staged:
        ds = dcmread(path)
        ds.PatientName = PATIENT
        ds.SeriesDescription = "CT Abdomen"
        ds.PatientBirthDate, ds.PatientSex, ds.ReferringPhysicianName = "19700101", "O", ""
        final = config.storage.spool_dir / study_uid / series_uid / f"{ds.SOPInstanceUID}.dcm"
        final.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(final, enforce_file_format=True)
        node.index.add(read_header(final), path=final, size=final.stat().st_size,
                       transfer_syntax=str(ds.file_meta.TransferSyntaxUID), calling_aet="CTSCANNER")
        files.append(final)
    recorded = node.decisions.record([Decision(
        "series", study_uid, series_uid, 1, "ct-liver", "routing.yaml", "abc123" * 10, "pipeline",
        pipeline="liver-ct", destinations=("pacs",), priority=10, job_id=JOB_ID, instance_count=len(files),
        explanation="✓ all of\n  ✓ Modality equals 'CT'",
    )])
    node.decisions.mark(recorded[0].id, "done")
    job_dir = config.storage.jobs_dir / JOB_ID
    outputs = _write_results(files, job_dir)
    JobResult(JOB_ID, True, tuple(str(p.relative_to(job_dir)) for p in outputs),
              {"pipeline": "liver-ct", "seconds": 3.5,
               "steps": [{"name": "threshold", "use": "threshold", "seconds": 1.25},
                         {"name": "largest-component", "use": "largest", "seconds": 0.5}]}).write(job_dir)
    ids = node.outbox.enqueue("pacs", files, "forward")
    claimed = node.outbox.claim_due("pacs")
    node.outbox.mark_sent([i.id for i in claimed[:-1]])
    node.outbox.mark_failed(claimed[-1].id, "Cannot deliver: association rejected", permanent=True)
    node.audit.record("failed", study_uid, series_uid=series_uid, detail={"stage": "send", "error": "boom"})
    return Fabricated(node, config, study_uid, series_uid, files, rules_file, recorded[0].id, ids)


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the page has no CSRF field"
    return match.group(1)


def login(client, password: str = PASSWORD) -> None:  # noqa: ANN001 - TestClient
    token = csrf_of(client.get("/login").text)
    response = client.post("/login", data={"username": "admin", "password": password, "csrf_token": token,
                                           "next": "/"}, follow_redirects=False)
    assert response.status_code == 303, response.text


def copy_fabricated(template: Fabricated, root: Path, **console: object) -> Fabricated:
    """A private copy of a fabricated node (fabricating takes seconds; copying milliseconds)."""
    source = template.config.storage.path.parent
    template.node.database.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    template.node.database.close()
    shutil.copytree(source, root, ignore=shutil.ignore_patterns("*-wal", "*-shm"))
    config = make_config(root, **console)
    node = ConsoleNode.for_config(config)
    with node.database.transaction() as conn:  # the outbox holds absolute paths
        conn.execute("UPDATE outbox SET file_path = replace(file_path, ?, ?)", (str(source), str(root)))
    moved = [root / p.relative_to(source) for p in template.files]
    return Fabricated(node, config, template.study_uid, template.series_uid, moved,
                      config.rules.path / template.rules_file.name, template.decision_id, template.outbox_ids)


def page_text(page: str) -> str:
    """A page's text as a user reads it: tags dropped, entities decoded, white space folded."""
    return html.unescape(" ".join(re.sub(r"<[^>]+>", " ", page).split()))


# -- fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def console_template(tmp_path_factory: pytest.TempPathFactory) -> Fabricated:
    return fabricate(tmp_path_factory.mktemp("console-template"))


@pytest.fixture
def fab(console_template: Fabricated, tmp_path: Path) -> Fabricated:
    return copy_fabricated(console_template, tmp_path / "node")


@pytest.fixture
def client(fab: Fabricated) -> TestClient:
    return TestClient(create_app(fab.node))
