"""CLI commands: ``dicomnode queue list | retry ID | retry --failed | purge`` (the outbox) and
``dicomnode queue held | release ID | discard ID`` (results held back by QC)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dicomnode.cli.common import ConfigOption, cli_errors, fail, load_config_or_exit

if TYPE_CHECKING:
    from dicomnode.config import Config
    from dicomnode.send.held import HeldResult
    from dicomnode.send.outbox import Outbox, OutboxItem

StateOption = Annotated[
    str | None, typer.Option("--state", "-s", help="queued, sending, sent, failed or dead.")
]
DestinationOption = Annotated[str | None, typer.Option("--destination", "-d", help="Destination name.")]


def _outbox(config_path: Path | None) -> Outbox:
    from dicomnode.database import Database
    from dicomnode.send.outbox import Outbox

    config = load_config_or_exit(config_path)
    with cli_errors():
        return Outbox(Database(config.storage.database_path), config.outbox)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _table(items: list[OutboxItem]) -> str:
    from dicomnode.send.outbox import DUE

    header = ("ID", "DESTINATION", "STATE", "TRIES", "ORIGIN", "JOB", "SOP INSTANCE UID", "NEXT TRY",
              "LAST ERROR")
    rows = [header] + [
        (str(i.id), i.destination, i.state, str(i.attempts), i.origin, i.job_id or "-", i.sop_instance_uid,
         _when(i.next_attempt_at) if i.state in DUE else "-",
         (i.last_error[:80] + "…") if len(i.last_error) > 80 else (i.last_error or "-"))
        for i in items
    ]
    widths = [max(len(r[c]) for r in rows) for c in range(len(header) - 1)]
    return "\n".join("  ".join(r[c].ljust(widths[c]) for c in range(len(header) - 1)) + "  " + r[-1]
                     for r in rows)


def list_command(
    config_path: ConfigOption = None,
    state: StateOption = None,
    destination: DestinationOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the entries as JSON.")] = False,
    limit: Annotated[int | None, typer.Option("--limit", help="At most this many entries.")] = None,
) -> None:
    """List outbox entries (what is waiting, sent, failed or dead, per destination)."""
    outbox = _outbox(config_path)
    with cli_errors():
        items = outbox.list(state=state, destination=destination, limit=limit)
    if as_json:
        typer.echo(json.dumps([i.to_dict() for i in items], indent=2))
        return
    if not items:
        typer.echo("The outbox is empty" + (" for this filter." if state or destination else "."))
        return
    typer.echo(_table(items))
    depth = outbox.depth_by_destination()
    typer.echo(f"{len(items)} entr{'y' if len(items) == 1 else 'ies'}; pending per destination: "
               + (", ".join(f"{k}={v}" for k, v in depth.items()) or "none"))


def retry_command(
    item_id: Annotated[int | None, typer.Argument(help="The outbox entry to send again.")] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Retry every failed and dead entry.")] = False,
    destination: DestinationOption = None,
    config_path: ConfigOption = None,
) -> None:
    """Send a failed or dead entry again now (or all of them with --failed)."""
    if (item_id is None) == (not failed):
        raise fail("give either an entry ID or --failed (not both).")
    outbox = _outbox(config_path)
    with cli_errors():
        if failed:
            count = outbox.retry_failed(destination=destination)
            typer.echo(f"Re-queued {count} failed or dead entr{'y' if count == 1 else 'ies'}.")
            return
        item = outbox.retry(int(item_id or 0))
    typer.echo(f"Re-queued entry {item.id} ({item.sop_instance_uid} → {item.destination}).")


def purge_command(
    state: StateOption = None,
    destination: DestinationOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Really delete the entries.")] = False,
    config_path: ConfigOption = None,
) -> None:
    """Delete outbox entries: by default the finished ones (sent and dead); --state queued drops pending
    sends for good."""
    outbox = _outbox(config_path)
    with cli_errors():
        if not yes:
            states = [state] if state else ["sent", "dead"]
            count = sum(len(outbox.list(state=s, destination=destination)) for s in states)
            raise fail(f"this would delete {count} entr{'y' if count == 1 else 'ies'} in state "
                       f"{'/'.join(states)}{f' for {destination}' if destination else ''}; "
                       "add --yes to do it.")
        count = outbox.purge(state=state, destination=destination)
    typer.echo(f"Deleted {count} entr{'y' if count == 1 else 'ies'}.")


def read_held(config: Config) -> list[HeldResult]:
    """Results waiting for an operator (state ``held``), newest first."""
    from dicomnode.database import Database
    from dicomnode.send.held import HeldResults, HeldState

    return HeldResults(Database(config.storage.database_path)).list(HeldState.HELD)


def held_command(
    config_path: ConfigOption = None,
    all_states: Annotated[bool, typer.Option("--all", help="Also released and discarded ones.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the entries as JSON.")] = False,
) -> None:
    """List results held back because their QC verdict is fail (on_qc_fail: hold)."""
    from dicomnode.database import Database
    from dicomnode.send.held import HeldResults

    config = load_config_or_exit(config_path)
    with cli_errors():
        items = HeldResults(Database(config.storage.database_path)).list(None if all_states else "held")
    if as_json:
        typer.echo(json.dumps([i.to_dict() for i in items], indent=2))
        return
    if not items:
        typer.echo("No results are held.")
        return
    for i in items:
        decided = f" by {i.decided_by} at {_when(i.decided_at)}" if i.decided_by else ""
        typer.echo(f"{i.id}  {i.state}{decided}  job {i.job_id} ({i.pipeline}) → {i.destination}  "
                   f"{len(i.files)} files  held {_when(i.created_at)}\n    QC: {i.reason}")


def _decide(item_id: int, config_path: Path | None, release: bool) -> None:
    import getpass

    from dicomnode.database import Database
    from dicomnode.observability.audit import AuditTrail
    from dicomnode.send.held import HeldResults, release_to_outbox
    from dicomnode.send.outbox import Outbox

    config = load_config_or_exit(config_path)
    user = f"cli:{getpass.getuser()}"
    with cli_errors():
        db = Database(config.storage.database_path)
        held = HeldResults(db)
        if release:
            item = release_to_outbox(held, Outbox(db, config.outbox), config, item_id, user)
        else:
            item = held.discard(item_id, user)
        if item.study_uid:
            AuditTrail(db).record("operator", item.study_uid, series_uid=item.series_uid, job_id=item.job_id,
                                  detail={"action": "release" if release else "discard", "user": user,
                                          "destination": item.destination, "qc": item.reason})
    verb = "Released" if release else "Discarded"
    typer.echo(f"{verb} held result {item.id} (job {item.job_id} → {item.destination}"
               + (f": {len(item.files)} files queued)." if release else ")."))


def release_command(
    item_id: Annotated[int, typer.Argument(help="The held result to send.")],
    config_path: ConfigOption = None,
) -> None:
    """Send a held result after all (an operator decided its QC failure is acceptable); audited."""
    _decide(item_id, config_path, release=True)


def discard_command(
    item_id: Annotated[int, typer.Argument(help="The held result to drop.")],
    config_path: ConfigOption = None,
) -> None:
    """Never send a held result; audited."""
    _decide(item_id, config_path, release=False)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the dicomnode app."""
    queue = typer.Typer(help="Inspect and manage the outbox (sends to destinations).", no_args_is_help=True)
    queue.command("list")(list_command)
    queue.command("retry")(retry_command)
    queue.command("purge")(purge_command)
    queue.command("held")(held_command)
    queue.command("release")(release_command)
    queue.command("discard")(discard_command)
    app.add_typer(queue, name="queue")
