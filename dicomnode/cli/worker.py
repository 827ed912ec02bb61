"""CLI command: ``dicomnode worker`` — a Celery worker (prefork pool) for ``processing.executor: celery``."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from dicomnode.cli.common import ConfigOption, cli_errors, fail, load_config_or_exit


def worker(
    config_path: ConfigOption = None,
    queues: Annotated[str | None, typer.Option(
        "--queues", "-Q", help="Comma-separated queues to consume, e.g. 'urgent,liver-ct' (default: the "
        "urgent queue and every pipeline's queue).")] = None,
    concurrency: Annotated[int, typer.Option(
        "--concurrency", help="Child processes, each running one job at a time.", min=1)] = 1,
    hostname: Annotated[str | None, typer.Option(
        "--hostname", "-n", help="Worker name in status and Flower (default dicomnode@<host>).")] = None,
    target: Annotated[str, typer.Option(
        "--target", hidden=True, help="module:function run for each job (tests and benchmarks).")
    ] = "dicomnode.pipelines.runner:run_job",
) -> None:
    """Run a Celery worker that takes jobs from the broker and writes results to the shared folder."""
    config = load_config_or_exit(config_path)
    if config.processing.executor != "celery":
        raise fail(f"processing.executor is '{config.processing.executor}'; a worker needs 'celery'.")
    from dicomnode.distributed.settings import CelerySettings
    from dicomnode.observability.logging import configure_logging

    configure_logging(config.logging)
    logging.getLogger().setLevel(config.logging.level)
    with cli_errors():
        settings = CelerySettings.from_config(config)
    if not settings.shared_dir.is_dir():
        raise fail(f"The shared job folder '{settings.shared_dir}' (processing.celery.shared_dir) does not "
                   "exist on this machine; mount it at the same path as configured.")
    from dicomnode.distributed.app import build_app, cap_threads, install_worker_hooks
    from dicomnode.distributed.task import default_hostname
    from dicomnode.pipelines.registry import available_pipelines

    cap_threads(settings.itk_threads)  # inherited by every prefork child before numpy/ITK start
    from celery.utils.nodenames import host_format

    name = host_format(hostname) if hostname else default_hostname()
    if queues:
        wanted = [q.strip() for q in queues.split(",") if q.strip()]
        names = [q if q.startswith(settings.queue_prefix + ".") else settings.queue_name(q) for q in wanted]
    else:
        site = settings.pipelines_path or None  # the site pipelines get their queues too
        names = settings.default_queues(p for p in available_pipelines(site) if p != "forward")
    app = build_app(settings, target=target, hostname=name)
    install_worker_hooks(target)
    app.worker_main([
        "worker", "--pool=prefork", f"--concurrency={concurrency}", f"--queues={','.join(names)}",
        f"--hostname={name}", f"--loglevel={config.logging.level}", "--without-mingle", "--without-gossip",
    ])


def register(app: typer.Typer) -> None:
    """Add this module's commands to the dicomnode app."""
    app.command("worker")(worker)
