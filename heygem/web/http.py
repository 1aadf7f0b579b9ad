"""The HTTP layer the job API, the HeyGem-compatible API and the web UI share.

One place decides how a heygem error is reported (HTTP status, a short title, and whose fault it
is), how a JSON body is read within a size limit, and what an unexpected failure says (who may
call is heygem.web.identity's business). The callers differ only in the shape of their replies:
{"detail": ...} for the job API, protocol codes for the compatible API, a toast for the UI.
"""

from __future__ import annotations

import errno
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from heygem.errors import (
    DiskFullError,
    ForbiddenError,
    ForbiddenPathError,
    HeygemError,
    InputError,
    JobExpiredError,
    JobNotFoundError,
    LimitExceededError,
    ModelError,
    QueueFullError,
    ShuttingDownError,
    SpeechError,
    StorageError,
)
from heygem.jobs.records import scrub_paths

KB = 1 << 10
MB = 1 << 20
INTERNAL_ERROR = "internal server error; the details are in the server log"
RETRY_AFTER_S = 5  # what a busy or not-yet-ready server asks clients to wait
INTERNAL_STATUS = 500
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
DISK_FULL = "the server's disk is full; try again later"
JSON_TYPES = ("application/json",)
# An absolute path: "/" plus at least one "dir/" and a last part, not inside a URL ("//host/x",
# "host/x") nor a relative path. Replaced by its last part, so a message still names the file.
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"]+/)+([^\s/'\"]*)")


class UnsupportedMediaTypeError(InputError):
    """The request body is not of a type this route reads (a JSON route sent text/plain)."""


class Fault(StrEnum):
    """Whose move it is: the compatible API turns this into its reply codes."""

    CLIENT = "client"  # the request is wrong; retrying it unchanged will fail again
    BUSY = "busy"  # the request is fine; try again later
    SERVER = "server"  # heygem failed on purpose, with a message safe to show
    INTERNAL = "internal"  # anything else: details only in the server log


@dataclass(frozen=True)
class ErrorClass:
    status: int  # HTTP status of the job API
    title: str  # short title; the UI shows i18n key "title_<title>"
    fault: Fault
    retry: bool = False  # the job API adds Retry-After


# Most specific first: LimitExceededError and ForbiddenPathError are InputErrors too.
ERROR_TABLE: tuple[tuple[type[HeygemError], ErrorClass], ...] = (
    (UnsupportedMediaTypeError, ErrorClass(415, "bad_input", Fault.CLIENT)),
    (LimitExceededError, ErrorClass(413, "too_large", Fault.CLIENT)),
    (ForbiddenPathError, ErrorClass(403, "bad_input", Fault.CLIENT)),
    (InputError, ErrorClass(400, "bad_input", Fault.CLIENT)),
    (ForbiddenError, ErrorClass(403, "failed", Fault.CLIENT)),
    (JobExpiredError, ErrorClass(410, "failed", Fault.CLIENT)),
    (JobNotFoundError, ErrorClass(404, "failed", Fault.CLIENT)),
    (QueueFullError, ErrorClass(429, "busy", Fault.BUSY, retry=True)),
    (ShuttingDownError, ErrorClass(503, "stopping", Fault.BUSY, retry=True)),
    (ModelError, ErrorClass(503, "failed", Fault.SERVER, retry=True)),
    (DiskFullError, ErrorClass(507, "failed", Fault.BUSY, retry=True)),
    (StorageError, ErrorClass(502, "failed", Fault.SERVER)),
    # The speech server (or espeak-ng) failed: a bad gateway, not the caller's mistake.
    (SpeechError, ErrorClass(502, "failed", Fault.SERVER)),
)
OTHER_HEYGEM_ERROR = ErrorClass(INTERNAL_STATUS, "failed", Fault.SERVER)
UNEXPECTED_ERROR = ErrorClass(INTERNAL_STATUS, "failed", Fault.INTERNAL)
DISK_FULL_ERROR = ErrorClass(507, "failed", Fault.BUSY, retry=True)


def is_disk_full(exc: BaseException) -> bool:
    """A full volume or exhausted quota, whether raised by the OS or reported by the job layer."""
    if isinstance(exc, DiskFullError):
        return True
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def classify(exc: BaseException) -> ErrorClass:
    """How `exc` is reported; UNEXPECTED_ERROR for anything heygem did not raise on purpose."""
    if is_disk_full(exc):
        return DISK_FULL_ERROR
    if not isinstance(exc, HeygemError):
        return UNEXPECTED_ERROR
    for kind, error_class in ERROR_TABLE:
        if isinstance(exc, kind):
            return error_class
    return OTHER_HEYGEM_ERROR


def one_line(text: object) -> str:
    return " ".join(str(text).split()) or "error"


def strip_paths(text: str, data_dir: Path | None = None) -> str:
    """`text` without absolute server paths: relative to data_dir when inside it (the job records'
    own rule), else the last part."""
    if data_dir is not None:
        text = scrub_paths(text, data_dir) or ""
    return ABSOLUTE_PATH.sub(lambda match: match.group(1) or "", text)


def public_message(exc: BaseException, data_dir: Path | None = None) -> str:
    """The one line a caller sees for an error heygem reports: no absolute paths, no OS details."""
    if is_disk_full(exc):
        return DISK_FULL
    text = one_line(strip_paths(str(exc), data_dir))
    if isinstance(exc, JobExpiredError) and exc.expired_at is not None:
        text = f"{text} (expired {expiry_text(exc.expired_at)})"
    return text


def expiry_text(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def error_response(code: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The job API's error body: {"detail": one line}."""
    return JSONResponse({"detail": one_line(detail)}, status_code=code, headers=headers)


def retry_headers(error_class: ErrorClass) -> dict[str, str] | None:
    return {"Retry-After": str(RETRY_AFTER_S)} if error_class.retry else None


def size_text(size: int) -> str:
    return f"{size / MB:.4g} MB" if size >= MB else f"{size // KB} KB"


def check_length(request: Request, limit: int) -> None:
    """Refuse a body whose declared Content-Length is over `limit` before reading any of it."""
    declared = request.headers.get("content-length")
    if declared is None:
        return
    try:
        size = int(declared)
    except ValueError:
        raise InputError("Content-Length is not a number") from None
    if size > limit:
        raise _too_large(limit)


def check_json_type(request: Request) -> None:
    """JSON routes read only application/json: a browser sends text/plain cross-site without
    asking first, application/json only after a CORS preflight that heygem never grants."""
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind not in JSON_TYPES:
        shown = kind or "none"
        raise UnsupportedMediaTypeError(f"send the body as Content-Type: application/json (got {shown})")


async def read_json(request: Request, limit: int) -> object:
    """The request body parsed as JSON (None when empty), read at most `limit` bytes far."""
    check_json_type(request)
    check_length(request, limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    try:
        return json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError):
        raise InputError("the body must be JSON") from None


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    data = await read_json(request, limit)
    if not isinstance(data, dict):
        raise InputError("the JSON body must be an object")
    return data


def _too_large(limit: int) -> LimitExceededError:
    return LimitExceededError(f"the request body is larger than {size_text(limit)}, this route's limit")
