"""Who is using the console: password hashes, signed session cookies, CSRF tokens, proxy-header users.

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
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

from dicomnode.errors import ConsoleError

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


class SessionSigner:
    """Signs and reads session cookies and derives the CSRF token of a session."""

    def __init__(self, secret_key: str, max_age_seconds: float) -> None:
        self._secret = secret_key.encode()
        self._serializer = URLSafeTimedSerializer(secret_key, salt="dicomnode-console-session")
        self.max_age = int(max_age_seconds)

    @staticmethod
    def new(user: str | None = None) -> Session:
        return Session(secrets.token_urlsafe(16), user)

    def dumps(self, session: Session) -> str:
        return self._serializer.dumps({"n": session.nonce, "u": session.user})

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
        user = data.get("u")
        return Session(data["n"], user if isinstance(user, str) and user else None)

    def csrf_token(self, session: Session) -> str:
        return hmac.new(self._secret, b"csrf\0" + session.nonce.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session: Session | None, token: str | None) -> bool:
        if session is None or not token:
            return False
        return hmac.compare_digest(self.csrf_token(session), str(token))
