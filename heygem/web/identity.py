"""One identity for every door: who a request is, decided once, before any route runs.

The doors are the job API (/api/v1), the Gradio UI and every /gradio_api route, the
HeyGem-compatible API (/easy, on the main port and on the compat port) and /ready?deep=1. They
all pass through `IdentityGate`, an ASGI middleware that turns a bearer key or a login session
into a Principal (a tenant and a role) and stores it on request.state.principal.

Credentials, any of which locks every door:
  - keys file (Settings.api_keys_file): "tenant role sha256hex" per line, never the key itself;
  - the single api_token: a key of tenant api_token_tenant, role admin (it could see every job
    before tenants existed, so it still can);
  - compat_token: a key of tenant compat_tenant, role user, for HeyGem clients;
  - UI users: auth ("user:password", tenant "default", admin) and the users file
    ("user tenant role pbkdf2_sha256$iterations$salt$hash"). The login form also takes a tenant
    name with one of that tenant's API keys as the password, so key-only deployments keep a UI.
With none configured the service is open and every caller is LOCAL (the single-user service).

Sessions live in memory: a restart asks browser users to log in again.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from heygem.jobs.tenancy import DEFAULT_TENANT, LOCAL, Principal, Role
from heygem.settings import Settings

log = logging.getLogger("heygem.web.identity")

ROLES: tuple[Role, ...] = ("user", "admin")
DIGEST_HEX_CHARS = 64  # SHA-256 in hex
PBKDF2_SCHEME = "pbkdf2_sha256"
PBKDF2_ITERATIONS = 600_000  # OWASP's 2023 figure for PBKDF2-HMAC-SHA256
SALT_BYTES = 16
KEY_BYTES = 32  # secrets.token_urlsafe(32): 256 random bits
SESSION_COOKIE = "heygem-session"
SESSION_TTL_S = 12 * 3600  # a browser login lasts a working day
MAX_SESSIONS = 10_000  # oldest sessions are dropped beyond this: memory stays bounded
LOGIN_WINDOW_S = 60.0
MAX_TRACKED_LOGINS = 10_000  # client IPs / user names whose failures are remembered
MAX_LOGIN_BODY = 16 * 1024
MAX_LOGIN_FIELDS = 8
MAX_NAME_CHARS = 64  # of a user name, as remembered by the rate limit and written to the log
LOGIN_PATHS = frozenset({"/login", "/login/"})
LOGOUT_PATHS = frozenset({"/logout", "/logout/"})
COMPAT_PREFIX = "/easy/"
COMPAT_REFUSED_CODE = 10002  # heygem.web.compat.CODE_BAD_REQUEST (compat imports this module)
TOKEN_REFUSED = "missing or wrong credentials: send Authorization: Bearer <key> or log in"
ADMIN_ONLY = "this needs an admin key or login"
BAD_LOGIN = "Incorrect credentials."  # the words Gradio's login form expects with a 400
FOREIGN_LOGIN = "login from another site refused (Origin does not match Host)"
BEARER_CHALLENGE = {"WWW-Authenticate": "Bearer"}
WEBSOCKET_POLICY_VIOLATION = 1008
# Paths a browser needs before it has logged in: the probes, and Gradio's page and login form
# assets. Everything else, every /gradio_api route included, needs a principal.
MAIN_PUBLIC_PATHS = frozenset(
    {
        "/health",
        "/ready",
        "/metrics",
        "/",
        "/favicon.ico",
        "/theme.css",
        "/robots.txt",
        "/manifest.json",
        "/gradio_api/theme.css",
    }
)
MAIN_PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/", "/gradio_api/assets/", "/gradio_api/static/")
PAGE_METHODS = frozenset({"GET", "HEAD"})
DEEP_READY_PATH = "/ready"
DEEP_PARAM = "deep"


# --------------------------------------------------------------------------------------------------
# files


@dataclass(frozen=True)
class KeyEntry:
    principal: Principal
    digest: str  # SHA-256 of the key, lowercase hex


@dataclass(frozen=True)
class UserEntry:
    username: str
    principal: Principal
    password_hash: str  # pbkdf2_sha256$iterations$salt$hash, or "plain:" for HEYGEM_AUTH


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return secrets.token_urlsafe(KEY_BYTES)


def principal(tenant: str, role: str, where: str) -> Principal:
    """A Principal, or ValueError naming `where` the bad tenant or role came from."""
    if role not in ROLES:
        raise ValueError(f"{where}: role must be user or admin, got {role!r}")
    checked: Role = "admin" if role == "admin" else "user"
    try:
        return Principal(tenant, checked)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def key_line(tenant: str, role: str, key: str) -> str:
    principal(tenant, role, "key")
    return f"{tenant} {role} {key_digest(key)}"


def parse_keys(text: str, source: str) -> list[KeyEntry]:
    entries = []
    for number, fields in _lines(text):
        where = f"{source} line {number}"
        if len(fields) != 3:
            raise ValueError(f"{where}: expected 'tenant role sha256hex'")
        tenant, role, digest = fields
        if len(digest) != DIGEST_HEX_CHARS or not _is_hex(digest):
            raise ValueError(f"{where}: the third field must be 64 hex characters (a SHA-256)")
        entries.append(KeyEntry(principal(tenant, role, where), digest.lower()))
    return entries


def hash_password(password: str, iterations: int = PBKDF2_ITERATIONS) -> str:
    salt = secrets.token_bytes(SALT_BYTES)
    derived = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"{PBKDF2_SCHEME}${iterations}${_b64(salt)}${_b64(derived)}"


def verify_password(password: str, encoded: str) -> bool:
    scheme, _, rest = encoded.partition("$")
    iterations, salt, expected = _pbkdf2_parts(rest) if scheme == PBKDF2_SCHEME else (0, b"", b"")
    if not iterations:
        return False
    derived = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return hmac.compare_digest(derived, expected)


def user_line(
    username: str, tenant: str, role: str, password: str, iterations: int = PBKDF2_ITERATIONS
) -> str:
    principal(username, "user", "user name")  # same rules as a tenant name: no spaces
    principal(tenant, role, "user")
    return f"{username} {tenant} {role} {hash_password(password, iterations)}"


def parse_users(text: str, source: str) -> list[UserEntry]:
    entries = []
    for number, fields in _lines(text):
        where = f"{source} line {number}"
        if len(fields) != 4:
            raise ValueError(f"{where}: expected 'user tenant role pbkdf2_sha256$iterations$salt$hash'")
        username, tenant, role, encoded = fields
        scheme, _, rest = encoded.partition("$")
        if scheme != PBKDF2_SCHEME or not _pbkdf2_parts(rest)[0]:
            raise ValueError(f"{where}: the password hash must be pbkdf2_sha256$iterations$salt$hash")
        principal(username, "user", f"{where}: user name")
        entries.append(UserEntry(username, principal(tenant, role, where), encoded))
    return entries


def append_line(path: Path, line: str) -> None:
    """Append one line to a credentials file, created readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")


