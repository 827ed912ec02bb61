"""One accepted connection as a DICOM acceptor: A-ASSOCIATE negotiation, then C-ECHO/C-STORE until release.

The protocol stays in the field's libraries: PDUs are decoded and encoded by ``pynetdicom.pdu``,
presentation contexts and SCP/SCU roles negotiated by ``pynetdicom.presentation.negotiate_as_acceptor``,
command sets read by :class:`~dicomnode.receive.command.Command` (pydicom's dictionary) and written
directly (Implicit VR Little Endian, PS3.7 6.3.1). This module only moves
the bytes: each P-DATA value of a C-STORE dataset goes straight to :class:`~dicomnode.receive.ingest.
InstanceWriter` (and so to the spool's ``.part`` file) as it arrives; nothing holds a whole dataset.

Negotiation answers (PS3.7 Annex D): Maximum Length = ``node.max_pdu_size``; an Asynchronous Operations
Window proposal is answered 1/1 (operations are performed one at a time); SCP/SCU Role Selection is
answered per SOP class by pynetdicom (we accept the SCU role for the peer only); User Identity and SOP
Class (Common) Extended Negotiation are not supported and, as the standard says, left unanswered.

A PDU that cannot be decoded, or comes in a state where it is not allowed, is answered at once by an
A-ABORT (source: service provider) and the connection closed; an A-ABORT from the peer, or a lost
connection, drops the instance being received (its ``.part`` file is removed, nothing is indexed).
"""

from __future__ import annotations

import contextlib
import io
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ, A_RELEASE_RP
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from dicomnode.errors import ReceiveError
from dicomnode.receive.command import Command, CommandError
from dicomnode.receive.ingest import (
    IDENTIFIERS_INVALID,
    IMPLEMENTATION_VERSION,
    SUCCESS,
    Ingest,
    InstanceWriter,
)
from dicomnode.receive.wire import PDV_HEADER, Wire

log = logging.getLogger(__name__)

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
IMPLEMENTATION_CLASS_UID = UID("1.2.826.0.1.3680043.8.498.1")  # pydicom's root, as in the file meta
MAX_ASSOCIATE_RQ = 1024 * 1024  # an A-ASSOCIATE-RQ longer than this is not a real one
MAX_COMMAND = 64 * 1024

C_STORE_RQ, C_ECHO_RQ, C_CANCEL_RQ, N_EVENT_REPORT_RQ = 0x0001, 0x0030, 0x0FFF, 0x0100
NO_DATASET = 0x0101
UNRECOGNIZED_OPERATION = 0x0211
PROCESSING_FAILURE = 0x0110
MAX_EVENT_INFORMATION = 16 * 1024 * 1024  # an N-EVENT-REPORT data set is buffered (storage commitment)

# observers of N-EVENT-REPORTs: (calling AE, SOP Class UID, Event Type ID, event information or None)
EventReportObserver = Callable[[str, str, int, "Dataset | None"], None]

# A-ABORT provider reasons (PS3.8 9.3.8)
UNRECOGNIZED_PDU, UNEXPECTED_PDU, INVALID_PARAMETER = 0x01, 0x02, 0x06


class ProtocolError(ReceiveError):
    """The peer broke the Upper Layer protocol; ``reason`` is the A-ABORT provider reason to send."""

    def __init__(self, message: str, reason: int = INVALID_PARAMETER) -> None:
        super().__init__(message)
        self.reason = reason


class PeerAborted(ReceiveError):
    """The peer sent an A-ABORT."""


@dataclass(frozen=True)
class Rejection:
    """An A-ASSOCIATE-RJ to send: result, source, diagnostic (PS3.8 9.3.4) and the reason label."""

    result: int
    source: int
    diagnostic: int
    reason: str


@dataclass
class Request:
    """What the peer proposed, as pynetdicom decoded it."""

    primitive: A_ASSOCIATE
    calling_aet: str
    called_aet: str
    peer_max_pdu: int
    protocol_version: int
    application_context: str
    contexts: list[PresentationContext] = field(default_factory=list)

    @property
    def verification_only(self) -> bool:
        return all(cx.abstract_syntax == VERIFICATION for cx in self.contexts)


