"""The console's held-results page: results whose QC verdict is ``fail`` wait here (``on_qc_fail: hold``)
for an operator to release (queue them for their destination) or discard them; both are audited.

=======================================  =========================================================
GET  /held                               held results (and the last decided ones), QC reasons
POST /held/{id}/release|discard          the operator's decision (logged in, CSRF-checked)
=======================================  =========================================================
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from dicomnode.console.web import Console, Flash
from dicomnode.errors import DicomNodeError
from dicomnode.send.held import HeldResult, HeldResults, HeldState, release_to_outbox

log = logging.getLogger(__name__)


def held_results(console: Console) -> HeldResults:
    return HeldResults(console.node.database)


def decide(console: Console, held_id: int, user: str, release: bool) -> HeldResult:
    """Release or discard one held result and write the decision to the audit trail."""
    node = console.node
    held = held_results(console)
    if release:
        item = release_to_outbox(held, node.outbox, node.config, held_id, user)
    else:
        item = held.discard(held_id, user)
    if item.study_uid:
        node.audit.record("operator", item.study_uid, series_uid=item.series_uid or None, job_id=item.job_id,
                          detail={"action": "release" if release else "discard", "user": user,
                                  "destination": item.destination, "qc": item.reason})
    return item


def register(app: FastAPI, console: Console, read: list[Any], writer: Any) -> None:  # noqa: ANN401
    """Add the held-results routes to the console app."""

    @app.get("/held", response_class=HTMLResponse, dependencies=read)
    def held_page(request: Request) -> Response:
        store = held_results(console)
        waiting = store.list(HeldState.HELD)
        decided = [h for h in store.list(limit=100) if h.state is not HeldState.HELD][:30]
        return console.render(request, "held.html", title="Held results", active="Held", waiting=waiting,
                              decided=decided)

    def act(request: Request, held_id: int, user: str, release: bool) -> Response:
        try:
            item = decide(console, held_id, user, release)
        except DicomNodeError as exc:
            return console.redirect(request, "/held", Flash(str(exc).splitlines()[0], "error"))
        verb = "released: its files are queued for" if release else "discarded; nothing goes to"
        return console.redirect(request, "/held", Flash(f"Held result {item.id} {verb} {item.destination}."))

    @app.post("/held/{held_id}/release")
    def release(request: Request, held_id: int, *, user: str = Depends(writer)) -> Response:
        return act(request, held_id, user, True)

    @app.post("/held/{held_id}/discard")
    def discard(request: Request, held_id: int, *, user: str = Depends(writer)) -> Response:
        return act(request, held_id, user, False)
