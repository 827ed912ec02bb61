"""An ASGI app served by uvicorn in a thread, as a node component (``start()``/``stop()``).

The socket is bound in :meth:`ThreadedServer.start` itself, so a taken port fails the node's start with a
clear error instead of a uvicorn exit inside a thread. TLS (server certificate, optional client
certificates verified against a CA) is uvicorn's.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dicomnode.errors import DicomNodeError

log = logging.getLogger(__name__)


class ThreadedServer:
    """Serves ``app_factory()`` on ``host:port`` (0 = a free port, read back from :attr:`port`).

    ``error`` is the :class:`DicomNodeError` subclass raised when the port cannot be bound or the server
    does not start, and ``bind_hint`` is appended to the bind error (what the operator can change);
    ``proxy_headers`` (uvicorn's default, on) lets uvicorn take the client address from ``X-Forwarded-For``
    of a trusted proxy (``FORWARDED_ALLOW_IPS``, loopback by default).
    """

    def __init__(self, name: str, app_factory: Callable[[], Any], host: str, port: int, *,
                 certfile: Path | None = None, keyfile: Path | None = None, ca_certs: Path | None = None,
                 require_client_cert: bool = False, proxy_headers: bool = True,
                 error: type[DicomNodeError] = DicomNodeError, bind_hint: str = "") -> None:
        self.name = name
        self.app_factory = app_factory
        self.host = host
        self.port = port
        self.proxy_headers = proxy_headers
        self.error = error
        self.bind_hint = bind_hint
        self.tls = certfile is not None
        self._ssl: dict[str, Any] = {}
        if certfile is not None:
            self._ssl = {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile) if keyfile else None,
                         "ssl_ca_certs": str(ca_certs) if ca_certs else None,
                         "ssl_cert_reqs": ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE}
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def start(self) -> None:
        import uvicorn

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            hint = f" ({self.bind_hint})" if self.bind_hint else ""
            raise self.error(f"Cannot serve the {self.name} on {self.host}:{self.port}: "
                             f"{exc.strerror or exc}{hint}.") from exc
        sock.listen(128)
        self._socket = sock
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(self.app_factory(), log_level="warning", access_log=False, lifespan="off",
                                proxy_headers=self.proxy_headers, timeout_graceful_shutdown=5, **self._ssl)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name=f"dicomnode-{self.name}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self._server.started:
            self.stop()
            raise self.error(f"The {self.name} did not start on {self.host}:{self.port}.")
        log.info("%s on %s", self.name, self.url)

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
