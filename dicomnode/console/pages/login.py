"""Log in (password, ``console.admin_password_hash``) and out."""

from __future__ import annotations

import asyncio
import hmac
import logging

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from dicomnode.console.auth import verify_password
from dicomnode.console.web import ConsoleDep, Flash, Writer, safe_next

log = logging.getLogger(__name__)
router = APIRouter(tags=["Log in"])


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, console: ConsoleDep, next: str = "/") -> Response:  # noqa: A002 - query
    return console.render(request, "login.html", title="Log in", next=safe_next(next))


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, console: ConsoleDep) -> Response:
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


@router.post("/logout")
def logout(request: Request, console: ConsoleDep, user: Writer) -> Response:
    console.start_session(request, None)
    return console.redirect(request, "/", Flash(f"{user} logged out."))
