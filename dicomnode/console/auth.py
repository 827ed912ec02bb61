"""Who is using the console: password hashes, signed session cookies, CSRF tokens, proxy-header users,
server-side sessions, password changes and login throttling.

Password hash format (what ``dicomnode console hash-password`` prints and ``console.admin_password_hash``
holds)::

    scrypt$<N>$<r>$<p>$<salt, base64url>$<derived key, base64url>

computed with :func:`hashlib.scrypt` (N = 2**14, r = 8, p = 1, 16-byte random salt, 32-byte key by
default); verification recomputes the key with the stored parameters and compares in constant time.

Sessions: every visitor gets a cookie ``dicomnode_session`` signed with ``console.secret_key``
(itsdangerous, timestamped, expiring after ``console.session_hours``) holding a random nonce and, after
login, the user name. The CSRF token of a form is an HMAC of the nonce, so it is bound to the session;
logging in issues a new nonce (no session fixation). In proxy mode the user is the value of
``console.proxy_user_header`` set by the reverse proxy; the cookie still carries the CSRF nonce.

Server-side state (tables of the node database owned by this module, schema ``console_auth``):

* ``console_sessions`` — one row per password login. The cookie of a logged-in user carries the
  session's random id as well; a request counts as logged in only while the row exists, is not revoked
  and not expired, and was issued under the password in force (its ``credential`` fingerprint). Logging
  out revokes the row, so a copied cookie stops working; a password change revokes every session of the
  user (the one that changed it is replaced by a new one). Only a SHA-256 of the id is stored.
* ``console_credentials`` — a password changed in the console (``/account``). It is used instead of
  ``console.admin_password_hash`` as long as that config value is the one it replaced: editing the hash
  in the config (e.g. to reset a forgotten password) makes the config win again.
* ``console_login_throttle`` — failed logins per user name and per client address: after
  ``console.login_max_failures`` failures within ``console.login_window_minutes`` that user (from
  anywhere) or that address (for any user) is locked out for ``console.login_lockout_minutes``; attempts
  during a lockout are refused without looking at the password and do not extend it. An attempt is
  counted before its password is checked (so parallel guesses cannot outrun the count); a successful login
  clears the counters of its own user and address only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

from dicomnode.database import Database, Schema, Step, check_in
from dicomnode.errors import ConsoleError

log = logging.getLogger(__name__)

SESSION_COOKIE = "dicomnode_session"
CSRF_FIELD = "csrf_token"
_SCRYPT_DEFAULTS = (2**14, 8, 1)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, n: int = _SCRYPT_DEFAULTS[0], r: int = _SCRYPT_DEFAULTS[1],
                  p: int = _SCRYPT_DEFAULTS[2], salt: bytes | None = None) -> str:
    """The ``scrypt$N$r$p$salt$key`` line for ``password`` (see the module docstring)."""
    if not password:
        raise ConsoleError("The console password must not be empty.")
    salt = salt if salt is not None else secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, encoded: str) -> bool:
    """True when ``password`` matches the stored hash; a malformed hash raises :class:`ConsoleError`."""
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ConsoleError("console.admin_password_hash is not an 'scrypt$N$r$p$salt$hash' line.")
    try:
        n, r, p = (int(v) for v in parts[1:4])
        salt, expected = _unb64(parts[4]), _unb64(parts[5])
        key = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024,
                             dklen=len(expected))
    except (ValueError, TypeError) as exc:
        raise ConsoleError(f"console.admin_password_hash cannot be used: {exc}.") from exc
    return hmac.compare_digest(key, expected)


@dataclass(frozen=True)
class Session:
    nonce: str
    user: str | None = None
    sid: str | None = None  # the server-side session (console_sessions) of a password login


class SessionSigner:
    """Signs and reads session cookies and derives the CSRF token of a session."""

    def __init__(self, secret_key: str, max_age_seconds: float) -> None:
        self._secret = secret_key.encode()
        self._serializer = URLSafeTimedSerializer(secret_key, salt="dicomnode-console-session")
        self.max_age = int(max_age_seconds)

    @staticmethod
    def new(user: str | None = None, sid: str | None = None) -> Session:
        return Session(secrets.token_urlsafe(16), user, sid)

    def dumps(self, session: Session) -> str:
        return self._serializer.dumps({"n": session.nonce, "u": session.user, "s": session.sid})

    def loads(self, cookie: str | None) -> Session | None:
        """The session of a cookie, or None when absent, forged or expired."""
        if not cookie:
            return None
        try:
            data = self._serializer.loads(cookie, max_age=self.max_age)
        except BadSignature:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("n"), str):
            return None
        user, sid = data.get("u"), data.get("s")
        return Session(data["n"], user if isinstance(user, str) and user else None,
                       sid if isinstance(sid, str) and sid else None)

    def csrf_token(self, session: Session) -> str:
        return hmac.new(self._secret, b"csrf\0" + session.nonce.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session: Session | None, token: str | None) -> bool:
        if session is None or not token:
            return False
        return hmac.compare_digest(self.csrf_token(session), str(token))


# -- server-side state --------------------------------------------------------------------------------
class ThrottleKind(StrEnum):
    USER = "user"
    ADDRESS = "address"


DDL_V1 = f"""
CREATE TABLE IF NOT EXISTS console_sessions (
    id_hash TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    credential TEXT NOT NULL,
    client TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    revoked_at REAL,
    revoked_reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS console_sessions_user ON console_sessions (user, revoked_at);
CREATE TABLE IF NOT EXISTS console_credentials (
    user TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    replaces TEXT NOT NULL,
    changed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS console_login_throttle (
    kind TEXT NOT NULL {check_in("kind", ThrottleKind)},
    key TEXT NOT NULL,
    failures INTEGER NOT NULL,
    window_start REAL NOT NULL,
    locked_until REAL,
    PRIMARY KEY (kind, key)
);
"""

SCHEMA = Schema("console_auth", ("console_sessions", "console_credentials", "console_login_throttle"),
                (Step("console sessions, changed passwords, login throttling", DDL_V1),))
MIN_PASSWORD_LENGTH = 10
_MAX_KEY = 200  # a user name or address longer than this is throttled by its first 200 characters


def fingerprint(encoded_hash: str | None) -> str:
    """A short, non-reversible tag of a password hash: sessions remember which password they were issued
    under, and a changed password is known to replace one particular config value."""
    return hashlib.sha256((encoded_hash or "").encode()).hexdigest()[:32]


def _id_hash(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


class SessionStore:
    """The ``console_sessions`` table: logins that a cookie may refer to, until revoked or expired."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self._clock = clock
        db.migrate(SCHEMA)

    def create(self, user: str, credential: str, client: str, lifetime_seconds: float) -> str:
        """A new session of ``user`` (logged in with the password of fingerprint ``credential``); returns
        its id, which only the cookie holds."""
        sid = secrets.token_urlsafe(32)
        now = self._clock()
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM console_sessions WHERE expires_at < ?", (now - 86400,))
            conn.execute(
                "INSERT INTO console_sessions (id_hash, user, credential, client, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (_id_hash(sid), user, credential, client[:_MAX_KEY], now, now + lifetime_seconds))
        return sid

    def is_active(self, sid: str, user: str, credential: str) -> bool:
        """True when session ``sid`` of ``user`` exists, is neither revoked nor expired, and was issued
        under the password of fingerprint ``credential`` (the one in force now)."""
        row = self.db.conn.execute(
            "SELECT user, credential, expires_at, revoked_at FROM console_sessions WHERE id_hash = ?",
            (_id_hash(sid),)).fetchone()
        return (row is not None and row["revoked_at"] is None and row["user"] == user
                and row["expires_at"] > self._clock() and hmac.compare_digest(row["credential"], credential))

    def revoke(self, sid: str, reason: str) -> bool:
        """Revoke one session (logout); False when it was not active."""
        with self.db.transaction() as conn:
            revoked = conn.execute(
                "UPDATE console_sessions SET revoked_at = ?, revoked_reason = ? "
                "WHERE id_hash = ? AND revoked_at IS NULL", (self._clock(), reason, _id_hash(sid))).rowcount
        return revoked > 0

    def revoke_user(self, user: str, reason: str, *, keep: str | None = None) -> int:
        """Revoke every active session of ``user`` but ``keep``; returns how many were revoked."""
        with self.db.transaction() as conn:
            return conn.execute(
                "UPDATE console_sessions SET revoked_at = ?, revoked_reason = ? "
                "WHERE user = ? AND revoked_at IS NULL AND id_hash != ?",
                (self._clock(), reason, user, _id_hash(keep) if keep else "")).rowcount

    def active_count(self, user: str) -> int:
        row = self.db.conn.execute(
            "SELECT COUNT(*) AS n FROM console_sessions WHERE user = ? AND revoked_at IS NULL "
            "AND expires_at > ?", (user, self._clock())).fetchone()
        return int(row["n"])


class Credentials:
    """The ``console_credentials`` table: passwords changed in the console, each tied to the config value
    (``console.admin_password_hash``) it replaced."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self._clock = clock
        db.migrate(SCHEMA)

    def password_hash(self, user: str, configured: str | None) -> str | None:
        """The hash in force for ``user``: the one changed in the console while the config still holds the
        value it replaced, else the configured one."""
        row = self.db.conn.execute(
            "SELECT password_hash, replaces FROM console_credentials WHERE user = ?", (user,)).fetchone()
        if row is not None and configured and hmac.compare_digest(row["replaces"], fingerprint(configured)):
            return str(row["password_hash"])
        return configured

    def changed_at(self, user: str, configured: str | None) -> float | None:
        """When the password in force was changed in the console (None: it is the configured one)."""
        row = self.db.conn.execute(
            "SELECT replaces, changed_at FROM console_credentials WHERE user = ?", (user,)).fetchone()
        if row is not None and configured and row["replaces"] == fingerprint(configured):
            return float(row["changed_at"])
        return None

    def change(self, user: str, configured: str, new_hash: str) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO console_credentials (user, password_hash, replaces, changed_at) "
                "VALUES (?, ?, ?, ?) "
                "ON CONFLICT (user) DO UPDATE SET password_hash = excluded.password_hash, "
                "replaces = excluded.replaces, changed_at = excluded.changed_at",
                (user, new_hash, fingerprint(configured), self._clock()))


@dataclass(frozen=True)
class Lockout:
    """A user name or client address refused logins until ``until`` (UNIX time)."""

    kind: ThrottleKind
    key: str
    until: float
    failures: int

    def retry_after(self, now: float) -> int:
        return max(1, int(self.until - now + 0.999))

    def message(self, now: float) -> str:
        who = f"user '{self.key}'" if self.kind == ThrottleKind.USER else f"address {self.key}"
        minutes = self.retry_after(now) / 60
        wait = f"{minutes:.0f} minutes" if minutes >= 2 else f"{self.retry_after(now)} seconds"
        return (f"Too many failed logins for {who}: logins are refused for {wait} (until "
                f"{time.strftime('%H:%M:%S', time.localtime(self.until))}); the password was not checked.")


@dataclass(frozen=True)
class ThrottlePolicy:
    max_failures: int
    window_seconds: float
    lockout_seconds: float


class LoginThrottle:
    """The ``console_login_throttle`` table: failed logins counted per user name and per client address."""

    def __init__(self, db: Database, policy: ThrottlePolicy, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.policy = policy
        self._clock = clock
        db.migrate(SCHEMA)

    def now(self) -> float:
        return self._clock()

    @staticmethod
    def _keys(user: str, address: str) -> tuple[tuple[ThrottleKind, str], ...]:
        return ((ThrottleKind.USER, user[:_MAX_KEY]), (ThrottleKind.ADDRESS, address[:_MAX_KEY]))

    def refusal(self, user: str, address: str) -> Lockout | None:
        """The lockout in force for this user name or this address (the longer one), else None."""
        return self._refusal(self.db.conn, user, address, self._clock())

    def _refusal(self, conn: Any, user: str, address: str, now: float) -> Lockout | None:
        found: Lockout | None = None
        for kind, key in self._keys(user, address):
            row = conn.execute(
                "SELECT failures, locked_until FROM console_login_throttle WHERE kind = ? AND key = ?",
                (kind, key)).fetchone()
            until = None if row is None else row["locked_until"]
            if until is not None and until > now and (found is None or until > found.until):
                found = Lockout(kind, key, float(until), int(row["failures"]))
        return found

    def attempt(self, user: str, address: str) -> tuple[Lockout | None, list[Lockout]]:
        """Begin a login attempt, atomically: ``(lockout, [])`` when a lockout refuses it (not counted),
        else ``(None, started)`` — the attempt is counted as a failure *before* the password is checked
        (so parallel attempts cannot all slip in before the first failure is recorded) and ``started`` are
        the lockouts this starts should it fail. A correct password then calls :meth:`succeeded`, which
        clears the counts (and those lockouts) of its user name and address."""
        now, policy = self._clock(), self.policy
        started: list[Lockout] = []
        with self.db.transaction() as conn:
            refused = self._refusal(conn, user, address, now)
            if refused is not None:
                return refused, []
            conn.execute("DELETE FROM console_login_throttle WHERE window_start < ? "
                         "AND (locked_until IS NULL OR locked_until < ?)", (now - policy.window_seconds, now))
            for kind, key in self._keys(user, address):
                row = conn.execute("SELECT failures, window_start, locked_until FROM console_login_throttle "
                                   "WHERE kind = ? AND key = ?", (kind, key)).fetchone()
                fresh = (row is None or row["window_start"] < now - policy.window_seconds
                         or (row["locked_until"] is not None and row["locked_until"] <= now))
                failures = 1 if fresh else int(row["failures"]) + 1
                start = now if fresh else float(row["window_start"])
                until = now + policy.lockout_seconds if failures >= policy.max_failures else None
                conn.execute(
                    "INSERT INTO console_login_throttle (kind, key, failures, window_start, locked_until) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (kind, key) DO UPDATE SET "
                    "failures = excluded.failures, "
                    "window_start = excluded.window_start, locked_until = excluded.locked_until",
                    (kind, key, failures, start, until))
                if until is not None:
                    started.append(Lockout(kind, key, until, failures))
        return None, started

    def succeeded(self, user: str, address: str) -> None:
        """A successful login clears the counters of this user name and this address (no other)."""
        with self.db.transaction() as conn:
            for kind, key in self._keys(user, address):
                conn.execute("DELETE FROM console_login_throttle WHERE kind = ? AND key = ?", (kind, key))
