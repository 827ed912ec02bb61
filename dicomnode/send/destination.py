"""Destinations: where the outbox delivers instances. One ``Protocol`` shared by real and fake targets.

:class:`DicomDestination` is a pynetdicom C-STORE SCU: one association per batch, proposing only the
presentation contexts the batch needs, TCP_NODELAY on its socket, optional DICOM TLS and optional
de-identification (PS3.15 basic profile) of every instance before it leaves the node.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context, evt
from pynetdicom.ae import AddressInformation
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AssociationSocket

from dicomnode.config import DestinationConfig, TLSConfig
from dicomnode.errors import DicomNodeError, SendError
from dicomnode.send.deidentify import DeidentificationRefused, Deidentifier, require_deidentifier

log = logging.getLogger(__name__)

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
WARNING_STATUSES = frozenset({0xB000, 0xB006, 0xB007})
MAX_CONTEXTS = 128  # PS3.8: at most 128 presentation contexts (odd IDs 1..255) per association


@dataclass(frozen=True)
class SendOutcome:
    """What happened to one file of a batch."""

    path: Path
    sop_instance_uid: str
    delivered: bool
    status: int | None = None  # the peer's DIMSE status, None when nothing was answered
    error: str = ""
    permanent: bool = False  # retrying cannot help (e.g. refused for de-identification): dead-letter it


@runtime_checkable
class Destination(Protocol):
    """A send target. ``send`` raises :class:`SendError` when the whole batch could not be attempted
    (peer down, association rejected or aborted before any store); otherwise it returns one outcome per
    file, in order."""

    name: str

    def send(self, files: Sequence[Path]) -> list[SendOutcome]: ...


@dataclass(frozen=True)
class _Item:
    path: Path
    sop_class: UID
    sop_instance: str
    transfer_syntax: UID


class _NoDelayAE(AE):
    """An AE whose requestor sockets have TCP_NODELAY set (pynetdicom never sets it; dcmtk-based peers
    then stall ~40 ms per C-STORE on Nagle + delayed ACK)."""

    def _create_socket(
        self,
        assoc: Association,
        address: AddressInformation,
        tls_args: tuple[ssl.SSLContext, str] | None,
    ) -> AssociationSocket:
        sock = super()._create_socket(assoc, address, tls_args)
        if sock.socket is not None:
            sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def client_ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    """The TLS context for sending: verify the peer against ``tls.ca`` (or the system store), present
    ``tls.cert``/``tls.key`` as our client certificate when given."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca)
        if not tls.verify_peer:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if tls.cert is not None:
            context.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise SendError(
            f"Cannot set up TLS with cert '{tls.cert}', key '{tls.key}', CA '{tls.ca}': {exc}."
        ) from exc
    return context


def _read_item(path: Path) -> _Item:
    try:
        meta = read_file_meta_info(path)
    except (OSError, InvalidDicomError) as exc:
        raise SendError(f"Cannot read the DICOM file meta of '{path}': {exc}.") from exc
    missing = [k for k in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")
               if not meta.get(k)]
    if missing:
        raise SendError(f"File '{path}' lacks file meta element(s) {', '.join(missing)}.")
    return _Item(path, UID(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID),
                 UID(meta.TransferSyntaxUID))


