from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.config import load_config
from dicomnode.errors import ConfigError


def test_defaults_without_a_file() -> None:
    config = load_config(None, environ={})
    assert config.node.ae_title == "DICOMNODE"
    assert config.node.port == 11112
    assert config.storage.path == Path("dicomnode-data")
    assert config.completion.series_quiet_seconds == 30
    assert config.metrics.port == 9112


def test_shipped_example_config_is_valid() -> None:
    config = load_config(Path(__file__).resolve().parents[2] / "conf" / "dicomnode.yaml", environ={})
    assert "pacs" in config.destinations


def test_environment_overrides_nested_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("destinations: {pacs: {ae_title: ORTHANC, host: 127.0.0.1, port: 4242}}\n")
    config = load_config(
        path,
        environ={
            "DICOMNODE_NODE__PORT": "11113",
            "DICOMNODE_NODE__ALLOWED_CALLING_AETS": "[CT1, MR2]",
            "DICOMNODE_DESTINATIONS__pacs__PORT": "4243",
        },
    )
    assert config.node.port == 11113
    assert config.node.allowed_calling_aets == ["CT1", "MR2"]
    assert config.destinations["pacs"].port == 4243


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("node: {port: abc}\n", "node.port"),
        ("node: {port: 70000}\n", "node.port"),
        ("node: {ae_tilte: X}\n", "node.ae_tilte: unknown key"),
        ("node: {ae_title: 'THIS AE TITLE IS FAR TOO LONG'}\n", "node.ae_title"),
        ("destinations: {pacs: {host: x, port: 1}}\n", "destinations.pacs: Value error, a DIMSE destination "
         "needs ae_title, host and port (missing: ae_title)"),
        ("- a\n- b\n", "mapping at the top level"),
        ("node: [\n", "not valid YAML at line"),
    ],
)
def test_invalid_config_names_the_key(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert needle in str(info.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does-not-exist.yaml"):
        load_config(tmp_path / "does-not-exist.yaml", environ={})


def test_invalid_secret_values_are_not_echoed(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("console: {admin_password_hash: 'my plaintext password'}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert "console.admin_password_hash" in str(info.value)
    assert "my plaintext password" not in str(info.value)


def test_stow_rs_reception_must_be_authenticated(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("dicomweb: {enabled: true}\n")
    with pytest.raises(ConfigError, match="STOW-RS reception must be authenticated"):
        load_config(path, environ={})
    path.write_text(f"dicomweb: {{enabled: true, bearer_tokens_file: {tmp_path / 'tokens'}}}\n")
    assert load_config(path, environ={}).dicomweb.enabled
