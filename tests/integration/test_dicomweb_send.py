"""STOW-RS destinations against a real DICOMweb service: Orthanc with its DICOMweb plugin and HTTP basic
authentication. The liver-ct result package goes through the outbox into the source study; wrong
credentials and a service that is down leave the entries waiting (never lost, the password never in a
message); the STOW-RS response's per-instance failures decide between a retry and the dead letter."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread

from dicomnode.config import Config
from dicomnode.database import Database
from dicomnode.send.dicomweb import DicomwebDestination, failure_is_permanent
from dicomnode.send.outbox import Outbox
from dicomnode.send.results import enqueue_results
from dicomnode.send.sender import Sender, build_destinations
from tests.fixtures_orthanc import Orthanc
from tests.fixtures_results import PipelineRun
from tests.support import shared_data

pytestmark = pytest.mark.integration

PASSWORD = "stow-s3cret-pw"


def ct_files(n: int = 20) -> list[Path]:
    return sorted(shared_data("ct-abdomen-20", "dicom").glob("*.dcm"))[:n]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Orthanc:
    server = Orthanc(tmp_path_factory.mktemp("orthanc-web"), dicomweb=True, users={"node": PASSWORD})
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def liver_package(liver_ct_run: PipelineRun) -> list[Path]:
    return list(liver_ct_run.files)


def stow_config(tmp_path: Path, url: str, password: str = PASSWORD, **extra: object) -> Config:
    secret = tmp_path / "password"
    secret.write_text(password + "\n")
    web = {"url": url, "auth": {"basic": {"user": "node", "password_file": str(secret)}}, **extra}
    return Config.model_validate({
        "destinations": {"archive": {"dicomweb": web, "timeout": 10}},
        "outbox": {"backoff_initial_seconds": 60, "max_attempts": 5},
    })


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def sender_for(config: Config, tmp_path: Path, clock: Clock | None = None) -> tuple[Outbox, Sender]:
    outbox = Outbox(Database(tmp_path / "db.sqlite3"), config.outbox, clock=clock or Clock())
    return outbox, Sender(outbox, build_destinations(config))


def test_liver_ct_result_package_over_stow_rs_lands_in_the_source_study(
    archive: Orthanc, liver_package: list[Path], tmp_path: Path
) -> None:
    config = stow_config(tmp_path, archive.dicomweb_url, batch_size=7)  # several requests per batch
    outbox, sender = sender_for(config, tmp_path)
    assert isinstance(sender.destinations["archive"], DicomwebDestination)
    enqueue_results(outbox, config, liver_package, ["archive"], job_id="job-1")
    sender.process_due()
    items = outbox.list()
    assert {i.state for i in items} == {"sent"} and len(items) == len(liver_package)

    study_uid = str(dcmread(ct_files(1)[0], stop_before_pixels=True).StudyInstanceUID)
    stored = {str(i["MainDicomTags"]["SOPInstanceUID"]) for i in archive.instances_of_study(study_uid)}  # type: ignore[index]
    sent = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in liver_package}
    assert sent <= stored
    modalities = {str(s["MainDicomTags"]["Modality"]) for s in archive.series_of_study(study_uid)}  # type: ignore[index]
    assert {"SEG", "SR"} <= modalities
    seg_file = next(p for p in liver_package if dcmread(p, stop_before_pixels=True).Modality == "SEG")
    (hit,) = [r for r in archive.lookup(str(dcmread(seg_file).SOPInstanceUID)) if r["Type"] == "Instance"]
    assert dcmread(io.BytesIO(archive.instance_file(hit["ID"]))).SegmentSequence[0].SegmentLabel == "Liver"


def test_wrong_credentials_are_refused_nothing_stored_and_the_password_never_shown(
    archive: Orthanc, tmp_path: Path
) -> None:
    config = stow_config(tmp_path, archive.dicomweb_url, password="wrong-password-xyz")
    outbox, sender = sender_for(config, tmp_path)
    files = ct_files(2)
    before = archive.count_instances()
    enqueue_results(outbox, config, files, ["archive"], job_id="job-2")
    sender.process_due()
    items = outbox.list()
    assert {i.state for i in items} == {"failed"}
    assert all("HTTP 401" in i.last_error and "credentials" in i.last_error for i in items)
    assert not any("wrong-password" in i.last_error for i in items)
    assert archive.count_instances() == before


def test_service_down_is_retried_and_delivered_when_it_is_back(tmp_path: Path) -> None:
    server = Orthanc(tmp_path / "orthanc", dicomweb=True, users={"node": PASSWORD})
    try:
        config = stow_config(tmp_path, server.dicomweb_url)
        clock = Clock()
        outbox, sender = sender_for(config, tmp_path, clock)
        files = ct_files(3)
        enqueue_results(outbox, config, files, ["archive"], job_id="job-3")
        sender.process_due()  # nothing listens yet
        items = outbox.list()
        assert {i.state for i in items} == {"failed"}
        assert all("service down" in i.last_error for i in items)
        server.start()
        sender.process_due()
        assert {i.state for i in outbox.list()} == {"failed"}  # not due before its backoff
        clock.now += 61
        sender.process_due()
        assert {i.state for i in outbox.list()} == {"sent"}
        assert server.count_instances() == 3
    finally:
        server.close()


def test_stow_failures_per_instance_decide_retry_or_dead_letter(tmp_path: Path) -> None:
    config = stow_config(tmp_path, "http://127.0.0.1:9/dicom-web")
    dest = build_destinations(config)["archive"]
    assert isinstance(dest, DicomwebDestination)
    batch = []
    for n, path in enumerate(ct_files(3)):
        ds = Dataset()
        ds.SOPInstanceUID = f"1.2.3.{n}"
        batch.append((path, ds))
    response = Dataset()
    ok, wrong_class, busy = Dataset(), Dataset(), Dataset()
    ok.ReferencedSOPInstanceUID, ok.WarningReason = "1.2.3.0", 0xB000
    wrong_class.ReferencedSOPInstanceUID, wrong_class.FailureReason = "1.2.3.1", 0xA900
    busy.ReferencedSOPInstanceUID, busy.FailureReason = "1.2.3.2", 0xA700
    response.ReferencedSOPSequence = [ok]
    response.FailedSOPSequence = [wrong_class, busy]
    first, second, third = dest._outcomes(batch, response, http_status=409)
    assert first.delivered and first.status == 0xB000
    assert not second.delivered and second.permanent and "0xA900" in second.error
    assert not third.delivered and not third.permanent and "0xA700" in third.error
    assert failure_is_permanent(0xC122) and not failure_is_permanent(0x0110)


def test_a_dicomweb_destination_is_either_web_or_dimse(tmp_path: Path) -> None:
    from dicomnode.config import load_config
    from dicomnode.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("destinations:\n  archive:\n    ae_title: PACS\n    host: h\n    port: 104\n"
                    "    dicomweb: {url: 'https://archive/dicom-web'}\n")
    with pytest.raises(ConfigError, match="either DICOMweb .* or DIMSE"):
        load_config(path)
