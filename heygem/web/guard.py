"""Request hardening shared by every app heygem serves (the main one and the compat port).

One ASGI middleware, so no door is forgotten: it runs before FastAPI routing, before Gradio and
before any body is read.

* Host: with Settings.allowed_hosts set, any other Host header answers 400 (DNS rebinding).
* Origin: POST/PUT/PATCH/DELETE carrying an Origin that is neither this server's own nor in
  Settings.allowed_origins answers 403 (cross-site forms and fetches without a preflight).
* Multipart bodies are inspected as they stream, whether chunked or not: a cap on the number of
  parts and files and on the size of text fields; a violation answers 413 and reading stops.
* Web UI uploads (/gradio_api/upload) are counted per client: requests per minute and bytes per
  hour (429 with Retry-After), files per request (413).
* Security headers on every response: nosniff, Referrer-Policy and frame-ancestors.

A refusal after the app has started reading is delivered by sending our reply and telling the app
the client went away; whatever the app does next is dropped.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import urlsplit

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from heygem.settings import Settings

log = logging.getLogger("heygem.web.guard")

KB = 1 << 10
MB = 1 << 20
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
MAX_TEXT_FIELD_BYTES = 64 * KB  # one multipart text field (options JSON, a name, a reference)
MAX_TEXT_TOTAL_BYTES = MB  # all text fields of one body together
MAX_TEXT_FIELDS = 32  # text parts of one body; files are counted apart
API_MAX_FILES = 101  # the API's largest upload: one audio + 100 videos (web/api.py)
UPLOAD_ROUTE_SUFFIX = "/gradio_api/upload"
MINUTE_S = 60.0
HOUR_S = 3600.0
MAX_QUOTA_CLIENTS = 10_000  # clients remembered by the upload quota; the oldest go first
LOGIN_COOKIE_PREFIX = "access-token"  # Gradio's login cookie (access-token, access-token-unsecure)
DEFAULT_FRAME_ANCESTORS = "'self'"
WEBSOCKET_POLICY_VIOLATION = 1008


class Refusal(Exception):
    """A request the guard answers itself: HTTP status, one line, optional Retry-After."""

    def __init__(self, status: int, detail: str, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


# --------------------------------------------------------------------------------------------------
# hosts and origins


def host_name(host_header: str) -> str:
    """The host part of a Host header, lower case, without the port ("[::1]:80" -> "::1")."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def host_allowed(host_header: str, allowed: tuple[str, ...]) -> bool:
    """Empty `allowed` admits any host; "*.example.com" admits its subdomains."""
    if not allowed:
        return True
    name = host_name(host_header)
    for pattern in (entry.strip().lower() for entry in allowed):
        if pattern == "*" or pattern == name:
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


