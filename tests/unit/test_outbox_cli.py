"""``dicomnode queue list | retry | purge`` as an operator sees them (real config file and database)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dicomnode.cli import build_app
from dicomnode.config import OutboxConfig
from dicomnode.database import Database
from dicomnode.send.outbox import Outbox
from tests.unit.test_outbox import write_instance


class Run:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run(config: Path, *args: str) -> Run:
    result = CliRunner().invoke(build_app(), ["queue", *args, "--config", str(config)])
    return Run(result.exit_code, result.stdout, result.stderr)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Outbox, list[int]]:
    data = tmp_path / "data"
    config = tmp_path / "dicomnode.yaml"
    config.write_text(f"storage: {{path: {data}}}\n")
    outbox = Outbox(Database(data / "dicomnode.sqlite3"), OutboxConfig())
    files = [write_instance(tmp_path / "in" / f"{i}.dcm") for i in range(3)]
    ids = outbox.enqueue("pacs", files, "result", job_id="job-42")
    outbox.claim_due("pacs")
    outbox.mark_sent([ids[0]])
    outbox.mark_failed(ids[1], "Cannot deliver to destination 'pacs': connection refused.")
    outbox.mark_failed(ids[2], "BurnedInAnnotation 'YES'", permanent=True)
    return config, outbox, ids


def test_list_table_and_json(setup: tuple[Path, Outbox, list[int]]) -> None:
    config, outbox, ids = setup
    table = run(config, "list")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "DESTINATION", "STATE"]
    assert [line.split()[2] for line in lines[1:4]] == ["sent", "failed", "dead"]
    assert "connection refused" in lines[2] and "job-42" in lines[1]
    assert lines[-1] == "3 entries; pending per destination: pacs=1"
    as_json = json.loads(run(config, "list", "--json", "--state", "dead").stdout)
    assert [(e["id"], e["state"], e["job_id"]) for e in as_json] == [(ids[2], "dead", "job-42")]
    assert run(config, "list", "--destination", "other").stdout.strip() == \
        "The outbox is empty for this filter."
    bad = run(config, "list", "--state", "bogus")
    assert bad.returncode == 2 and bad.stderr.strip() == \
        "dicomnode: error: Outbox state 'bogus' is not one of queued, sending, sent, failed, dead, " \
        "committed, commit_failed."


def test_retry_and_purge(setup: tuple[Path, Outbox, list[int]]) -> None:
    config, outbox, ids = setup
    refused = run(config, "retry", str(ids[0]))
    assert refused.returncode == 2
    assert f"Outbox entry {ids[0]} is 'sent'; only failed or dead entries can be retried." in refused.stderr
    one = run(config, "retry", str(ids[2]))
    assert one.returncode == 0 and one.stdout.startswith(f"Re-queued entry {ids[2]} ")
    assert outbox.get(ids[2]).state == "queued" and outbox.get(ids[2]).attempts == 0
    assert run(config, "retry", "--failed").stdout.strip() == "Re-queued 1 failed or dead entry."
    assert run(config, "retry").returncode == 2  # neither ID nor --failed

    dry = run(config, "purge")
    assert dry.returncode == 2 and "this would delete 1 entry in state sent/dead; add --yes" in dry.stderr
    assert len(outbox.list()) == 3
    assert run(config, "purge", "--yes").stdout.strip() == "Deleted 1 entry."
    assert run(config, "purge", "--state", "queued", "--yes").stdout.strip() == "Deleted 2 entries."
    assert outbox.list() == []
