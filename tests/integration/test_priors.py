"""Comparison with the prior study, with Orthanc as the PACS: the prior is an earlier copy of the shared
abdominal CT (new UIDs, same patient). Identical images give a liver volume change within 1 %; a 20 mm lesion
inserted into the current liver is reported as new with its volume within 10 %; a prior already processed
(the node's SEG in its study) is read back instead of processed again; a PACS that does not answer, or a
patient without earlier studies, still gives the current result, with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import httpx
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicomnode.compare.prior import PriorRequest
from dicomnode.config import Config
from dicomnode.jobs import JobSpec
from dicomnode.pipelines.runner import run_job
from tests.fixtures_orthanc import Orthanc
from tests.support import free_port, shared_data

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LESION_CENTRE_MM = (20.0, 320.0, 140.0)  # (z, row, column) from the first voxel: inside the right lobe
LESION_DIAMETER_MM = 20.0


def ct_files() -> list[Path]:
    return sorted(shared_data("ct-abdomen-20", "dicom").glob("*.dcm"))


def write_series(folder: Path, *, date: str, study_uid: str | None = None, lesion: bool = False,
                 lesion_mm: float = LESION_DIAMETER_MM, patient: str | None = None) -> list[Path]:
    """The shared CT as a study dated ``date`` (new UIDs unless ``study_uid`` is given: the original), with a
    hypodense sphere of ``lesion_mm`` in the liver when ``lesion``, of another patient when ``patient``."""
    folder.mkdir(parents=True)
    study, series = study_uid or generate_uid(), generate_uid()
    datasets = [dcmread(p) for p in ct_files()]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    z0 = float(datasets[0].ImagePositionPatient[2])
    out = []
    for ds in datasets:
        if study_uid is None:
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyDate = ds.SeriesDate = date
        if patient is not None:
            ds.PatientID = ds.PatientName = patient
        if lesion:
            spacing = [float(v) for v in ds.PixelSpacing]
            z = abs(float(ds.ImagePositionPatient[2]) - z0)
            rows, cols = np.ogrid[: ds.Rows, : ds.Columns]
            r2 = ((z - LESION_CENTRE_MM[0]) ** 2 + (rows * spacing[0] - LESION_CENTRE_MM[1]) ** 2
                  + (cols * spacing[1] - LESION_CENTRE_MM[2]) ** 2)
            sphere = r2 <= (lesion_mm / 2) ** 2
            if sphere.any():
                pixels = ds.pixel_array.astype(np.int32)
                pixels[sphere] -= int(round(45 / float(ds.get("RescaleSlope", 1))))  # 45 HU darker
                ds.PixelData = pixels.astype(ds.pixel_array.dtype).tobytes()
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path)
        out.append(path)
    return out


def upload(pacs: Orthanc, files: list[Path]) -> None:
    for path in files:
        httpx.post(f"{pacs.url}/instances", content=path.read_bytes(), timeout=60).raise_for_status()


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    root = tmp_path_factory.mktemp("priors")
    server = Orthanc(root / "orthanc", extra={"DicomAlwaysAllowFind": True, "DicomAlwaysAllowGet": True})
    server.start()
    server.prior_files = write_series(root / "prior", date="20200110")
    upload(server, server.prior_files)
    try:
        yield server
    finally:
        server.close()


def request_for(pacs_port: int, aet: str = "ORTHANC", wait: float = 600.0, count: int = 1) -> dict:
    config = Config.model_validate({"destinations": {
        "pacs": {"ae_title": aet, "host": "127.0.0.1", "port": pacs_port, "timeout": 20}}})
    return PriorRequest("pacs", config.destination("pacs").model_dump(mode="json"), "c-get",
                        wait_seconds=wait, count=count).to_json()


def run(files: list[Path], out: Path, prior: dict) -> dict:
    spec = JobSpec("job-cmp", "liver-ct", {}, tuple(map(str, files)), str(out), rule="liver", prior=prior)
    result = run_job(spec)
    assert result.ok, result.error
    written = json.loads((out / "result.json").read_text())
    assert written["summary"]["comparison"] == result.summary["comparison"]
    return result


@pytest.fixture(scope="module")
def identical(pacs: Orthanc, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The original study again, dated 2024, compared with the prior, which is processed now; then the prior's
    SEG goes into the PACS, where the next comparisons (the new lesion's) read it back."""
    root = tmp_path_factory.mktemp("identical")
    current = write_series(root / "current", date="20240105",
                           study_uid=str(dcmread(ct_files()[0]).StudyInstanceUID))
    result = run(current, root / "job", request_for(pacs.dicom_port, pacs.aet))
    prior_outputs = [Path(f) for f in result.output_files if "/prior/" in f]
    seg = next(f for f in prior_outputs if dcmread(f, stop_before_pixels=True).Modality == "SEG")
    upload(pacs, [seg])
    return {"result": result, "prior_outputs": prior_outputs}


