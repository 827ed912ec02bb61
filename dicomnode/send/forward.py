"""The ``forward`` routing action: queue the original instances (spool files) for destinations."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from dicomnode.errors import SendError
from dicomnode.send.outbox import Outbox


def series_files(series_dir: Path) -> list[Path]:
    """The spooled instances of a series (``<spool>/<Study>/<Series>/*.dcm``), sorted."""
    files = sorted(Path(series_dir).glob("*.dcm"))
    if not files:
        raise SendError(f"Series folder '{series_dir}' holds no instances to forward.")
    return files


def forward(
    outbox: Outbox, files: Iterable[Path], destinations: Sequence[str], job_id: str | None = None
) -> dict[str, list[int]]:
    """Queue ``files`` unchanged for every destination; returns the outbox ids per destination."""
    paths = list(files)
    return {name: outbox.enqueue(name, paths, "forward", job_id=job_id) for name in destinations}
