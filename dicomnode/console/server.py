"""The console as a node component: uvicorn serving :func:`create_app` in a thread (``start()``/``stop()``).

The socket is bound in :meth:`ConsoleServer.start` itself, so a taken port fails the node's start with a
clear :class:`ConsoleError` instead of a uvicorn exit inside a thread. Added by ``build_service`` when
``console.enabled`` is true; bound to ``console.host`` (loopback by default).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from typing import Any

from dicomnode.console.node import ConsoleNode
from dicomnode.errors import ConsoleError

log = logging.getLogger(__name__)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class ConsoleServer:
    def __init__(self, node: ConsoleNode, host: str | None = None, port: int | None = None) -> None:
        self.node = node
        self.host = host if host is not None else node.config.console.host
        self.port = port if port is not None else node.config.console.port
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        import uvicorn

        from dicomnode.console.app import create_app

        cfg = self.node.config.console
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise ConsoleError(
                f"Cannot serve the web console on {self.host}:{self.port}: {exc.strerror or exc} "
                "(set console.port to a free port, or console.enabled: false)."
            ) from exc
        sock.listen(128)
        self._socket = sock
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(create_app(self.node), log_level="warning", access_log=False, lifespan="off",
                                proxy_headers=bool(cfg.proxy_user_header), timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="dicomnode-console", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self._server.started:
            self.stop()
            raise ConsoleError(f"The web console did not start on {self.host}:{self.port}.")
        if not cfg.admin_password_hash and not cfg.proxy_user_header:
            log.warning("Web console on %s is read-only: neither console.admin_password_hash nor "
                        "console.proxy_user_header is set, so nobody can log in.", self.url)
        if not _is_loopback(self.host):
            log.warning("Web console listens on %s, beyond this machine; put it behind a TLS reverse proxy.",
                        self.host)
        log.info("Web console on %s", self.url)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
