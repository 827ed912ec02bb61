"""CLI: the audit trail — ``dicomnode audit export`` and the ``dicomnode status --study UID`` view."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from dicomnode.cli.common import ConfigOption, cli_errors, fail, load_config_or_exit
from dicomnode.config import Config


def _open(config: Config):  # -> AuditTrail (imported lazily: fast --help)
    from dicomnode.database import Database
    from dicomnode.observability.audit import AuditTrail

    path = config.storage.database_path
    if not path.exists():
        raise fail(f"The node database '{path}' does not exist (has the node received anything yet?).")
    return AuditTrail(Database(path))


def show_study(config: Config, study_uid: str, as_json: bool) -> None:
    """Print one study's timeline (``dicomnode status --study UID [--json]``)."""
    from dicomnode.observability.audit import format_timeline

    with cli_errors():
        timeline = _open(config).timeline(study_uid)
    typer.echo(json.dumps(timeline, indent=2, ensure_ascii=False) if as_json else format_timeline(timeline))


def export(
    config_path: ConfigOption = None,
    study: Annotated[str | None, typer.Option("--study", help="Only this Study Instance UID.")] = None,
    days: Annotated[
        float | None, typer.Option("--days", help="Only events of the last DAYS days.", min=0)
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")
    ] = None,
) -> None:
    """Export audit events (received → completed → routed → processed → sent) as a JSON array."""
    config = load_config_or_exit(config_path)
    since = time.time() - days * 86400 if days is not None else None
    with cli_errors():
        text = _open(config).export_json(study, since)
    if output is None:
        typer.echo(text)
        return
    try:
        output.write_text(text + "\n", encoding="utf-8")
    except OSError as exc:
        raise fail(f"Cannot write the audit export to '{output}': {exc.strerror or exc}.") from None
    typer.echo(f"Wrote {len(json.loads(text))} audit events to {output}.")


def register(app: typer.Typer) -> None:
    audit_app = typer.Typer(help="The audit trail of received, processed and sent studies.",
                            no_args_is_help=True)
    audit_app.command("export")(export)
    app.add_typer(audit_app, name="audit")
