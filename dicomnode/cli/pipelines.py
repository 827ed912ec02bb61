"""CLI commands: ``dicomnode pipelines check`` and ``dicomnode pipelines list`` (shipped + site pipelines)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from dicomnode.cli.common import ConfigOption, load_config_or_exit

PipelinesOption = Annotated[
    Path | None,
    typer.Option("--pipelines", "-p", help="Site pipelines folder (default: the config's pipelines.path)."),
]


def check(config_path: ConfigOption = None, pipelines: PipelinesOption = None) -> None:
    """Validate every site pipeline file (format, steps, parameters, and that each model fits its
    parameters); print each problem as file:line and exit 1 on any."""
    from dicomnode.pipelines.registry import check_pipelines

    config = load_config_or_exit(config_path)
    folder = pipelines or config.pipelines_folder
    found, issues = check_pipelines(folder)
    for issue in issues:
        print(f"dicomnode: error: {issue}", file=sys.stderr)
    if issues:
        count = len(issues)
        print(f"dicomnode: error: the pipelines in '{folder}' are invalid ({count} problem"
              f"{'s' if count != 1 else ''}).", file=sys.stderr)
        raise typer.Exit(1)
    site = [spec for spec in found.values() if spec.site]
    typer.echo(f"Pipelines OK: {len(found)} pipelines, {len(site)} from {folder}.")
    _table(found.values())


def list_pipelines(config_path: ConfigOption = None, pipelines: PipelinesOption = None) -> None:
    """List the pipelines rules may use (shipped and the site's valid ones)."""
    from dicomnode.pipelines.registry import load_pipelines

    config = load_config_or_exit(config_path)
    _table(load_pipelines(pipelines or config.pipelines_folder, strict=False).values())


def _table(specs: object) -> None:
    for spec in sorted(specs, key=lambda s: s.name):  # type: ignore[attr-defined]
        where = spec.source if spec.site else "shipped"
        steps = ", ".join(s.use for s in spec.steps) or "no steps"
        typer.echo(f"  {spec.name:<20} {spec.version:<8} {where}  ({steps})")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the dicomnode app."""
    pipelines_app = typer.Typer(help="Pipelines: validate and list (shipped and site).", no_args_is_help=True)
    pipelines_app.command("check")(check)
    pipelines_app.command("list")(list_pipelines)
    app.add_typer(pipelines_app, name="pipelines")