def abort_pdu(reason: int | None) -> bytes:
    """An A-ABORT-RQ from the service provider with ``reason`` (or from the service user when None)."""
    pdu = A_ABORT_RQ()
    pdu.source, pdu.reason_diagnostic = (0x00, 0x00) if reason is None else (0x02, reason)
    return pdu.encode()


def reject_pdu(rejection: Rejection) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.result = rejection.result
    primitive.result_source = rejection.source
    primitive.diagnostic = rejection.diagnostic
    return A_ASSOCIATE_RJ(primitive).encode()


def decode_request(body: bytes) -> Request:
    """Decode an A-ASSOCIATE-RQ PDU (header included); raises :class:`ProtocolError` for garbage."""
    try:
        pdu = A_ASSOCIATE_RQ()
        pdu.decode(body)
        primitive = pdu.to_primitive()
        contexts = list(primitive.presentation_context_definition_list)
        calling = str(primitive.calling_ae_title).strip()
        called = str(primitive.called_ae_title).strip()
        max_pdu = 0
        for item in primitive.user_information or []:
            if isinstance(item, MaximumLengthNotification):
                max_pdu = int(item.maximum_length_received or 0)
    except Exception as exc:  # pynetdicom raises many types for garbage input
        raise ProtocolError(f"The A-ASSOCIATE-RQ cannot be decoded ({type(exc).__name__}: {exc}).") from exc
    return Request(primitive, calling, called, max_pdu, int(pdu.protocol_version or 0),
                   str(pdu.application_context_name or ""), contexts)


def accept_pdu(
    request: Request, supported: list[PresentationContext], max_pdu: int
) -> tuple[bytes, dict[int, PresentationContext]]:
    """The A-ASSOCIATE-AC for ``request`` and the accepted contexts by ID."""
    primitive = request.primitive
    roles: dict[UID, tuple[bool | None, bool | None]] = {}
    wants_async = False
    for item in primitive.user_information or []:
        if isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid is not None:
            roles[item.sop_class_uid] = (item.scu_role, item.scp_role)
        elif isinstance(item, AsynchronousOperationsWindowNegotiation):
            wants_async = True
    results, role_items = negotiate_as_acceptor(request.contexts, supported, roles or None)
    answer = A_ASSOCIATE()
    answer.application_context_name = UID(APPLICATION_CONTEXT)
    answer.calling_ae_title = primitive.calling_ae_title
    answer.called_ae_title = primitive.called_ae_title
    answer.result = 0x00
    answer.result_source = 0x01
    answer.presentation_context_definition_results_list = results
    length = MaximumLengthNotification()
    length.maximum_length_received = max_pdu
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = IMPLEMENTATION_VERSION
    info: list = [length, implementation, version]
    if wants_async:
        window = AsynchronousOperationsWindowNegotiation()
        window.maximum_number_operations_invoked = 1
        window.maximum_number_operations_performed = 1
        info.append(window)
    info.extend(role_items)
    answer.user_information = info
    accepted = {int(cx.context_id): cx for cx in results if cx.result == 0x00 and cx.context_id is not None}
    return A_ASSOCIATE_AC(answer).encode(), accepted


def decode_command(data: bytes | bytearray) -> Command:
    try:
        return Command.decode(data)
    except CommandError as exc:
        raise ProtocolError(f"The DIMSE command set cannot be decoded: {exc}") from exc


