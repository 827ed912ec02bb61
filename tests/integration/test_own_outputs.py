"""End to end through a real PACS, and no loops: dcmtk storescu sends the shared CT to ``dicomnode serve``,
which completes it and routes it to ``liver-ct`` → Orthanc holds, in the same study, the SEG, the enhanced
series, the TID 1500 SR, the key images and the capture, and the SR's volume of each segment equals the SEG's
voxel count × voxel volume (both read back from Orthanc). Then the node's results come back to it —
re-stored by Orthanc under Orthanc's own AE title (as a PACS that auto-routes CT to the node does), and sent
with storescu to a node without records of them — and no new job is created: every result series is
recorded as ``ignored`` with the reason, while a forward-only rule that asks for them
(``own_outputs: forward``) still forwards the SEG to a research archive."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from tests.fixtures_orthanc import Orthanc, seg_voxels, sr_volumes
from tests.support import shared_data, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RULES = """
- name: liver
  when: {tag: Modality, equals: CT}
  then: {pipeline: liver-ct, send_to: [pacs]}
- name: seg-to-research
  own_outputs: forward
  when: {tag: Modality, equals: SEG}
  then: {forward: true, send_to: [research]}
- name: everything-else
  fallback: true
  then: {forward: true, send_to: [pacs]}
