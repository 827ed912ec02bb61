"""The console's FastAPI application: :func:`create_app(node)` → an ASGI app (pages in ``templates/``).

=======================================  =========================================================
GET  /                                   Dashboard
GET|POST /login, POST /logout            password login (``console.admin_password_hash``)
GET  /studies                            study list (patient*, date, modality, state)  *logged in
GET  /studies/{study}                    series, decisions, jobs, deliveries, audit events
POST /studies/{study}/rerun|resend|discard   operator actions (audited)
GET  /studies/{study}/series/{series}/preview   thumbnails + measurements of a processed series
GET  /preview/{study}/{job}/{plane}.png  a thumbnail (axial, coronal, sagittal)
GET  /rules                              active rule set, files, validator, tester, editor
POST /rules/validate|save|test           validate / save (atomic, reload) / dry-run
GET  /queue, POST /queue/retry|retry-failed|purge   the outbox per destination
GET  /held, POST /held/{id}/release|discard   results held back by QC (console/held.py)
=======================================  =========================================================
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from dicomnode.console.auth import verify_password
from dicomnode.console.dashboard import build_dashboard
from dicomnode.console.held import held_results
from dicomnode.console.held import register as register_held
from dicomnode.console.jobs import find_job, study_jobs
from dicomnode.console.node import ConsoleNode
from dicomnode.console.preview import (
    PLANES,
    render_preview,
    sr_measurements,
    summary_measurements,
)
from dicomnode.console.rulesdesk import (
    active_ruleset,
    dry_run_files,
    dry_run_study,
    highlight,
    list_files,
    read_file,
    save,
    validate,
)
from dicomnode.console.studies import STATES, search_studies, study_detail
from dicomnode.console.web import HERE, Console, CSRFRejected, Flash, LoginRequired, login_target, safe_next
from dicomnode.errors import DicomNodeError
from dicomnode.route.ruleset import RuleSetError

log = logging.getLogger(__name__)
PREVIEW_CACHE = 8


def create_app(node: ConsoleNode) -> FastAPI:
    console = Console(node)
    app = FastAPI(title="dicomnode console", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.console = console
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.middleware("http")
    async def sessions(request: Request, call_next):  # noqa: ANN001, ANN202
        console.session(request)
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

    async def writer(request: Request) -> str:
        return await console.writer(request)

    def reader(request: Request) -> None:
        console.check_read(request)

    read = [Depends(reader)]

    # -- login -------------------------------------------------------------------------------------------
    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str = "/") -> Response:  # noqa: A002 - the query parameter
        return console.render(request, "login.html", title="Log in", next=safe_next(next))

    @app.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        await console.check_csrf(request)
        form = await request.form()
        user, password = str(form.get("username", "")), str(form.get("password", ""))
        target = safe_next(str(form.get("next", "/")))
        expected = console.config.admin_password_hash
        ok = False
        if expected:
            user_ok = hmac.compare_digest(user.encode(), console.config.admin_user.encode())
            ok = await run_in_threadpool(verify_password, password, expected) and user_ok
        if not ok:
            log.warning("Console login refused for user %r from %s.", user,
                        request.client.host if request.client else "?")
            await asyncio.sleep(0.5)
            message = "Wrong user name or password." if expected else \
                "Password login is not configured (console.admin_password_hash)."
            return console.render(request, "login.html", 401, title="Log in", next=target, error=message)
        console.start_session(request, user)
        log.info("Console user %s logged in.", user)
        return console.redirect(request, target, Flash(f"Logged in as {user}."))

    @app.post("/logout")
    def logout(request: Request, *, user: str = Depends(writer)) -> Response:
        console.start_session(request, None)
        return console.redirect(request, "/", Flash(f"{user} logged out."))

    # -- dashboard ---------------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, dependencies=read)
    def dashboard(request: Request) -> Response:
        return console.render(request, "dashboard.html", title="Dashboard", active="Dashboard",
                              d=build_dashboard(node), refresh=15)

    # -- studies -----------------------------------------------------------------------------------------
    @app.get("/studies", response_class=HTMLResponse, dependencies=read)
    def studies(request: Request, patient: str = "", date_from: str = "", date_to: str = "",
                modality: str = "", state: str = "") -> Response:
        logged_in = console.user(request) is not None
        rows = search_studies(node, patient=patient if logged_in else "", date_from=date_from,
                              date_to=date_to, modality=modality, state=state if state in STATES else "")
        return console.render(request, "studies.html", title="Studies", active="Studies", rows=rows,
                              states=STATES, q={"patient": patient, "date_from": date_from,
                                                "date_to": date_to, "modality": modality, "state": state})

    @app.get("/studies/{study_uid}", response_class=HTMLResponse, dependencies=read)
    def study(request: Request, study_uid: str) -> Response:
        detail = study_detail(node, study_uid)
        if detail is None:
            return console.render(request, "error.html", 404, title="Not found",
                                  message=f"Study '{study_uid}' is not in the spool.")
        return console.render(request, "study.html", title="Study", active="Studies", s=detail,
                              destinations=sorted(node.config.destinations),
                              held=held_results(console).list(study_uid=study_uid))

    def _act(request: Request, study_uid: str, fn, done: str):  # noqa: ANN001, ANN202
        target = f"/studies/{study_uid}"
        try:
            result = fn()
        except DicomNodeError as exc:
            return console.redirect(request, target, Flash(str(exc).splitlines()[0], "error"))
        return console.redirect(request, target, Flash(done.format(result=result)))

    @app.post("/studies/{study_uid}/rerun")
    def rerun(request: Request, study_uid: str, *, user: str = Depends(writer),
              decision_id: Annotated[int, Form()]) -> Response:
        return _act(request, study_uid, lambda: console.actions.rerun(study_uid, decision_id, user),
                    "Re-run submitted as job {result}.")

    @app.post("/studies/{study_uid}/resend")
    def resend(request: Request, study_uid: str, *, user: str = Depends(writer),
               destination: Annotated[str, Form()] = "") -> Response:
        return _act(request, study_uid, lambda: console.actions.resend(study_uid, user, destination or None),
                    "{result} object(s) queued again.")

    @app.post("/studies/{study_uid}/discard")
    def discard(request: Request, study_uid: str, *, user: str = Depends(writer)) -> Response:
        return _act(request, study_uid, lambda: console.actions.discard(study_uid, user),
                    "Discarded: {result} pending or dead deliveries removed.")

    # -- results preview ---------------------------------------------------------------------------------
    def _preview(study_uid: str, job_id: str):  # noqa: ANN202
        job = find_job(node, study_uid, job_id)
        if job is None or job.seg is None:
            return None, None
        key = (job_id, job.seg.stat().st_mtime)
        with console.preview_lock:
            cached = console.preview_cache.get(key)
            if cached is None:
                cached = render_preview(node.index.series_files(study_uid, job.series_uid), job.seg)
                while len(console.preview_cache) >= PREVIEW_CACHE:
                    console.preview_cache.pop(next(iter(console.preview_cache)))
                console.preview_cache[key] = cached
        return job, cached

    @app.get("/studies/{study_uid}/series/{series_uid}/preview", response_class=HTMLResponse,
             dependencies=read)
    def preview(request: Request, study_uid: str, series_uid: str, job: str = "") -> Response:
        decisions = node.decisions.recent(500, study_uid)
        jobs = [j for j in study_jobs(node, study_uid, decisions, node.audit.events(study_uid))
                if j.series_uid == series_uid and j.seg is not None]
        chosen = next((j for j in jobs if j.job_id == job), jobs[-1] if jobs else None)
        if chosen is None:
            return console.render(request, "error.html", 404, title="No result",
                                  message=f"Series '{series_uid}' has no processed result with a SEG.")
        error, result = "", None
        try:
            _, result = _preview(study_uid, chosen.job_id)
        except DicomNodeError as exc:
            error = str(exc)
        measurements, source = [], "SR" if chosen.sr else "result.json"
        try:
            measurements = sr_measurements(chosen.sr) if chosen.sr else summary_measurements(chosen.summary)
        except DicomNodeError as exc:
            error = error or str(exc)
        if not measurements and result is not None:
            measurements, source = result.volumes(), "SEG"
        return console.render(request, "preview.html", title="Result preview", active="Studies",
                              study_uid=study_uid, series_uid=series_uid, job=chosen, jobs=jobs,
                              result=result, planes=PLANES, measurements=measurements, error=error,
                              source=source)

    @app.get("/preview/{study_uid}/{job_id}/{plane}.png", dependencies=read)
    def preview_png(request: Request, study_uid: str, job_id: str, plane: str) -> Response:
        if plane not in PLANES:
            return Response(status_code=404)
        try:
            _, result = _preview(study_uid, job_id)
        except DicomNodeError as exc:
            return Response(str(exc), status_code=500, media_type="text/plain")
        if result is None:
            return Response(status_code=404)
        return Response(result.pngs[plane], media_type="image/png")

    # -- rules -------------------------------------------------------------------------------------------
    def _rules_page(request: Request, status: int = 200, *, file: str = "", text: str | None = None,
                    issues=None, tests=None, tested: str = "") -> Response:  # noqa: ANN001
        ruleset, problems = active_ruleset(node)
        files = list_files(node)
        file = file or (files[0] if files else "rules.yaml")
        try:
            source = read_file(node, file) if text is None else text
        except DicomNodeError as exc:
            return console.render(request, "error.html", 400, title="Rules", message=str(exc))
        shown = issues if issues is not None else problems
        lines = [i.line for i in shown if i.line and i.file.endswith(file)]
        return console.render(
            request, "rules.html", status, title="Rules", active="Rules", ruleset=ruleset, files=files,
            file=file, source=source, highlighted=highlight(source, lines), issues=shown,
            validated=issues is not None, tests=tests, tested=tested,
            studies=search_studies(node, limit=50),
        )

    @app.get("/rules", response_class=HTMLResponse, dependencies=read)
    def rules(request: Request, file: str = "") -> Response:
        return _rules_page(request, file=file)

    @app.post("/rules/validate", response_class=HTMLResponse)
    def rules_validate(request: Request, *, user: str = Depends(writer), file: Annotated[str, Form()],
                       text: Annotated[str, Form()] = "") -> Response:
        try:
            issues = validate(node, file, text)
        except DicomNodeError as exc:
            return console.render(request, "error.html", 400, title="Rules", message=str(exc))
        return _rules_page(request, 200 if not issues else 422, file=file, text=text, issues=issues)

    @app.post("/rules/save", response_class=HTMLResponse)
    def rules_save(request: Request, *, user: str = Depends(writer), file: Annotated[str, Form()],
                   text: Annotated[str, Form()] = "") -> Response:
        try:
            ruleset = save(node, file, text)
        except RuleSetError as exc:
            log.warning("Console user %s: rule file %s refused (%d problems).", user, file, len(exc.issues))
            return _rules_page(request, 422, file=file, text=text, issues=exc.issues)
        except DicomNodeError as exc:
            return console.render(request, "error.html", 400, title="Rules", message=str(exc))
        version = ruleset.version if ruleset else "?"
        log.info("Console user %s saved rule file %s; rule set version %s in force.", user, file, version)
        return console.redirect(request, f"/rules?file={file}",
                                Flash(f"Saved {file}; rule set version {version} is in force."))

    @app.post("/rules/test", response_class=HTMLResponse)
    def rules_test(request: Request, *, user: str = Depends(writer), study_uid: Annotated[str, Form()] = "",
                   files: Annotated[list[UploadFile] | None, Form()] = None,
                   calling_ae: Annotated[str, Form()] = "") -> Response:
        ruleset, _problems = active_ruleset(node)
        if ruleset is None:
            return _rules_page(request, 409, tests=[], tested="no valid rule set is in force")
        uploads = [f for f in files or [] if f.filename]
        names: dict[str, str] = {}
        try:
            if uploads:
                with tempfile.TemporaryDirectory(prefix="dicomnode-ruletest-") as scratch:
                    paths = []
                    for i, upload in enumerate(uploads):
                        path = Path(scratch) / f"{i:05d}.dcm"
                        path.write_bytes(upload.file.read())
                        paths.append(path)
                        names[str(path)] = f"upload '{upload.filename}'"
                    tests = dry_run_files(ruleset, paths, calling_ae.strip() or None)
                tested = f"{len(uploads)} uploaded file(s)"
            elif study_uid:
                tests, tested = dry_run_study(node, ruleset, study_uid), f"stored study {study_uid}"
            else:
                return _rules_page(request, 400, tests=[], tested="nothing: pick a study or upload files")
        except DicomNodeError as exc:
            message = str(exc)
            for path, name in names.items():  # name the upload, not the scratch file
                message = message.replace(f"'{path}'", name)
            return _rules_page(request, 400, tests=[], tested=message)
        return _rules_page(request, tests=tests, tested=tested)

    # -- queue -------------------------------------------------------------------------------------------
    @app.get("/queue", response_class=HTMLResponse, dependencies=read)
    def queue(request: Request, state: str = "", destination: str = "") -> Response:
        try:
            items = node.outbox.list(state or None, destination or None)
        except DicomNodeError as exc:
            return console.render(request, "error.html", 400, title="Queue", message=str(exc))
        return console.render(request, "queue.html", title="Queue", active="Queue",
                              counts=node.outbox.counts(), depth=node.outbox.depth_by_destination(),
                              items=items[-300:][::-1], total=len(items),
                              q={"state": state, "destination": destination},
                              destinations=sorted(set(node.config.destinations) | set(node.outbox.counts())))

    def _queue_act(request: Request, fn, done: str) -> Response:  # noqa: ANN001
        try:
            result = fn()
        except DicomNodeError as exc:
            return console.redirect(request, "/queue", Flash(str(exc).splitlines()[0], "error"))
        return console.redirect(request, "/queue", Flash(done.format(result=result)))

    @app.post("/queue/retry")
    def queue_retry(request: Request, *, user: str = Depends(writer),
                    item_id: Annotated[int, Form()]) -> Response:
        return _queue_act(request, lambda: console.actions.retry(item_id, user),
                          f"Entry {item_id} queued again.")

    @app.post("/queue/retry-failed")
    def queue_retry_failed(request: Request, *, user: str = Depends(writer),
                           destination: Annotated[str, Form()] = "") -> Response:
        return _queue_act(request, lambda: console.actions.retry_failed(destination, user),
                          "{result} failed/dead entries queued again.")

    @app.post("/queue/purge")
    def queue_purge(request: Request, *, user: str = Depends(writer), state: Annotated[str, Form()] = "",
                    destination: Annotated[str, Form()] = "") -> Response:
        return _queue_act(request, lambda: console.actions.purge(state, destination, user),
                          "{result} entries purged.")

    register_held(app, console, read, writer)
    return app
