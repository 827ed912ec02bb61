"""Log in (password, ``console.admin_password_hash`` or the password changed in the console) and out.

Failed logins are counted per user name and per client address
(:class:`~dicomnode.console.auth.LoginThrottle`); during a lockout an attempt is answered ``429`` with
``Retry-After`` and the reason, without looking at the password. Each lockout is written to the audit
trail (stage ``security``) and counted in the metrics. Logging out revokes the server-side session: the
cookie, wherever it was copied to, is no login any more.
"""

from __future__ import annotations

import asyncio
import hmac
import logging

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from dicomnode.console.auth import Lockout, verify_password
from dicomnode.console.web import Console, ConsoleDep, Flash, Writer, safe_next

log = logging.getLogger(__name__)
router = APIRouter(tags=["Log in"])


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, console: ConsoleDep, next: str = "/") -> Response:  # noqa: A002 - query
    return console.render(request, "login.html", title="Log in", next=safe_next(next))


def locked_out(request: Request, console: Console, lockout: Lockout, target: str,
               prefix: str = "") -> Response:
    """The ``429`` answer of a login refused by a lockout."""
    now = console.throttle.now()
    response = console.render(request, "login.html", 429, title="Log in", next=target,
                              error=prefix + lockout.message(now))
    response.headers["Retry-After"] = str(lockout.retry_after(now))
    return response


def report_failure(request: Request, console: Console, user: str, started: list[Lockout]) -> None:
    """A wrong password (already counted by ``throttle.attempt``): count it in the metrics; audit, log and
    count the lockouts it started (runs in a worker thread: it writes the database)."""
    address = console.client_address(request)
    metrics = console.node.metrics
    if metrics is not None:
        metrics.console_login_failed()
    for lockout in started:
        log.warning("Console logins locked for %s %r until %.0f after %d failures.", lockout.kind,
                    lockout.key, lockout.until, lockout.failures)
        console.node.audit.record("security", "", detail={
            "event": "login_lockout", "kind": str(lockout.kind), "key": lockout.key,
            "failures": lockout.failures, "until": lockout.until, "client": address, "user": user})
        if metrics is not None:
            metrics.console_login_locked(str(lockout.kind))


def refused(request: Request, console: Console, user: str, lockout: Lockout) -> None:
    log.warning("Console login for user %r from %s refused: locked out (%s %r).", user,
                console.client_address(request), lockout.kind, lockout.key)
    if console.node.metrics is not None:
        console.node.metrics.console_login_refused()


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, console: ConsoleDep) -> Response:
    await console.check_csrf(request)
    form = await request.form()
    user, password = str(form.get("username", "")), str(form.get("password", ""))
    target = safe_next(str(form.get("next", "/")))
    address = console.client_address(request)
    lockout, started = await run_in_threadpool(console.throttle.attempt, user, address)
    if lockout is not None:
        refused(request, console, user, lockout)
        return locked_out(request, console, lockout, target)
    expected = await run_in_threadpool(console.password_hash)
    ok = False
    if expected:
        user_ok = hmac.compare_digest(user.encode(), console.config.admin_user.encode())
        ok = await run_in_threadpool(verify_password, password, expected) and user_ok
    if not ok:
        log.warning("Console login refused for user %r from %s.", user, address)
        await run_in_threadpool(report_failure, request, console, user, started)
        await asyncio.sleep(0.5)
        message = "Wrong user name or password." if expected else \
            "Password login is not configured (console.admin_password_hash)."
        if started:
            return locked_out(request, console, max(started, key=lambda lock: lock.until), target,
                              prefix=message + " ")
        return console.render(request, "login.html", 401, title="Log in", next=target, error=message)
    await run_in_threadpool(console.throttle.succeeded, user, address)
    await run_in_threadpool(console.start_session, request, user)
    log.info("Console user %s logged in from %s.", user, address)
    return console.redirect(request, target, Flash(f"Logged in as {user}."))


@router.post("/logout")
def logout(request: Request, console: ConsoleDep, user: Writer) -> Response:
    session = console.session(request)
    if session.sid is not None:
        console.sessions.revoke(session.sid, "logged out")
    console.start_session(request, None)
    log.info("Console user %s logged out.", user)
    return console.redirect(request, "/", Flash(f"{user} logged out."))
