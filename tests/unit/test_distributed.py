"""The Celery executor's pieces that need no broker: settings checked at start-up, the shared job folder
(manifests, commit by rename, hash checks), the job message, and the lease table's first-commit-wins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dicomnode.config import Config
from dicomnode.database import Database
from dicomnode.distributed.leases import LeaseStore
from dicomnode.distributed.message import JobMessage
from dicomnode.distributed.settings import CelerySettings
from dicomnode.distributed.staging import (
    JobLayout,
    commit_attempt,
    copy_verified,
    read_committed,
    stage_inputs,
)
from dicomnode.distributed.status import format_job_status, read_job_status
from dicomnode.errors import ConfigError, DistributedError
from dicomnode.jobs import JobResult, JobSpec


def _config(**celery: object) -> Config:
    return Config.model_validate({"processing": {
        "executor": "celery", "broker_url": "redis://:s3cret@127.0.0.1:6379/0", "celery": celery}})


def test_settings_defaults_follow_the_job_timeout_and_the_storage() -> None:
    settings = CelerySettings.from_config(_config())
    assert settings.hard_seconds == 1800 and settings.soft_seconds == pytest.approx(1620)
    assert settings.shared_dir == Path("dicomnode-data/jobs")
    assert settings.queue_for("liver-ct") == "dicomnode.liver-ct"
    urgent = CelerySettings.from_config(_config(urgent_rules=["stroke"]))
    assert urgent.queue_for("brain-mr", "stroke") == "dicomnode.urgent"
    assert urgent.default_queues(["liver-ct"]) == ["dicomnode.urgent", "dicomnode.liver-ct"]


def test_a_visibility_timeout_below_ten_hard_limits_is_refused_at_start_up() -> None:
    limits = {"liver-ct": {"soft_seconds": 10, "hard_seconds": 5000}}
    with pytest.raises(ConfigError, match=r"10 x the largest hard time limit \(5000 s\), i\.e\. 50000 s"):
        CelerySettings.from_config(_config(time_limits=limits))
    with pytest.raises(ConfigError, match="broker_url is required"):
        CelerySettings.from_config(Config.model_validate({"processing": {"executor": "celery"}}))
    with pytest.raises(ConfigError, match="not a Redis URL") as error:
        CelerySettings.from_config(Config.model_validate(
            {"processing": {"executor": "celery", "broker_url": "amqp://guest:pw@host//"}}))
    assert "pw" not in str(error.value)
    with pytest.raises(Exception, match="must be below hard_seconds"):
        _config(time_limits={"x": {"soft_seconds": 10, "hard_seconds": 5}})


def _inputs(tmp_path: Path, n: int = 3) -> list[str]:
    folder = tmp_path / "spool"
    folder.mkdir()
    for i in range(n):
        (folder / f"{i}.dcm").write_bytes(bytes([i]) * 1000)
    return [str(folder / f"{i}.dcm") for i in range(n)]


def test_staged_inputs_are_verified_when_a_worker_copies_them(tmp_path: Path) -> None:
    layout = JobLayout(tmp_path / "shared", "job1")
    manifest = stage_inputs(layout, _inputs(tmp_path), attempt=1)
    assert stage_inputs(layout, [str(tmp_path / "spool" / f"{i}.dcm") for i in range(3)], 2) == manifest
    assert layout.wanted_attempt() == 2
    copied = copy_verified(layout, manifest, tmp_path / "scratch")
    assert [Path(f).read_bytes() for f in copied] == [bytes([i]) * 1000 for i in range(3)]
    with pytest.raises(DistributedError, match="not .* as the job message says"):
        copy_verified(layout, "0" * 64, tmp_path / "scratch2")
    staged = sorted(layout.in_dir.glob("*.dcm"))[1]
    staged.unlink()  # a hard link: replace it rather than change the spool's file
    staged.write_bytes(b"damaged")
    with pytest.raises(DistributedError, match=f"Input file '.*{staged.name}' has sha256"):
        copy_verified(layout, manifest, tmp_path / "scratch3")


def test_a_commit_is_all_or_nothing_and_the_first_delivery_wins(tmp_path: Path) -> None:
    layout = JobLayout(tmp_path / "shared", "job1")
    files = _inputs(tmp_path, 2)
    result = JobResult("job1", True, tuple(files), {"seconds": 1.0})
    assert commit_attempt(layout, 1, "a", result) is True
    assert commit_attempt(layout, 1, "b", result) is False  # a duplicate delivery of the same attempt
    assert sorted(p.name for p in layout.out_dir.iterdir()) == ["attempt-1"]
    collected = read_committed(layout.committed(1))
    assert [Path(f).parent for f in collected.output_files] == [layout.committed(1)] * 2
    assert collected.summary["seconds"] == 1.0
    (layout.committed(1) / "1.dcm").write_bytes(b"changed on the way")
    with pytest.raises(DistributedError, match=r"Result file '.*1\.dcm' has sha256 .* output manifest"):
        read_committed(layout.committed(1))
    (layout.committed(1) / "1.dcm").write_bytes(bytes([1]) * 1000)
    result_json = layout.committed(1) / "result.json"
    data = json.loads(result_json.read_text())
    data["output_files"].append("../../etc/passwd")
    result_json.write_text(json.dumps(data))
    with pytest.raises(DistributedError, match="not in its output manifest"):
        read_committed(layout.committed(1))


def test_job_ids_and_messages_cannot_point_outside_the_shared_folder() -> None:
    with pytest.raises(DistributedError, match="cannot name a folder"):
        JobLayout(Path("/shared"), "../etc")
    spec = JobSpec("job1", "liver-ct", {"a": 1}, ("x.dcm",), "/out", rule="r", attempt=2)
    message = JobMessage.for_spec(spec, pipeline_version="1.0", manifest_sha256="f" * 64, deadline=1.0)
    payload = json.loads(json.dumps(message.to_dict()))  # JSON only, as through the broker
    assert JobMessage.from_dict(payload) == message
    assert JobMessage.from_dict(payload).spec(["/scratch/x.dcm"], "/scratch/out").attempt == 2
    with pytest.raises(DistributedError, match="not those of job"):
        JobMessage.from_dict({**payload, "input_dir": "other/in"})
    with pytest.raises(DistributedError, match="unknown fields"):
        JobMessage.from_dict({**payload, "pickle": "x"})


def test_the_first_commit_of_a_job_wins_and_later_ones_are_discarded(tmp_path: Path) -> None:
    db = Database(tmp_path / "db.sqlite3")
    leases = LeaseStore(db)
    leases.open("job1", 1, "liver-ct", "q")
    leases.dispatched("job1", 1, "t1", "m")
    assert leases.claimed("job1", 1, "w1@host")
    assert leases.end("job1", 1, "expired", "presumed dead")
    assert not leases.end("job1", 1, "failed")  # only an active lease can end
    leases.open("job1", 2, "liver-ct", "q")
    leases.dispatched("job1", 2, "t2", "m")
    assert leases.collect("job1", 1, "w1@host")  # the late result of attempt 1 arrives first: it wins
    assert [lease.state for lease in leases.of_job("job1")] == ["collected", "superseded"]
    assert not leases.collect("job1", 2, "w2@host")  # attempt 2's commit is a late duplicate
    workers = read_job_status(db.path)["workers"]
    assert workers == {"w1@host": {"collected": 1}, "(not claimed)": {"superseded": 1}}
    assert format_job_status({"jobs": {"done": 1}, "workers": {"w1": {"collected": 1}}}) == [
        "Jobs: 1 done", "  worker w1: 1 collected"]


def test_the_worker_command_refuses_unsafe_settings_with_one_clear_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    import yaml

    from tests.support import REPO_ROOT

    def worker(processing: dict) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "worker.yaml"
        storage = {"path": str(tmp_path / "data")}
        path.write_text(yaml.safe_dump({"storage": storage, "processing": processing}))
        return subprocess.run([sys.executable, "-m", "dicomnode", "worker", "--config", str(path)],
                              capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)

    celery = {"executor": "celery", "broker_url": "redis://127.0.0.1:1/0"}
    short = worker({**celery, "celery": {"hard_time_limit_seconds": 600, "visibility_timeout_seconds": 3600}})
    assert short.returncode == 2
    assert short.stderr.strip() == (
        "dicomnode: error: processing.celery.visibility_timeout_seconds is 3600 s but must be at least 10 x "
        "the largest hard time limit (600 s), i.e. 6000 s; otherwise Redis re-delivers jobs that are still "
        "running.")
    missing = worker({**celery, "celery": {"shared_dir": str(tmp_path / "nfs")}})
    assert missing.returncode == 2 and "shared job folder" in missing.stderr and "nfs" in missing.stderr
    local = worker({"executor": "local"})
    assert local.returncode == 2 and "a worker needs 'celery'" in local.stderr


def test_the_worker_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    from tests.support import REPO_ROOT, systemd_verify

    unit = REPO_ROOT / "systemd" / "dicomnode-worker.service"
    text = unit.read_text()
    assert "dicomnode worker --config" in text and "KillSignal=SIGTERM" in text
    problems = systemd_verify(unit, tmp_path)
    assert problems == [], "\n".join(problems)
