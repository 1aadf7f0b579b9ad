"""A small JSON-in, audio-out HTTP client for speech servers (standard library only).

Every failure becomes one SpeechError line that names the server and the reason, never the key.
Redirects are followed only when they keep the POST (307/308) and stay on the same host, so the
bearer key never travels to another machine. The whole exchange is bounded by a deadline.
"""

from __future__ import annotations

import functools
import http.client
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import IO

from heygem.errors import SpeechError

log = logging.getLogger("heygem.speech.http")

HTTP_SCHEMES = ("http", "https")
MB = 1024 * 1024
MAX_AUDIO_BYTES = 100 * MB  # one piece is a sentence: a few MB at most, even as float WAV
MAX_ERROR_BYTES = 2000  # of an error body, enough for the server's message
ERROR_SNIPPET_CHARS = 160
READ_CHUNK = 64 * 1024
MAX_REDIRECTS = 3
KEPT_METHOD_REDIRECTS = (307, 308)  # the only redirects that keep a POST body
TIMEOUT_SETTING = "HEYGEM_TTS_TIMEOUT_S"
URL_SETTING = "HEYGEM_TTS_URL"
USER_AGENT = "heygem-speech"


@dataclass(frozen=True)
class AudioResponse:
    body: bytes
    content_type: str
    url: str  # after same-host redirects


def base_url(url: str, source: str) -> str:
    """Check a configured server URL (http(s), a host, no query); return it without a trailing /."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme.lower() not in HTTP_SCHEMES or not parts.hostname:
        raise SpeechError(
            f"{source}: {URL_SETTING} must be an http:// or https:// URL with a host; "
            f"got {display_url(url)!r}"
        )
    if parts.query or parts.fragment:
        raise SpeechError(f"{source}: {URL_SETTING} must not carry a query or fragment")
    return url.strip().rstrip("/")


def display_url(url: str) -> str:
    """The URL without user:password or query string, for messages and logs."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<malformed URL>"
    return urllib.parse.urlunsplit((parts.scheme, host + port, parts.path, "", ""))


def post_json(
    url: str, payload: dict[str, object], *, api_key: str, timeout_s: float, source: str
) -> AudioResponse:
    """POST payload as JSON; return the response body. SpeechError on any failure."""
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    deadline = time.monotonic() + timeout_s
    for _ in range(MAX_REDIRECTS + 1):
        request = urllib.request.Request(url, data=body, method="POST", headers=_headers(api_key))
        try:
            return _exchange(request, deadline, timeout_s, source)
        except urllib.error.HTTPError as exc:
            if exc.code not in KEPT_METHOD_REDIRECTS:
                raise _status_error(exc, source) from None
            url = _same_host_target(url, exc.headers.get("Location", ""), exc.code, source)
            exc.close()
    raise SpeechError(f"{source}: more than {MAX_REDIRECTS} redirects from {display_url(url)}")


def _headers(api_key: str) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "Accept": "audio/wav, audio/*;q=0.9, */*;q=0.1",
        "User-Agent": USER_AGENT,
    }
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _exchange(
    request: urllib.request.Request, deadline: float, timeout_s: float, source: str
) -> AudioResponse:
    shown = display_url(request.full_url)
    try:
        with _opener().open(request, timeout=_remaining(deadline, timeout_s, shown, source)) as resp:
            data = _read_body(resp, deadline, timeout_s, shown, source)
            return AudioResponse(data, resp.headers.get("Content-Type", ""), request.full_url)
    except urllib.error.HTTPError:
        raise
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise _timeout(shown, timeout_s, source) from None
        raise SpeechError(f"{source}: cannot reach {shown}: {_reason(exc.reason)}") from None
    except TimeoutError:
        raise _timeout(shown, timeout_s, source) from None
    except (OSError, http.client.HTTPException) as exc:
        raise SpeechError(f"{source}: request to {shown} failed: {_reason(exc)}") from None


def _read_body(
    response: http.client.HTTPResponse,
    deadline: float,
    timeout_s: float,
    shown: str,
    source: str,
) -> bytes:
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > MAX_AUDIO_BYTES:
        raise _too_large(shown, source)
    chunks: list[bytes] = []
    size = 0
    # read1 returns after one socket read, so a server that trickles bytes still meets the deadline.
    while chunk := response.read1(READ_CHUNK):
        size += len(chunk)
        if size > MAX_AUDIO_BYTES:
            raise _too_large(shown, source)
        chunks.append(chunk)
        _remaining(deadline, timeout_s, shown, source)
    return b"".join(chunks)


def _remaining(deadline: float, timeout_s: float, shown: str, source: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _timeout(shown, timeout_s, source)
    return left


def _same_host_target(url: str, location: str, code: int, source: str) -> str:
    target = urllib.parse.urljoin(url, location)
    old, new = urllib.parse.urlsplit(url), urllib.parse.urlsplit(target)
    same_host = (old.hostname, old.port) == (new.hostname, new.port)
    if not location or not same_host or new.scheme not in (old.scheme, "https"):
        raise SpeechError(
            f"{source}: {display_url(url)} redirects (HTTP {code}) to another server "
            f"{display_url(target)!r}; set {URL_SETTING} to the server's own address"
        )
    log.info("%s: %s redirects to %s", source, display_url(url), display_url(target))
    return target


def _status_error(exc: urllib.error.HTTPError, source: str) -> SpeechError:
    detail = _error_detail(exc)
    shown = display_url(exc.url or "")
    hint = " (check HEYGEM_TTS_API_KEY)" if exc.code in (401, 403) else ""
    return SpeechError(f"{source}: {shown} answered HTTP {exc.code}{hint}{detail}")


def _error_detail(body: IO[bytes]) -> str:
    try:
        raw = body.read(MAX_ERROR_BYTES)
    except (OSError, http.client.HTTPException):
        return ""
    finally:
        body.close()
    text = raw.decode("utf-8", errors="replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        message = parsed.get("error", parsed.get("detail", parsed.get("message", text)))
        if isinstance(message, dict):
            message = message.get("message", text)
        text = str(message)
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    if len(text) > ERROR_SNIPPET_CHARS:
        text = text[:ERROR_SNIPPET_CHARS] + "..."
    return f": {text}" if text else ""


def _timeout(shown: str, timeout_s: float, source: str) -> SpeechError:
    return SpeechError(
        f"{source}: no complete answer from {shown} within {timeout_s:g} s ({TIMEOUT_SETTING})"
    )


def _too_large(shown: str, source: str) -> SpeechError:
    return SpeechError(f"{source}: {shown} sent more than {MAX_AUDIO_BYTES // MB} MB of audio")


def _reason(exc: object) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Hand every 3xx back as an HTTPError; post_json decides which ones to follow."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None


@functools.cache
def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(_NoRedirects())
