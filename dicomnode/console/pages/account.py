"""The logged-in user's account: change the admin password (``/account``).

The new password is stored as an scrypt hash in the node database (``console_credentials``) and is used
instead of ``console.admin_password_hash`` until that config value is edited (which makes the config win
again: the way to reset a forgotten password). Changing it revokes every session of the user; the one that
changed it gets a new session. A wrong current password counts as a failed login (throttled alike).
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from dicomnode.console.auth import MIN_PASSWORD_LENGTH, hash_password, verify_password
from dicomnode.console.pages.login import refused, report_failure
from dicomnode.console.web import READ, Console, ConsoleDep, Flash, Writer

log = logging.getLogger(__name__)
router = APIRouter(tags=["Account"], dependencies=READ)


def _page(request: Request, console: Console, status: int = 200, error: str | None = None) -> Response:
    session = console.session(request)
    user = console.user(request)
    password_user = session.sid is not None and user == session.user
    changed = console.credentials.changed_at(console.config.admin_user, console.config.admin_password_hash)
    sessions = console.sessions.active_count(user) if password_user and user else 0
    return console.render(request, "account.html", status, title="Account", password_user=password_user,
                          changed_at=changed, sessions=sessions, min_length=MIN_PASSWORD_LENGTH, error=error)


@router.get("/account", response_class=HTMLResponse)
def account(request: Request, console: ConsoleDep) -> Response:
    return _page(request, console)


@router.post("/account/password", response_class=HTMLResponse)
async def change_password(request: Request, console: ConsoleDep, user: Writer) -> Response:
    form = await request.form()
    current, new, repeat = (str(form.get(k, "")) for k in ("current", "new", "repeat"))
    return await run_in_threadpool(_change, request, console, user, current, new, repeat)


def _change(request: Request, console: Console, user: str, current: str, new: str, repeat: str) -> Response:
    """The password change itself (in a worker thread: scrypt and database writes)."""
    session = console.session(request)
    if session.sid is None or session.user != user:
        return _page(request, console, 400, f"{user} is identified by the reverse proxy "
                     f"({console.config.proxy_user_header}); the password is managed there.")
    address = console.client_address(request)
    lockout, started = console.throttle.attempt(user, address)
    if lockout is not None:
        refused(request, console, user, lockout)
        response = _page(request, console, 429, lockout.message(console.throttle.now()))
        response.headers["Retry-After"] = str(lockout.retry_after(console.throttle.now()))
        return response
    expected = console.password_hash()
    if not expected or not verify_password(current, expected):
        report_failure(request, console, user, started)
        message = "The current password is wrong; the password was not changed."
        if started:
            lock = max(started, key=lambda item: item.until)
            message += " " + lock.message(console.throttle.now())
        return _page(request, console, 429 if started else 400, message)
    console.throttle.succeeded(user, address)
    if len(new) < MIN_PASSWORD_LENGTH:
        return _page(request, console, 400, f"The new password has {len(new)} characters; it needs at least "
                     f"{MIN_PASSWORD_LENGTH}. The password was not changed.")
    if new != repeat:
        return _page(request, console, 400, "The new password and its repetition differ; the password was "
                     "not changed.")
    if new == current:
        return _page(request, console, 400, "The new password is the current one; the password was not "
                     "changed.")
    console.credentials.change(console.config.admin_user, console.config.admin_password_hash or "",
                               hash_password(new))
    revoked = console.sessions.revoke_user(user, "password changed")
    console.start_session(request, user)
    others = max(0, revoked - 1)
    console.node.audit.record("security", "", detail={
        "event": "password_changed", "user": user, "client": address, "sessions_revoked": others})
    log.warning("Console password of %s changed from %s; %d other session(s) logged out.", user, address,
                others)
    return console.redirect(request, "/account", Flash(
        f"Password changed. {others} other session(s) of {user} were logged out."))
