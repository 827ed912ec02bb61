"""The study list, a study's page and the operator actions on a study (re-run, re-send, discard)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from dicomnode.console.studies import STATES, search_studies, study_detail
from dicomnode.console.web import READ, ConsoleDep, Writer
from dicomnode.send.held import HeldResults

router = APIRouter(tags=["Studies"])


@router.get("/studies", response_class=HTMLResponse, dependencies=READ)
def studies(request: Request, console: ConsoleDep, patient: str = "", date_from: str = "", date_to: str = "",
            modality: str = "", state: str = "") -> Response:
    logged_in = console.user(request) is not None
    rows = search_studies(console.node, patient=patient if logged_in else "", date_from=date_from,
                          date_to=date_to, modality=modality, state=state if state in STATES else "")
    return console.render(request, "studies.html", title="Studies", active="Studies", rows=rows,
                          states=STATES, q={"patient": patient, "date_from": date_from,
                                            "date_to": date_to, "modality": modality, "state": state})


@router.get("/studies/{study_uid}", response_class=HTMLResponse, dependencies=READ)
def study(request: Request, console: ConsoleDep, study_uid: str) -> Response:
    detail = study_detail(console.node, study_uid)
    if detail is None:
        return console.render(request, "error.html", 404, title="Not found",
                              message=f"Study '{study_uid}' is not in the spool.")
    return console.render(request, "study.html", title="Study", active="Studies", s=detail,
                          destinations=sorted(console.node.config.destinations),
                          held=HeldResults(console.node.database).list(study_uid=study_uid))


@router.post("/studies/{study_uid}/rerun")
def rerun(request: Request, console: ConsoleDep, study_uid: str, user: Writer,
          decision_id: Annotated[int, Form()]) -> Response:
    return console.act(request, f"/studies/{study_uid}",
                       lambda: console.actions.rerun(study_uid, decision_id, user),
                       "Re-run submitted as job {result}.")


@router.post("/studies/{study_uid}/resend")
def resend(request: Request, console: ConsoleDep, study_uid: str, user: Writer,
           destination: Annotated[str, Form()] = "") -> Response:
    return console.act(request, f"/studies/{study_uid}",
                       lambda: console.actions.resend(study_uid, user, destination or None),
                       "{result} object(s) queued again.")


@router.post("/studies/{study_uid}/discard")
def discard(request: Request, console: ConsoleDep, study_uid: str, user: Writer) -> Response:
    return console.act(request, f"/studies/{study_uid}", lambda: console.actions.discard(study_uid, user),
                       "Discarded: {result} pending or dead deliveries removed.")