class DicomDestination:
    """A C-STORE SCP reached over DICOM (optionally TLS), as configured in ``destinations.<name>``."""

    ae_class: type[AE] = _NoDelayAE  # benchmarks compare against plain ``AE`` (Nagle on)

    def __init__(
        self,
        name: str,
        config: DestinationConfig,
        calling_ae_title: str,
        *,
        deidentifier: Deidentifier | None = None,
    ) -> None:
        require_deidentifier(name, config.deidentify, deidentifier)
        self.name = name
        self.config = config
        self.calling_ae_title = config.calling_ae_title or calling_ae_title
        self._deidentifier = deidentifier if config.deidentify else None
        self._ssl = client_ssl_context(config.tls) if config.tls.enabled else None

    @property
    def address(self) -> str:
        tls = " (TLS)" if self._ssl else ""
        return f"'{self.config.ae_title}' at {self.config.host}:{self.config.port}{tls}"

    # -- presentation contexts -------------------------------------------------------------------
    def _syntaxes_for(self, item: _Item) -> list[UID]:
        """The transfer syntaxes offered for one file: its own, plus the uncompressed ones if it is
        uncompressed (pynetdicom converts between those) or compressed in a syntax the destination may
        not take (we decompress), limited to ``transfer_syntaxes`` when configured."""
        allowed = [UID(ts) for ts in self.config.transfer_syntaxes]
        own = item.transfer_syntax
        if own in UNCOMPRESSED or (allowed and own not in allowed):
            offered = [own, *UNCOMPRESSED] if own in UNCOMPRESSED else [*UNCOMPRESSED]
        else:
            offered = [own]
        if allowed:
            offered = [ts for ts in offered if ts in allowed]
        return list(dict.fromkeys(offered))

    def contexts_for(self, items: Sequence[_Item]) -> list[PresentationContext]:
        """One context per (SOP class, transfer syntax) needed by the batch."""
        pairs: dict[tuple[UID, UID], None] = {}
        for item in items:
            for ts in self._syntaxes_for(item):
                pairs[(item.sop_class, ts)] = None
        return [build_context(sop_class, ts) for sop_class, ts in pairs]

    def _chunks(self, items: list[_Item]) -> list[list[_Item]]:
        """Split a batch whose contexts exceed the 128 per association (rare: many SOP classes)."""
        chunks: list[list[_Item]] = [[]]
        for item in items:
            if len(self.contexts_for([*chunks[-1], item])) > MAX_CONTEXTS:
                chunks.append([])
            chunks[-1].append(item)
        return [c for c in chunks if c]

    # -- sending ---------------------------------------------------------------------------------
    def send(self, files: Sequence[Path]) -> list[SendOutcome]:
        outcomes: dict[Path, SendOutcome] = {}
        items: list[_Item] = []
        for path in map(Path, files):
            try:
                items.append(_read_item(path))
            except SendError as exc:
                outcomes[path] = SendOutcome(path, "", False, error=str(exc), permanent=not path.exists())
        for chunk in self._chunks(items):
            for outcome in self._send_chunk(chunk):
                outcomes[outcome.path] = outcome
        return [outcomes[Path(p)] for p in files]

    def _associate(self, items: list[_Item]) -> Association:
        return self.open_association(self.contexts_for(items))

    def open_association(self, contexts: list[PresentationContext], *, ext_neg: list | None = None,
                         evt_handlers: list | None = None) -> Association:
        """An established association with this peer proposing ``contexts`` (TLS, TCP_NODELAY and the
        timeouts of the destination); raises :class:`SendError` naming why it could not be made."""
        ae = self.ae_class(ae_title=self.calling_ae_title)
        ae.acse_timeout = self.config.timeout
        ae.dimse_timeout = self.config.timeout
        ae.network_timeout = self.config.timeout
        ae.connection_timeout = self.config.timeout
        tls_args = (self._ssl, self.config.host) if self._ssl else None
        connected: list[bool] = []
        try:
            assoc = ae.associate(self.config.host, self.config.port, contexts=contexts,
                                 ae_title=self.config.ae_title, tls_args=tls_args, ext_neg=ext_neg,
                                 evt_handlers=[(evt.EVT_CONN_OPEN, lambda event: connected.append(True)),
                                               *(evt_handlers or [])])
        except (OSError, RuntimeError, ValueError) as exc:
            raise SendError(f"Cannot associate with {self.address}: {exc}.") from exc
        if assoc.is_established:
            return assoc
        if not connected:
            reason = f"no connection ({self._diagnose()})"
        elif assoc.is_rejected:
            rej = assoc.acceptor.primitive
            reason = f"association rejected (result {rej.result_str}, source {rej.source_str}, " \
                     f"reason {rej.reason_str})" if rej is not None else "association rejected"
        elif assoc.is_aborted:
            reason = "association aborted by the peer during negotiation"
        else:
            reason = "no answer to the association request"
        raise SendError(f"Cannot deliver to destination '{self.name}' {self.address}: {reason}.")

    def request_commitment(self, transaction_uid: str, references: Sequence[tuple[str, str]]) -> None:
        """Ask the peer to commit to keeping ``references`` ((SOP Class UID, SOP Instance UID) pairs):
        an N-ACTION-RQ on an association of its own. The report comes later as an N-EVENT-REPORT (see
        :mod:`dicomnode.send.commitment`); raises :class:`SendError` when the request is not accepted."""
        from dicomnode.send.commitment import (
            REQUEST_COMMITMENT,
            STORAGE_COMMITMENT_INSTANCE,
            STORAGE_COMMITMENT_PUSH,
            commitment_request,
        )

        request = commitment_request(transaction_uid, references)
        assoc = self.open_association([build_context(STORAGE_COMMITMENT_PUSH, list(UNCOMPRESSED))])
        try:
            if not assoc.accepted_contexts:
                raise SendError(f"{self.address} does not support Storage Commitment (Push Model); turn off "
                                f"destinations.{self.name}.storage_commitment or enable it at the peer.")
            status, _ = assoc.send_n_action(request, REQUEST_COMMITMENT, STORAGE_COMMITMENT_PUSH,
                                            STORAGE_COMMITMENT_INSTANCE)
        except (ValueError, AttributeError, RuntimeError) as exc:
            raise SendError(f"Cannot request storage commitment from {self.address}: {exc}.") from exc
        finally:
            if assoc.is_established:
                assoc.release()
        code = int(status.Status) if status is not None and "Status" in status else None
        if code != 0x0000:
            shown = "no answer" if code is None else f"status 0x{code:04X}"
            raise SendError(f"{self.address} refused the storage commitment request for transaction "
                            f"'{transaction_uid}' ({len(references)} instances): {shown}.")

    def _diagnose(self) -> str:
        """Why the connection failed (pynetdicom only logs it): connect again once, plainly."""
        address = (self.config.host, self.config.port)
        try:
            with socket.create_connection(address, timeout=min(self.config.timeout, 10)) as sock:
                if self._ssl is None:
                    return "the connection was closed at once"
                with self._ssl.wrap_socket(sock, server_hostname=self.config.host):
                    return "the connection was closed after the TLS handshake"
        except ssl.SSLError as exc:
            return f"TLS handshake failed: {exc.reason or exc}"
        except OSError as exc:
            return f"{exc.strerror or exc}; is the peer down?"

    def _dataset(self, item: _Item, assoc: Association) -> Dataset:
        ds = dcmread(item.path)
        if not ds.get("SOPClassUID") or not ds.get("SOPInstanceUID"):  # some writers leave them empty
            ds.SOPClassUID, ds.SOPInstanceUID = item.sop_class, item.sop_instance
        if self._deidentifier is not None:
            ds = self._deidentifier.deidentify(ds)
        accepted = {(c.abstract_syntax, c.transfer_syntax[0]) for c in assoc.accepted_contexts}
        own = ds.file_meta.TransferSyntaxUID
        if own.is_compressed and (item.sop_class, own) not in accepted:
            ds.decompress()  # the peer took this SOP class only uncompressed
        return ds

    def _send_chunk(self, items: list[_Item]) -> list[SendOutcome]:
        assoc = self._associate(items)
        outcomes: list[SendOutcome] = []
        try:
            for item in items:
                if not assoc.is_established:
                    outcomes.append(SendOutcome(item.path, item.sop_instance, False,
                                                error=f"Association with {self.address} was aborted "
                                                      "before this instance was sent."))
                    continue
                outcomes.append(self._store(assoc, item))
        finally:
            if assoc.is_established:
                assoc.release()
        return outcomes

    def _store(self, assoc: Association, item: _Item) -> SendOutcome:
        accepted_classes = {c.abstract_syntax for c in assoc.accepted_contexts}
        if item.sop_class not in accepted_classes:
            return SendOutcome(item.path, item.sop_instance, False,
                               error=f"{self.address} did not accept SOP class '{item.sop_class}' "
                                     f"({item.sop_class.name}) in transfer syntax(es) "
                                     f"{', '.join(self._syntaxes_for(item))}.")
        try:
            ds = self._dataset(item, assoc)
            sop_instance = str(ds.SOPInstanceUID)
        except DeidentificationRefused as exc:
            return SendOutcome(item.path, item.sop_instance, False, error=str(exc), permanent=True)
        except (OSError, InvalidDicomError, DicomNodeError, ValueError, AttributeError, RuntimeError) as exc:
            return SendOutcome(item.path, item.sop_instance, False,
                               error=f"Cannot prepare '{item.path}' for sending: {exc}.")
        try:
            reply = assoc.send_c_store(ds)
        except (ValueError, AttributeError, RuntimeError) as exc:
            return SendOutcome(item.path, item.sop_instance, False,
                               error=f"Cannot send '{item.path}' to {self.address}: {exc}.")
        status = int(reply.Status) if "Status" in reply else None
        if status is None:
            return SendOutcome(item.path, item.sop_instance, False,
                               error=f"No C-STORE response from {self.address} for SOP instance "
                                     f"'{sop_instance}' (timeout or association aborted).")
        if status == 0x0000 or status in WARNING_STATUSES:
            if status:
                log.warning("Destination %s stored SOP instance %s with warning status 0x%04X",
                            self.name, sop_instance, status,
                            extra={"destination": self.name, "sop_instance_uid": sop_instance})
            return SendOutcome(item.path, item.sop_instance, True, status=status)
        comment = f" ({reply.ErrorComment})" if "ErrorComment" in reply else ""
        return SendOutcome(item.path, item.sop_instance, False, status=status,
                           error=f"{self.address} refused SOP instance '{sop_instance}' with status "
                                 f"0x{status:04X}{comment}.")
