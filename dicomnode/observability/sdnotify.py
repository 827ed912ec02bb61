"""systemd readiness notification (``Type=notify``) without a dependency: a datagram to ``$NOTIFY_SOCKET``.

:class:`SystemdNotifier` is a service component. The service starts components before its DICOM
listener, so ``start()`` waits in a thread for ``ready_when()`` (the listener is bound) and only then
sends ``READY=1``; ``stop()`` sends ``STOPPING=1``; :meth:`SystemdNotifier.reloading` is a reload hook
(``RELOADING=1`` then ``READY=1``). Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to systemd; False when not run by systemd or on failure."""
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address[0] == "@":  # abstract namespace socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("Cannot notify systemd at %r: %s", address.replace("\0", "@"), exc)
        return False
    return True


class SystemdNotifier:
    """Tells systemd when the node is ready, reloading and stopping."""

    def __init__(self, environ: Mapping[str, str] | None = None, *,
                 ready_when: Callable[[], bool] | None = None, timeout: float = 600.0) -> None:
        self._environ = environ
        self._ready_when = ready_when
        self._timeout = timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._ready_when is None:
            self._ready()
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._wait_then_ready, name="sd-notify", daemon=True)
        self._thread.start()

    def _wait_then_ready(self) -> None:
        deadline = time.monotonic() + self._timeout
        while not self._stop.is_set() and time.monotonic() < deadline:
            if self._ready_when is not None and self._ready_when():
                self._ready()
                return
            self._stop.wait(0.05)

    def _ready(self) -> None:
        if notify(f"READY=1\nSTATUS=Serving\nMAINPID={os.getpid()}", self._environ):
            log.info("Told systemd the node is ready")

    def reloading(self) -> None:
        monotonic_usec = int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1_000_000)
        notify(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec}", self._environ)
        notify("READY=1\nSTATUS=Serving (reloaded)", self._environ)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        notify("STOPPING=1\nSTATUS=Stopping", self._environ)
