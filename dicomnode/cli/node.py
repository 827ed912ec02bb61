"""CLI commands of the node itself: ``serve``, ``status`` and ``config check``."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Annotated, Any

import typer

from dicomnode.cli.common import ConfigOption, cli_errors, load_config_or_exit
from dicomnode.config import Config


def _configure_logging(config: Config) -> None:
    from dicomnode.observability.logging import configure_logging

    configure_logging(config.logging)
    logging.getLogger().setLevel(config.logging.level)
    # pynetdicom narrates every association at INFO; keep it for DEBUG runs.
    if config.logging.level != "DEBUG":
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def serve(config_path: ConfigOption = None) -> None:
    """Run the node: receive, assemble, route, process and send until SIGTERM."""
    config = load_config_or_exit(config_path)
    _configure_logging(config)
    from dicomnode.heap import freeze_startup_heap
    from dicomnode.runtime.wiring import build_service

    with cli_errors():
        service = build_service(config)
        freeze_startup_heap()  # (a receiver process does the same)
        service.run_forever()


def read_status(database_path: Path) -> list[dict[str, Any]]:
    """Studies with their series, state, generation and instance counts, read from the node database."""
    if not database_path.exists():
        return []
    from dicomnode.assemble.assembler import AssemblyRecords, AssemblyState
    from dicomnode.database import Database
    from dicomnode.spool.index import SpoolIndex

    db = Database(database_path)
    try:
        series = SpoolIndex(db, database_path.parent).all_series()
        records = AssemblyRecords(db)
        series_states = records.series_states()
        study_states = records.study_states()
    finally:
        db.close()
    studies: dict[str, dict[str, Any]] = {}
    for s in series:
        study_state, study_generation = study_states.get(s.study_uid, (AssemblyState.OPEN, 0))
        entry = studies.setdefault(
            s.study_uid,
            {
                "study_uid": s.study_uid,
                "state": str(study_state),
                "generation": study_generation,
                "instances": 0,
                "series": [],
            },
        )
        state, generation = series_states.get((s.study_uid, s.series_uid), (AssemblyState.OPEN, 0))
        entry["instances"] += s.instance_count
        entry["series"].append(
            {
                "series_uid": s.series_uid,
                "modality": s.modality,
                "series_number": s.series_number,
                "state": str(state),
                "generation": generation,
                "instances": s.instance_count,
                "bytes": s.size,
                "last_received_at": s.last_received_at,
            }
        )
    return list(studies.values())


def status(
    config_path: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    study: Annotated[str | None, typer.Option("--study", help="One study's audit timeline.")] = None,
) -> None:
    """List the studies and series the node holds, with state and instance counts."""
    config = load_config_or_exit(config_path)
    if study is not None:
        from dicomnode.cli.audit import show_study

        return show_study(config, study, as_json)
    with cli_errors():
        try:
            studies = read_status(config.storage.database_path)
            from dicomnode.route.decisions import format_decision, read_decisions

            decisions = read_decisions(config.storage.database_path, limit=20)
            from dicomnode.distributed.status import format_job_status, read_job_status

            jobs = read_job_status(config.storage.database_path)  # per state, and per worker (celery)
            from dicomnode.cli.queue import read_held

            held = read_held(config)
            from dicomnode.spool.journal import journal_backlog

            journal_records, journal_bytes = journal_backlog(config.storage)
        except sqlite3.Error as exc:
            from dicomnode.errors import DicomNodeError

            raise DicomNodeError(
                f"Cannot read the node database '{config.storage.database_path}': {exc}."
            ) from exc
    if as_json:
        journal = {"pending_records": journal_records, "pending_bytes": journal_bytes}
        typer.echo(json.dumps({"studies": studies, "decisions": decisions, "jobs": jobs,
                               "held": [h.to_dict() for h in held], "journal": journal}, indent=2))
        return
    if journal_records:
        typer.echo(f"Receive journal: {journal_records} instance(s) ({journal_bytes / 1e6:.1f} MB) received, "
                   "their spool files not fsynced yet (the syncer's backlog, or a restart's recovery).")
    for line in format_job_status(jobs):
        typer.echo(line)
    for item in held:
        typer.echo(f"held {item.id}: job {item.job_id} ({item.pipeline}) for {item.destination}, QC failed: "
                   f"{item.reason} — release or discard: dicomnode queue release|discard {item.id}")
    if not studies:
        typer.echo(f"No studies in {config.storage.path}.")
        return
    for study in studies:
        typer.echo(
            f"study {study['study_uid']}  {study['state']} (generation {study['generation']})  "
            f"{len(study['series'])} series, {study['instances']} instances"
        )
        for s in study["series"]:
            typer.echo(
                f"  series {s['series_uid']}  {s['modality'] or '-':<3} #{s['series_number'] or '-'}  "
                f"{s['state']} (generation {s['generation']})  {s['instances']} instances"
            )
    if decisions:
        typer.echo("Routing decisions (newest first):")
        for decision in decisions:
            typer.echo("  " + format_decision(decision))


def config_check(config_path: ConfigOption = None) -> None:
    """Validate the configuration file and environment overrides; exit non-zero naming each bad key."""
    config = load_config_or_exit(config_path)
    typer.echo(
        f"Configuration OK: AE '{config.node.ae_title}' on {config.node.host}:{config.node.port}, "
        f"data in {config.storage.path}."
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to the dicomnode app."""
    app.command("serve")(serve)
    app.command("status")(status)
    config_app = typer.Typer(help="Configuration commands.", no_args_is_help=True)
    config_app.command("check")(config_check)
    app.add_typer(config_app, name="config")
