"""The running node delivers its outbox: storescu → ``dicomnode serve`` (a forward rule) → Orthanc, with
Orthanc down at first and the node restarted in between; every instance arrives exactly once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures_orthanc import Orthanc
from tests.support import shared_data, wait_until

pytestmark = pytest.mark.integration

FORWARD_ALL = "- name: everything\n  fallback: true\n  then: {forward: true, send_to: [pacs]}\n"



def test_forward_waits_for_the_pacs_and_survives_a_restart(
    dicomnode_node, orthanc: Orthanc, tmp_path: Path  # noqa: ANN001
) -> None:
    from tests.fixtures_node import storescu

    series = shared_data("ct-abdomen-20", "dicom")
    orthanc.stop(grace=0)  # down at once (it is idle, its database fresh; SIGTERM takes Orthanc 3-5 s)
    node = dicomnode_node(
        start=False,
        destinations={"pacs": {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port,
                               "timeout": 5}},
        outbox={"backoff_initial_seconds": 0.5, "backoff_max_seconds": 1, "poll_seconds": 0.2},
        completion={"series_quiet_seconds": 1, "study_quiet_seconds": 1, "check_interval_seconds": 0.2},
    )
    (node.root / "rules" / "rules.yaml").write_text(FORWARD_ALL)
    node.start()
    sent = storescu(node, series)
    assert sent.returncode == 0, sent.stderr

    def outbox(sql: str) -> list[dict[str, object]]:
        return node.query(sql)

    wait_until(lambda: len(outbox("SELECT id FROM outbox WHERE attempts >= 1")) == 20,
               "the first (failed) delivery attempts")
    rows = outbox("SELECT state, last_error FROM outbox")
    assert {r["state"] for r in rows} <= {"failed", "queued", "sending"}
    assert all("Connection refused" in str(r["last_error"]) for r in rows if r["state"] == "failed")

    node.stop()  # a restart while everything is still undelivered
    orthanc.start()
    node.start()
    wait_until(lambda: {r["state"] for r in outbox("SELECT state FROM outbox")} == {"sent"},
               "delivery after the restart")
    assert len(outbox("SELECT id FROM outbox")) == 20
    assert orthanc.count_instances() == 20
    changes = orthanc.get_json("/changes?limit=1000")["Changes"]  # type: ignore[index]
    assert sum(1 for c in changes if c["ChangeType"] == "NewInstance") == 20
    sent_events = outbox("SELECT detail FROM audit WHERE stage = 'sent'")
    assert sum(json.loads(str(e["detail"]))["instances"] for e in sent_events) == 20
    assert node.stop() == 0