def p_data_pdus(context_id: int, payload: bytes, *, command: bool, peer_max_pdu: int) -> bytes:
    """P-DATA-TF PDUs carrying ``payload``, fragmented to fit the peer's Maximum Length."""
    room = (peer_max_pdu - 6) if peer_max_pdu else len(payload) or 1
    room = max(room, 1)
    out = bytearray()
    flags = 0x01 if command else 0x00
    for start in range(0, max(len(payload), 1), room):
        piece = payload[start : start + room]
        last = start + room >= len(payload)
        control = flags | (0x02 if last else 0x00)
        pdv = PDV_HEADER.pack(len(piece) + 2, context_id, control) + piece
        out += struct.pack(">BxI", 0x04, len(pdv)) + pdv
    return bytes(out)


def _command_element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _uid_value(value: object) -> bytes:
    raw = str(value).encode("ascii", errors="replace")
    return raw + b"\0" if len(raw) % 2 else raw


def response(
    request: Dataset | Command, command_field: int, status: int, comment: str = "", *,
    event_type: int | None = None,
) -> bytes:
    """The encoded response command set (PS3.7 9.3/10.3, Implicit VR Little Endian, group length first).

    Written directly rather than through pydicom's writer: it is eight fixed elements of group 0000 sent
    once per instance, and pydicom's general writer cost more than the rest of the receive path.
    """
    elements = []
    if "AffectedSOPClassUID" in request:
        elements.append(_command_element(0x0002, _uid_value(request.AffectedSOPClassUID)))
    elements.append(_command_element(0x0100, struct.pack("<H", command_field)))
    elements.append(_command_element(0x0120, struct.pack("<H", int(request.get("MessageID", 0) or 0))))
    elements.append(_command_element(0x0800, struct.pack("<H", NO_DATASET)))
    elements.append(_command_element(0x0900, struct.pack("<H", status)))
    if comment and status != SUCCESS:
        text = comment[:64].encode("ascii", errors="replace")
        elements.append(_command_element(0x0902, text + b" " if len(text) % 2 else text))
    if "AffectedSOPInstanceUID" in request:
        elements.append(_command_element(0x1000, _uid_value(request.AffectedSOPInstanceUID)))
    if event_type is not None:
        elements.append(_command_element(0x1002, struct.pack("<H", event_type)))
    body = b"".join(elements)
    return struct.pack("<HHII", 0x0000, 0x0000, 4, len(body)) + body


class _Buffer:
    """Keeps a small data set (an N-EVENT-REPORT's event information) up to a limit."""

    def __init__(self, limit: int) -> None:
        self.data = bytearray()
        self.received = 0
        self.limit = limit

    def feed(self, chunk: memoryview) -> None:
        self.received += len(chunk)
        if self.received <= self.limit:
            self.data += chunk

    def abort(self) -> None:
        self.data.clear()


class _Discard:
    """Swallows a dataset that will not be stored (the status is already known)."""

    received = 0

    def feed(self, chunk: memoryview) -> None:
        self.received += len(chunk)

    def abort(self) -> None:
        return None