def _lines(text: str) -> Iterable[tuple[int, list[str]]]:
    for number, raw in enumerate(text.splitlines(), start=1):
        content = raw.split("#", 1)[0].strip()
        if content:
            yield number, content.split()


def _pbkdf2_parts(rest: str) -> tuple[int, bytes, bytes]:
    """(iterations, salt, hash) of "iterations$salt$hash"; iterations 0 when malformed."""
    parts = rest.split("$")
    if len(parts) != 3 or not parts[0].isdigit() or int(parts[0]) < 1:
        return 0, b"", b""
    try:
        return int(parts[0]), _unb64(parts[1]), _unb64(parts[2])
    except ValueError:
        return 0, b"", b""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raise ValueError("not base64") from None


def _is_hex(text: str) -> bool:
    return all(char in "0123456789abcdefABCDEF" for char in text)


class CredentialFile:
    """A keys or users file, read again when it changes (keys added while the server runs count
    at once). A broken edit keeps the last good contents and logs why."""

    def __init__(self, path: Path, parse: Callable[[str, str], list[Any]]) -> None:
        self.path = path
        self._parse = parse
        self._stamp: tuple[int, int] | None = None
        self._entries: list[Any] = []
        self._lock = threading.Lock()
        if not path.is_file():
            raise ValueError(f"{path} does not exist; create it with `python -m heygem keys add`")
        self.entries()

    def entries(self) -> list[Any]:
        try:
            stat = self.path.stat()
        except OSError as exc:
            log.error("cannot read %s: %s; keeping the credentials read before", self.path, exc)
            return self._entries
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if stamp != self._stamp:
                self._reload(stamp)
            return self._entries

    def _reload(self, stamp: tuple[int, int]) -> None:
        try:
            entries = self._parse(self.path.read_text(encoding="utf-8"), str(self.path))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            if self._stamp is None:
                raise ValueError(str(exc)) from None  # at start-up: refuse to run
            log.error("%s; keeping the credentials read before", exc)
            return
        self._entries, self._stamp = entries, stamp
        log.info("%s: %d credentials", self.path, len(entries))


