"""The ``dicomnode`` command line (typer). Each command group lives in its own module."""

from __future__ import annotations

import typer

from dicomnode.cli import audit, console, health, imaging, node, pipelines, quantify, queue, rules, worker


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="dicomnode",
        help="A DICOM node between scanners and the PACS: receive, route, process, send.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    node.register(app)
    rules.register(app)
    pipelines.register(app)
    imaging.register(app)
    quantify.register(app)
    queue.register(app)
    health.register(app)
    audit.register(app)
    console.register(app)
    worker.register(app)
    return app


def main() -> None:
    build_app()()
