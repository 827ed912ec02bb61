"""Query/retrieve against a real PACS: Orthanc holds a current and a prior study of the same patient (and a
study of another patient with the same ID under another issuer); C-FIND and QIDO-RS find the same prior,
newest first, with the issuer respected; C-GET and WADO-RS fetch its series into a folder; C-MOVE delivers
it to the AE the node names (a dcmtk storescp here); an unreachable source is a clear QueryError."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicomnode.config import Config
from dicomnode.query.source import QueryError, source_for
from tests.fixtures_orthanc import Orthanc
from tests.support import free_port, shared_data

pytestmark = pytest.mark.integration


def ct_files(n: int) -> list[Path]:
    return sorted(shared_data("ct-abdomen-20", "dicom").glob("*.dcm"))[:n]


def copy_study(folder: Path, *, date: str, issuer: str = "", count: int = 3) -> tuple[str, str]:
    """The first ``count`` shared CT slices as another study of the same patient dated ``date``."""
    folder.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    for path in ct_files(count):
        ds = dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyDate = ds.SeriesDate = date
        if issuer:
            ds.IssuerOfPatientID = issuer
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm")
    return study, series


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    root = tmp_path_factory.mktemp("query")
    move_port = free_port()
    server = Orthanc(root / "orthanc", dicomweb=True, extra={
        "DicomModalities": {"node": ["MOVESCP", "127.0.0.1", move_port]},
        "DicomAlwaysAllowFind": True, "DicomAlwaysAllowGet": True,
    })
    server.start()
    studies = {
        "prior-2019": copy_study(root / "s2019", date="20190301", issuer="HOSP-A"),
        "prior-2021": copy_study(root / "s2021", date="20210615", issuer="HOSP-A"),
        "other-issuer": copy_study(root / "sother", date="20220101", issuer="HOSP-B"),
        "current": copy_study(root / "scurrent", date="20240105", issuer="HOSP-A"),
    }
    import httpx

    for folder in ("s2019", "s2021", "sother", "scurrent"):
        for path in (root / folder).iterdir():
            httpx.post(f"{server.url}/instances", content=path.read_bytes(), timeout=30).raise_for_status()
    server.move_port = move_port
    server.studies = studies
    server.patient_id = str(dcmread(ct_files(1)[0], stop_before_pixels=True).PatientID)
    try:
        yield server
    finally:
        server.close()


def config_for(pacs: Orthanc) -> Config:
    return Config.model_validate({"node": {"ae_title": "MOVESCP"}, "destinations": {
        "dimse": {"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port, "timeout": 10},
        "web": {"dicomweb": {"url": pacs.dicomweb_url}, "timeout": 10},
    }})


@pytest.mark.parametrize("name", ["dimse", "web"])
def test_the_most_recent_earlier_study_of_the_same_patient_and_issuer_is_found_and_fetched(
    pacs: Orthanc, name: str, tmp_path: Path
) -> None:
    source = source_for(config_for(pacs), name)
    found = source.find_studies(pacs.patient_id, issuer="HOSP-A", before="20240105", modality="CT")
    assert [m.study_uid for m in found] == [pacs.studies["prior-2021"][0], pacs.studies["prior-2019"][0]]
    assert found[0].study_date == "20210615" and found[0].issuer == "HOSP-A"
    assert pacs.studies["other-issuer"][0] in {
        m.study_uid for m in source.find_studies(pacs.patient_id, before="20240105")}
    (series,) = source.find_series(found[0].study_uid)
    assert series.series_uid == pacs.studies["prior-2021"][1] and series.modality == "CT"
    assert series.instances in (3, None)
    files = source.retrieve_series(series, tmp_path / "prior")
    assert len(files) == 3
    assert {str(dcmread(f, stop_before_pixels=True).SeriesInstanceUID) for f in files} == {series.series_uid}


def test_c_move_delivers_the_prior_to_the_node_ae(pacs: Orthanc, storescp) -> None:  # noqa: ANN001
    import os
    import subprocess

    from tests.support import dcmtk

    out = pacs.workdir.parent / "moved"
    out.mkdir(exist_ok=True)
    proc = subprocess.Popen([dcmtk("storescp"), "--aetitle", "MOVESCP", "--output-directory", str(out),
                             str(pacs.move_port)], env={**os.environ, "TCP_NODELAY": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        from tests.fixtures_orthanc import wait_for_port

        wait_for_port(pacs.move_port, 10, proc)
        source = source_for(config_for(pacs), "dimse", method="c-move")
        (series,) = source.find_series(pacs.studies["prior-2019"][0])
        assert source.retrieve_series(series, out) == []
        assert len(list(out.iterdir())) == 3
    finally:
        proc.kill()
        proc.wait(10)


def test_an_unreachable_source_is_a_clear_query_error() -> None:
    config = Config.model_validate({"destinations": {
        "dimse": {"ae_title": "PACS", "host": "127.0.0.1", "port": free_port(), "timeout": 3},
        "web": {"dicomweb": {"url": f"http://127.0.0.1:{free_port()}/dicom-web"}, "timeout": 3},
    }})
    with pytest.raises(QueryError, match="Cannot query 'dimse'.*is the peer down"):
        source_for(config, "dimse").find_studies("X")
    with pytest.raises(QueryError, match="'web' .* did not answer the QIDO-RS study search"):
        source_for(config, "web").find_studies("X")
