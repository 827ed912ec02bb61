"""A real result package (SEG, enhanced series, TID 1500 SR, capture from ``dicomnode.outputs``) goes
through the outbox to Orthanc: everything lands in the source study, the SR's volumes equal the SEG's
voxel counts × voxel volume as read back from Orthanc, the viewer profile filters what is sent, and a
rerun (same deterministic UIDs) replaces instead of duplicating."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest
from pydicom import dcmread

from dicomnode.config import Config, ViewerProfile
from dicomnode.database import Database
from dicomnode.outputs.api import ProcessedSeries
from dicomnode.outputs.codes import DEFAULT_SR_FEATURES
from dicomnode.outputs.package import write_result_package
from dicomnode.send.outbox import Outbox
from dicomnode.send.results import enqueue_results
from dicomnode.send.sender import Sender, build_destinations
from tests.fixtures_orthanc import Orthanc, seg_voxels, sr_volumes

pytestmark = pytest.mark.integration


def test_result_package_reaches_the_pacs_once(
    orthanc: Orthanc, real_ct_processed: ProcessedSeries, tmp_path: Path
) -> None:
    processed = real_ct_processed
    values = {s.label: {f: 1.0 for f in DEFAULT_SR_FEATURES if f != "volume_ml"} for s in processed.segments}
    processed = dataclasses.replace(processed, measurements=values)  # volumes still come from the masks
    files = write_result_package(processed, tmp_path / "run1", ViewerProfile(secondary_capture=True))

    pacs = {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}
    config = Config.model_validate({"destinations": {"pacs": pacs}})  # default profile: no capture
    outbox = Outbox(Database(tmp_path / "db.sqlite3"), config.outbox)
    sender = Sender(outbox, build_destinations(config))
    queued = enqueue_results(outbox, config, files, ["pacs"], job_id="job-1")
    assert len(queued["pacs"]) == len(files) - 1  # the secondary capture is not for this PACS
    sender.process_due()
    assert {i.state for i in outbox.list()} == {"sent"}

    study_uid = str(processed.sources[0].StudyInstanceUID)
    series = {str(s["MainDicomTags"]["Modality"]): s for s in orthanc.series_of_study(study_uid)}  # type: ignore[index]
    assert set(series) == {"SEG", "SR", "KO", "CT"}
    assert len(series["CT"]["Instances"]) == 20  # type: ignore[arg-type]

    def read(modality: str):  # noqa: ANN202
        (instance,) = series[modality]["Instances"]  # type: ignore[misc]
        return dcmread(io.BytesIO(orthanc.instance_file(str(instance))))

    seg, sr = read("SEG"), read("SR")
    counts, voxel_mm3 = seg_voxels(seg)
    volumes = sr_volumes(sr)
    assert set(volumes) == set(counts) == {1, 2}
    for number, (value, unit) in volumes.items():
        assert unit == "ml"
        assert value == pytest.approx(counts[number] * voxel_mm3 / 1000.0, rel=1e-3)
    total = orthanc.count_instances()

    # a rerun writes the same UIDs: the PACS's instances are replaced, not duplicated
    rerun = write_result_package(processed, tmp_path / "run2", ViewerProfile())
    enqueue_results(outbox, config, rerun, ["pacs"], job_id="job-2")
    sender.process_due()
    assert {i.state for i in outbox.list()} == {"sent"} and len(outbox.list()) == 2 * len(rerun)
    assert orthanc.count_instances() == total