# --------------------------------------------------------------------------------------------------
# sessions and the login rate limit


class Sessions:
    """Browser logins: a random cookie value -> (principal, expiry)."""

    def __init__(self, ttl_s: float = SESSION_TTL_S, capacity: int = MAX_SESSIONS) -> None:
        self.ttl_s = ttl_s
        self.capacity = capacity
        self._by_id: collections.OrderedDict[str, tuple[Principal, float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def open(self, who: Principal) -> str:
        session_id = secrets.token_urlsafe(KEY_BYTES)
        with self._lock:
            self._by_id[session_id] = (who, time.monotonic() + self.ttl_s)
            while len(self._by_id) > self.capacity:
                self._by_id.popitem(last=False)
        return session_id

    def get(self, session_id: str) -> Principal | None:
        with self._lock:
            found = self._by_id.get(session_id)
            if found is None:
                return None
            if found[1] < time.monotonic():
                del self._by_id[session_id]
                return None
            return found[0]

    def close(self, session_id: str) -> None:
        with self._lock:
            self._by_id.pop(session_id, None)


class LoginLimiter:
    """Failed logins per client IP and per user name in the last minute; past the limit, 429
    until the oldest failure leaves the window."""

    def __init__(self, per_minute: int, window_s: float = LOGIN_WINDOW_S) -> None:
        self.per_minute = per_minute
        self.window_s = window_s
        self._failures: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def wait_s(self, keys: Sequence[str]) -> float:
        """Seconds until these keys may try again; 0 when they may now."""
        if not self.per_minute:
            return 0.0
        now = time.monotonic()
        with self._lock:
            waits = [self._wait(key, now) for key in keys]
        return max(waits, default=0.0)

    def failed(self, keys: Sequence[str]) -> None:
        if not self.per_minute:
            return
        now = time.monotonic()
        with self._lock:
            for key in keys:
                times = self._failures.pop(key, None) or collections.deque(maxlen=self.per_minute)
                times.append(now)
                self._failures[key] = times  # most recent last: the oldest are dropped first
            while len(self._failures) > MAX_TRACKED_LOGINS:
                self._failures.popitem(last=False)

    def _wait(self, key: str, now: float) -> float:
        times = self._failures.get(key)
        if not times or len(times) < self.per_minute:
            return 0.0
        return max(0.0, times[0] + self.window_s - now)


# --------------------------------------------------------------------------------------------------
# the identity


class Identity:
    """Every credential the service accepts, and the sessions of logged-in browsers."""

    def __init__(self, settings: Settings) -> None:
        self._fixed_keys: list[KeyEntry] = []
        if settings.api_token:
            who = principal(settings.api_token_tenant, "admin", "api_token_tenant")
            self._fixed_keys.append(KeyEntry(who, key_digest(settings.api_token)))
        if settings.compat_token:
            who = principal(settings.compat_tenant, "user", "compat_tenant")
            self._fixed_keys.append(KeyEntry(who, key_digest(settings.compat_token)))
        self._kinds = [
            kind
            for kind, on in (
                ("API token", settings.api_token),
                ("compat token", settings.compat_token),
                ("UI login", settings.auth),
                ("keys file", settings.api_keys_file),
                ("users file", settings.users_file),
            )
            if on
        ]
        self._fixed_users: list[tuple[str, str]] = []
        if settings.auth:
            username, _, password = settings.auth.partition(":")
            self._fixed_users.append((username, password))
        self._keys = _optional_file(settings.api_keys_file, parse_keys)
        self._users = _optional_file(settings.users_file, parse_users)
        self.required = bool(self._fixed_keys or self._fixed_users or self._keys or self._users)
        self.sessions = Sessions()
        self.limiter = LoginLimiter(settings.login_attempts_per_minute)

    @classmethod
    def open(cls) -> Identity:
        """No credentials: the single-user service, everyone is LOCAL."""
        return cls(Settings())

    def from_key(self, key: str) -> Principal | None:
        if not key:
            return None
        digest = key_digest(key)
        found = None
        for entry in self._key_entries():  # every entry compared: no early exit to time
            if hmac.compare_digest(entry.digest, digest):
                found = found or entry.principal
        return found

    def from_login(self, username: str, password: str) -> Principal | None:
        """A UI login: HEYGEM_AUTH, a users-file entry, or a tenant name with one of its keys.
        Slow on purpose for users-file entries (PBKDF2): call it from a thread."""
        for fixed_user, fixed_password in self._fixed_users:
            if _same(username, fixed_user) and _same(password, fixed_password):
                return Principal(DEFAULT_TENANT, "admin")
        for entry in self._users.entries() if self._users else ():
            if _same(username, entry.username):
                return entry.principal if verify_password(password, entry.password_hash) else None
        by_key = self.from_key(password)
        if by_key is not None and _same(username, by_key.tenant):
            return by_key
        return None

    def check_login(self, username: str, password: str) -> bool:
        """Gradio's auth callable (the gate answers /login itself; this is a second lock)."""
        return self.from_login(username, password) is not None

    def _key_entries(self) -> list[KeyEntry]:
        return self._fixed_keys + (self._keys.entries() if self._keys else [])

    def describe(self) -> str:
        """For the start-up log: which kinds of credentials are on, never their values."""
        kinds = self._kinds
        return ", ".join(kinds) if kinds else "none (open service, every caller is the local admin)"


def _optional_file(path: Path | None, parse: Callable[[str, str], list[Any]]) -> CredentialFile | None:
    return CredentialFile(Path(path).expanduser(), parse) if path is not None else None


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


# --------------------------------------------------------------------------------------------------
# reading a request


def principal_of(request: object) -> Principal:
    """Who made this request: a FastAPI Request or a gr.Request that passed the gate.

    Raises PermissionError when the request never passed an IdentityGate (a wiring mistake:
    failing closed is better than treating the caller as the local admin)."""
    state = getattr(request, "state", None)
    found = getattr(state, "principal", None) if state is not None else None
    if isinstance(found, Principal):
        return found
    username = getattr(request, "username", None)  # gr.Request: the gate's name for it
    parsed = principal_from_username(username) if isinstance(username, str) else None
    if parsed is not None:
        return parsed
    raise PermissionError("the request carries no identity (it did not pass the identity gate)")


def require_principal(request: Request) -> None:
    """FastAPI dependency: a second lock behind the gate for routes that always need one."""
    if getattr(request.state, "principal", None) is None:
        raise StarletteHTTPException(401, TOKEN_REFUSED, headers=BEARER_CHALLENGE)


def username_for(who: Principal | None) -> str | None:
    """The name Gradio sees as gr.Request.username: "tenant:role"."""
    return None if who is None else f"{who.tenant}:{who.role}"


def principal_from_username(username: str) -> Principal | None:
    tenant, _, role = username.rpartition(":")
    try:
        return principal(tenant, role, "username")
    except ValueError:
        return None


def gradio_user(request: Request) -> str | None:
    """Replaces Gradio's own "current user" lookup: the gate's principal, bearer or session."""
    return username_for(getattr(request.state, "principal", None))


# --------------------------------------------------------------------------------------------------
# the gate


class IdentityGate:
    """ASGI middleware in front of every door. It answers POST /login and GET /logout itself
    (rate limit, same-origin check, session cookie); every other request gets
    request.state.principal, and is refused unless it is public or carries a principal."""

    def __init__(
        self,
        app: ASGIApp,
        identity: Identity,
        public_paths: frozenset[str] = frozenset(),
        public_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.identity = identity
        self.public_paths = public_paths
        self.public_prefixes = public_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        method = scope.get("method", "GET")
        if self.identity.required and scope["type"] == "http":
            if path in LOGIN_PATHS and method == "POST":
                await self._login(scope, receive, send)
                return
            if path in LOGOUT_PATHS and method in PAGE_METHODS:
                await self._logout(scope, receive, send)
                return
        who = self._authenticate(scope) if self.identity.required else LOCAL
        scope.setdefault("state", {})["principal"] = who
        refusal = self._refusal(scope, path, method, who)
        if refusal is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": WEBSOCKET_POLICY_VIOLATION})
        else:
            await refusal(scope, receive, send)

    def _authenticate(self, scope: Scope) -> Principal | None:
        headers = _headers(scope)
        scheme, _, key = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            found = self.identity.from_key(key.strip())
            if found is not None:
                return found
        session_id = _cookie(headers.get("cookie", ""), SESSION_COOKIE)
        return self.identity.sessions.get(session_id) if session_id else None

    def _refusal(self, scope: Scope, path: str, method: str, who: Principal | None) -> Response | None:
        deep = path == DEEP_READY_PATH and DEEP_PARAM in _query(scope)
        if who is None and (deep or not self._public(path, method)):
            # DEBUG: a logged-out tab keeps polling, and a flood of refusals must not flood the log.
            log.debug("%s %s refused: no credentials", method, path)
            return _refused(path, 401, TOKEN_REFUSED)
        if deep and who is not None and not who.is_admin:
            return _refused(path, 403, ADMIN_ONLY)
        return None

    def _public(self, path: str, method: str) -> bool:
        if path == "/" and method not in PAGE_METHODS:
            return False
        return path in self.public_paths or path.startswith(self.public_prefixes)

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        await (await self._login_response(scope, receive))(scope, receive, send)

    async def _login_response(self, scope: Scope, receive: Receive) -> Response:
        headers = _headers(scope)
        if not same_origin(headers):
            log.warning("cross-origin login refused (Origin %s)", headers.get("origin"))
            return JSONResponse({"detail": FOREIGN_LOGIN}, status_code=403)
        form = await _login_form(scope, receive)
        if form is None:
            return JSONResponse(
                {"detail": "a login needs the form fields username and password"}, status_code=400
            )
        username, password = form
        client = scope.get("client")
        limit_keys = [f"ip:{client[0] if client else '-'}", f"user:{username[:MAX_NAME_CHARS]}"]
        wait = self.identity.limiter.wait_s(limit_keys)
        if wait > 0:
            seconds = str(max(1, int(wait + 0.999)))
            log.warning("login for %r refused: too many failures", username[:MAX_NAME_CHARS])
            return JSONResponse(
                {"detail": f"too many failed logins; try again in {seconds} s"},
                status_code=429,
                headers={"Retry-After": seconds},
            )
        who = await run_in_threadpool(self.identity.from_login, username, password)
        if who is None:
            self.identity.limiter.failed(limit_keys)
            log.info("failed login for %r", username[:MAX_NAME_CHARS])
            return JSONResponse({"detail": BAD_LOGIN}, status_code=400)
        log.info("login: %r as tenant %s (%s)", username[:MAX_NAME_CHARS], who.tenant, who.role)
        response = JSONResponse({"success": True})
        response.set_cookie(
            SESSION_COOKIE,
            self.identity.sessions.open(who),
            max_age=SESSION_TTL_S,
            path="/",
            httponly=True,
            samesite="lax",
            secure=_is_https(scope),
        )
        return response

    async def _logout(self, scope: Scope, receive: Receive, send: Send) -> None:
        session_id = _cookie(_headers(scope).get("cookie", ""), SESSION_COOKIE)
        if session_id:
            self.identity.sessions.close(session_id)
        root = str(scope.get("root_path", "")).rstrip("/")
        response = RedirectResponse(root + "/", status_code=302)
        response.delete_cookie(SESSION_COOKIE, path="/")
        await response(scope, receive, send)


def main_gate(app: ASGIApp, identity: Identity) -> IdentityGate:
    """The gate of the main port: the probes and the login page are public."""
    return IdentityGate(app, identity, MAIN_PUBLIC_PATHS, MAIN_PUBLIC_PREFIXES)


def route_path(scope: Scope) -> str:
    """The path without the gateway prefix (root_path), as the routes see it."""
    path = str(scope.get("path", ""))
    root = str(scope.get("root_path", "")).rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root) :] or "/"
    return path


def same_origin(headers: dict[str, str]) -> bool:
    """No Origin (curl, gradio_client), or one whose host:port is the Host or forwarded host."""
    origin = headers.get("origin")
    if origin is None:
        return True
    netloc = urlsplit(origin).netloc.lower()
    hosts = {headers.get("host", "").lower()}
    hosts.update(h.strip().lower() for h in headers.get("x-forwarded-host", "").split(",") if h.strip())
    return bool(netloc) and netloc in hosts


def _refused(path: str, status: int, detail: str) -> Response:
    headers = BEARER_CHALLENGE if status == 401 else None
    if path.startswith(COMPAT_PREFIX):  # HeyGem clients read the protocol's reply shape
        body = {"code": COMPAT_REFUSED_CODE, "msg": detail, "success": False, "data": {}}
        return JSONResponse(body, status_code=status, headers=headers)
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _headers(scope: Scope) -> dict[str, str]:
    # Repeated headers: the last one wins, except cookies, which browsers may split.
    found: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", []):
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        found[name] = f"{found[name]}; {value}" if name == "cookie" and name in found else value
    return found


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name and value:
            return value
    return None


def _query(scope: Scope) -> dict[str, list[str]]:
    raw = scope.get("query_string", b"")
    return parse_qs(raw.decode("latin-1"), keep_blank_values=True)


def _is_https(scope: Scope) -> bool:
    forwarded = _headers(scope).get("x-forwarded-proto", "")
    return scope.get("scheme") == "https" or forwarded.split(",")[0].strip() == "https"


async def _login_form(scope: Scope, receive: Receive) -> tuple[str, str] | None:
    """(username, password) from a small urlencoded or multipart body; None when malformed."""
    body = bytearray()
    while True:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > MAX_LOGIN_BODY:
            return None
        if not message.get("more_body", False):
            break
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return {"type": "http.disconnect"}
        replayed = True
        return {"type": "http.request", "body": bytes(body), "more_body": False}

    try:
        form: FormData = await Request(scope, replay).form(max_files=0, max_fields=MAX_LOGIN_FIELDS)
    except Exception:  # noqa: BLE001 - any unreadable form is the same answer: 400
        return None
    username, password = form.get("username"), form.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        return None
    return username.strip(), password


__all__ = [
    "Identity",
    "IdentityGate",
    "append_line",
    "gradio_user",
    "hash_password",
    "key_line",
    "main_gate",
    "new_key",
    "parse_keys",
    "parse_users",
    "principal_from_username",
    "principal_of",
    "require_principal",
    "same_origin",
    "user_line",
    "username_for",
    "verify_password",
]
