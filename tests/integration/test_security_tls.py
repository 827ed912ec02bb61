"""DICOM TLS on the listener, seen by dcmtk: ``echoscu +tls`` / ``storescu +tls`` with client certificates.

The node presents a server certificate signed by the hospital CA and requires client certificates signed
by the same CA. A client with a certificate from another CA, a client without a certificate, a plain-TCP
client, and a client that does not trust the node's CA all fail; nothing they send is stored, and the node
keeps serving trusted clients afterwards.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.factories import ct_series, uid
from tests.fixtures_orthanc import make_pki
from tests.support import dcmtk

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pkis(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    root = tmp_path_factory.mktemp("pki")
    return make_pki(root / "hospital", "hospital"), make_pki(root / "rogue", "rogue")


def _tls_args(key: Path | None, cert: Path | None, trust: Path) -> list[str]:
    mode = ["+tls", str(key), str(cert)] if key is not None else ["+tla"]
    return [*mode, "+cf", str(trust)]


def _run(tool: str, port: int, tls: list[str], *rest: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [dcmtk(tool), "-v", "-aet", "CT1", "-aec", "DICOMNODE", "-to", "10", *tls, "127.0.0.1", str(port),
         *rest],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, TCP_NODELAY="1"),
    )


def _stored(node) -> set[str]:  # noqa: ANN001
    return {p.stem for p in node.spool.glob("*/*/*.dcm")}


def test_tls_listener_with_client_certificates(dicomnode_node, pkis, tmp_path: Path) -> None:
    good, rogue = pkis
    node = dicomnode_node(start=False, node={"tls": {
        "enabled": True, "cert": str(good.server_cert), "key": str(good.server_key), "ca": str(good.ca),
        "require_client_cert": True,
    }})
    trusted = _tls_args(good.client_key, good.client_cert, good.ca)
    # The fixture's readiness probe is a C-ECHO: make it speak TLS with the trusted client certificate.
    node.echo = lambda calling="ECHOSCU": _run("echoscu", node.port, trusted).returncode == 0
    node.start()

    echo = _run("echoscu", node.port, trusted)
    assert echo.returncode == 0, echo.stderr
    files = ct_series(tmp_path / "tls", seed="tls", slices=3, rows=32, cols=32)
    store = _run("storescu", node.port, trusted, *map(str, files))
    assert store.returncode == 0, store.stderr
    sops = {uid(uid("tls", "series", 1), "sop", i) for i in range(3)}
    assert _stored(node) == sops

    other = ct_series(tmp_path / "evil", seed="evil", slices=1, rows=16, cols=16)
    # A client certificate signed by another CA: the node refuses the handshake.
    untrusted = _run("storescu", node.port, _tls_args(rogue.client_key, rogue.client_cert, good.ca),
                     *map(str, other))
    refused = "Association Request Failed"
    assert untrusted.returncode != 0 and refused in untrusted.stderr, untrusted.stderr
    assert "Connection refused" not in untrusted.stderr  # the node was up: it refused the handshake
    # No client certificate at all (anonymous TLS).
    anonymous = _run("storescu", node.port, _tls_args(None, None, good.ca), *map(str, other))
    assert anonymous.returncode != 0 and refused in anonymous.stderr, anonymous.stderr
    # Plain TCP against the TLS port.
    plain = _run("storescu", node.port, [], *map(str, other))
    assert plain.returncode != 0 and refused in plain.stderr, plain.stderr
    # The client does not trust the node: the node's certificate is not signed by the CA the client trusts.
    distrust = _run("echoscu", node.port, _tls_args(good.client_key, good.client_cert, rogue.ca))
    assert distrust.returncode != 0 and "certificate verify failed" in distrust.stderr, distrust.stderr
    assert _stored(node) == sops, "something from a refused client reached the spool"

    # The node keeps serving trusted clients after the failed handshakes.
    again = _run("echoscu", node.port, trusted)
    assert again.returncode == 0, again.stderr
    assert node.stop() == 0
