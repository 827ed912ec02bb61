"""Request plumbing shared by the console's pages: sessions, the current user, CSRF checks, rendering.

Rules enforced here (and nowhere bypassed):

* every state-changing request is a POST; a POST without a user gets ``303`` to ``/login`` (nothing
  runs), a POST whose CSRF token is missing or wrong gets ``403`` (nothing runs) — the login form
  included (its token is bound to the anonymous session);
* a state-changing request (POST, PUT, PATCH, DELETE) whose ``Origin`` — or, without one, ``Referer`` —
  is not the console's own origin (``scheme://Host``, default ports ignored, either scheme: a TLS
  reverse proxy in front) nor one of ``console.allowed_origins`` gets ``403`` before anything else runs
  (login included). ``Origin: null`` is refused. A request with neither header is not from a browser
  page (browsers send ``Origin`` with every POST) and cannot be a cross-site forgery: it is let through
  to the login and CSRF checks, which it must pass like any other;
* a logged-in cookie counts only while its server-side session is active (see
  :mod:`dicomnode.console.auth`); a revoked or expired one is replaced by an anonymous session;
* patient names and IDs are only rendered for a logged-in user (``show_phi``);
* with ``console.anonymous_read: false`` every page but ``/login`` needs a user.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from itsdangerous import BadSignature, URLSafeSerializer
from markupsafe import Markup, escape

from dicomnode.console.actions import Actions
from dicomnode.console.auth import (
    CSRF_FIELD,
    SESSION_COOKIE,
    Credentials,
    LoginThrottle,
    Session,
    SessionSigner,
    SessionStore,
    ThrottlePolicy,
    fingerprint,
)
from dicomnode.console.comparison import comparison_view
from dicomnode.console.dashboard import human_bytes
from dicomnode.console.node import ConsoleNode
from dicomnode.console.preview import PreviewCache
from dicomnode.errors import DicomNodeError

HERE = Path(__file__).resolve().parent
FLASH_COOKIE = "dicomnode_flash"
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def _host_of(origin: str) -> str | None:
    """``host[:port]`` of an ``http(s)://`` origin or URL, without its scheme's default port."""
    parts = urlsplit(origin.strip().lower())
    if parts.scheme not in _DEFAULT_PORTS or not parts.netloc or "@" in parts.netloc:
        return None
    return parts.netloc.removesuffix(_DEFAULT_PORTS[parts.scheme])


class LoginRequired(Exception):  # noqa: N818 - a control-flow signal turned into a redirect, not an error
    def __init__(self, target: str) -> None:
        self.target = target


class CSRFRejected(Exception):  # noqa: N818 - turned into 403
    pass


@dataclass
class Flash:
    text: str
    level: str = "info"


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "–"


def _dicom_name(value: str | None) -> str:
    return " ".join(str(value or "").replace("^", " ").split()) or "–"


def _dicom_date(value: str | None) -> str:
    v = str(value or "")
    return f"{v[:4]}-{v[4:6]}-{v[6:8]}" if len(v) == 8 and v.isdigit() else (v or "–")


