"""STOW-RS reception (PS3.18 §10.5): ``POST /dicom-web/studies[/{study}]`` with
``multipart/related; type="application/dicom"`` bodies, stored through the same :class:`Ingest` as C-STORE.

Every part is a DICOM Part 10 file. The body is parsed as it streams in (``python-multipart``'s
``MultipartParser``): one instance at a time is held in memory (at most ``max_instance_mb``), never the whole
upload (at most ``max_request_mb``). Each instance gets the C-STORE path's checks and durability — Success
only after the file and its directory are fsynced and the index row committed — and its own status in the
STOW-RS response (``application/dicom+json``): stored instances in the ReferencedSOPSequence, refused ones
in the FailedSOPSequence with the C-STORE status as FailureReason (0xA700 out of space, 0xA900 identifiers,
0xC000 not a complete DICOM file, ...). HTTP 200 when all were stored, 202 when some failed, 409 when none
was.

Uploads are authenticated by a bearer token from ``dicomweb.bearer_tokens_file`` (lines ``<client>
<token>``) and/or a client certificate (``dicomweb.tls.require_client_cert``, checked in the TLS handshake);
anything else is answered 401 before a byte of the body is read. The client's name is recorded as the
calling AE of its instances (``STOW:<client>``, 16 characters at most), so rules and the audit trail see
where they came from.
"""

from __future__ import annotations

import hmac
import logging
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydicom import Dataset
from python_multipart.multipart import MultipartParser

from dicomnode.config import StowReceiveConfig
from dicomnode.errors import DicomNodeError, ReceiveError
from dicomnode.receive.ingest import CANNOT_UNDERSTAND, OUT_OF_SPACE, SUCCESS, Ingest

log = logging.getLogger(__name__)

STUDY_MISMATCH = 0xA900  # the instance's Study Instance UID is not the one in the request URL
DICOM_JSON = "application/dicom+json"


class StowError(ReceiveError):
    """A STOW-RS request that cannot be taken as a whole (HTTP status and reason)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class Part10:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    dataset_offset: int  # where the data set starts, after the File Meta Information


_META_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


def read_part10(data: bytes | bytearray | memoryview) -> Part10:
    """The File Meta Information of a Part 10 file (Explicit VR Little Endian, PS3.10 §7.1)."""
    view = memoryview(data)
    if len(view) < 132 or bytes(view[128:132]) != b"DICM":
        raise ValueError("not a DICOM Part 10 file (no 'DICM' after the 128-byte preamble)")
    offset, values = 132, {}
    while offset + 8 <= len(view):
        group, element = struct.unpack_from("<HH", view, offset)
        if group != 0x0002:
            break
        vr = bytes(view[offset + 4 : offset + 6])
        if vr in _META_LONG_VRS:
            if offset + 12 > len(view):
                raise ValueError("the file meta information is truncated")
            (length,) = struct.unpack_from("<I", view, offset + 8)
            start = offset + 12
        else:
            (length,) = struct.unpack_from("<H", view, offset + 6)
            start = offset + 8
        if start + length > len(view):
            raise ValueError(f"file meta element (0002,{element:04X}) runs past the end of the file")
        values[element] = bytes(view[start : start + length]).rstrip(b"\x00 ").decode("ascii", "replace")
        offset = start + length
    missing = [
        name
        for tag, name in (
            (0x0002, "MediaStorageSOPClassUID"),
            (0x0003, "MediaStorageSOPInstanceUID"),
            (0x0010, "TransferSyntaxUID"),
        )
        if not values.get(tag)
    ]
    if missing:
        raise ValueError(f"the file meta information lacks {', '.join(missing)}")
    return Part10(values[0x0002], values[0x0003], values[0x0010], offset)


def load_tokens(path: Path) -> dict[str, str]:
    """``token → client name`` from a file of ``<client> <token>`` lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DicomNodeError(
            f"Cannot read the STOW-RS bearer tokens file '{path}': {exc.strerror or exc}."
        ) from exc
    tokens: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or len(parts[1]) < 16:
            raise DicomNodeError(
                f"{path}:{number}: expected '<client-name> <token>' with a token of at least 16 characters."
            )
        tokens[parts[1]] = parts[0]
    return tokens


def client_for(authorization: str | None, tokens: dict[str, str]) -> str | None:
    """The client name a ``Authorization: Bearer <token>`` header proves, else None (constant time)."""
    if not authorization or not authorization.lower().startswith("bearer "):
        return None
    offered = authorization[7:].strip().encode()
    found = None
    for token, client in tokens.items():
        if hmac.compare_digest(offered, token.encode()):
            found = client
    return found


