"""CLI command ``dicomnode health``: is the node healthy, and can it reach its destinations?

1. The node itself: asks a running node's ``/readyz`` (or ``/healthz`` with ``--live``). Without ``--url``
   the address comes from the config's ``metrics.host``/``metrics.port``.
2. Its destinations (unless ``--node-only`` or ``--live``): read from the node database's outbox, a
   destination is unreachable when its sends have failed without an answer for longer than
   ``health.destination_unreachable_minutes`` with no delivery since
   (:func:`dicomnode.observability.health.destination_health`).

Exit 0 when all is well, 1 when the node is not healthy or cannot be reached, 3 when the node is healthy
but a destination is unreachable. The Docker ``HEALTHCHECK`` uses ``--node-only``: a PACS that is down is
no reason to restart the node (which keeps the results in its outbox until the PACS is back).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from dicomnode.cli.common import ConfigOption, fail, load_config_or_exit
from dicomnode.config import Config

EXIT_NODE = 1
EXIT_DESTINATIONS = 3


def _default_url(host: str, port: int, endpoint: str) -> str:
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/{endpoint}"


def _ask(url: str, timeout: float) -> tuple[int | None, dict[str, Any], str]:
    """(HTTP status or None when unreachable, JSON answer, problem text)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (operator-given URL)
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        return None, {}, f"the node at {url} cannot be reached: {getattr(exc, 'reason', exc)}."
    try:
        answer = json.loads(body or b"{}")
    except ValueError:
        answer = {}
    if status == 200:
        return status, answer, ""
    failed = [
        f"{name}: {check.get('detail', '')}"
        for name, check in (answer.get("checks") or {}).items()
        if isinstance(check, dict) and not check.get("ok")
    ]
    detail = "; ".join(failed) or answer.get("status") or body[:200].decode(errors="replace")
    return status, answer, f"the node at {url} is not healthy (HTTP {status}): {detail}"


def _destinations(cfg: Config) -> tuple[list[Any], str]:
    """The health of the configured destinations from the node database (and a note when unknown)."""
    from dicomnode.database import Database
    from dicomnode.errors import DicomNodeError
    from dicomnode.observability.health import destination_health
    from dicomnode.send.outbox import Outbox

    path = cfg.storage.database_path
    if not cfg.destinations:
        return [], "no destinations configured"
    if not path.exists():
        return [], f"the node database '{path}' does not exist yet: nothing sent, nothing known"
    try:
        contacts = Outbox(Database(path), cfg.outbox).contacts()
    except (DicomNodeError, OSError) as exc:
        return [], f"cannot read the outbox of '{path}': {exc}"
    threshold = cfg.health.destination_unreachable_minutes * 60
    return destination_health(contacts, cfg.destinations, threshold), ""


def _default_config() -> Config | None:
    """With ``--url`` and no ``--config``: $DICOMNODE_CONFIG or the defaults, if they load (they only say
    which destinations to check)."""
    from dicomnode.config import load_config
    from dicomnode.errors import DicomNodeError

    try:
        return load_config(None)
    except DicomNodeError:
        return None


def health(
    config: ConfigOption = None,
    url: Annotated[
        str | None,
        typer.Option("--url", help="Full URL to ask (default: http://<metrics.host>:<metrics.port>/readyz)."),
    ] = None,
    live: Annotated[
        bool, typer.Option("--live", help="Ask /healthz (process alive) instead of /readyz (ready to serve); "
                           "destinations are not checked.")
    ] = False,
    node_only: Annotated[
        bool, typer.Option("--node-only", help="Check the node itself only, not whether its destinations are "
                           "reachable (the Docker HEALTHCHECK).")
    ] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for the answer.")] = 5.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the node's JSON answer (plus 'destinations').")
    ] = False,
) -> None:
    """Check that a running node is healthy and reaches its destinations: exit 0 when it does, 1 when the
    node is not healthy or cannot be reached, 3 when a destination is unreachable."""
    cfg = load_config_or_exit(config) if url is None or config is not None else _default_config()
    if url is None:
        if cfg is None or cfg.metrics.port == 0:
            raise fail("metrics.port is 0 (the health endpoint is off); pass --url or enable it.", code=1)
        url = _default_url(cfg.metrics.host, cfg.metrics.port, "healthz" if live else "readyz")
    status, answer, problem = _ask(url, timeout)
    if cfg is None:
        checked, note = [], "not checked: no usable configuration (pass --config)"
    else:
        checked, note = ([], "not checked") if (node_only or live) else _destinations(cfg)
    minutes = cfg.health.destination_unreachable_minutes if cfg is not None else 0.0
    unreachable = [d for d in checked if d.unreachable]
    if as_json:
        answer = dict(answer, destinations={d.destination: d.to_dict() for d in checked})
        typer.echo(json.dumps(answer, indent=2, sort_keys=True))
    else:
        if not problem:
            typer.echo(f"healthy: {url} answered {status} {answer.get('status', '')}".rstrip())
        for item in checked:
            typer.echo(f"destination {item.describe(minutes * 60)}")
        if note and not (node_only or live):
            typer.echo(f"destinations: {note}")
    if problem:
        raise fail(problem, code=EXIT_NODE)
    if unreachable:
        names = ", ".join(d.destination for d in unreachable)
        raise fail(f"destination(s) unreachable for longer than {minutes:g} min "
                   f"(health.destination_unreachable_minutes): {names}.", code=EXIT_DESTINATIONS)


def register(app: typer.Typer) -> None:
    """Add ``dicomnode health`` to the app."""
    app.command("health")(health)
