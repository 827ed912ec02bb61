"""The dashboard (``/``)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from dicomnode.console.dashboard import build_dashboard
from dicomnode.console.web import READ, ConsoleDep

router = APIRouter(tags=["Dashboard"], dependencies=READ)


@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request, console: ConsoleDep) -> Response:
    return console.render(request, "dashboard.html", title="Dashboard", active="Dashboard",
                          d=build_dashboard(console.node), refresh=15)