def origin_key(origin: str, default_scheme: str = "http") -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin or URL, ports made explicit; None when unparsable."""
    try:
        parts = urlsplit(origin if "://" in origin else f"{default_scheme}://{origin}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    scheme = parts.scheme.lower()
    return scheme, parts.hostname.lower(), port or DEFAULT_PORTS.get(scheme, 0)


def origin_allowed(origin: str, host_header: str, scheme: str, allowed: tuple[str, ...]) -> bool:
    """True when `origin` is this server (the Host it was reached at) or one of `allowed`.

    The scheme of our own origin is not compared: behind a TLS-terminating gateway the request
    arrives as http while the page was https, and the host and port already name this server.
    """
    given = origin_key(origin)
    if given is None:  # "null" (sandboxed frames, file://) and garbage are foreign
        return False
    own = origin_key(host_header, scheme)
    if own is not None and given[1:] == own[1:]:
        return True
    if own is not None and given[1] == own[1] and given[2] in (80, 443) and own[2] in (80, 443):
        return True  # https page, proxied to us on plain http without the port
    return any(origin_key(entry) == given for entry in allowed)


# --------------------------------------------------------------------------------------------------
# multipart inspection


@dataclass
class PartLimits:
    max_files: int
    max_text_fields: int = MAX_TEXT_FIELDS
    max_field_bytes: int = MAX_TEXT_FIELD_BYTES
    max_text_bytes: int = MAX_TEXT_TOTAL_BYTES


class MultipartInspector:
    """Counts parts, files and text bytes of a multipart body fed chunk by chunk; never stores it.

    Raises Refusal(413) at the first part over a limit. A body that cannot be parsed is left to
    the app (which reports it in its own words): inspection simply stops.
    """

    def __init__(self, boundary: bytes, limits: PartLimits) -> None:
        self.limits = limits
        self.files = 0
        self.text_fields = 0
        self.text_bytes = 0
        self._field_bytes = 0
        self._is_file = False
        self._header = b""
        self._value = b""
        self._disposition = b""
        self._broken = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
            },
        )

    def feed(self, chunk: bytes) -> None:
        if self._broken or not chunk:
            return
        try:
            self._parser.write(chunk)
        except MultipartParseError:
            self._broken = True

    def _on_part_begin(self) -> None:
        self._disposition, self._field_bytes, self._is_file = b"", 0, False

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        if self._header.strip().lower() == b"content-disposition":
            self._disposition = self._value.strip()
        self._header, self._value = b"", b""

    def _on_headers_finished(self) -> None:
        _, params = parse_options_header(self._disposition)
        self._is_file = b"filename" in params
        if self._is_file:
            self.files += 1
            if self.files > self.limits.max_files:
                raise Refusal(413, f"too many files in one request (at most {self.limits.max_files})")
            return
        self.text_fields += 1
        if self.text_fields > self.limits.max_text_fields:
            raise Refusal(413, f"too many form fields in one request (at most {self.limits.max_text_fields})")

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            return
        size = end - start
        self._field_bytes += size
        self.text_bytes += size
        if self._field_bytes > self.limits.max_field_bytes:
            raise Refusal(413, f"a form field is larger than {self.limits.max_field_bytes // KB} KB")
        if self.text_bytes > self.limits.max_text_bytes:
            raise Refusal(
                413, f"the form fields together are larger than {self.limits.max_text_bytes // KB} KB"
            )


def multipart_boundary(content_type: str) -> bytes | None:
    kind, params = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        return None
    return params.get(b"boundary") or None


# --------------------------------------------------------------------------------------------------
# web UI upload quota


@dataclass
class _Usage:
    requests: collections.deque[float] = field(default_factory=collections.deque)
    bytes: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)
    byte_total: int = 0

    def prune(self, now: float) -> None:
        while self.requests and self.requests[0] <= now - MINUTE_S:
            self.requests.popleft()
        while self.bytes and self.bytes[0][0] <= now - HOUR_S:
            self.byte_total -= self.bytes.popleft()[1]


class UploadQuota:
    """Per-client allowances for web UI uploads: requests per minute and bytes per hour.

    Bytes are charged as they arrive, so a refused upload still counts what it sent. Thread-safe:
    the compat server runs its own event loop in another thread.
    """

    def __init__(self, uploads_per_minute: int, mb_per_hour: int, clock: Any = time.monotonic) -> None:
        self.uploads_per_minute = uploads_per_minute
        self.bytes_per_hour = mb_per_hour * MB
        self._clock = clock
        self._lock = threading.Lock()
        self._clients: collections.OrderedDict[str, _Usage] = collections.OrderedDict()

    def start(self, client: str, declared: int | None) -> None:
        """Count one upload request; Refusal(429) when the client is over either allowance."""
        with self._lock:
            now = self._clock()
            usage = self._usage(client, now)
            if len(usage.requests) >= self.uploads_per_minute:
                wait = usage.requests[0] + MINUTE_S - now
                raise Refusal(
                    429, f"too many uploads (at most {self.uploads_per_minute} a minute)", _ceil(wait)
                )
            if usage.byte_total + (declared or 0) > self.bytes_per_hour:
                raise self._over_bytes(usage, now)
            usage.requests.append(now)

    def charge(self, client: str, size: int) -> None:
        """Count `size` bytes of a running upload; Refusal(429) past the hourly allowance."""
        with self._lock:
            now = self._clock()
            usage = self._usage(client, now)
            usage.bytes.append((now, size))
            usage.byte_total += size
            if usage.byte_total > self.bytes_per_hour:
                raise self._over_bytes(usage, now)

    def _over_bytes(self, usage: _Usage, now: float) -> Refusal:
        wait = usage.bytes[0][0] + HOUR_S - now if usage.bytes else MINUTE_S
        limit_mb = self.bytes_per_hour // MB
        return Refusal(429, f"upload allowance used up ({limit_mb} MB an hour)", _ceil(wait))

    def _usage(self, client: str, now: float) -> _Usage:
        usage = self._clients.pop(client, None) or _Usage()
        usage.prune(now)
        self._clients[client] = usage  # most recent last
        while len(self._clients) > MAX_QUOTA_CLIENTS:
            self._clients.popitem(last=False)
        return usage


def _ceil(seconds: float) -> int:
    return max(1, math.ceil(seconds))


def quota_client(scope: Scope, login_on: bool) -> str:
    """Who an upload is charged to: the login session when UI logins are on, else the client IP.

    The cookie is only trusted when logins are on: without them anyone could invent a new one
    per request and never run out.
    """
    if login_on:
        cookie = _header(scope, b"cookie")
        token = _login_cookie(cookie) if cookie else None
        if token:
            return "login:" + hashlib.sha256(token.encode()).hexdigest()[:32]
    client = scope.get("client")
    return "ip:" + (str(client[0]) if client else "unknown")


def _login_cookie(cookie_header: str) -> str | None:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(cookie_header)
    except CookieError:
        return None
    for name, morsel in jar.items():
        if name.startswith(LOGIN_COOKIE_PREFIX) and morsel.value:
            return morsel.value
    return None


# --------------------------------------------------------------------------------------------------
# the middleware


def security_headers(frame_ancestors: str) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
        (b"content-security-policy", f"frame-ancestors {frame_ancestors}".encode()),
    ]
    if frame_ancestors.strip() == DEFAULT_FRAME_ANCESTORS:
        headers.append((b"x-frame-options", b"SAMEORIGIN"))  # for browsers without CSP level 2
    return headers


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return ""


def _declared_length(scope: Scope) -> int | None:
    raw = _header(scope, b"content-length")
    return int(raw) if raw.isdigit() else None


class WebGuard:
    """The ASGI middleware described in the module docstring; add it to every app."""

    def __init__(self, app: ASGIApp, settings: Settings, quota: UploadQuota | None = None) -> None:
        self.app = app
        self.settings = settings
        self.quota = quota or UploadQuota(settings.ui_uploads_per_minute, settings.ui_upload_mb_per_hour)
        self.headers = security_headers(settings.frame_ancestors)
        self.api_limits = PartLimits(max_files=max(API_MAX_FILES, settings.ui_upload_files_per_request))
        self.upload_limits = PartLimits(max_files=settings.ui_upload_files_per_request)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and not host_allowed(
            _header(scope, b"host"), self.settings.allowed_hosts
        ):
            await send({"type": "websocket.close", "code": WEBSOCKET_POLICY_VIOLATION})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await _GuardedRequest(self, scope, receive, send).run()


class _GuardedRequest:
    """One HTTP request passing the guard: checks up front, then inspection while it streams."""

    def __init__(self, guard: WebGuard, scope: Scope, receive: Receive, send: Send) -> None:
        self.guard, self.scope, self._receive, self._send = guard, scope, receive, send
        self.inspector: MultipartInspector | None = None
        self.quota_client: str | None = None
        self.refusal: Refusal | None = None
        self.response_started = False

    async def run(self) -> None:
        try:
            self._check_request()
        except Refusal as refusal:
            await self._reply(refusal)
            return
        try:
            await self.guard.app(self.scope, self.receive, self.send)
        except Exception:
            if self.refusal is None:
                raise
            # The app failed because we cut its body short: our reply is the answer.
            log.debug("app stopped after a refusal", exc_info=True)
        if self.refusal is not None and not self.response_started:
            await self._reply(self.refusal)

    def _check_request(self) -> None:
        settings = self.guard.settings
        method = str(self.scope.get("method", "GET")).upper()
        host = _header(self.scope, b"host")
        if not host_allowed(host, settings.allowed_hosts):
            raise Refusal(400, "invalid Host header")
        origin = _header(self.scope, b"origin")
        if (
            method in UNSAFE_METHODS
            and origin
            and not origin_allowed(
                origin, host, str(self.scope.get("scheme", "http")), settings.allowed_origins
            )
        ):
            raise Refusal(403, "cross-origin request refused (the Origin header names another site)")
        boundary = multipart_boundary(_header(self.scope, b"content-type"))
        is_upload = method == "POST" and str(self.scope.get("path", "")).endswith(UPLOAD_ROUTE_SUFFIX)
        if boundary is not None:
            limits = self.guard.upload_limits if is_upload else self.guard.api_limits
            self.inspector = MultipartInspector(boundary, limits)
        if is_upload:
            self.quota_client = quota_client(self.scope, bool(settings.auth))
            self.guard.quota.start(self.quota_client, _declared_length(self.scope))

    async def receive(self) -> Message:
        if self.refusal is not None:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            try:
                self._inspect(message.get("body", b""))
            except Refusal as refusal:
                await self._refuse(refusal)
                return {"type": "http.disconnect"}
        return message

    def _inspect(self, chunk: bytes) -> None:
        if self.quota_client is not None and chunk:
            self.guard.quota.charge(self.quota_client, len(chunk))
        if self.inspector is not None:
            self.inspector.feed(chunk)

    async def _refuse(self, refusal: Refusal) -> None:
        log.info(
            "%s %s refused while reading: %s",
            self.scope.get("method"),
            self.scope.get("path"),
            refusal.detail,
        )
        self.refusal = refusal
        if not self.response_started:
            await self._reply(refusal)

    async def send(self, message: Message) -> None:
        if self.refusal is not None:
            return  # we have answered; the app's reply to a cut-off body is dropped
        if message["type"] == "http.response.start":
            self.response_started = True
            message = dict(message, headers=self._with_headers(message.get("headers", [])))
        await self._send(message)

    def _with_headers(self, headers: Any) -> list[tuple[bytes, bytes]]:
        merged = list(headers)
        present = {bytes(key).lower() for key, _ in merged}
        merged.extend((key, value) for key, value in self.guard.headers if key not in present)
        return merged

    async def _reply(self, refusal: Refusal) -> None:
        self.response_started = True
        body = json.dumps({"detail": refusal.detail}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),  # the rest of the body is not read: this connection is done
        ]
        if refusal.retry_after is not None:
            headers.append((b"retry-after", str(refusal.retry_after).encode()))
        await self._send(
            {"type": "http.response.start", "status": refusal.status, "headers": self._with_headers(headers)}
        )
        await self._send({"type": "http.response.body", "body": body})


__all__ = [
    "MultipartInspector",
    "PartLimits",
    "Refusal",
    "UploadQuota",
    "WebGuard",
    "host_allowed",
    "origin_allowed",
    "quota_client",
    "security_headers",
]