_BOUNDARY_RE = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
_TYPE_RE = re.compile(r'type="?([^";]+)"?', re.IGNORECASE)


def boundary_of(content_type: str) -> bytes:
    """The multipart boundary of a STOW-RS request, refusing other media types (415)."""
    media = content_type.split(";", 1)[0].strip().lower()
    kind = _TYPE_RE.search(content_type)
    if media != "multipart/related" or kind is None or kind.group(1).strip().lower() != "application/dicom":
        raise StowError(
            415,
            f"Unsupported media type '{content_type}': this node takes STOW-RS uploads as "
            'multipart/related; type="application/dicom".',
        )
    boundary = _BOUNDARY_RE.search(content_type)
    if boundary is None:
        raise StowError(400, "The multipart/related request has no boundary parameter.")
    return boundary.group(1).encode()


@dataclass
class StowOutcome:
    referenced: list[Dataset] = field(default_factory=list)
    failed: list[Dataset] = field(default_factory=list)

    def add(self, sop_class: str, sop_instance: str, status: int) -> None:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class or "1.2.840.10008.5.1.4.1.1.7"
        item.ReferencedSOPInstanceUID = sop_instance or "2.25.0"
        if status == SUCCESS:
            self.referenced.append(item)
        else:
            item.FailureReason = status
            self.failed.append(item)

    @property
    def http_status(self) -> int:
        if not self.failed:
            return 200
        return 202 if self.referenced else 409

    def to_json(self) -> dict[str, Any]:
        response = Dataset()
        if self.referenced:
            response.ReferencedSOPSequence = self.referenced
        if self.failed:
            response.FailedSOPSequence = self.failed
        return response.to_json_dict()


class InstanceStore:
    """Checks one uploaded Part 10 file and stores it through the ingest (the C-STORE path)."""

    def __init__(self, ingest: Ingest, check_space: Callable[[], None]) -> None:
        self.ingest = ingest
        self.check_space = check_space

    def store(self, data: bytearray, *, client: str, study_uid: str | None, outcome: StowOutcome) -> None:
        try:
            meta = read_part10(data)
        except ValueError as exc:
            log.warning(
                "STOW-RS upload from %s: part refused (0x%04X): %s.", client, CANNOT_UNDERSTAND, exc
            )
            outcome.add("", "", CANNOT_UNDERSTAND)
            return
        encoded = memoryview(data)[meta.dataset_offset :]
        if study_uid is not None:
            found = _study_uid(encoded, meta.transfer_syntax)
            if found != study_uid:
                log.warning(
                    "STOW-RS upload from %s: instance %s refused (0x%04X): its study is '%s', the "
                    "request's '%s'.",
                    client,
                    meta.sop_instance_uid,
                    STUDY_MISMATCH,
                    found,
                    study_uid,
                )
                outcome.add(meta.sop_class_uid, meta.sop_instance_uid, STUDY_MISMATCH)
                return
        try:
            self.check_space()
        except DicomNodeError as exc:
            log.error(
                "STOW-RS upload from %s: instance %s refused (0x%04X): %s",
                client,
                meta.sop_instance_uid,
                OUT_OF_SPACE,
                exc,
            )
            outcome.add(meta.sop_class_uid, meta.sop_instance_uid, OUT_OF_SPACE)
            return
        result = self.ingest.store(
            encoded,
            transfer_syntax=meta.transfer_syntax,
            sop_class_uid=meta.sop_class_uid,
            sop_instance_uid=meta.sop_instance_uid,
            calling_aet=f"STOW:{client}"[:16],
        )
        outcome.add(meta.sop_class_uid, meta.sop_instance_uid, result.status)


def _study_uid(encoded: memoryview, transfer_syntax: str) -> str:
    from dicomnode.spool.header import HeaderError, parse_dataset

    try:
        return parse_dataset(encoded, transfer_syntax).study_uid
    except (HeaderError, ValueError, TypeError):
        return ""


