"""The DICOM listener: C-ECHO and C-STORE SCP for every storage SOP class, one thread per connection.

The listener accepts TCP (or TLS) connections and serves each with blocking reads under deadlines
(:mod:`dicomnode.receive.wire`); the DICOM protocol itself is pynetdicom's PDUs and negotiation and
pydicom's command sets (:mod:`dicomnode.receive.association`). pynetdicom's AE is still used by the node
for sending and query/retrieve, not here.

Association policy (A-ASSOCIATE-RJ, PS3.8 9.3.4), from ``config.node``:

* protocol version without bit 0: rejected-permanent, service-provider (ACSE), protocol-version;
* an application context other than DICOM's: rejected-permanent, service-user, application-context;
* calling AE not in ``allowed_calling_aets`` (when not empty): rejected-permanent, service-user,
  calling-AE-title-not-recognized;
* called AE ≠ ``ae_title`` (when ``require_called_aet``): rejected-permanent, service-user,
  called-AE-title-not-recognized;
* more than ``max_associations`` at once, or more than ``max_associations_per_peer`` from one address
  (when not 0): rejected-transient, service-provider (presentation), local-limit-exceeded;
* the spool's filesystem above ``storage.min_free_mb``/``max_used_percent``: rejected-transient,
  service-provider (presentation), temporary-congestion (associations that propose only Verification
  are still accepted, for monitoring).

Protection of the port: a connection must deliver its whole A-ASSOCIATE-RQ (after the TLS handshake)
within ``artim_timeout`` seconds; any PDU, once started, must arrive within ``artim_timeout`` plus its
length at ``min_receive_rate`` bytes/s (a 1 byte/s sender is cut); an association idle for
``network_timeout`` is aborted; an undecodable or unexpected PDU is answered at once with an A-ABORT.
Connections that have not associated yet are limited to ``max_pending_connections`` in all and
``max_pending_per_peer`` per address: a new connection beyond either limit closes the oldest waiting
one (of that address), so idle or garbage connections never lock a legitimate peer out.

Every refusal is reported to the ``on_rejected`` observers with its reason label: those of
:data:`REJECT_REASONS` and ``too_many_from_peer``, ``invalid_pdu``, ``artim_timeout``, ``slow_sender``,
``idle_timeout``, ``evicted``, ``tls_handshake``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
from pynetdicom.presentation import PresentationContext

from dicomnode.config import NodeConfig
from dicomnode.errors import ReceiveError, StorageFullError
from dicomnode.receive.association import (
    APPLICATION_CONTEXT,
    MAX_ASSOCIATE_RQ,
    UNEXPECTED_PDU,
    VERIFICATION,
    Association,
    EventReportObserver,
    PeerAborted,
    ProtocolError,
    Rejection,
    Request,
    abort_pdu,
    accept_pdu,
    decode_request,
    reject_pdu,
)
from dicomnode.receive.ingest import Ingest
from dicomnode.receive.wire import PeerGone, Wire, WireTimeout

STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"

log = logging.getLogger(__name__)

REJECT_TRANSIENT = 0x02
SOURCE_PROVIDER_PRESENTATION = 0x03
REASON_TEMPORARY_CONGESTION = 0x01
RECEIVE_BUFFER = 2 * 1024 * 1024  # SO_RCVBUF of an accepted connection (the kernel caps it at rmem_max)

# (result source, diagnostic) of an A-ASSOCIATE-RJ → the reason label used in logs and metrics
REJECT_REASONS = {
    (0x01, 0x01): "no_reason",
    (0x01, 0x02): "application_context",
    (0x01, 0x03): "calling_aet",
    (0x01, 0x07): "called_aet",
    (0x02, 0x01): "no_reason",
    (0x02, 0x02): "protocol_version",
    (0x03, 0x01): "disk_full",
    (0x03, 0x02): "too_many_associations",
}


def _rejection(result: int, source: int, diagnostic: int, reason: str | None = None) -> Rejection:
    return Rejection(result, source, diagnostic, reason or REJECT_REASONS[(source, diagnostic)])


def _tls_context(node: NodeConfig) -> ssl.SSLContext | None:
    tls = node.tls
    if not tls.enabled:
        return None
    if tls.cert is None or tls.key is None:
        raise ReceiveError("node.tls.enabled needs node.tls.cert and node.tls.key.")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(tls.cert), str(tls.key))
    if tls.ca is not None:
        context.load_verify_locations(str(tls.ca))
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    elif tls.require_client_cert:
        raise ReceiveError("node.tls.require_client_cert needs node.tls.ca to verify client certificates.")
    return context


def supported_contexts() -> list[PresentationContext]:
    """Verification, every storage SOP class and Storage Commitment Push (its reports, either role), in
    every transfer syntax pynetdicom knows."""
    contexts = []
    abstracts = [VERIFICATION, *(cx.abstract_syntax for cx in AllStoragePresentationContexts),
                 STORAGE_COMMITMENT_PUSH]
    for abstract in abstracts:
        context = PresentationContext()
        context.abstract_syntax = abstract
        context.transfer_syntax = list(ALL_TRANSFER_SYNTAXES)
        if abstract == STORAGE_COMMITMENT_PUSH:  # the PACS (SCP role) sends N-EVENT-REPORT on an
            context.scu_role = True  # association it opens to the node
            context.scp_role = True
        contexts.append(context)
    return contexts


class _Connection:
    __slots__ = ("associated", "peer", "since", "sock")

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock = sock
        self.peer = peer
        self.since = time.monotonic()
        self.associated = False


class Listener:
    """Starts/stops the SCP; ``space_check`` raises :class:`StorageFullError` when the spool is full."""

    def __init__(self, node: NodeConfig, ingest: Ingest, space_check: Callable[[], None]) -> None:
        self.node = node
        self.ingest = ingest
        self.space_check = space_check
        self._contexts = supported_contexts()
        self._tls: ssl.SSLContext | None = None
        self._sock: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pending: OrderedDict[int, _Connection] = OrderedDict()  # not associated yet, oldest first
        self._associated: dict[int, _Connection] = {}
        self._threads: set[threading.Thread] = set()
        self._stopping = threading.Event()
        # observers (e.g. metrics): called with no argument per accepted association, and with the
        # reason label per refused association or cut connection (see the module docstring)
        self.on_accepted: list[Callable[[], None]] = []
        self.on_rejected: list[Callable[[str], None]] = []
        # ... and with the outcome of every spool space check (True: full, the association is refused)
        self.on_space_checked: list[Callable[[bool], None]] = []
        # N-EVENT-REPORTs a peer sends (a PACS's storage commitment reports): called with
        # (calling AE, SOP Class UID, Event Type ID, event information data set); an observer that raises
        # makes the answer 0x0110 (processing failure), so the peer reports again
        self.on_event_report: list[EventReportObserver] = []

    @property
    def port(self) -> int:
        if self._sock is None:
            raise ReceiveError("The listener is not running.")
        return int(self._sock.getsockname()[1])

    def start(self, *, accept: bool = True) -> None:
        """Bind the port and accept connections; ``accept`` False: bound and listening only (connections
        wait in the backlog) until :meth:`accept`, so that receiver processes can join the port first."""
        self._tls = _tls_context(self.node)
        try:
            # SO_REUSEPORT only when receiver processes share the port (node.receivers): a second node
            # started by mistake on the same port must still fail here
            sock = socket.create_server((self.node.host, self.node.port), backlog=128,
                                        reuse_port=self.node.receiver_count > 1)
        except (OSError, ValueError) as exc:  # ValueError: no SO_REUSEPORT on this system
            raise ReceiveError(f"Cannot listen on {self.node.host}:{self.node.port}: {exc}.") from exc
        sock.settimeout(0.2)
        self._sock = sock
        self._stopping.clear()
        if accept:
            self.accept()

    def accept(self) -> None:
        """Start accepting on the bound port (see :meth:`start`)."""
        if self._sock is None:
            raise ReceiveError("The listener is not bound; call start() first.")
        if self._acceptor is not None:
            return
        self._acceptor = threading.Thread(target=self._accept_loop, name="dicom-acceptor", daemon=True)
        self._acceptor.start()
        log.info("Listening as '%s' on %s:%d.", self.node.ae_title, self.node.host, self.port)

    def active_associations(self) -> int:
        with self._lock:
            return len(self._associated)

    def stop(self, drain_seconds: float = 30.0) -> None:
        """Stop accepting, wait up to ``drain_seconds`` for in-flight associations, abort the rest."""
        if self._sock is None:
            return
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join()
            self._acceptor = None
        self._sock.close()
        self._sock = None
        with self._lock:
            pending = list(self._pending.values())
        for conn in pending:
            _shutdown(conn.sock)
        deadline = time.monotonic() + drain_seconds
        while self.active_associations() and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._lock:
            leftover = list(self._associated.values())
            threads = list(self._threads)
        for conn in leftover:
            log.warning("Aborting association from %s still open at shutdown.", conn.peer)
            with contextlib.suppress(OSError):
                conn.sock.sendall(abort_pdu(None))
            _shutdown(conn.sock)
        for thread in threads:
            thread.join(5)
        log.info("Listener stopped.")

    # -- connections ----------------------------------------------------------------------------------
    def _reject(self, reason: str) -> None:
        for observer in self.on_rejected:
            observer(reason)

    def _accept_loop(self) -> None:
        assert self._sock is not None
        listening = self._sock
        while not self._stopping.is_set():
            try:
                sock, address = listening.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stopping.is_set():
                    return
                log.error("accept() failed on the DICOM port: %s", exc)
                time.sleep(0.1)
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # room for a whole instance in flight: the sender is not held back, and the association
            # thread wakes fewer times per instance (measured: 2.85 → 2.1 sleeps per 512 KB instance)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            conn = _Connection(sock, str(address[0]))
            self._admit(conn)
            name = f"dicom-{address[0]}:{address[1]}"
            thread = threading.Thread(target=self._serve, args=(conn,), name=name, daemon=True)
            with self._lock:
                self._threads.add(thread)
            thread.start()

    def _admit(self, conn: _Connection) -> None:
        """Register a new connection; close the oldest waiting one when a pending limit is reached."""
        evict: list[_Connection] = []
        with self._lock:
            same_peer = [c for c in self._pending.values() if c.peer == conn.peer]
            if len(same_peer) >= self.node.max_pending_per_peer:
                evict.append(same_peer[0])
            elif len(self._pending) >= self.node.max_pending_connections:
                evict.append(next(iter(self._pending.values())))
            for old in evict:
                self._pending.pop(id(old), None)
            self._pending[id(conn)] = conn
        for old in evict:
            log.warning("Closing a connection from %s that has not associated after %.1f s: too many waiting "
                        "connections.", old.peer, time.monotonic() - old.since)
            self._reject("evicted")
            _shutdown(old.sock)

    def _serve(self, conn: _Connection) -> None:
        try:
            self._serve_connection(conn)
        except Exception:  # the last guard of a connection thread: log it, never kill the node
            log.exception("The connection from %s failed.", conn.peer)
        finally:
            with self._lock:
                self._pending.pop(id(conn), None)
                self._associated.pop(id(conn), None)
                self._threads.discard(threading.current_thread())
            with contextlib.suppress(OSError):
                conn.sock.close()

    def _serve_connection(self, conn: _Connection) -> None:
        node = self.node
        artim_deadline = conn.since + node.artim_timeout
        sock: socket.socket = conn.sock
        if self._tls is not None:
            try:
                sock.settimeout(max(0.01, artim_deadline - time.monotonic()))
                sock = self._tls.wrap_socket(sock, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                log.warning("TLS handshake with %s failed: %s", conn.peer, exc)
                self._reject("tls_handshake")
                return
            conn.sock = sock
        wire = Wire(sock, min_rate=float(node.min_receive_rate), grace=node.artim_timeout)
        try:
            request = self._read_request(wire, artim_deadline, conn.peer)
        except WireTimeout as exc:
            log.warning("Closed a connection from %s: no A-ASSOCIATE-RQ within %.0f s (ARTIM; %s).",
                        conn.peer, node.artim_timeout, exc)
            self._reject("artim_timeout")
            return
        except PeerGone:
            return
        except ProtocolError as exc:
            log.warning("Aborted a connection from %s: %s", conn.peer, exc)
            _send_quietly(wire, abort_pdu(exc.reason))
            self._reject("invalid_pdu")
            return
        rejection = self._policy(request, conn)
        if rejection is not None:
            log.warning("Rejected association from '%s' (%s) to '%s': %s.", request.calling_aet, conn.peer,
                        request.called_aet, rejection.reason)
            self._reject(rejection.reason)  # counted first: a peer that has read the A-ASSOCIATE-RJ sees it
            _send_quietly(wire, reject_pdu(rejection))
            _linger(sock)
            return
        accept, accepted = accept_pdu(request, self._contexts, node.max_pdu_size)
        try:
            wire.send(accept)
        except PeerGone:
            return
        for observer in self.on_accepted:
            observer()
        self._run(wire, request, accepted, conn)

    def _read_request(self, wire: Wire, artim_deadline: float, peer: str) -> Request:
        wire.deadline_kind = "idle"
        pdu_type, length, _ = wire.read_pdu_header(artim_deadline)
        if pdu_type != 0x01:
            raise ProtocolError(f"Expected an A-ASSOCIATE-RQ, got PDU type 0x{pdu_type:02X}.", UNEXPECTED_PDU)
        if length > MAX_ASSOCIATE_RQ or length < 68:
            raise ProtocolError(f"An A-ASSOCIATE-RQ of {length} bytes is not plausible.")
        body = wire.read_exact(length, min(artim_deadline, wire.pdu_deadline(length)))
        return decode_request(b"\x01\x00" + length.to_bytes(4, "big") + body)

    def _policy(self, request: Request, conn: _Connection) -> Rejection | None:
        """The A-ASSOCIATE-RJ for ``request``, or None after registering the association."""
        node = self.node
        if not request.protocol_version & 0x01:
            return _rejection(0x01, 0x02, 0x02)
        if request.application_context != APPLICATION_CONTEXT:
            return _rejection(0x01, 0x01, 0x02)
        if node.allowed_calling_aets and request.calling_aet not in node.allowed_calling_aets:
            return _rejection(0x01, 0x01, 0x03)
        if node.require_called_aet and request.called_aet != node.ae_title:
            return _rejection(0x01, 0x01, 0x07)
        if not request.verification_only:
            try:
                self.space_check()
            except StorageFullError as exc:
                log.error("Refusing association from '%s': %s", request.calling_aet, exc)
                self._publish_space(full=True)
                return _rejection(REJECT_TRANSIENT, SOURCE_PROVIDER_PRESENTATION, REASON_TEMPORARY_CONGESTION)
            self._publish_space(full=False)
        with self._lock:
            if len(self._associated) >= node.max_associations:
                return _rejection(0x02, 0x03, 0x02)
            if node.max_associations_per_peer and sum(
                1 for c in self._associated.values() if c.peer == conn.peer
            ) >= node.max_associations_per_peer:
                return _rejection(0x02, 0x03, 0x02, "too_many_from_peer")
            self._pending.pop(id(conn), None)
            self._associated[id(conn)] = conn
            conn.associated = True
        return None

    def _publish_space(self, *, full: bool) -> None:
        for observer in self.on_space_checked:
            observer(full)

    def _run(self, wire: Wire, request: Request, accepted: dict, conn: _Connection) -> None:
        association = Association(
            wire, request, accepted, self.ingest, idle_timeout=self.node.network_timeout, peer=conn.peer,
            on_protocol_error=self._reject, on_event_report=self.on_event_report,
        )
        try:
            association.serve()
        except PeerAborted as exc:
            log.warning("%s", exc)
        except PeerGone as exc:
            if not self._stopping.is_set():
                log.warning("Association from '%s' (%s) ended without release: %s", request.calling_aet,
                            conn.peer, exc)
        except WireTimeout as exc:
            reason = "slow_sender" if exc.kind == "slow" else "idle_timeout"
            log.warning("Aborted association from '%s' (%s): %s (%s)", request.calling_aet, conn.peer, exc,
                        reason)
            _send_quietly(wire, abort_pdu(0x00))
            self._reject(reason)
        except ProtocolError as exc:
            log.warning("Aborted association from '%s' (%s): %s", request.calling_aet, conn.peer, exc)
            _send_quietly(wire, abort_pdu(exc.reason))
            self._reject("invalid_pdu")


def _send_quietly(wire: Wire, data: bytes) -> None:
    with contextlib.suppress(ReceiveError):
        wire.send(data)


def _linger(sock: socket.socket) -> None:
    """Give the peer a moment to read an A-ASSOCIATE-RJ and close first (PS3.8: the requestor closes)."""
    try:
        sock.settimeout(1.0)
        sock.recv(1)
    except OSError:
        pass


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
