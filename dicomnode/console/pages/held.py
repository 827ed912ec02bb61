"""Results held back by quality control (``on_qc_fail: hold``): listed with the failed segments' reasons,
released (queued for their destination) or discarded by a logged-in operator; both are audited.

=======================================  =========================================================
GET  /held                               held results (and the last decided ones), QC reasons
POST /held/{id}/release|discard          the operator's decision (logged in, CSRF-checked)
=======================================  =========================================================
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from dicomnode.console.web import READ, Console, ConsoleDep, Writer
from dicomnode.send.held import HeldResult, HeldResults, HeldState, release_to_outbox

router = APIRouter(tags=["Held results"])


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


@router.get("/held", response_class=HTMLResponse, dependencies=READ)
def held_page(request: Request, console: ConsoleDep) -> Response:
    store = held_results(console)
    waiting = store.list(HeldState.HELD)
    decided = [h for h in store.list(limit=100) if h.state is not HeldState.HELD][:30]
    return console.render(request, "held.html", title="Held results", active="Held", waiting=waiting,
                          decided=decided)


@router.post("/held/{held_id}/release")
def release(request: Request, held_id: int, console: ConsoleDep, user: Writer) -> Response:
    return console.act(request, "/held", lambda: decide(console, held_id, user, True),
                       f"Held result {held_id} released: its files are queued for {{result.destination}}.")


@router.post("/held/{held_id}/discard")
def discard(request: Request, held_id: int, console: ConsoleDep, user: Writer) -> Response:
    return console.act(request, "/held", lambda: decide(console, held_id, user, False),
                       f"Held result {held_id} discarded; nothing goes to {{result.destination}}.")
