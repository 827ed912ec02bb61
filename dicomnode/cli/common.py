"""Shared CLI plumbing: turning dicomnode errors into one clear message and a non-zero exit."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from dicomnode.config import Config, load_config
from dicomnode.errors import DicomNodeError

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="YAML config file (default: $DICOMNODE_CONFIG, else built-in defaults)."
    ),
]


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``dicomnode: error: …`` to stderr and return the Exit to raise."""
    print(f"dicomnode: error: {message}", file=sys.stderr)
    return typer.Exit(code)


@contextmanager
def cli_errors() -> Iterator[None]:
    """Turn a :class:`DicomNodeError` raised inside the block into a CLI message and exit code 2."""
    try:
        yield
    except DicomNodeError as exc:
        raise fail(str(exc)) from None


def load_config_or_exit(path: Path | None) -> Config:
    with cli_errors():
        return load_config(path)

