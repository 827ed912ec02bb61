"""The console's FastAPI application: :func:`create_app(node)` → an ASGI app (pages in ``templates/``).

=======================================  =========================================================
GET  /                                   Dashboard
GET|POST /login, POST /logout            password login (``console.admin_password_hash``), throttled
GET  /account, POST /account/password    change the admin password (revokes the user's other sessions)
GET  /studies                            study list (patient*, date, modality, state)  *logged in
GET  /studies/{study}                    series, decisions, jobs, deliveries, audit events
POST /studies/{study}/rerun|resend|discard   operator actions (audited)
GET  /studies/{study}/series/{series}/preview   thumbnails + measurements of a processed series
GET  /preview/{study}/{job}/{plane}.png  a thumbnail (axial, coronal, sagittal)
GET  /rules                              active rule set, files, validator, tester, editor
POST /rules/validate|save|test           validate / save (atomic, reload) / dry-run
GET  /queue, POST /queue/retry|retry-failed|purge   the outbox per destination
GET  /held, POST /held/{id}/release|discard   results held back by QC
=======================================  =========================================================

Each page group is a router in :mod:`dicomnode.console.pages`. A :class:`~dicomnode.errors.DicomNodeError`
that reaches the app becomes one answer: the error page with its message (``{"detail": message}`` for a
client that asks for JSON rather than HTML), status 500 when reading stored results failed, else 400.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from dicomnode.console.node import ConsoleNode
from dicomnode.console.pages import account, dashboard, held, login, queue, results, rules, studies
from dicomnode.console.web import HERE, Console, CSRFRejected, Flash, LoginRequired, login_target
from dicomnode.errors import DicomNodeError, ImagingError, OutputError, VolumeError

log = logging.getLogger(__name__)
ROUTERS = (login.router, account.router, dashboard.router, studies.router, results.router, rules.router,
           queue.router, held.router)
SERVER_SIDE = (OutputError, ImagingError, VolumeError)  # stored results could not be read: 500, not 400


def create_app(node: ConsoleNode) -> FastAPI:
    console = Console(node)
    app = FastAPI(title="dicomnode console", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.console = console
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    for router in ROUTERS:
        app.include_router(router)

    @app.middleware("http")
    async def sessions(request: Request, call_next):  # noqa: ANN001, ANN202
        console.session(request)
        refusal = console.origin_refusal(request)
        if refusal is not None:
            log.warning("Console %s %s refused from %s: %s", request.method, request.url.path,
                        console.client_address(request), refusal)
            return console.finish(request, console.render(request, "error.html", 403, title="Forbidden",
                                                          message=refusal))
        return console.finish(request, await call_next(request))

    @app.exception_handler(LoginRequired)
    async def to_login(request: Request, exc: LoginRequired) -> Response:
        return console.redirect(request, login_target(exc.target),
                                Flash("Log in to do that.", "error") if request.method == "POST" else None)

    @app.exception_handler(CSRFRejected)
    async def csrf_rejected(request: Request, exc: CSRFRejected) -> Response:
        return console.render(request, "error.html", 403, title="Forbidden",
                              message="The form's security token is missing or wrong (CSRF check); "
                                      "nothing was changed. Reload the page and try again.")

    @app.exception_handler(DicomNodeError)
    async def refused(request: Request, exc: DicomNodeError) -> Response:
        status = 500 if isinstance(exc, SERVER_SIDE) else 400
        message = str(exc)
        log.log(logging.ERROR if status == 500 else logging.INFO, "Console %s %s: %s", request.method,
                request.url.path, message)
        accept = request.headers.get("accept", "")
        if "application/json" in accept and "text/html" not in accept:
            return JSONResponse({"detail": message}, status)
        route = request.scope.get("route")
        tags = getattr(route, "tags", None) or ["Error"]
        return console.render(request, "error.html", status, title=str(tags[0]), message=message)

    return app