class Console:
    """The console's shared state: the node, the session signer, the templates and the actions."""

    def __init__(self, node: ConsoleNode) -> None:
        self.node = node
        self.config = node.config.console
        self.signer = SessionSigner(node.secret_key, self.config.session_hours * 3600)
        self._flash = URLSafeSerializer(node.secret_key, salt="dicomnode-console-flash")
        self.actions = Actions(node)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        env = self.templates.env
        env.filters.update(when=_when, dicom_name=_dicom_name, dicom_date=_dicom_date, bytes=human_bytes)
        env.globals["comparison_view"] = comparison_view
        self.previews = PreviewCache(node.index.series_files)
        db = node.database
        self.sessions = SessionStore(db)
        self.credentials = Credentials(db)
        self.throttle = LoginThrottle(db, ThrottlePolicy(
            self.config.login_max_failures, self.config.login_window_minutes * 60,
            self.config.login_lockout_minutes * 60))

    # -- the door ------------------------------------------------------------------------------------
    def origin_refusal(self, request: Request) -> str | None:
        """Why a state-changing request from another origin is refused (None: it may go on)."""
        if request.method not in STATE_CHANGING:
            return None
        header, value = "Origin", request.headers.get("origin")
        if value is None:
            header, value = "Referer", request.headers.get("referer")
            if value is None:
                return None  # not a browser page (see the module docstring)
        host = _host_of(value)
        own = request.headers.get("host", "").strip().lower()
        own = own.removesuffix(_DEFAULT_PORTS.get(request.url.scheme, ":80"))
        allowed = {_host_of(o) for o in self.config.allowed_origins}
        if host is not None and (host == own or host in allowed):
            return None
        return (f"This request came from another site ({header}: {value[:200]!r}), not from the console "
                f"at {request.url.scheme}://{own}; nothing was changed. If the console is reached through "
                "a proxy under another name, add that origin to console.allowed_origins.")

    def password_hash(self) -> str | None:
        """The hash of the admin password in force (changed in the console, else the configured one)."""
        return self.credentials.password_hash(self.config.admin_user, self.config.admin_password_hash)

    @staticmethod
    def client_address(request: Request) -> str:
        return request.client.host if request.client else "unknown"

    # -- who -----------------------------------------------------------------------------------------
    def session(self, request: Request) -> Session:
        session = getattr(request.state, "session", None)
        if session is None:
            session = self.signer.loads(request.cookies.get(SESSION_COOKIE))
            if session is not None and session.user is not None and not self._active(session):
                session = None  # logged out, password changed, expired or from before server-side sessions
            if session is None:
                session = self.signer.new()
                request.state.new_session = session
            request.state.session = session
        return session

    def _active(self, session: Session) -> bool:
        if session.sid is None or session.user is None:
            return False
        return self.sessions.is_active(session.sid, session.user, fingerprint(self.password_hash()))

    def user(self, request: Request) -> str | None:
        header = self.config.proxy_user_header
        if header:
            value = request.headers.get(header, "").strip()
            if value:
                return value
        return self.session(request).user

    def login_methods(self) -> list[str]:
        methods = []
        if self.config.admin_password_hash:
            methods.append("password")
        if self.config.proxy_user_header:
            methods.append("proxy")
        return methods

    def check_read(self, request: Request) -> None:
        if not self.config.anonymous_read and self.user(request) is None:
            raise LoginRequired(request.url.path)

    async def writer(self, request: Request) -> str:
        """The user of a state-changing POST, after the login and CSRF checks."""
        user = self.user(request)
        if user is None:
            raise LoginRequired("/")
        await self.check_csrf(request)
        return user

    async def check_csrf(self, request: Request) -> None:
        form = await request.form()
        token = form.get(CSRF_FIELD) or request.headers.get("x-csrf-token")
        if not self.signer.csrf_ok(self.session(request), str(token) if token else None):
            raise CSRFRejected()

    # -- responses -----------------------------------------------------------------------------------
    def render(self, request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        user = self.user(request)
        session = self.session(request)
        flash = self.pop_flash(request)
        token = self.signer.csrf_token(session)
        context.update(
            user=user, show_phi=user is not None, csrf_token=token,
            csrf_field=Markup(f'<input type="hidden" name="{CSRF_FIELD}" value="{escape(token)}">'),
            flash=flash, base=request.scope.get("root_path", ""), login_methods=self.login_methods(),
            node_config=self.node.config,
        )
        response = self.templates.TemplateResponse(request, template, context, status_code=status_code)
        if flash is not None:
            response.delete_cookie(FLASH_COOKIE, path="/")
        return response

    def redirect(self, request: Request, target: str, flash: Flash | None = None) -> RedirectResponse:
        response = RedirectResponse(target, status_code=303)
        if flash is not None:
            response.set_cookie(FLASH_COOKIE, self._flash.dumps([flash.text, flash.level]), httponly=True,
                                samesite="strict", path="/", secure=request.url.scheme == "https")
        return response

    def pop_flash(self, request: Request) -> Flash | None:
        raw = request.cookies.get(FLASH_COOKIE)
        if not raw:
            return None
        try:
            text, level = self._flash.loads(raw)
        except (BadSignature, ValueError, TypeError):
            return None
        return Flash(str(text), str(level))

    def finish(self, request: Request, response: Response) -> Response:
        """Set the session cookie when a new session was started (or replaced at login/logout)."""
        session = getattr(request.state, "new_session", None)
        if session is not None:
            response.set_cookie(
                SESSION_COOKIE, self.signer.dumps(session), max_age=self.signer.max_age, httponly=True,
                samesite="strict", path="/", secure=request.url.scheme == "https",
            )
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "frame-ancestors 'none'; form-action 'self'",
        )
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    def start_session(self, request: Request, user: str | None) -> None:
        """A new session (new nonce, no fixation): logged in as ``user`` with a new server-side session,
        or anonymous for None."""
        sid = None
        if user is not None:
            sid = self.sessions.create(user, fingerprint(self.password_hash()), self.client_address(request),
                                       self.signer.max_age)
        session = self.signer.new(user, sid)
        request.state.session = session
        request.state.new_session = session

    def act(self, request: Request, target: str, action: Callable[[], object], done: str) -> RedirectResponse:
        """Run an operator action and go back to ``target`` with ``done`` (``{result}`` filled in) or, when
        the action is refused, the first line of its error as the message."""
        try:
            result = action()
        except DicomNodeError as exc:
            return self.redirect(request, target, Flash(str(exc).splitlines()[0], "error"))
        return self.redirect(request, target, Flash(done.format(result=result)))


# -- dependencies of the page routers -----------------------------------------------------------------
def console_of(request: Request) -> Console:
    """The app's :class:`Console` (set by :func:`dicomnode.console.app.create_app`)."""
    return request.app.state.console  # type: ignore[no-any-return]


ConsoleDep = Annotated[Console, Depends(console_of)]


def reader(request: Request, console: ConsoleDep) -> None:
    """Pages that need a user when ``console.anonymous_read`` is false."""
    console.check_read(request)


async def writer(request: Request, console: ConsoleDep) -> str:
    """The user of a state-changing POST, after the login and CSRF checks."""
    return await console.writer(request)


READ = [Depends(reader)]
Writer = Annotated[str, Depends(writer)]


def login_target(path: str) -> str:
    return "/login?next=" + quote(path if path.startswith("/") and not path.startswith("//") else "/")


def safe_next(value: str | None) -> str:
    value = value or "/"
    return value if value.startswith("/") and not value.startswith("//") and "\\" not in value else "/"
