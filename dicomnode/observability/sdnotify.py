"""systemd readiness notification (``Type=notify``) without a dependency: a datagram to ``$NOTIFY_SOCKET``.

:class:`SystemdNotifier` is a service component: added last to the service, its ``start()`` runs after
every other component has started (listener bound), so ``READY=1`` means ready; ``stop()`` says
``STOPPING=1``; :meth:`SystemdNotifier.reloading` is a reload hook (``RELOADING=1`` then ``READY=1``).
Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op returning False.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

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

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = environ

    def start(self) -> None:
        if notify(f"READY=1\nSTATUS=Serving\nMAINPID={os.getpid()}", self._environ):
            log.info("Told systemd the node is ready")

    def reloading(self) -> None:
        monotonic_usec = int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1_000_000)
        notify(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec}", self._environ)
        notify("READY=1\nSTATUS=Serving (reloaded)", self._environ)

    def stop(self) -> None:
        notify("STOPPING=1\nSTATUS=Stopping", self._environ)
