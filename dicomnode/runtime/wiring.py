"""The one place where the node is put together: :func:`build_service`.

Metrics and the audit trail are built first and handed to the stages' constructors (each stage types what
it needs with a small ``Protocol``); the stages publish what happens to observer lists (the listener's
``on_accepted``/``on_rejected``/``on_space_checked``, the ingest's ``on_stored``/``on_failed``, the
dispatcher's ready handlers). Nothing is replaced or added on an object after it is constructed.
"""

from __future__ import annotations

from collections.abc import Callable

from dicomnode.compare.retrieves import PendingRetrieves
from dicomnode.config import Config
from dicomnode.database import Database
from dicomnode.errors import DicomNodeError
from dicomnode.observability.audit import AuditTrail
from dicomnode.observability.completion import CompletionRecorder
from dicomnode.observability.health import database_check, disk_check, listener_check
from dicomnode.observability.http import HealthServer
from dicomnode.observability.metrics import (
    Metrics,
    destination_health_from_database,
    outbox_depth_from_database,
)
from dicomnode.observability.sdnotify import SystemdNotifier
from dicomnode.receive.listener import Listener
from dicomnode.route.hooks import ObservedRouting, outbox_forward, outbox_generated_by
from dicomnode.route.router import Router
from dicomnode.route.watcher import RuleBook, RuleWatcher
from dicomnode.runtime.processing import Processing
from dicomnode.runtime.retention import Retention
from dicomnode.runtime.service import Service
from dicomnode.send.sender import Sender
from dicomnode.spool.index import SpoolIndex
from dicomnode.spool.journal import open_journal


def _is_bound(listener: Listener) -> Callable[[], bool]:
    def bound() -> bool:
        try:
            listener.port  # noqa: B018 (raises while the listener is not running)
        except DicomNodeError:
            return False
        return True

    return bound


def build_service(config: Config) -> Service:
    """The node of ``config``, not started. An invalid rule set at start-up is logged; the node then
    records every series as ``unrouted`` until a valid set is loaded (the files stay in the spool)."""
    database = Database(config.storage.database_path)
    spool_index = SpoolIndex(database, config.storage.spool_dir)  # for the spool's size at each scrape
    journal = open_journal(config.storage, 0)  # the node's own receive journal (None when off)
    metrics = Metrics(spool_dir=config.storage.spool_dir, outbox_depth=outbox_depth_from_database(database),
                      spool_bytes=spool_index.total_bytes,
                      destination_health=destination_health_from_database(database, config),
                      # every receiving process's journal (the service below gathers them)
                      journal_backlog=(lambda: service.journal_backlog()) if journal is not None else None)
    audit = AuditTrail(database)

    sender = Sender.from_config(config, database, metrics=metrics, audit=audit)  # delivers the outbox
    executor = None  # processing.executor local: Processing's own process pool
    if config.processing.executor == "celery":  # Celery workers on a Redis broker
        from dicomnode.distributed.executor import CeleryExecutor
        executor = CeleryExecutor(config, database, metrics=metrics)
    processing = Processing(  # routed jobs → worker processes → result package → outbox
        config, database, executor=executor, metrics=metrics, audit=audit, wake_sender=sender.wake)
    book = RuleBook.for_config(config)  # the rules in force; reloaded on SIGHUP and by the watcher
    book.reload()
    router = Router(config, database, book, submit_job=processing.submit,
                    forward=outbox_forward(database, config.outbox),
                    generated_by=outbox_generated_by(database, config.outbox),  # own outputs: no loops
                    retrieved_for=PendingRetrieves(database).requested_by)  # priors moved here: not routed

    service = Service(config, database=database, quiet_resolver=router.quiet_seconds_for, journal=journal)
    service.listener.on_accepted.append(metrics.association_accepted)
    service.listener.on_rejected.append(metrics.association_rejected)
    service.listener.on_space_checked.append(metrics.disk_full)
    service.ingest.on_stored.append(metrics.instance_received)
    service.ingest.on_failed.append(metrics.store_failed)
    service.add_ready_handler(CompletionRecorder(database, metrics, audit))  # series_completed, audit
    service.add_ready_handler(ObservedRouting(router, metrics=metrics, audit=audit))  # rules → actions

    bound = _is_bound(service.listener)
    if config.metrics.port:  # /metrics /healthz /readyz
        storage = config.storage
        service.add_component(HealthServer(config.metrics.host, config.metrics.port, metrics, {
            "listener": listener_check(config.node.host, config.node.port, is_bound=bound),
            "database": database_check(database),
            "disk": disk_check(storage.spool_dir, storage.min_free_mb, storage.max_used_percent),
        }))
    service.add_component(Retention(config, database, metrics=metrics, audit=audit))  # idle unless enabled
    notifier = SystemdNotifier(ready_when=bound)  # READY=1 once the listener is bound
    service.add_component(notifier)
    service.add_reload_hook(notifier.reloading)  # RELOADING=1, then the rules are read again
    service.add_reload_hook(book.reload)
    if config.rules.watch:
        service.add_component(RuleWatcher(book))
    service.add_component(sender)
    service.listener.on_event_report.append(sender.on_event_report)  # storage commitment reports
    service.add_component(processing)
    if config.dicomweb.enabled:  # STOW-RS reception into the same ingest as C-STORE
        from dicomnode.receive.stow import stow_server
        service.add_component(stow_server(config.dicomweb, service.ingest, service.check_space))
    if config.console.enabled:  # the web console (FastAPI imported only when enabled)
        from dicomnode.console.node import ConsoleNode
        from dicomnode.console.server import ConsoleServer
        service.add_component(ConsoleServer(ConsoleNode.for_service(
            service, book=book, router=router, metrics=metrics, audit=audit)))
    return service
