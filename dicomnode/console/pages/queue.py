"""The outbox per destination, and the queue actions (retry, retry failed, purge)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from dicomnode.console.web import READ, ConsoleDep, Writer

router = APIRouter(tags=["Queue"])


@router.get("/queue", response_class=HTMLResponse, dependencies=READ)
def queue(request: Request, console: ConsoleDep, state: str = "", destination: str = "") -> Response:
    outbox = console.node.outbox
    items = outbox.list(state or None, destination or None)
    return console.render(request, "queue.html", title="Queue", active="Queue",
                          counts=outbox.counts(), depth=outbox.depth_by_destination(),
                          items=items[-300:][::-1], total=len(items),
                          q={"state": state, "destination": destination},
                          destinations=sorted(set(console.node.config.destinations) | set(outbox.counts())))


@router.post("/queue/retry")
def queue_retry(request: Request, console: ConsoleDep, user: Writer,
                item_id: Annotated[int, Form()]) -> Response:
    return console.act(request, "/queue", lambda: console.actions.retry(item_id, user),
                       f"Entry {item_id} queued again.")


@router.post("/queue/retry-failed")
def queue_retry_failed(request: Request, console: ConsoleDep, user: Writer,
                       destination: Annotated[str, Form()] = "") -> Response:
    return console.act(request, "/queue", lambda: console.actions.retry_failed(destination, user),
                       "{result} failed/dead entries queued again.")


@router.post("/queue/purge")
def queue_purge(request: Request, console: ConsoleDep, user: Writer, state: Annotated[str, Form()] = "",
                destination: Annotated[str, Form()] = "") -> Response:
    return console.act(request, "/queue", lambda: console.actions.purge(state, destination, user),
                       "{result} entries purged.")
