"""The node's operations HTTP endpoint: ``/metrics``, ``/healthz`` and ``/readyz``.

A service component (``start()``/``stop()``) running the standard library's ``ThreadingHTTPServer`` in a
daemon thread on ``config.metrics.host:config.metrics.port``:

- ``GET /metrics`` — Prometheus text exposition of the service's :class:`Metrics`;
- ``GET /healthz`` — liveness: ``200 {"status": "ok", "uptime_seconds": …}`` while the process serves HTTP;
- ``GET /readyz`` — readiness: runs the readiness checks (listener bound, database writable, disk below
  threshold; see :mod:`dicomnode.observability.health`) and answers ``200`` when all pass, else ``503``,
  with ``{"status": "ready"|"not ready", "checks": {name: {"ok": …, "detail": …}}}``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from dicomnode.errors import DicomNodeError
from dicomnode.observability.health import Check, run_checks
from dicomnode.observability.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)


class ObservabilityError(DicomNodeError):
    """The metrics/health HTTP endpoint could not be started."""


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "dicomnode"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        owner = self.server.owner
        if path == "/metrics":
            self._send(HTTPStatus.OK, owner.metrics.render(), CONTENT_TYPE)
        elif path == "/healthz":
            self._json(HTTPStatus.OK, {"status": "ok", "uptime_seconds": round(owner.uptime(), 3)})
        elif path == "/readyz":
            ready, checks = run_checks(owner.checks)
            status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
            self._json(status, {"status": "ready" if ready else "not ready", "checks": checks})
        elif path == "/":
            self._json(HTTPStatus.OK, {"endpoints": ["/metrics", "/healthz", "/readyz"]})
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"'{path}' is not an endpoint of this node"})

    def _json(self, status: HTTPStatus, body: Mapping[str, Any]) -> None:
        self._send(status, json.dumps(body, sort_keys=True).encode() + b"\n", "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (signature of the base class)
        log.debug("metrics http: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: HealthServer) -> None:
        self.owner = owner
        super().__init__(address, _Handler)


class HealthServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on ``host:port`` (port 0 picks a free port)."""

    def __init__(self, host: str, port: int, metrics: Metrics, checks: Mapping[str, Check] | None = None):
        self.host = host
        self.port = port
        self.metrics = metrics
        self.checks: dict[str, Check] = dict(checks or {})
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()

    def add_check(self, name: str, check: Check) -> None:
        self.checks[name] = check

    def uptime(self) -> float:
        return time.monotonic() - self._started

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        if self._server is not None:
            return
        try:
            self._server = _Server((self.host, self.port), self)
        except OSError as exc:
            raise ObservabilityError(
                f"Cannot serve metrics on {self.host}:{self.port}: {exc.strerror or exc} "
                "(set metrics.port to a free port, or 0 in the config to turn the endpoint off)."
            ) from exc
        self.port = int(self._server.server_address[1])
        self._started = time.monotonic()
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="metrics-http", daemon=True
        )
        self._thread.start()
        log.info("Metrics and health endpoints on %s (/metrics, /healthz, /readyz)", self.url)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