def test_identical_images_give_the_same_liver_and_the_prior_is_processed_and_sent(
    pacs: Orthanc, identical: dict
) -> None:
    result, prior_outputs = identical["result"], identical["prior_outputs"]
    comparison = result.summary["comparison"]
    assert comparison["status"] == "compared", comparison
    prior_study = str(dcmread(pacs.prior_files[0]).StudyInstanceUID)
    assert comparison["prior_study_uid"] == prior_study and comparison["prior_study_date"] == "20200110"
    assert comparison["interval_days"] == 1456  # 2020-01-10 → 2024-01-05
    liver = comparison["findings"]["Liver"]
    assert abs(liver["volume_ml"]["change_percent"]) < 1.0
    assert abs(liver["mean_hu"]["change"]) < 1.0
    assert comparison["prior_processed_now"] is True
    assert prior_outputs, "the prior's own results are sent too"
    assert {str(dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in prior_outputs} == {prior_study}
    # the liver keeps one tracking UID across the two time points (SEG and SR of both studies)
    def liver_tracking(files: list[Path]) -> set[str]:
        found = set()
        for f in files:
            ds = dcmread(f, stop_before_pixels=True)
            if ds.Modality == "SEG":
                found |= {str(s.TrackingUID) for s in ds.SegmentSequence if s.SegmentLabel == "Liver"}
        return found

    current_outputs = [Path(f) for f in result.output_files if "/prior/" not in f]
    assert liver_tracking(prior_outputs) == liver_tracking(current_outputs) != set()


@pytest.fixture(scope="module")
def new_lesion(pacs: Orthanc, identical: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Today's study with a 20 mm lesion, compared with the same prior, whose SEG is in the PACS now."""
    root = tmp_path_factory.mktemp("lesion")
    current = write_series(root / "current", date="20240105", lesion=True)
    result = run(current, root / "job", request_for(pacs.dicom_port, pacs.aet))
    comparison = result.summary["comparison"]
    assert comparison["status"] == "compared", comparison
    return {"comparison": comparison, "output_files": result.output_files}


def test_a_prior_whose_seg_is_in_the_pacs_is_read_back_not_processed_again(new_lesion: dict) -> None:
    comparison = new_lesion["comparison"]
    assert comparison["prior_processed_now"] is False
    assert not [f for f in new_lesion["output_files"] if "/prior/" in f]
    # the liver read back from the prior's SEG measures as processed (the 4 ml lesion is 0.3 % of it)
    assert abs(comparison["findings"]["Liver"]["volume_ml"]["change_percent"]) < 1.0


def _lesion(new_lesion: dict) -> dict:
    lesions = {k: v for k, v in new_lesion["comparison"]["findings"].items() if k.startswith("Lesion")}
    assert len(lesions) == 1, lesions
    return next(iter(lesions.values()))


def test_a_new_20_mm_lesion_is_reported_as_new(new_lesion: dict) -> None:
    lesion = _lesion(new_lesion)
    assert lesion["status"] == "new"
    assert lesion["volume_ml"]["prior"] is None and lesion["volume_ml"]["current"] > 0
    assert lesion["longest_diameter_mm"]["current"] >= LESION_DIAMETER_MM * 0.9


def test_the_new_lesion_volume_is_within_10_percent(new_lesion: dict) -> None:
    expected = 4 / 3 * np.pi * (LESION_DIAMETER_MM / 2) ** 3 / 1000.0
    assert _lesion(new_lesion)["volume_ml"]["current"] == pytest.approx(expected, rel=0.10)


def test_pacs_down_or_no_prior_still_gives_the_current_result(pacs: Orthanc, tmp_path: Path) -> None:
    current = write_series(tmp_path / "current", date="20240105")
    down = run(current, tmp_path / "down", request_for(free_port(), wait=30)).summary["comparison"]
    assert down["status"] == "unavailable" and "is the peer down" in down["reason"]
    assert (tmp_path / "down" / "seg.dcm").exists() or any((tmp_path / "down").glob("*.dcm"))

    older = write_series(tmp_path / "older", date="20100101")  # nothing earlier than this one in the PACS
    none = run(older, tmp_path / "none", request_for(pacs.dicom_port, pacs.aet)).summary["comparison"]
    assert none["status"] == "no_prior" and "No earlier CT study" in none["reason"]


def _sr_groups(path: Path) -> dict[str, list]:
    """Tracking identifier → the SR's measurement groups of that finding (highdicom's parser)."""
    report = hd.sr.srread(path)
    groups: dict[str, list] = {}
    content = report.content
    for group in [*content.get_planar_roi_measurement_groups(),
                  *content.get_volumetric_roi_measurement_groups(), *content.get_image_measurement_groups()]:
        groups.setdefault(group.tracking_identifier, []).append(group)
    return groups


def test_a_lesion_seen_before_keeps_its_tracking_uid_and_the_sr_states_the_change(
    pacs: Orthanc, tmp_path: Path
) -> None:
    """Another patient with the lesion in an older prior (14 mm), the prior (20 mm) and today (20 mm): today's
    SR compares with the most recent prior, the lesion is stable and keeps the prior SR's tracking UID; the
    older prior's values are in ``comparison.history`` and in the SR as the first time point."""
    older = write_series(tmp_path / "older", date="20190301", lesion=True, lesion_mm=14.0, patient="FOLLOW")
    prior = write_series(tmp_path / "prior", date="20200110", lesion=True, patient="FOLLOW")
    upload(pacs, older + prior)
    current = write_series(tmp_path / "current", date="20240105", lesion=True, patient="FOLLOW")
    result = run(current, tmp_path / "job", request_for(pacs.dicom_port, pacs.aet, count=2))
    comparison = result.summary["comparison"]
    assert comparison["status"] == "compared", comparison
    assert comparison["prior_study_uid"] == str(dcmread(prior[0]).StudyInstanceUID)
    lesions = {k: v for k, v in comparison["findings"].items() if k.startswith("Lesion")}
    assert [v["status"] for v in lesions.values()] == ["stable"], lesions
    (label,) = lesions
    # the prior's SR (processed now) and today's SR: one tracking UID for the lesion and for the liver
    prior_sr = next(Path(f) for f in result.output_files if "/prior/" in f and f.endswith("sr.dcm"))
    current_sr = Path(tmp_path / "job" / "sr.dcm")
    before, now = _sr_groups(prior_sr), _sr_groups(current_sr)
    prior_label = lesions[label]["prior_label"]
    assert {g.tracking_uid for g in before[prior_label]} == {g.tracking_uid for g in now[label]}
    assert {g.tracking_uid for g in before["Liver"]} == {g.tracking_uid for g in now["Liver"]}
    # today's SR: the prior's lesion volume at the prior time point, the status, the interval
    sr = dcmread(current_sr)
    assert str(sr.PertinentOtherEvidenceSequence[0].StudyInstanceUID) == comparison["prior_study_uid"]
    volumetric_type = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    (volumetric,) = [g for g in now[label] if isinstance(g, volumetric_type)]
    evaluations = {(e.name.value, e.value.value) for e in volumetric.get_qualitative_evaluations()}
    assert ("111021", "260388006") in evaluations  # Description of Change: No change
    numbers = {m.name.value: m.value for m in volumetric.get_measurements()}
    assert numbers["385673002"] == comparison["interval_days"] == 1456
    assert numbers["VOL-CHANGE-PCT"] == pytest.approx(lesions[label]["volume_ml"]["change_percent"], abs=0.05)
    earlier = [g for g in now[label] if type(g) is hd.sr.MeasurementsAndQualitativeEvaluations]
    volumes = [m.value for g in earlier for m in g.get_measurements() if m.name.value == "118565006"]
    # priors.count 2: the older study (14 mm lesion) is history, in result.json and in the SR (oldest first)
    (history,) = comparison["history"] or pytest.fail(str(comparison["skipped"]))
    assert history["study_uid"] == str(dcmread(older[0]).StudyInstanceUID)
    older_ml = history["findings"][label]["volume_ml"]
    assert older_ml == pytest.approx(4 / 3 * np.pi * 7.0**3 / 1000.0, rel=0.2)  # the 14 mm sphere
    assert "Liver" in history["findings"]
    assert volumes == pytest.approx([older_ml, lesions[label]["volume_ml"]["prior"]], abs=0.01)
