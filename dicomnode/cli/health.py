"""CLI command ``dicomnode health``: ask a running node's ``/readyz`` (or ``/healthz``); exit 0 or 1.

Used by the Docker ``HEALTHCHECK`` and by monitoring scripts. Without ``--url`` the address comes from
the config's ``metrics.host``/``metrics.port``.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from dicomnode.cli.common import ConfigOption, fail, load_config_or_exit


def _default_url(host: str, port: int, endpoint: str) -> str:
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/{endpoint}"


def health(
    config: ConfigOption = None,
    url: Annotated[
        str | None,
        typer.Option("--url", help="Full URL to ask (default: http://<metrics.host>:<metrics.port>/readyz)."),
    ] = None,
    live: Annotated[
        bool, typer.Option("--live", help="Ask /healthz (process alive) instead of /readyz (ready to serve).")
    ] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for the answer.")] = 5.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the node's JSON answer.")] = False,
) -> None:
    """Check that a running node is healthy: exit 0 when it is, 1 when it is not or cannot be reached."""
    import urllib.error
    import urllib.request

    if url is None:
        cfg = load_config_or_exit(config)
        if cfg.metrics.port == 0:
            raise fail("metrics.port is 0 (the health endpoint is off); pass --url or enable it.", code=1)
        url = _default_url(cfg.metrics.host, cfg.metrics.port, "healthz" if live else "readyz")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (operator-given URL)
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise fail(f"the node at {url} cannot be reached: {reason}.", code=1) from None
    try:
        answer = json.loads(body or b"{}")
    except ValueError:
        answer = {}
    if as_json:
        typer.echo(json.dumps(answer, indent=2, sort_keys=True))
    if status == 200:
        if not as_json:
            typer.echo(f"healthy: {url} answered {status} {answer.get('status', '')}".rstrip())
        return
    failed = [
        f"{name}: {check.get('detail', '')}"
        for name, check in (answer.get("checks") or {}).items()
        if isinstance(check, dict) and not check.get("ok")
    ]
    detail = "; ".join(failed) or answer.get("status") or body[:200].decode(errors="replace")
    raise fail(f"the node at {url} is not healthy (HTTP {status}): {detail}", code=1)


def register(app: typer.Typer) -> None:
    """Add ``dicomnode health`` to the app."""
    app.command("health")(health)
