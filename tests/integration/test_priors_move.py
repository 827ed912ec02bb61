"""``priors.method: c-move`` on a running node, Orthanc as the PACS: the current study arrives with storescu,
the comparison asks Orthanc to C-MOVE the prior to the node, the prior arrives at the node's listener like
any series — and is not routed as a new study (the pipeline would run twice): its decision is ``ignored`` with
the reason, the node runs one job, and that job's result holds the comparison."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.fixtures_orthanc import Orthanc
from tests.integration.test_priors import upload, write_series

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RULES = """
- name: liver
  when: {tag: Modality, equals: CT}
  then: {pipeline: liver-ct, send_to: [pacs]}
"""


def test_the_moved_prior_is_compared_and_not_routed_again(dicomnode_node, tmp_path: Path) -> None:  # noqa: ANN001
    from tests.fixtures_node import storescu

    timing = {"series_quiet_seconds": 1, "study_quiet_seconds": 2, "check_interval_seconds": 0.2}
    node = dicomnode_node(start=False, completion=timing, outbox={"poll_seconds": 0.2})
    pacs = Orthanc(tmp_path / "orthanc", extra={
        "DicomModalities": {"node": [node.ae_title, "127.0.0.1", node.port]}, "DicomAlwaysAllowFind": True,
    })
    pacs.start()
    try:
        prior = write_series(tmp_path / "prior", date="20200110")
        upload(pacs, prior)
        current = write_series(tmp_path / "current", date="20240105")
        node.config_path.write_text(node.config_path.read_text() + (
            "destinations:\n"
            f"  pacs: {{ae_title: {pacs.aet}, host: 127.0.0.1, port: {pacs.dicom_port}, timeout: 20}}\n"
            "priors: {enabled: true, source: pacs, method: c-move, rules: [liver], wait_seconds: 300}\n"
        ))
        (node.root / "rules" / "rules.yaml").write_text(RULES)
        node.start()
        assert storescu(node, tmp_path / "current").returncode == 0
        prior_series = str(dcmread(prior[0], stop_before_pixels=True).SeriesInstanceUID)

        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            jobs = node.query("SELECT state, output_dir FROM jobs") if node.database.exists() else []
            # the prior's decision carried out ('done'): a wrongly routed prior has queued its job by then
            decided = node.query("SELECT id FROM route_decisions WHERE series_uid = ? AND state = 'done'",
                                 (prior_series,)) if jobs else []
            if jobs and all(j["state"] in ("done", "failed") for j in jobs) and decided:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"timed out; node log:\n{node.log_text()[-6000:]}")
        jobs = node.query("SELECT id, state, output_dir FROM jobs")
        assert len(jobs) == 1 and jobs[0]["state"] == "done", (jobs, node.log_text()[-4000:])
        result = json.loads((Path(jobs[0]["output_dir"]) / "result.json").read_text())
        comparison = result["summary"]["comparison"]
        assert comparison["status"] == "compared", comparison
        assert comparison["prior_series_uid"] == prior_series
        (row,) = node.query("SELECT action, state, explanation FROM route_decisions WHERE series_uid = ?",
                            (prior_series,))
        assert (row["action"], row["state"]) == ("ignored", "done")
        why = f"was retrieved by C-MOVE for the prior comparison of job {jobs[0]['id']}"
        assert why in row["explanation"], row
        current_series = str(dcmread(current[0], stop_before_pixels=True).SeriesInstanceUID)
        (routed,) = node.query("SELECT action FROM route_decisions WHERE series_uid = ?", (current_series,))
        assert routed["action"] == "pipeline"
    finally:
        node.stop()
        pacs.close()
