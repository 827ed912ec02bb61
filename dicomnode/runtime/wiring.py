"""The one place where the node's optional stages are attached to the :class:`Service`.

Each stage adds itself here in a few obvious lines: a ready handler (routing), components with
``start()``/``stop()`` (outbox sender, pipeline executor, metrics server, rule watcher), reload hooks
(SIGHUP) and, for routing, ``service.quiet_seconds_resolver``.
"""

from __future__ import annotations

from dicomnode.config import Config
from dicomnode.observability.attach import attach_observability
from dicomnode.route.attach import attach_routing
from dicomnode.runtime.processing import Processing
from dicomnode.runtime.service import Service
from dicomnode.send.sender import Sender


def build_service(config: Config) -> Service:
    service = Service(config)
    attach_observability(service)  # service.metrics/.audit, /metrics+/readyz, retention, sd_notify
    sender = Sender.from_config(  # delivers the durable outbox
        config, service.database, metrics=service.metrics, audit=service.audit)
    executor = None  # processing.executor local: Processing's own process pool
    if config.processing.executor == "celery":  # Celery workers on a Redis broker
        from dicomnode.distributed.executor import CeleryExecutor
        executor = CeleryExecutor(config, service.database, metrics=service.metrics)
    processing = Processing(  # routed jobs → worker processes → result package → outbox
        config, service.database, executor=executor, metrics=service.metrics, audit=service.audit,
        wake_sender=sender.wake)
    router = attach_routing(service, submit_job=processing.submit)  # rules, decision log, hot reload
    service.add_component(sender)
    service.add_component(processing)
    service.processing = processing  # type: ignore[attr-defined]  # for the console's re-run action
    if config.dicomweb.enabled:  # STOW-RS reception into the same ingest as C-STORE
        from dicomnode.receive.stow import stow_server
        service.add_component(stow_server(config.dicomweb, service.ingest, service.check_space))
    if config.console.enabled:  # the web console (FastAPI imported only when enabled)
        from dicomnode.console.server import ConsoleServer
        service.add_component(ConsoleServer.for_service(service, router=router))
    return service