def create_app(config: StowReceiveConfig, store: InstanceStore) -> FastAPI:
    """The STOW-RS app: ``POST /dicom-web/studies`` and ``POST /dicom-web/studies/{study}``."""
    tokens = load_tokens(config.bearer_tokens_file) if config.bearer_tokens_file else {}
    client_cert_only = config.bearer_tokens_file is None
    max_request = int(config.max_request_mb * 1024 * 1024)
    max_instance = int(config.max_instance_mb * 1024 * 1024)
    app = FastAPI(title="dicomnode STOW-RS", docs_url=None, redoc_url=None, openapi_url=None)

    def problem(status: int, reason: str) -> JSONResponse:
        return JSONResponse(
            {"error": reason},
            status_code=status,
            headers={"WWW-Authenticate": 'Bearer realm="dicomnode"'} if status == 401 else None,
        )

    async def receive(request: Request, study_uid: str | None) -> JSONResponse:
        peer = request.client.host if request.client else "?"
        client = (
            "tls-client" if client_cert_only else client_for(request.headers.get("authorization"), tokens)
        )
        if client is None:
            log.warning("STOW-RS upload from %s refused (HTTP 401): no valid bearer token.", peer)
            return problem(401, "A valid bearer token is required.")
        try:
            boundary = boundary_of(request.headers.get("content-type", ""))
        except StowError as exc:
            log.warning("STOW-RS upload from %s (%s) refused (HTTP %d): %s", client, peer, exc.status, exc)
            return problem(exc.status, str(exc))
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_request:
            return problem(
                413,
                f"The upload of {int(declared)} bytes exceeds dicomweb.max_request_mb "
                f"({config.max_request_mb:g} MB).",
            )
        outcome = StowOutcome()
        parts: list[bytearray] = []
        state: dict[str, Any] = {"current": None, "too_big": False}

        def on_part_begin() -> None:
            state["current"] = bytearray()

        def on_part_data(data: bytes, start: int, end: int) -> None:
            current = state["current"]
            if current is None:
                return
            if len(current) + (end - start) > max_instance:
                state["too_big"] = True
                state["current"] = None
                return
            current += data[start:end]

        def on_part_end() -> None:
            if state["current"] is not None:
                parts.append(state["current"])
            state["current"] = None

        parser = MultipartParser(
            boundary,
            {"on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_part_end": on_part_end},
        )
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_request:
                log.warning("STOW-RS upload from %s refused (HTTP 413) after %d bytes.", client, received)
                return problem(
                    413,
                    f"The upload exceeds dicomweb.max_request_mb ({config.max_request_mb:g} MB)"
                    "; instances acknowledged so far are stored.",
                )
            parser.write(chunk)
            if state["too_big"]:
                log.warning(
                    "STOW-RS upload from %s refused (HTTP 413): an instance exceeds %g MB.",
                    client,
                    config.max_instance_mb,
                )
                return problem(
                    413, f"An instance exceeds dicomweb.max_instance_mb ({config.max_instance_mb:g} MB)."
                )
            while parts:  # store each completed instance now: one instance in memory at a time
                data = parts.pop(0)
                await anyio.to_thread.run_sync(
                    lambda d=data: store.store(d, client=client, study_uid=study_uid, outcome=outcome)
                )
        parser.finalize()
        for data in parts:
            await anyio.to_thread.run_sync(
                lambda d=data: store.store(d, client=client, study_uid=study_uid, outcome=outcome)
            )
        if not outcome.referenced and not outcome.failed:
            return problem(400, "The request carried no DICOM instance (no multipart part).")
        log.info(
            "STOW-RS upload from %s (%s): %d stored, %d refused.",
            client,
            peer,
            len(outcome.referenced),
            len(outcome.failed),
        )
        return JSONResponse(outcome.to_json(), status_code=outcome.http_status, media_type=DICOM_JSON)

    @app.post("/dicom-web/studies")
    async def stow(request: Request) -> JSONResponse:
        return await receive(request, None)

    @app.post("/dicom-web/studies/{study_uid}")
    async def stow_study(request: Request, study_uid: str) -> JSONResponse:
        return await receive(request, study_uid)

    return app


def stow_server(config: StowReceiveConfig, ingest: Ingest, check_space: Callable[[], None]) -> Any:  # noqa: ANN401
    """The STOW-RS endpoint as a node component (a :class:`~dicomnode.httpserver.ThreadedServer`)."""
    from dicomnode.httpserver import ThreadedServer

    store = InstanceStore(ingest, check_space)
    tls = config.tls
    return ThreadedServer(
        "STOW-RS endpoint",
        lambda: create_app(config, store),
        config.host,
        config.port,
        certfile=tls.cert if tls.enabled else None,
        keyfile=tls.key if tls.enabled else None,
        ca_certs=tls.ca if tls.enabled else None,
        require_client_cert=tls.enabled and tls.require_client_cert,
    )
