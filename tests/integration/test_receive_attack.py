"""The DICOM port stays open under attack (loopback, bounded): idle, garbage and trickling connections.

80 connections are held open — silent ones, one-byte ones, HTTP requests, half an A-ASSOCIATE-RQ — and a
legitimate ``echoscu`` and a 20-instance ``storescu`` must still succeed within 10 s. Garbage is answered
by an A-ABORT at once, a 1 byte/s sender is cut, and /metrics counts each kind of refusal.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.factories import ct_series
from tests.fixtures_node import storescu
from tests.integration.test_fuzz_listener import associate_rq
from tests.support import dcmtk, free_port

pytestmark = pytest.mark.integration


def _metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == name:
            return float(value)
    return 0.0


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def test_legitimate_peers_get_through_80_bad_connections(dicomnode_node, tmp_path: Path) -> None:
    metrics_port = free_port()
    node = dicomnode_node(node={"artim_timeout": 5}, metrics={"host": "127.0.0.1", "port": metrics_port})
    files = ct_series(tmp_path / "good", seed="attack", slices=20, rows=64, cols=64)
    payloads = [b"", b"\x01", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", associate_rq()[:40]]
    held = []
    try:
        for i in range(80):
            sock = _connect(node.port)
            if payloads[i % 4]:
                sock.sendall(payloads[i % 4])
            held.append(sock)
        # The HTTP request is not a PDU: the node aborts it at once (A-ABORT, PDU type 0x07).
        http = _connect(node.port)
        http.sendall(payloads[2])
        http.settimeout(3)
        assert http.recv(10)[:1] == b"\x07"
        http.close()

        started = time.monotonic()
        echo = subprocess.run([dcmtk("echoscu"), "-aec", node.ae_title, "127.0.0.1", str(node.port)],
                              capture_output=True, text=True, timeout=30)
        result = storescu(node, *files, timeout=30)
        elapsed = time.monotonic() - started
    finally:
        for sock in held:
            sock.close()
    assert echo.returncode == 0, echo.stderr
    assert result.returncode == 0 and result.stderr.count("(Success)") == 20, result.stderr[-2000:]
    assert elapsed < 10, f"legitimate C-ECHO + 20 C-STOREs took {elapsed:.1f} s with 80 bad connections"
    assert len(node.query("SELECT 1 FROM spool_instances")) == 20
    assert _metric(metrics_port, 'dicomnode_associations_rejected_total{reason="invalid_pdu"}') >= 20
    assert _metric(metrics_port, 'dicomnode_associations_rejected_total{reason="evicted"}') >= 1


def test_silent_and_trickling_connections_are_cut(dicomnode_node) -> None:
    metrics_port = free_port()
    node = dicomnode_node(node={"artim_timeout": 1, "min_receive_rate": 16384},
                          metrics={"host": "127.0.0.1", "port": metrics_port})
    silent = _connect(node.port)
    silent.settimeout(5)
    t0 = time.monotonic()
    assert silent.recv(10) == b""  # closed by the ARTIM timer, long before the network timeout
    assert time.monotonic() - t0 < 4
    silent.close()

    trickler = _connect(node.port)
    trickler.sendall(associate_rq())
    assert trickler.recv(1)[:1] == b"\x02"  # A-ASSOCIATE-AC
    trickler.settimeout(0.2)
    try:
        while trickler.recv(65536):
            pass
    except TimeoutError:
        pass
    # a P-DATA-TF announcing 16 KB, then one byte per second: allowed 1 s + 16384 / 16384 s
    trickler.sendall(b"\x04\x00" + struct.pack(">I", 16384))
    t0 = time.monotonic()
    answer = b""
    trickler.settimeout(0.1)
    while time.monotonic() - t0 < 8:
        try:
            trickler.sendall(b"\x00")
            chunk = trickler.recv(10)
        except TimeoutError:
            time.sleep(0.9)
            continue
        except OSError:
            break
        answer += chunk
        if not chunk or answer[:1] == b"\x07":
            break
        time.sleep(0.9)
    assert answer[:1] == b"\x07", "the trickling sender was not aborted"
    assert time.monotonic() - t0 < 5
    trickler.close()
    assert _metric(metrics_port, 'dicomnode_associations_rejected_total{reason="artim_timeout"}') >= 1
    assert _metric(metrics_port, 'dicomnode_associations_rejected_total{reason="slow_sender"}') == 1
    assert node.echo()