"""



def _configure(node, orthanc: Orthanc, research) -> None:  # noqa: ANN001
    node.config_path.write_text(node.config_path.read_text() + (
        "destinations:\n"
        f"  pacs: {{ae_title: {orthanc.aet}, host: 127.0.0.1, port: {orthanc.dicom_port}, "
        "profile: {secondary_capture: true}}\n"
        f"  research: {{ae_title: RESEARCH, host: 127.0.0.1, port: {research.port}}}\n"
    ))
    (node.root / "rules" / "rules.yaml").write_text(RULES)


def _check_decisions(node, source_series: str, results: set[str]) -> None:  # noqa: ANN001
    """Each result series: ``ignored`` with the reason, but the SEG, which the research rule forwards."""
    def decided() -> bool:
        rows = node.query("SELECT series_uid FROM route_decisions WHERE series_uid != ? AND state = 'done'",
                          (source_series,))
        return {r["series_uid"] for r in rows} >= results

    wait_until(decided, "a decision for each result series sent back", timeout=120, log=node.log_text)
    rows = node.query("SELECT series_uid, rule, action, explanation FROM route_decisions "
                      "WHERE series_uid != ? ORDER BY id", (source_series,))
    assert {r["series_uid"] for r in rows} == results
    forwarded = [r for r in rows if r["rule"] == "seg-to-research"]
    assert len(forwarded) == 1 and forwarded[0]["action"] == "forward"
    others = [r for r in rows if r["series_uid"] != forwarded[0]["series_uid"]]
    assert len(others) == len(results) - 1 and {r["action"] for r in others} == {"ignored"}
    for r in others:
        assert "is an output of this node: it carries dicomnode's provenance block (pipeline liver-ct" \
            in r["explanation"], r
    assert any("rules whose conditions hold: liver" in r["explanation"] for r in others)  # the derived CT


def _check_results_in_pacs(orthanc: Orthanc, source: Dataset) -> None:
    """SEG, enhanced series and SR in the source study; the SR's volumes are the SEG's voxel volumes."""
    got: dict[str, list[dict[str, object]]] = {}
    for entry in orthanc.series_of_study(source.StudyInstanceUID):
        got.setdefault(str(entry["MainDicomTags"].get("Modality")), []).append(entry)  # type: ignore[union-attr]
    derived = [s for s in got["CT"] if s["MainDicomTags"]["SeriesInstanceUID"] != source.SeriesInstanceUID]  # type: ignore[index]
    assert len(derived) == 1 and len(derived[0]["Instances"]) == 20  # type: ignore[arg-type]

    def only_instance(series_entry: dict[str, object]) -> Dataset:
        (instance_id,) = series_entry["Instances"]  # type: ignore[misc]
        return dcmread(io.BytesIO(orthanc.instance_file(str(instance_id))))

    seg, sr = only_instance(got["SEG"][0]), only_instance(got["SR"][0])
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


def test_results_reach_the_pacs_and_sent_back_by_the_pacs_or_by_storescu_create_no_job(
    dicomnode_node, storescp, tmp_path  # noqa: ANN001
) -> None:
    from tests.fixtures_node import storescu

    series = shared_data("ct-abdomen-20", "dicom")
    source = dcmread(next(iter(sorted(series.glob("*.dcm")))), stop_before_pixels=True)
    research = storescp(aet="RESEARCH")
    timing = {"series_quiet_seconds": 1, "study_quiet_seconds": 2, "check_interval_seconds": 0.2}
    outbox = {"backoff_initial_seconds": 1, "poll_seconds": 0.2}
    node = dicomnode_node(start=False, outbox=outbox, completion=timing)
    orthanc = Orthanc(tmp_path / "orthanc", extra={
        "DicomModalities": {"node": [node.ae_title, "127.0.0.1", node.port]},
    })
    orthanc.start()
    try:
        _configure(node, orthanc, research)
        node.start()
        assert storescu(node, series).returncode == 0

        def delivered() -> bool:
            jobs = node.query("SELECT state FROM jobs") if node.database.exists() else []
            pending = node.query("SELECT id FROM outbox WHERE state != 'sent'") if jobs else [1]
            return bool(jobs) and jobs[0]["state"] == "done" and not pending and bool(
                node.query("SELECT id FROM outbox WHERE origin = 'result'"))

        wait_until(delivered, "liver-ct's results delivered to Orthanc", timeout=400, log=node.log_text)
        (job,) = node.query("SELECT id, output_dir FROM jobs")
        results = {r["series_uid"] for r in node.query("SELECT DISTINCT series_uid FROM outbox")}
        assert source.SeriesInstanceUID not in results and len(results) >= 3  # SEG, SR, derived CT, …
        in_pacs = {str(e["MainDicomTags"].get("Modality")): e for e in orthanc.series_of_study(  # type: ignore
            source.StudyInstanceUID)}
        assert {"CT", "SEG", "SR", "KO", "OT"} <= set(in_pacs)  # key images and the capture went too
        _check_results_in_pacs(orthanc, source)

        # 1. Orthanc re-stores the results under its own AE title: the calling AE is no evidence
        for entry in orthanc.series_of_study(source.StudyInstanceUID):
            if entry["MainDicomTags"]["SeriesInstanceUID"] in results:  # type: ignore[index]
                orthanc._http.post("/modalities/node/store", json={"Resources": [entry["ID"]],
                                                                     "Synchronous": True}).raise_for_status()
        senders = {r["calling_aet"] for r in node.query(
            "SELECT DISTINCT calling_aet FROM spool_instances WHERE series_uid != ?",
            (source.SeriesInstanceUID,))}
        assert senders == {orthanc.aet}
        _check_decisions(node, source.SeriesInstanceUID, results)
        assert len(node.query("SELECT id FROM jobs")) == 1, "a result the PACS sent back created a job"

        # 2. the result files sent with storescu to a node that has no record of them (headers only)
        other = dicomnode_node(start=False, outbox=outbox, completion=timing)
        _configure(other, orthanc, research)
        other.start()
        sent = storescu(other, Path(job["output_dir"]), calling="RESULTS", extra=["-R"])  # SR, SEG contexts
        assert sent.returncode == 0, sent.stderr
        _check_decisions(other, source.SeriesInstanceUID, results)
        assert other.query("SELECT id FROM jobs") == [], "a result sent back created a job"

        def forwarded() -> bool:
            return {dcmread(p, stop_before_pixels=True).Modality for p in research.files()} == {"SEG"}

        wait_until(forwarded, "the SEG forwarded to the research archive", log=node.log_text)
        status = subprocess.run(
            [sys.executable, "-m", "dicomnode", "status", "--config", str(node.config_path)],
            capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        assert "ignored" in status.stdout and "is an output of this node" in status.stdout
        assert other.stop() == 0
    finally:
        node.stop()
        orthanc.close()
