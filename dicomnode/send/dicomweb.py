"""STOW-RS destinations: the outbox delivering to a DICOMweb service (``destinations.<name>.dicomweb``).

:class:`DicomwebDestination` fits the same :class:`~dicomnode.send.destination.Destination` protocol as the
C-STORE SCU, so it shares the outbox, its backoff and its dead letter. Requests are made with
``dicomweb-client`` (multipart/related; type="application/dicom"), ``batch_size`` instances per request.
The STOW-RS response is read per instance: instances in the ReferencedSOPSequence are delivered (a
WarningReason is logged), those in the FailedSOPSequence are failed with their FailureReason, which decides
between a retry (e.g. 0xA700 out of resources, 0x0110 processing failure) and the dead letter (the data set
can never be stored there: 0xA900, 0x0122/0xC122, 0xCxxx). A service that cannot be reached, or answers
401/403/5xx, fails the whole batch (:class:`SendError`: retried with backoff). Credentials are read from
their files at each send and never appear in a log line or an error message.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from dicomnode.config import DestinationConfig, DicomwebConfig
from dicomnode.errors import SendError
from dicomnode.send.deidentify import DeidentificationRefused, Deidentifier, require_deidentifier
from dicomnode.send.destination import SendOutcome

log = logging.getLogger(__name__)

# FailureReason values after which a retry cannot help (PS3.18 Table 10.5.3-1 and PS3.4 C-STORE statuses)
PERMANENT_FAILURES = frozenset({0xA900, 0x0122, 0xC122, 0x0124})


def failure_is_permanent(reason: int) -> bool:
    """Whether a STOW-RS FailureReason means the instance can never be stored at this service."""
    return reason in PERMANENT_FAILURES or 0xC000 <= reason <= 0xCFFF


def _read_secret(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SendError(f"Cannot read the {what} file '{path}': {exc.strerror or exc}.") from exc


def make_client(
    web: DicomwebConfig, timeout: float, session: requests.Session | None = None
) -> DICOMwebClient:
    """A ``dicomweb-client`` for ``web``: TLS verification, credentials read from their files now, and no
    retries of its own (the outbox and the callers retry, with their backoff)."""
    session = session or requests.Session()
    session.verify = str(web.ca) if (web.verify and web.ca) else web.verify
    auth = web.auth
    if auth is not None and auth.bearer_token_file is not None:
        session.headers["Authorization"] = f"Bearer {_read_secret(auth.bearer_token_file, 'bearer token')}"
    elif auth is not None and auth.basic is not None:
        session.auth = (auth.basic.user, _read_secret(auth.basic.password_file, "password"))
    client = DICOMwebClient(web.url, session=session, timeout=timeout)
    client.set_http_retry_params(retry=False)
    return client


class DicomwebDestination:
    """A STOW-RS service, as configured in ``destinations.<name>.dicomweb``."""

    def __init__(self, name: str, config: DestinationConfig, *, deidentifier: Deidentifier | None = None,
                 session: requests.Session | None = None) -> None:
        if config.dicomweb is None:
            raise SendError(f"Destination '{name}' is not a DICOMweb destination (no 'dicomweb' section).")
        require_deidentifier(name, config.deidentify, deidentifier)
        self.name = name
        self.config = config
        self.web: DicomwebConfig = config.dicomweb
        self._deidentifier = deidentifier if config.deidentify else None
        self._session = session

    @property
    def address(self) -> str:
        return f"STOW-RS service {self.web.url}"

    def _client(self) -> DICOMwebClient:
        return make_client(self.web, self.config.timeout, self._session)

    # -- sending -------------------------------------------------------------------------------------
    def send(self, files: Sequence[Path]) -> list[SendOutcome]:
        outcomes: dict[Path, SendOutcome] = {}
        ready: list[tuple[Path, Dataset]] = []
        for path in map(Path, files):
            try:
                ds = dcmread(path)
                if self._deidentifier is not None:
                    ds = self._deidentifier.deidentify(ds)
                ready.append((path, ds))
            except DeidentificationRefused as exc:
                outcomes[path] = SendOutcome(path, "", False, error=str(exc), permanent=True)
            except (OSError, InvalidDicomError, ValueError, AttributeError) as exc:
                outcomes[path] = SendOutcome(path, "", False, permanent=not path.exists(),
                                             error=f"Cannot read '{path}' for sending: {exc}.")
        if ready:
            client = self._client()
            size = self.web.batch_size
            for start in range(0, len(ready), size):
                for outcome in self._post(client, ready[start:start + size]):
                    outcomes[outcome.path] = outcome
        return [outcomes[Path(p)] for p in files]

    def _post(self, client: DICOMwebClient, batch: list[tuple[Path, Dataset]]) -> list[SendOutcome]:
        try:
            response = client.store_instances([ds for _, ds in batch])
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            body = _response_dataset(exc.response)
            if status in (400, 409) and body is not None and ("FailedSOPSequence" in body
                                                              or "ReferencedSOPSequence" in body):
                return self._outcomes(batch, body, http_status=status)
            if status in (401, 403):
                raise SendError(f"Destination '{self.name}' ({self.address}) refused our credentials "
                                f"(HTTP {status}); check destinations.{self.name}.dicomweb.auth.") from exc
            raise SendError(f"Cannot deliver to destination '{self.name}' ({self.address}): "
                            f"HTTP {status}.") from exc
        except requests.exceptions.SSLError as exc:
            raise SendError(f"Cannot deliver to destination '{self.name}' ({self.address}): TLS verification "
                            f"failed ({type(exc).__name__}).") from exc
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise SendError(f"Cannot deliver to destination '{self.name}' ({self.address}): "
                            f"{type(exc).__name__}; is the service down?") from exc
        return self._outcomes(batch, response, http_status=200)

    def _outcomes(self, batch: list[tuple[Path, Dataset]], response: Dataset,
                  *, http_status: int) -> list[SendOutcome]:
        referenced = {str(item.get("ReferencedSOPInstanceUID", "")): item
                      for item in response.get("ReferencedSOPSequence", [])}
        failed = {str(item.get("ReferencedSOPInstanceUID", "")): item
                  for item in response.get("FailedSOPSequence", [])}
        acknowledged_none = not referenced and not failed
        outcomes = []
        for path, ds in batch:
            uid = str(ds.get("SOPInstanceUID", ""))
            if uid in failed:
                reason = int(failed[uid].get("FailureReason", 0x0110))
                outcomes.append(SendOutcome(
                    path, uid, False, status=reason, permanent=failure_is_permanent(reason),
                    error=f"{self.address} refused SOP instance '{uid}' with FailureReason 0x{reason:04X}.",
                ))
            elif uid in referenced or (acknowledged_none and http_status == 200):
                warning = referenced.get(uid, Dataset()).get("WarningReason")
                if warning is not None:
                    log.warning("Destination %s stored SOP instance %s with WarningReason 0x%04X", self.name,
                                uid, int(warning), extra={"destination": self.name, "sop_instance_uid": uid})
                outcomes.append(SendOutcome(path, uid, True, status=int(warning or 0)))
            else:
                outcomes.append(SendOutcome(
                    path, uid, False,
                    error=f"{self.address} answered HTTP {http_status} without acknowledging SOP instance "
                          f"'{uid}'.",
                ))
        return outcomes


def _response_dataset(response: Any) -> Dataset | None:  # noqa: ANN401 - requests.Response | None
    """The STOW-RS response body of a failed request as a dataset, when it is DICOM JSON."""
    if response is None or not response.content:
        return None
    content_type = response.headers.get("Content-Type", "")
    if not content_type.startswith(("application/dicom+json", "application/json")):
        return None
    try:
        return Dataset.from_json(response.json())
    except (ValueError, TypeError, KeyError):
        return None
