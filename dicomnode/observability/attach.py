"""Attaching the operations layer to a :class:`~dicomnode.runtime.service.Service` (from ``build_service``).

:func:`attach_observability` creates and registers, through the service's public hooks only:

* ``service.metrics`` — the service's :class:`Metrics` (other stages call its methods; see
  :mod:`dicomnode.observability.metrics`), with outbox depth and spool usage computed at scrape time;
* ``service.audit`` — the :class:`AuditTrail`; a ready handler records ``received`` (per series: first/last
  arrival and instance count, from the assembler's table) and ``completed`` for every series/study;
* the ``/metrics`` ``/healthz`` ``/readyz`` HTTP component (unless ``metrics.port`` is 0), whose readiness
  checks are: listener bound, database writable, disk below the storage thresholds;
* the :class:`Retention` component (idle unless ``retention.enabled``);
* the :class:`SystemdNotifier` (``READY=1`` once the listener is bound; a reload hook);
* the disk-full metric: the listener's injected ``space_check`` is wrapped so each refusal counts
  ``dicomnode_associations_rejected_total{reason="disk_full"}`` and sets ``dicomnode_disk_full``;
* receive metrics and log context: ``service.ingest.store`` is wrapped so every C-STORE counts
  ``instances_received``/``received_bytes`` or ``store_failures{reason="0xA700"…}`` and its log lines carry
  ``calling_aet`` and ``sop_uid``; ``service.dispatcher.deliver`` is wrapped so every line written while a
  completion is routed (and jobs/forwards are queued) carries ``study_uid``/``series_uid``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dicomnode.assemble.assembler import AssemblyRecords
from dicomnode.errors import DicomNodeError, StorageFullError
from dicomnode.events import SeriesReady, StudyReady
from dicomnode.observability.audit import AuditTrail
from dicomnode.observability.health import database_check, disk_check, listener_check
from dicomnode.observability.http import HealthServer
from dicomnode.observability.logging import log_context
from dicomnode.observability.metrics import Metrics, outbox_depth_from_database
from dicomnode.observability.sdnotify import SystemdNotifier
from dicomnode.runtime.retention import Retention

log = logging.getLogger(__name__)


@dataclass
class Observability:
    metrics: Metrics
    audit: AuditTrail
    http: HealthServer | None
    retention: Retention
    notifier: SystemdNotifier


def _listener_bound(service: Any) -> Callable[[], bool]:
    def bound() -> bool:
        try:
            service.listener.port  # noqa: B018 (raises while the listener is not running)
        except DicomNodeError:
            return False
        return True

    return bound


def _count_disk_refusals(service: Any, metrics: Metrics) -> None:
    check = service.listener.space_check

    def counted_space_check() -> None:
        try:
            check()
        except StorageFullError:
            metrics.disk_full(True)
            metrics.association_rejected("disk_full")
            raise
        metrics.disk_full(False)

    service.listener.space_check = counted_space_check


def _observe_ingest(service: Any, metrics: Metrics) -> None:
    store = service.ingest.store

    def observed_store(encoded: bytes | memoryview, **kwargs: Any) -> Any:
        with log_context(calling_aet=kwargs.get("calling_aet"), sop_uid=kwargs.get("sop_instance_uid")):
            result = store(encoded, **kwargs)
        if result.status == 0:
            if not result.duplicate:
                metrics.instance_received(len(encoded))
        else:
            metrics.store_failed(f"0x{result.status:04X}")
        return result

    service.ingest.store = observed_store


def _deliver_in_context(service: Any) -> None:
    deliver = service.dispatcher.deliver

    def deliver_with_identifiers(event: Any) -> None:
        with log_context(study_uid=event.study_uid, series_uid=getattr(event, "series_uid", None)):
            deliver(event)

    service.dispatcher.deliver = deliver_with_identifiers


def _completion_recorder(service: Any, metrics: Metrics, audit: AuditTrail) -> Callable[[object], None]:
    records = AssemblyRecords(service.database)

    def on_ready(event: object) -> None:
        if isinstance(event, SeriesReady):
            metrics.series_completed()
            arrival = records.arrival(event.study_uid, event.series_uid)
            if arrival is not None:
                first, last, instances = arrival
                audit.record("received", event.study_uid, series_uid=event.series_uid,
                             detail={"instances": instances, "first_received_at": first}, at=last)
            audit.record("completed", event.study_uid, series_uid=event.series_uid,
                         detail={"instances": event.instance_count, "generation": event.generation,
                                 "reason": event.reason})
        elif isinstance(event, StudyReady):
            audit.record("completed", event.study_uid,
                         detail={"series": len(event.series_uids), "generation": event.generation})

    return on_ready


def _spool_bytes(service: Any) -> Callable[[], int]:
    def total() -> int:
        return int(service.index.total_bytes())

    return total


def attach_observability(service: Any) -> Observability:
    """Create metrics, audit, health endpoint, retention and systemd notification for ``service``."""
    config = service.config
    db = service.database
    metrics = Metrics(spool_dir=config.storage.spool_dir, outbox_depth=outbox_depth_from_database(db),
                      spool_bytes=_spool_bytes(service))
    audit = AuditTrail(db)
    service.metrics = metrics
    service.audit = audit
    _count_disk_refusals(service, metrics)
    service.listener.on_accepted.append(metrics.association_accepted)
    service.listener.on_rejected.append(metrics.association_rejected)
    _observe_ingest(service, metrics)
    _deliver_in_context(service)
    service.add_ready_handler(_completion_recorder(service, metrics, audit))
    bound = _listener_bound(service)
    http = None
    if config.metrics.port:
        storage = config.storage
        http = HealthServer(config.metrics.host, config.metrics.port, metrics, {
            "listener": listener_check(config.node.host, config.node.port, is_bound=bound),
            "database": database_check(db),
            "disk": disk_check(storage.spool_dir, storage.min_free_mb, storage.max_used_percent),
        })
        service.add_component(http)
    retention = Retention(config, db, metrics=metrics, audit=audit)
    service.add_component(retention)
    notifier = SystemdNotifier(ready_when=bound)
    service.add_component(notifier)
    service.add_reload_hook(notifier.reloading)
    return Observability(metrics, audit, http, retention, notifier)
