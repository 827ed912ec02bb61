"""End to end through a real PACS: dcmtk storescu sends a CT series → ``dicomnode serve`` completes it,
routes it to ``liver-ct`` with ``send_to: [pacs]`` → Orthanc holds, in the same study, the SEG, the
enhanced series and the TID 1500 SR, and the SR's volume of each segment equals the SEG's voxel count ×
voxel volume (both read back from Orthanc)."""

from __future__ import annotations

import io

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from tests.fixtures_orthanc import Orthanc, seg_voxels, sr_volumes
from tests.support import shared_data, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]
pytest.importorskip("dicomnode.pipelines.runner", reason="the liver-ct pipeline runner is not built yet")

LIVER_RULE = """
- name: liver
  when: {tag: Modality, equals: CT}
  then: {pipeline: liver-ct, send_to: [pacs]}
"""



def test_ct_series_comes_back_to_the_pacs_as_seg_enhanced_series_and_sr(
    dicomnode_node, orthanc: Orthanc  # noqa: ANN001
) -> None:
    from tests.fixtures_node import storescu

    series = shared_data("ct-abdomen-20", "dicom")
    source = dcmread(next(iter(sorted(series.glob("*.dcm")))), stop_before_pixels=True)
    node = dicomnode_node(
        start=False,
        destinations={"pacs": {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}},
        outbox={"backoff_initial_seconds": 1, "poll_seconds": 0.2},
        completion={"series_quiet_seconds": 1, "study_quiet_seconds": 2, "check_interval_seconds": 0.2},
    )
    (node.root / "rules" / "rules.yaml").write_text(LIVER_RULE)
    node.start()
    sent = storescu(node, series)
    assert sent.returncode == 0, sent.stderr

    def modalities() -> dict[str, list[dict[str, object]]]:
        found: dict[str, list[dict[str, object]]] = {}
        for s in orthanc.series_of_study(source.StudyInstanceUID):
            found.setdefault(str(s["MainDicomTags"].get("Modality")), []).append(s)  # type: ignore[union-attr]
        return found

    def complete() -> bool:
        got = modalities()
        derived = [s for s in got.get("CT", [])
                   if s["MainDicomTags"]["SeriesInstanceUID"] != source.SeriesInstanceUID]  # type: ignore[index]
        pending = node.query("SELECT id FROM outbox WHERE state != 'sent'") if node.database.exists() else [1]
        return bool(got.get("SEG") and got.get("SR") and derived) and not pending

    wait_until(complete, "SEG, enhanced series and SR in Orthanc", timeout=400, log=node.log_text)
    got = modalities()
    derived = [s for s in got["CT"] if s["MainDicomTags"]["SeriesInstanceUID"] != source.SeriesInstanceUID]  # type: ignore[index]
    assert len(derived) == 1 and len(derived[0]["Instances"]) == 20  # type: ignore[arg-type]

    def only_instance(series_entry: dict[str, object]) -> Dataset:
        (instance_id,) = series_entry["Instances"]  # type: ignore[misc]
        return dcmread(io.BytesIO(orthanc.instance_file(str(instance_id))))

    seg = only_instance(got["SEG"][0])
    sr = only_instance(got["SR"][0])
    for ds in (seg, sr):
        assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID

    counts, voxel_mm3 = seg_voxels(seg)
    volumes = sr_volumes(sr)
    assert volumes, "the SR has no volumetric measurement referencing a SEG segment"
    assert set(volumes) <= set(counts)
    for segment, (value, unit) in volumes.items():
        assert unit in ("ml", "mL", "cm3")
        expected = counts[segment] * voxel_mm3 / 1000.0
        assert value == pytest.approx(expected, rel=1e-3, abs=1e-3), f"segment {segment}"
    assert node.stop() == 0
