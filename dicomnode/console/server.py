"""The console as a node component: :func:`create_app` served by a
:class:`~dicomnode.httpserver.ThreadedServer`.

The socket is bound in :meth:`ConsoleServer.start` itself, so a taken port fails the node's start with a
clear :class:`ConsoleError` instead of a uvicorn exit inside a thread. Added by ``build_service`` when
``console.enabled`` is true; bound to ``console.host`` (loopback by default). uvicorn reads the client
address from ``X-Forwarded-For`` (of a loopback proxy) only when ``console.proxy_user_header`` says a
reverse proxy is in front; otherwise a client could pick its own address and escape the per-address
login throttling.
"""

from __future__ import annotations

import ipaddress
import logging

from dicomnode.console.node import ConsoleNode
from dicomnode.errors import ConsoleError
from dicomnode.httpserver import ThreadedServer

log = logging.getLogger(__name__)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class ConsoleServer:
    def __init__(self, node: ConsoleNode, host: str | None = None, port: int | None = None) -> None:
        from dicomnode.console.app import create_app

        self.node = node
        cfg = node.config.console
        self._server = ThreadedServer(
            "web console", lambda: create_app(node),
            host if host is not None else cfg.host, port if port is not None else cfg.port,
            proxy_headers=bool(cfg.proxy_user_header), error=ConsoleError,
            bind_hint="set console.port to a free port, or console.enabled: false",
        )

    @property
    def host(self) -> str:
        return self._server.host

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        return self._server.url

    def start(self) -> None:
        self._server.start()
        cfg = self.node.config.console
        if not cfg.admin_password_hash and not cfg.proxy_user_header:
            log.warning("Web console on %s is read-only: neither console.admin_password_hash nor "
                        "console.proxy_user_header is set, so nobody can log in.", self.url)
        if not _is_loopback(self.host):
            log.warning("Web console listens on %s, beyond this machine; put it behind a TLS reverse proxy.",
                        self.host)

    def stop(self) -> None:
        self._server.stop()
