"""Accepted and rejected associations are counted by reason on /metrics (real echoscu against the node)."""

from __future__ import annotations

import subprocess
import urllib.request

import pytest

from tests.support import dcmtk, free_port, wait_until

pytestmark = pytest.mark.integration


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == name:
            return float(value)
    return 0.0


def test_association_outcomes_are_counted_by_reason(dicomnode_node) -> None:
    metrics_port = free_port()
    node = dicomnode_node(
        node={"allowed_calling_aets": ["GOODSCU", "ECHOSCU"]}, metrics={"port": metrics_port}
    )
    echo = [dcmtk("echoscu"), "-aec", node.ae_title]
    ok = subprocess.run([*echo, "-aet", "GOODSCU", "127.0.0.1", str(node.port)], capture_output=True)
    assert ok.returncode == 0
    bad = subprocess.run(
        [*echo, "-aet", "INTRUDER", "127.0.0.1", str(node.port)], capture_output=True, text=True
    )
    assert bad.returncode != 0 and "Calling AE Title Not Recognized" in (bad.stdout + bad.stderr)
    wrong_called = subprocess.run(
        [dcmtk("echoscu"), "-aet", "GOODSCU", "-aec", "NOTTHENODE", "127.0.0.1", str(node.port)],
        capture_output=True, text=True,
    )
    assert wrong_called.returncode != 0

    def scrape() -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()

    # a rejection is counted once the association has ended on the node's side, which may be a moment after
    # echoscu has read the A-ASSOCIATE-RJ and exited (seen under load in CI): wait for it, then check them all
    expected = 'dicomnode_associations_rejected_total{reason="called_aet"}'
    wait_until(lambda: _metric(scrape(), expected) >= 1, "the called_aet rejection counted", timeout=10)
    text = scrape()
    assert _metric(text, "dicomnode_associations_accepted_total") >= 2  # GOODSCU + the fixture's own echo
    assert _metric(text, 'dicomnode_associations_rejected_total{reason="calling_aet"}') == 1
    assert _metric(text, 'dicomnode_associations_rejected_total{reason="called_aet"}') == 1
    assert "calling_aet" in node.log_text()
