"""CLI commands of the web console: ``dicomnode console hash-password``."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from dicomnode.cli.common import cli_errors


def hash_password(
    stdin: Annotated[
        bool, typer.Option("--stdin", help="Read the password from the first line of stdin.")
    ] = False,
) -> None:
    """Print the scrypt hash of a password for console.admin_password_hash (the password is never stored)."""
    from dicomnode.console.auth import hash_password as make_hash

    if stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Console password", hide_input=True, confirmation_prompt=True)
    with cli_errors():
        typer.echo(make_hash(password))


def register(app: typer.Typer) -> None:
    """Add this module's commands to the dicomnode app."""
    console_app = typer.Typer(help="The web console.", no_args_is_help=True)
    console_app.command("hash-password")(hash_password)
    app.add_typer(console_app, name="console")