class Association:
    """Serves one established association until release, abort or a broken rule (never raises)."""

    def __init__(
        self,
        wire: Wire,
        request: Request,
        accepted: dict[int, PresentationContext],
        ingest: Ingest,
        *,
        idle_timeout: float,
        peer: str,
        on_protocol_error: Callable[[str], None],
        on_event_report: list[EventReportObserver] | None = None,
    ) -> None:
        self.wire = wire
        self.request = request
        self.accepted = accepted
        self.ingest = ingest
        self.idle_timeout = idle_timeout
        self.peer = peer
        self.on_protocol_error = on_protocol_error
        self.on_event_report = on_event_report if on_event_report is not None else []
        self.instances = 0
        self._command = bytearray()
        self._pending: Command | None = None  # a command whose dataset is arriving
        self._context_id = 0
        self._sink: InstanceWriter | _Buffer | _Discard | None = None
        self._early_status: tuple[int, str] | None = None

    def serve(self) -> str:
        """Run the association; returns how it ended (``released``, ``aborted``, an error label...)."""
        try:
            return self._loop()
        finally:
            if self._sink is not None:
                self._sink.abort()
                self._sink = None

    def _loop(self) -> str:
        while True:
            pdu_type, length, deadline = self.wire.read_pdu_header(time.monotonic() + self.idle_timeout)
            if pdu_type == 0x04:
                self._p_data(length, deadline)
            elif pdu_type == 0x05:
                if length != 4:
                    raise ProtocolError(f"An A-RELEASE-RQ of {length} bytes (4 expected).")
                self.wire.read_exact(length, deadline)
                if self._sink is not None:
                    raise ProtocolError("A-RELEASE-RQ arrived in the middle of a dataset.", UNEXPECTED_PDU)
                self.wire.send(A_RELEASE_RP().encode())
                return "released"
            elif pdu_type == 0x07:
                if length == 4:
                    self.wire.read_exact(length, deadline)
                raise PeerAborted(f"The peer '{self.request.calling_aet}' aborted the association.")
            elif pdu_type in (0x01, 0x02, 0x03, 0x06):
                raise ProtocolError(
                    f"Unexpected PDU type 0x{pdu_type:02X} on an association.", UNEXPECTED_PDU
                )
            else:
                raise ProtocolError(f"Unrecognised PDU type 0x{pdu_type:02X}.", UNRECOGNIZED_PDU)

    def _p_data(self, length: int, deadline: float) -> None:
        wire = self.wire
        remaining = length
        while remaining:
            if remaining < 6:
                raise ProtocolError(
                    f"A P-DATA-TF PDU ends inside a PDV item header ({remaining} bytes left)."
                )
            item_length, context_id, control = PDV_HEADER.unpack(wire.read_exact(6, deadline))
            remaining -= 6
            if item_length < 2 or item_length - 2 > remaining:
                raise ProtocolError(
                    f"A PDV item's length {item_length} does not fit its P-DATA-TF PDU "
                    f"({remaining + 2} bytes)."
                )
            if context_id not in self.accepted:
                raise ProtocolError(
                    f"A PDV item uses presentation context {context_id}, which was not accepted."
                )
            value = item_length - 2
            remaining -= value
            if control & 0x01:
                if len(self._command) + value > MAX_COMMAND:
                    raise ProtocolError(f"A DIMSE command set is longer than {MAX_COMMAND} bytes.")
                last = bool(control & 0x02)
                self._command_fragment(wire.read_exact(value, deadline), context_id, last=last)
            else:
                if self._pending is None or context_id != self._context_id:
                    raise ProtocolError("A dataset fragment arrived without its command.", UNEXPECTED_PDU)
                sink = self._sink
                assert sink is not None
                for chunk in wire.read_chunks(value, deadline):
                    sink.feed(chunk)
                if control & 0x02:
                    self._dataset_done()

    def _command_fragment(self, data: bytes, context_id: int, *, last: bool) -> None:
        if self._pending is not None:
            raise ProtocolError("A command arrived while a dataset was still expected.", UNEXPECTED_PDU)
        self._command += data
        if len(self._command) > MAX_COMMAND:
            raise ProtocolError(f"A DIMSE command set is longer than {MAX_COMMAND} bytes.")
        if not last:
            return
        command = decode_command(self._command)
        self._command.clear()
        field_ = int(command.get("CommandField", -1))
        has_dataset = int(command.get("CommandDataSetType", NO_DATASET)) != NO_DATASET
        if field_ == C_CANCEL_RQ:
            return
        if field_ == C_ECHO_RQ and not has_dataset:
            self._reply(context_id, response(command, 0x8030, SUCCESS))
            return
        if field_ == N_EVENT_REPORT_RQ:
            self._pending, self._context_id = command, context_id
            self._sink = _Buffer(MAX_EVENT_INFORMATION)
            if not has_dataset:
                self._dataset_done()
            return
        if not has_dataset:
            self._reply(context_id, response(command, field_ | 0x8000 if field_ >= 0 else 0x8000,
                                             UNRECOGNIZED_OPERATION))
            return
        self._pending, self._context_id = command, context_id
        if field_ != C_STORE_RQ:
            self._sink, self._early_status = _Discard(), (UNRECOGNIZED_OPERATION, "")
            return
        context = self.accepted[context_id]
        sop_class = str(command.get("AffectedSOPClassUID", "")).strip()
        if sop_class != str(context.abstract_syntax):
            self._sink = _Discard()
            self._early_status = (IDENTIFIERS_INVALID, "SOP Class differs from presentation context")
            log.warning("Refused instance '%s' from '%s' (0x%04X): the command's SOP Class '%s' is not the "
                        "presentation context's '%s'.", command.get("AffectedSOPInstanceUID", ""),
                        self.request.calling_aet, IDENTIFIERS_INVALID, sop_class, context.abstract_syntax)
            return
        self._sink = self.ingest.begin(
            transfer_syntax=str(context.transfer_syntax[0]),
            sop_class_uid=sop_class,
            sop_instance_uid=str(command.get("AffectedSOPInstanceUID", "")),
            calling_aet=self.request.calling_aet,
        )

    def _dataset_done(self) -> None:
        command, sink = self._pending, self._sink
        self._pending, self._sink = None, None
        assert command is not None and sink is not None
        field_ = int(command.get("CommandField", 0))
        if isinstance(sink, InstanceWriter):
            result = sink.finish(report=False)
            self.instances += result.status == SUCCESS
            try:
                answer = response(command, field_ | 0x8000, result.status, result.comment)
                self._reply(self._context_id, answer)
            finally:  # the observers after the response (see InstanceWriter.finish)
                sink.report(result)
            return
        if isinstance(sink, _Buffer):
            status = self._event_report(command, sink)
            event_type = int(command.get("EventTypeID", 0) or 0)
            self._reply(self._context_id, response(command, 0x8100, status, event_type=event_type))
            return
        status, comment = self._early_status or (UNRECOGNIZED_OPERATION, "")
        self._early_status = None
        self._reply(self._context_id, response(command, field_ | 0x8000, status, comment))

    def _event_report(self, command: Command, buffer: _Buffer) -> int:
        """Hand an N-EVENT-REPORT to the observers; its status (0x0110 when it cannot be taken)."""
        calling = self.request.calling_aet
        class_uid = str(command.get("AffectedSOPClassUID", ""))
        event_type = int(command.get("EventTypeID", 0) or 0)
        if not self.on_event_report:
            log.warning("N-EVENT-REPORT from '%s' (SOP class %s, event %d) ignored: nothing here expects it.",
                        calling, class_uid, event_type)
            return SUCCESS
        info = None
        if buffer.received:
            context = self.accepted[self._context_id]
            syntax = UID(context.transfer_syntax[0])
            try:
                if buffer.received > buffer.limit or syntax.is_deflated:
                    raise ValueError(f"{buffer.received} bytes in {syntax.name} are not read here")
                info = read_dataset(io.BytesIO(bytes(buffer.data)), is_implicit_VR=syntax.is_implicit_VR,
                                    is_little_endian=syntax.is_little_endian)
            except Exception as exc:  # pydicom raises many types for garbage input
                log.warning("N-EVENT-REPORT from '%s' has an unreadable data set (0x0110): %s", calling, exc)
                return PROCESSING_FAILURE
        try:
            for observer in self.on_event_report:
                observer(calling, class_uid, event_type, info)
        except Exception as exc:  # the peer is told to report again, the association goes on
            log.error("N-EVENT-REPORT from '%s' (SOP class %s, event %d) not taken (0x0110): %s", calling,
                      class_uid, event_type, exc)
            return PROCESSING_FAILURE
        return SUCCESS

    def _reply(self, context_id: int, payload: bytes) -> None:
        self.wire.send(p_data_pdus(context_id, payload, command=True, peer_max_pdu=self.request.peer_max_pdu))


def aborted(wire: Wire, reason: int | None) -> None:
    """Send an A-ABORT (best effort: the peer may be gone already)."""
    with contextlib.suppress(ReceiveError):
        wire.send(abort_pdu(reason))
