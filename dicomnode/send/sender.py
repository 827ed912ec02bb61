"""The sender: a runtime component delivering the outbox, one worker thread per destination.

Each worker claims the destination's due rows in batches of ``outbox.batch_size``, sends the batch over
one association and records every instance's outcome; a destination that is down (or slow to time out)
only delays its own rows.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from pydicom import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import generate_uid

from dicomnode.config import Config
from dicomnode.database import Database
from dicomnode.errors import DicomNodeError, SendError
from dicomnode.send.commitment import STORAGE_COMMITMENT_PUSH, parse_report
from dicomnode.send.deidentify import Deidentifier
from dicomnode.send.destination import Destination, DicomDestination, SendOutcome
from dicomnode.send.outbox import MAX_COMMIT_REQUESTS, Outbox, OutboxItem, OutboxState

log = logging.getLogger(__name__)


def _sop_class(path: Path) -> str:
    try:
        return str(read_file_meta_info(path).MediaStorageSOPClassUID)
    except (OSError, InvalidDicomError, AttributeError) as exc:
        raise SendError(f"Cannot read the SOP class of '{path}' for a storage commitment request: {exc}.") \
            from exc


class SendMetrics(Protocol):
    """What the sender reports to (``dicomnode.observability.metrics.Metrics`` fits)."""

    def instance_sent(self, destination: str) -> None: ...

    def send_failed(self, destination: str) -> None: ...


class SendAudit(Protocol):
    """Where the sender records ``sent``/``failed`` events (``AuditTrail`` fits)."""

    def record(self, stage: str, study_uid: str, *, series_uid: str | None = None, job_id: str | None = None,
               detail: Mapping[str, Any] | None = None) -> None: ...


def build_destinations(config: Config) -> dict[str, Destination]:
    """A :class:`DicomDestination` (C-STORE) or a STOW-RS destination for every configured one."""
    secret = config.security.deidentification_secret
    deidentifier = Deidentifier(secret) if secret else None
    from dicomnode.send.dicomweb import DicomwebDestination

    return {
        name: DicomwebDestination(name, dest, deidentifier=deidentifier) if dest.is_dicomweb
        else DicomDestination(name, dest, config.node.ae_title, deidentifier=deidentifier)
        for name, dest in config.destinations.items()
    }


class Sender:
    """Delivers the outbox. ``start()`` re-queues rows a crash left in ``sending`` and starts the
    workers; ``stop()`` lets each worker finish its current batch and joins it."""

    def __init__(self, outbox: Outbox, destinations: Mapping[str, Destination], *,
                 poll_seconds: float | None = None, metrics: SendMetrics | None = None,
                 audit: SendAudit | None = None, commitment: Mapping[str, float] | None = None) -> None:
        self.outbox = outbox
        # destinations with storage commitment → seconds to wait for a report
        self.commitment = dict(commitment or {})
        self.metrics = metrics
        self.audit = audit
        self.destinations = dict(destinations)
        self.poll_seconds = poll_seconds if poll_seconds is not None else outbox.config.poll_seconds
        self._stop = threading.Event()
        self._wake = {name: threading.Event() for name in self.destinations}
        self._threads: list[threading.Thread] = []

    @classmethod
    def from_config(cls, config: Config, db: Database | None = None, *, metrics: SendMetrics | None = None,
                    audit: SendAudit | None = None) -> Sender:
        db = db or Database(config.storage.database_path)
        commitment = {name: d.commitment_timeout for name, d in config.destinations.items()
                      if d.storage_commitment}
        return cls(Outbox(db, config.outbox), build_destinations(config), metrics=metrics, audit=audit,
                   commitment=commitment)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._threads:
            return
        self._stop.clear()
        self.outbox.recover_interrupted()
        unknown = sorted(set(self.outbox.depth_by_destination()) - set(self.destinations))
        if unknown:
            log.warning("The outbox holds pending entries for unconfigured destination(s) %s; they wait "
                        "until configured (or 'dicomnode queue purge --destination NAME')",
                        ", ".join(unknown))
        for name in self.destinations:
            thread = threading.Thread(target=self._run, args=(name,), name=f"sender-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        for event in self._wake.values():
            event.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []

    def wake(self, destination: str | None = None) -> None:
        """Look at the outbox now instead of at the next poll (call after enqueueing)."""
        for name, event in self._wake.items():
            if destination is None or name == destination:
                event.set()

    # -- work ------------------------------------------------------------------------------------
    def _run(self, name: str) -> None:
        wake = self._wake[name]
        while not self._stop.is_set():
            try:
                sent_any = self.process_batch(name) > 0
                sent_any |= self.process_commitments(name) > 0
            except Exception:  # the worker must survive anything; the rows stay in the database
                log.exception("Sender for destination %s failed unexpectedly; retrying after %.1f s",
                              name, self.poll_seconds, extra={"destination": name})
                sent_any = False
            if not sent_any:
                wake.wait(self.poll_seconds)
                wake.clear()

    def process_batch(self, name: str) -> int:
        """Send one batch of ``name``'s due rows; returns how many rows were attempted."""
        destination = self.destinations[name]
        items = self.outbox.claim_due(name)
        if not items:
            return 0
        try:
            outcomes = destination.send([item.file_path for item in items])
        except SendError as exc:
            self._fail_all(name, items, str(exc))
            return len(items)
        except DicomNodeError as exc:
            self._fail_all(name, items, f"{type(exc).__name__}: {exc}")
            return len(items)
        except Exception as exc:
            self._fail_all(name, items, f"Unexpected {type(exc).__name__} while sending: {exc}")
            raise
        self._record(name, items, outcomes)
        return len(items)

    # -- storage commitment ----------------------------------------------------------------------
    def process_commitments(self, name: str) -> int:
        """Request storage commitment for ``name``'s delivered rows that need it (again); rows asked
        ``MAX_COMMIT_REQUESTS`` times without a report are sent again. Returns the rows handled."""
        if name not in self.commitment:
            return 0
        items = self.outbox.commitments_due(name)
        if not items:
            return 0
        destination = self.destinations[name]
        stale = [i for i in items if i.commit_requests >= MAX_COMMIT_REQUESTS]
        if stale:
            error = (f"No storage commitment report from destination '{name}' after {MAX_COMMIT_REQUESTS} "
                     "requests; the instance is sent again.")
            log.warning("%s (%d instance(s))", error, len(stale), extra={"destination": name})
            self.outbox.commitments_given_up([i.id for i in stale], error)
        ask = [i for i in items if i.commit_requests < MAX_COMMIT_REQUESTS]
        if not ask:
            return len(items)
        request = getattr(destination, "request_commitment", None)
        ids = [i.id for i in ask]
        try:
            if request is None:
                raise SendError(f"Destination '{name}' cannot request storage commitment.")
            references = [(_sop_class(i.file_path), i.sop_instance_uid) for i in ask]
            transaction_uid = generate_uid()
            request(transaction_uid, references)
        except DicomNodeError as exc:
            log.warning("Storage commitment request to %s failed (%d instance(s)); asked again later: %s",
                        name, len(ask), exc, extra={"destination": name})
            self.outbox.commitment_request_failed(ids, str(exc))
            return len(items)
        self.outbox.await_commitment(ids, transaction_uid, self.commitment[name])
        log.info("Storage commitment requested from %s for %d instance(s) (transaction %s)", name, len(ask),
                 transaction_uid, extra={"destination": name})
        return len(items)

    def on_event_report(self, calling_ae: str, sop_class_uid: str, event_type: int,
                        info: Dataset | None) -> None:
        """The listener's N-EVENT-REPORT observer: storage commitment reports update the outbox."""
        if sop_class_uid != STORAGE_COMMITMENT_PUSH:
            return
        report = parse_report(event_type, info)
        committed, again = self.outbox.record_commitment(report.transaction_uid, report.committed,
                                                         report.failed)
        log.info("Storage commitment report from '%s' (transaction %s): %d committed, %d to send again.",
                 calling_ae, report.transaction_uid, committed, again)
        if again:
            self.wake()

    def process_due(self) -> int:
        """Synchronously send everything that is due now, destination by destination (tests, CLI)."""
        total = 0
        for name in self.outbox.due_destinations():
            if name not in self.destinations:
                continue
            while (n := self.process_batch(name)) > 0:
                total += n
        for name in self.commitment:
            if name in self.destinations:
                total += self.process_commitments(name)
        return total

    def _record(self, name: str, items: list[OutboxItem], outcomes: list[SendOutcome]) -> None:
        if len(outcomes) != len(items):
            self._fail_all(name, items, f"Destination '{name}' returned {len(outcomes)} outcomes for "
                                        f"{len(items)} files.")
            return
        delivered = [i for i, o in zip(items, outcomes, strict=True) if o.delivered]
        for status in {o.status for o in outcomes if o.delivered}:
            self.outbox.mark_sent([i.id for i, o in zip(items, outcomes, strict=True)
                                   if o.delivered and o.status == status], status=status,
                                  commitment=name in self.commitment)
        self._report_sent(name, delivered)
        jobs = sorted({i.job_id for i in delivered if i.job_id})
        if delivered:
            log.info("Sent %d instance(s) to %s (series %s; jobs %s)", len(delivered), name,
                     ", ".join(sorted({i.series_uid for i in delivered})), ", ".join(jobs) or "-",
                     extra={"destination": name, "job_id": ",".join(jobs)})
        for item, outcome in zip(items, outcomes, strict=True):
            if not outcome.delivered:
                self._fail(name, item, outcome.error, status=outcome.status, permanent=outcome.permanent)

    def _report_sent(self, name: str, delivered: list[OutboxItem]) -> None:
        if self.metrics is not None:
            for _ in delivered:
                self.metrics.instance_sent(name)
        if self.audit is not None:
            groups = Counter((i.study_uid, i.series_uid, i.job_id) for i in delivered if i.study_uid)
            for (study, series, job), count in groups.items():
                self.audit.record("sent", study, series_uid=series, job_id=job,
                                  detail={"destination": name, "instances": count})

    def _fail_all(self, name: str, items: list[OutboxItem], error: str) -> None:
        log.warning("Batch of %d instance(s) for destination %s not delivered: %s", len(items), name, error,
                    extra={"destination": name})
        for item in items:
            self._fail(name, item, error, status=None, permanent=False, quiet=True)

    def _fail(self, name: str, item: OutboxItem, error: str, *, status: int | None, permanent: bool,
              quiet: bool = False) -> None:
        state = self.outbox.mark_failed(item.id, error, status=status, permanent=permanent)
        if self.metrics is not None:
            self.metrics.send_failed(name)
        if state == OutboxState.DEAD and self.audit is not None and item.study_uid:
            self.audit.record("failed", item.study_uid, series_uid=item.series_uid, job_id=item.job_id,
                              detail={"stage": "send", "destination": name, "error": error,
                                      "sop_instance_uid": item.sop_instance_uid})
        if quiet and state != OutboxState.DEAD:
            return  # the batch failure was logged once
        level = logging.ERROR if state == OutboxState.DEAD else logging.WARNING
        log.log(level, "Instance %s (series %s, job %s) not delivered to %s, now %s: %s",
                item.sop_instance_uid, item.series_uid, item.job_id or "-", name, state, error,
                extra={"destination": name, "sop_instance_uid": item.sop_instance_uid,
                       "series_uid": item.series_uid, "study_uid": item.study_uid, "job_id": item.job_id})
