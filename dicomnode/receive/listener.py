"""The DICOM listener: a pynetdicom AE serving C-ECHO and C-STORE for every storage SOP class.

Association policy comes from ``config.node``; pynetdicom sends the A-ASSOCIATE-RJ for it:

* calling AE not in ``allowed_calling_aets`` (when not empty): rejected-permanent, service-user,
  calling-AE-title-not-recognized;
* called AE ≠ ``ae_title`` (when ``require_called_aet``): rejected-permanent, service-user,
  called-AE-title-not-recognized;
* more than ``max_associations`` at once: rejected-transient, service-provider (presentation),
  local-limit-exceeded.

This module adds: the spool's filesystem above ``storage.min_free_mb``/``max_used_percent`` →
rejected-transient, service-provider (presentation), temporary-congestion (associations that propose
only Verification are still accepted, for monitoring); TCP_NODELAY on every
accepted socket; and a graceful stop (stop accepting, let in-flight associations finish).
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from dicomnode.config import NodeConfig
from dicomnode.errors import ReceiveError, StorageFullError
from dicomnode.receive.ingest import SUCCESS, Ingest

STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"

log = logging.getLogger(__name__)

REJECT_TRANSIENT = 0x02
SOURCE_PROVIDER_PRESENTATION = 0x03
REASON_TEMPORARY_CONGESTION = 0x01

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


class Listener:
    """Starts/stops the SCP; ``space_check`` raises :class:`StorageFullError` when the spool is full."""

    def __init__(self, node: NodeConfig, ingest: Ingest, space_check: Callable[[], None]) -> None:
        self.node = node
        self.ingest = ingest
        self.space_check = space_check
        self.ae = self._build_ae()
        self._server: ThreadedAssociationServer | None = None
        # observers (e.g. metrics): called with no argument per accepted association, with the reason
        # label (see REJECT_REASONS) per rejected association (pynetdicom's and the disk-full refusal),
        # and with the outcome of every spool space check (True: full, the association is refused)
        self.on_accepted: list[Callable[[], None]] = []
        self.on_rejected: list[Callable[[str], None]] = []
        self.on_space_checked: list[Callable[[bool], None]] = []
        # N-EVENT-REPORTs a peer sends (a PACS's storage commitment reports): called with
        # (calling AE, SOP Class UID, Event Type ID, event information data set); an observer that raises
        # makes the answer 0x0110 (processing failure), so the peer reports again
        self.on_event_report: list[Callable[[str, str, int, Dataset | None], None]] = []

    def _build_ae(self) -> AE:
        ae = AE(ae_title=self.node.ae_title)
        ae.acse_timeout = self.node.acse_timeout
        ae.dimse_timeout = self.node.dimse_timeout
        ae.network_timeout = self.node.network_timeout
        ae.maximum_pdu_size = self.node.max_pdu_size
        ae.maximum_associations = self.node.max_associations
        ae.require_calling_aet = list(self.node.allowed_calling_aets)
        ae.require_called_aet = self.node.require_called_aet
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        # storage commitment reports: the PACS (SCP role) sends N-EVENT-REPORT on an association it opens
        ae.add_supported_context(STORAGE_COMMITMENT_PUSH, ALL_TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
        return ae

    @property
    def port(self) -> int:
        if self._server is None:
            raise ReceiveError("The listener is not running.")
        return int(self._server.server_address[1])

    def start(self) -> None:
        handlers = [
            (evt.EVT_CONN_OPEN, self._on_connection),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_N_EVENT_REPORT, self._on_event_report),
        ]
        try:
            self._server = self.ae.start_server(
                (self.node.host, self.node.port),
                block=False,
                evt_handlers=handlers,
                ssl_context=_tls_context(self.node),
            )
        except OSError as exc:
            raise ReceiveError(f"Cannot listen on {self.node.host}:{self.node.port}: {exc}.") from exc
        log.info("Listening as '%s' on %s:%d.", self.node.ae_title, self.node.host, self.port)

    def active_associations(self) -> int:
        return sum(1 for a in self.ae.active_associations if a.is_acceptor)

    def stop(self, drain_seconds: float = 30.0) -> None:
        """Stop accepting, wait up to ``drain_seconds`` for in-flight associations, abort the rest."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server = None
        deadline = time.monotonic() + drain_seconds
        while self.active_associations() and time.monotonic() < deadline:
            time.sleep(0.05)
        leftover = [a for a in self.ae.active_associations if a.is_acceptor]
        for assoc in leftover:
            log.warning("Aborting association from '%s' still open at shutdown.", assoc.requestor.ae_title)
            assoc.abort()
        log.info("Listener stopped.")

    # -- event handlers -------------------------------------------------------------------------------
    @staticmethod
    def _on_connection(event: evt.Event) -> None:
        sock = getattr(event.assoc.dul.socket, "socket", None)
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as exc:  # not fatal: only latency suffers
                log.debug("Could not set TCP_NODELAY: %s", exc)

    def _on_requested(self, event: evt.Event) -> None:
        requested = event.assoc.requestor.primitive.presentation_context_definition_list or []
        if all(cx.abstract_syntax == Verification for cx in requested):
            return  # C-ECHO keeps answering when the spool is full (monitoring)
        try:
            self.space_check()
        except StorageFullError as exc:
            calling = event.assoc.requestor.primitive.calling_ae_title
            log.error("Refusing association from '%s': %s", calling, exc)
            event.assoc.acse.send_reject(
                REJECT_TRANSIENT, SOURCE_PROVIDER_PRESENTATION, REASON_TEMPORARY_CONGESTION
            )
            event.assoc.kill()  # as pynetdicom does after its own rejections: waits until the PDU is sent
            self._publish_space(full=True)
            for rejected in self.on_rejected:  # pynetdicom raises no EVT_REJECTED for this refusal
                rejected(REJECT_REASONS[(SOURCE_PROVIDER_PRESENTATION, REASON_TEMPORARY_CONGESTION)])
            return
        self._publish_space(full=False)

    def _publish_space(self, *, full: bool) -> None:
        for observer in self.on_space_checked:
            observer(full)

    def _on_accepted(self, event: evt.Event) -> None:
        for observer in self.on_accepted:
            observer()

    def _on_rejected(self, event: evt.Event) -> None:
        primitive = event.assoc.acceptor.primitive
        key = (getattr(primitive, "result_source", None), getattr(primitive, "diagnostic", None))
        reason = REJECT_REASONS.get(key, "other")  # type: ignore[arg-type]
        requestor = event.assoc.requestor
        log.warning(
            "Rejected association from '%s' to '%s': %s.",
            requestor.ae_title.strip(), str(requestor.primitive.called_ae_title).strip(), reason,
        )
        for observer in self.on_rejected:
            observer(reason)

    @staticmethod
    def _on_echo(event: evt.Event) -> int:
        return SUCCESS

    def _on_event_report(self, event: evt.Event) -> tuple[int, None]:
        request = event.request
        calling = event.assoc.requestor.ae_title.strip()
        class_uid = str(request.AffectedSOPClassUID or "")
        event_type = int(request.EventTypeID or 0)
        if not self.on_event_report:
            log.warning("N-EVENT-REPORT from '%s' (SOP class %s, event %d) ignored: nothing here expects it.",
                        calling, class_uid, event_type)
            return 0x0000, None
        try:
            info = event.event_information
        except (ValueError, AttributeError, TypeError, EOFError) as exc:
            log.warning("N-EVENT-REPORT from '%s' has an unreadable data set (0x0110): %s", calling, exc)
            return 0x0110, None
        try:
            for observer in self.on_event_report:
                observer(calling, class_uid, event_type, info)
        except Exception as exc:  # noqa: BLE001 - the peer is told to report again, the listener goes on
            log.error("N-EVENT-REPORT from '%s' (SOP class %s, event %d) not taken (0x0110): %s", calling,
                      class_uid, event_type, exc)
            return 0x0110, None
        return 0x0000, None

    def _on_store(self, event: evt.Event) -> Dataset:
        request = event.request
        buffer = request.DataSet
        with buffer.getbuffer() as view:
            result = self.ingest.store(
                view,
                transfer_syntax=event.context.transfer_syntax,
                sop_class_uid=str(request.AffectedSOPClassUID or ""),
                sop_instance_uid=str(request.AffectedSOPInstanceUID or ""),
                calling_aet=event.assoc.requestor.ae_title.strip(),
            )
        status = Dataset()
        status.Status = result.status
        if result.comment:
            status.ErrorComment = result.comment[:64]
        return status
