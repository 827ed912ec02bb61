"""The Celery application, built from the configuration by :func:`build_app` (no module-level app).

Settings that keep Celery out of its known traps with long, memory-hungry image jobs:

* JSON only (``task_serializer``, ``accept_content``): a message can never carry pickled objects;
* ``task_acks_late`` with ``worker_prefetch_multiplier = 1``: a message is acknowledged after its job ran,
  and a worker never hoards messages it cannot start;
* ``task_reject_on_worker_lost = False``: a child killed by the kernel (out of memory) is not re-queued
  by Celery — the node decides about a retry, so such a job cannot loop forever;
* hard and soft time limits per pipeline travel with each message (a C extension that holds the GIL
  is only stopped by the hard limit, which kills the child);
* ``visibility_timeout`` >= 10 x the largest hard limit (checked by :class:`CelerySettings`);
* ``worker_max_memory_per_child``; one ITK/OpenMP/BLAS thread per child.

The task's request class writes ``out/attempt-<n>.failed`` from the worker's parent process when a
child dies or hits the hard limit, so the node learns about it without waiting for the lease.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, signals
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded, WorkerLostError
from celery.worker.request import Request

from dicomnode.distributed.broker import Broker
from dicomnode.distributed.message import TASK_NAME
from dicomnode.distributed.settings import CelerySettings
from dicomnode.distributed.task import (
    DEFAULT_TARGET,
    WorkerContext,
    default_hostname,
    load_target,
    pipeline_versions,
    record_failure,
    run_attempt,
)
from dicomnode.pipelines.executor import THREAD_VARIABLES

log = logging.getLogger(__name__)



def cap_threads(threads: int) -> None:
    """One (or ``threads``) ITK/OpenMP/BLAS threads per process; call before numpy/SimpleITK start."""
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)


def celery_config(settings: CelerySettings) -> dict[str, Any]:
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout},
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 5,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        "task_ignore_result": True,  # the shared folder carries results, never the broker
        "result_backend": None,
        "task_acks_late": True,
        "task_reject_on_worker_lost": False,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "worker_max_memory_per_child": settings.max_memory_kb,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": True,  # for Flower
        "task_send_sent_event": True,
        "task_create_missing_queues": True,
        "task_default_queue": settings.queue_name("default"),
        "task_publish_retry": False,  # the node's reconciler retries a failed publish
        "task_time_limit": settings.largest_hard,  # each message carries its pipeline's own limits
        "enable_utc": True,
    }


def build_app(
    settings: CelerySettings, *, target: str = DEFAULT_TARGET, hostname: str | None = None
) -> Celery:
    """A Celery app for the node (to publish) or a worker (to consume), with the attempt task."""
    app = Celery("dicomnode", set_as_current=False)
    app.conf.update(celery_config(settings))
    context = WorkerContext(settings, target, hostname or default_hostname(),
                            Broker(settings.broker_url, settings.queue_prefix),
                            pipeline_versions(settings.pipelines_path))

    class AttemptRequest(Request):
        """Runs in the worker's parent process: reports what a dead child can no longer commit."""

        def on_timeout(self, soft: bool, timeout: float) -> None:
            super().on_timeout(soft, timeout)
            if not soft:
                record_failure(context, _payload(self.args), f"hard time limit of {timeout:g} s exceeded; "
                               f"the worker process on {context.hostname} was killed")

        def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> None:
            super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)
            exc = exc_info.exception
            exc = getattr(exc, "exc", exc)  # billiard wraps what the pool raised with its traceback
            if isinstance(exc, WorkerLostError):
                record_failure(context, _payload(self.args), f"the worker process on {context.hostname} died "
                               f"({exc})")
            elif not isinstance(exc, TimeLimitExceeded):  # e.g. the shared folder could not be written
                record_failure(context, _payload(self.args), f"the task failed on {context.hostname}: "
                               f"{type(exc).__name__}: {exc}")

    @app.task(name=TASK_NAME, Request=AttemptRequest, acks_late=True, ignore_result=True)
    def attempt(payload: dict[str, Any]) -> dict[str, Any]:
        return run_attempt(context, payload, SoftTimeLimitExceeded)

    return app


def _payload(args: Any) -> object:
    return args[0] if isinstance(args, list | tuple) and args else None


def install_worker_hooks(target: str = DEFAULT_TARGET) -> None:
    """In a worker: each prefork child sets ITK's thread count from the (inherited) environment cap and
    imports the job target once, before its first job."""

    def child_init(**_: Any) -> None:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(os.environ.get(THREAD_VARIABLES[-1], "1")))
        load_target(target)

    signals.worker_process_init.connect(child_init, weak=False, dispatch_uid="dicomnode-child-init")
