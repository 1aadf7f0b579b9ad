"""HTTP API: health, readiness, metrics and the /api/v1 job and batch routes.

A thin adapter over JobService: it validates the request shape, streams uploads to the inputs
folder, calls the service and maps heygem.errors to HTTP codes. Every error body is
{"detail": "<one line>"}; tracebacks go to the server log only.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from heygem import storage
from heygem.errors import (
    ForbiddenPathError,
    HeygemError,
    InputError,
    JobNotFoundError,
    LimitExceededError,
    ModelError,
    QueueFullError,
    ShuttingDownError,
    StorageError,
)
from heygem.jobs.tenancy import LOCAL  # until identities are wired: the single-user principal
from heygem.storage.paths import resolve_under
from heygem.settings import Settings
from heygem.web import batching, media, uploads
from heygem.web.metrics import Metrics

log = logging.getLogger("heygem.web.api")

API_PREFIX = "/api/v1"
ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")  # uuid4().hex, as the job store makes them
MB = 1 << 20
MULTIPART_SLACK = 64 * 1024  # headers and boundaries around each file part
JOB_UPLOAD_FILES = 2
BATCH_UPLOAD_FILES = 101  # one audio + 100 videos, or a manifest and its files
MAX_JSON_BYTES = MB
MAX_PAGE = 200
DEEP_CHECK_TIMEOUT_S = 60.0  # a deep readiness probe waits this long for the running job to yield
INTERNAL_ERROR = "internal server error; the details are in the server log"

# Most specific first: LimitExceededError and ForbiddenPathError are InputErrors too.
ERROR_STATUS: tuple[tuple[type[HeygemError], int], ...] = (
    (LimitExceededError, 413),
    (ForbiddenPathError, 403),
    (InputError, 400),
    (JobNotFoundError, 404),
    (QueueFullError, 429),
    (ShuttingDownError, 503),
    (ModelError, 503),
    (StorageError, 502),
)


@dataclass
class ApiState:
    """What the routes share: the one Settings, the job service, metrics and the drain flag."""

    settings: Settings
    service: Any  # heygem.jobs.JobService (duck-typed so tests can wrap it)
    metrics: Metrics
    draining: threading.Event = field(default_factory=threading.Event)


def status_for(exc: HeygemError) -> int:
    for kind, code in ERROR_STATUS:
        if isinstance(exc, kind):
            return code
    return 500


def one_line(text: str) -> str:
    return " ".join(str(text).split()) or "error"


def error_response(code: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": one_line(detail)}, status_code=code, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as {"detail": one line}; unexpected ones are logged with a traceback."""

    async def heygem_error(request: Request, exc: HeygemError) -> JSONResponse:
        code = status_for(exc)
        headers = {"Retry-After": "5"} if code in (429, 503) else None
        log.info("%s %s -> %d: %s", request.method, request.url.path, code, one_line(str(exc)))
        return error_response(code, str(exc), headers)

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        return error_response(400, f"invalid request: {where}: {first.get('msg', 'bad value')}")

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(500, INTERNAL_ERROR)

    app.add_exception_handler(HeygemError, heygem_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)


# --------------------------------------------------------------------------------------------------
# helpers


def token_checker(settings: Settings) -> Callable[[Request], None]:
    expected = settings.api_token.encode()

    def require_token(request: Request) -> None:
        if not expected:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise StarletteHTTPException(
                401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    return require_token


def check_id(value: str, what: str = "job") -> str:
    """Ids are checked against a strict pattern before they reach the store or a path."""
    if not ID_PATTERN.match(value):
        raise InputError(f"{what} id must be 32 lowercase hex characters")
    return value


def output_file(settings: Settings, path: Path | None, what: str) -> Path:
    """A file we may serve: it exists and resolves inside the outputs folder (symlinks included)."""
    if path is None:
        raise StarletteHTTPException(404, f"{what} has no file")
    resolved = resolve_under(path, [settings.outputs_dir])
    if not resolved.is_file():
        raise StarletteHTTPException(404, f"{what} file is gone (deleted or expired)")
    return resolved


def job_view(job: Any, request: Request, settings: Settings) -> dict:
    data = job.to_dict()
    data.pop("output_path", None)  # a server-side path means nothing to a caller
    # Also after a failed upload: the job says failed, yet its mp4 was made and can be fetched.
    data["result_url"] = _url(request, f"{API_PREFIX}/jobs/{job.id}/result") if job.has_result else None
    data["presigned_url"] = presigned_link(job, settings)
    return data


def presigned_link(job: Any, settings: Settings) -> str | None:
    """Signed now, so the link lasts presign_seconds from this read; the one stored when the job
    finished only when signing is off or fails."""
    if not job.output_url:
        return job.presigned_url
    return storage.presign(job.output_url, settings) or job.presigned_url


def batch_view(batch: Any, request: Request, settings: Settings) -> dict:
    data = batch.to_dict()
    data["items"] = [job_view(item, request, settings) for item in batch.items]
    data["zip_url"] = _url(request, f"{API_PREFIX}/batches/{batch.id}/zip")
    return data


def _url(request: Request, path: str) -> str:
    return request.scope.get("root_path", "").rstrip("/") + path


def _check_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is None:
        return
    try:
        size = int(declared)
    except ValueError:
        raise InputError("Content-Length is not a number") from None
    if size > limit:
        raise LimitExceededError(f"request body is {size // MB} MB; the limit is {limit // MB} MB")


async def _read_json(request: Request) -> dict:
    _check_length(request, MAX_JSON_BYTES)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BYTES:
            raise LimitExceededError("JSON body is larger than 1 MB")
    try:
        data = json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InputError("the JSON body must be an object")
    return data


def _options(raw: Any) -> dict | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InputError(f"options is not valid JSON: {exc.msg}") from None
    if not isinstance(raw, dict):
        raise InputError("options must be a JSON object")
    return raw


def _text(data: dict, key: str) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InputError(f"{key} must be a string")
    return value


def _is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").startswith("multipart/form-data")


def _check_upload_durations(settings: Settings, form: uploads.UploadedForm) -> None:
    for name, saved_files in form.files.items():
        for saved in saved_files:
            if name in ("audio", "video"):
                media.check_duration(
                    saved.path, settings.max_duration_s, saved.original_name,
                    require_video=name == "video",
                )


# --------------------------------------------------------------------------------------------------
# submissions


async def _submit_job(state: ApiState, request: Request) -> Any:
    idempotency_key = request.headers.get("idempotency-key") or None
    if not _is_multipart(request):
        data = await _read_json(request)
        return await run_in_threadpool(_submit_refs, state, data, idempotency_key)
    form = await _receive_form(state, request, JOB_UPLOAD_FILES)
    try:
        return await run_in_threadpool(_submit_form, state, form, idempotency_key)
    except BaseException:
        form.discard()
        raise


async def _receive_form(state: ApiState, request: Request, max_files: int) -> uploads.UploadedForm:
    """Stream a multipart body's files to the inputs folder, refusing oversize bodies up front."""
    per_file = state.settings.max_upload_mb * MB
    _check_length(request, max_files * (per_file + MULTIPART_SLACK))
    return await uploads.receive_multipart(
        request.stream(), request.headers["content-type"], state.settings.inputs_dir,
        per_file, max_files,
    )


def _submit_refs(state: ApiState, data: dict, idempotency_key: str | None) -> Any:
    audio, video = _text(data, "audio"), _text(data, "video")
    if audio is None or video is None:
        raise InputError("give both 'audio' and 'video'")
    return state.service.submit(
        audio, video, _options(data.get("options")),
        output_name=_text(data, "output_name"), output_prefix=_text(data, "output_prefix"),
        idempotency_key=_text(data, "idempotency_key") or idempotency_key, principal=LOCAL,
    )


def _submit_form(state: ApiState, form: uploads.UploadedForm, idempotency_key: str | None) -> Any:
    _check_upload_durations(state.settings, form)
    refs = {}
    for key in ("audio", "video"):
        saved = form.file(key)
        refs[key] = str(saved.path) if saved else form.fields.get(key)
        if not refs[key]:
            raise InputError(f"missing the {key!r} file")
    fields = form.fields
    return state.service.submit(
        refs["audio"], refs["video"], _options(fields.get("options")),
        output_name=fields.get("output_name") or None,
        output_prefix=fields.get("output_prefix") or None,
        idempotency_key=fields.get("idempotency_key") or idempotency_key, principal=LOCAL,
        uploaded=[form.folder],
    )


async def _submit_batch(state: ApiState, request: Request) -> Any:
    if not _is_multipart(request):
        data = await _read_json(request)
        return await run_in_threadpool(_submit_batch_json, state, data)
    form = await _receive_form(state, request, BATCH_UPLOAD_FILES)
    try:
        return await run_in_threadpool(_submit_batch_form, state, form)
    except BaseException:
        form.discard()
        raise


def _submit_batch_json(state: ApiState, data: dict) -> Any:
    items = data.get("items")
    if not isinstance(items, list) or not items:
        raise InputError("'items' must be a non-empty list of {audio, video, output_name}")
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise InputError(f"items[{index}] must be an object")
    return state.service.submit_batch(
        items, _options(data.get("options")), output_prefix=_text(data, "output_prefix"),
        principal=LOCAL,
    )


def _submit_batch_form(state: ApiState, form: uploads.UploadedForm) -> Any:
    _check_upload_durations(state.settings, form)
    manifest = form.file("manifest")
    if manifest is not None:
        items = batching.manifest_items(manifest.path, state.settings)
    else:
        items = batching.pair_uploads(
            [f.path for f in form.files.get("audio", [])],
            [f.path for f in form.files.get("video", [])],
        )
    return state.service.submit_batch(
        items, _options(form.fields.get("options")),
        output_prefix=form.fields.get("output_prefix") or None, principal=LOCAL,
        uploaded=[form.folder],
    )


# --------------------------------------------------------------------------------------------------
# routes

REFERENCE_DOC = "path under an input folder, s3://bucket/key, obs://bucket/key or an allowed https:// URL"
OPTIONS_DOC = 'SyncOptions fields, e.g. {"blend": "rect", "pads": [0, 10, 0, 0]}'
JOB_BODY_DOC = {
    "requestBody": {
        "content": {
            "application/json": {"schema": {
                "type": "object", "required": ["audio", "video"],
                "properties": {
                    "audio": {"type": "string", "description": REFERENCE_DOC},
                    "video": {"type": "string", "description": "face video or photo, same forms as audio"},
                    "options": {"type": "object", "description": OPTIONS_DOC},
                    "output_name": {"type": "string"},
                    "output_prefix": {"type": "string", "description": "s3://bucket/prefix/ or obs://..."},
                    "idempotency_key": {"type": "string"},
                },
            }},
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["audio", "video"],
                "properties": {
                    "audio": {"type": "string", "format": "binary"},
                    "video": {"type": "string", "format": "binary"},
                    "options": {"type": "string", "description": "JSON object as text"},
                    "output_name": {"type": "string"},
                    "output_prefix": {"type": "string"},
                },
            }},
        },
        "required": True,
    }
}

BATCH_BODY_DOC = {
    "requestBody": {
        "content": {
            "application/json": {"schema": {
                "type": "object", "required": ["items"],
                "properties": {
                    "items": {"type": "array", "items": {"type": "object", "properties": {
                        "audio": {"type": "string"}, "video": {"type": "string"},
                        "output_name": {"type": "string"},
                    }}},
                    "options": {"type": "object"},
                    "output_prefix": {"type": "string"},
                },
            }},
            "multipart/form-data": {"schema": {
                "type": "object",
                "properties": {
                    "audio": {"type": "array", "items": {"type": "string", "format": "binary"},
                              "description": "one audio for every video, or one per video in order"},
                    "video": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    "manifest": {"type": "string", "format": "binary",
                                 "description": "JSONL: {audio, video, output_name} per line"},
                    "options": {"type": "string"},
                    "output_prefix": {"type": "string"},
                },
            }},
        },
        "required": True,
    }
}


def _deep_ready(state: ApiState, body: dict) -> JSONResponse:
    """One-frame inference on the built-in sample through the service (between jobs)."""
    started = time.monotonic()
    try:
        inference_s = state.service.deep_check(DEEP_CHECK_TIMEOUT_S)
    except HeygemError as exc:
        return JSONResponse({"ready": False, "reason": one_line(str(exc))}, status_code=503)
    except TimeoutError:
        reason = f"warm-up inference did not finish within {DEEP_CHECK_TIMEOUT_S:g} s"
        return JSONResponse({"ready": False, "reason": reason}, status_code=503)
    body["latency_ms"] = round((time.monotonic() - started) * 1000, 1)  # includes waiting for a job
    body["inference_ms"] = round(inference_s * 1000, 1)
    return JSONResponse(body)


def probe_routes(state: ApiState) -> APIRouter:
    """/health, /ready and /metrics: open even when the API needs a token."""
    router = APIRouter(tags=["probes"])

    @router.get("/health")
    def health() -> dict:
        # Answers while the process is up; never touches the queue, the store or the models.
        return {"health": "true"}

    @router.get("/ready")
    def ready(deep: bool = False) -> JSONResponse:
        if state.draining.is_set():
            return JSONResponse({"ready": False, "reason": "draining"}, status_code=503)
        ok, reason = state.service.readiness()
        if not ok:
            return JSONResponse({"ready": False, "reason": reason}, status_code=503)
        body: dict[str, Any] = {"ready": True, "reason": reason}
        if deep:
            return _deep_ready(state, body)
        return JSONResponse(body)

    @router.get("/metrics")
    def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router


def job_routes(state: ApiState) -> APIRouter:
    router = APIRouter(
        prefix=API_PREFIX, tags=["jobs"], dependencies=[Depends(token_checker(state.settings))]
    )
    service, settings = state.service, state.settings

    @router.post("/jobs", status_code=202, openapi_extra=JOB_BODY_DOC)
    async def submit_job(request: Request) -> JSONResponse:
        job = await _submit_job(state, request)
        log.info("job %s submitted through the API", job.id)
        return JSONResponse(job_view(job, request, settings), status_code=202)

    @router.get("/jobs")
    def list_jobs(
        request: Request,
        limit: int = Query(20, ge=1, le=MAX_PAGE),
        offset: int = Query(0, ge=0),
    ) -> dict:
        jobs = service.list_jobs(limit=limit, offset=offset, principal=LOCAL)
        return {
            "jobs": [job_view(job, request, settings) for job in jobs],
            "total": service.count_jobs(principal=LOCAL), "limit": limit, "offset": offset,
        }

    @router.get("/jobs/{job_id}")
    def get_job(job_id: str, request: Request) -> dict:
        return job_view(service.get(check_id(job_id), principal=LOCAL), request, settings)

    @router.get("/jobs/{job_id}/result", response_class=FileResponse)
    def get_result(job_id: str) -> FileResponse:
        job = service.get(check_id(job_id), principal=LOCAL)
        if not job.has_result:
            raise StarletteHTTPException(409, f"job {job.id} is {job.status}; it has no video to download")
        path = output_file(settings, job.output_path, f"job {job.id}")
        return FileResponse(path, media_type="video/mp4", filename=job.result_name)

    @router.delete("/jobs/{job_id}")
    def delete_job(job_id: str, request: Request) -> dict:
        job = service.get(check_id(job_id), principal=LOCAL)
        if not job.terminal:
            return {"deleted": False, "job": job_view(service.cancel(job.id, principal=LOCAL), request, settings)}
        service.delete(job.id, principal=LOCAL)
        return {"deleted": True, "id": job.id}

    @router.post("/batches", status_code=202, openapi_extra=BATCH_BODY_DOC)
    async def submit_batch(request: Request) -> JSONResponse:
        batch = await _submit_batch(state, request)
        log.info("batch %s submitted through the API with %d items", batch.id, len(batch.items))
        return JSONResponse(batch_view(batch, request, settings), status_code=202)

    @router.get("/batches/{batch_id}")
    def get_batch(batch_id: str, request: Request) -> dict:
        return batch_view(service.get_batch(check_id(batch_id, "batch"), principal=LOCAL), request, settings)

    @router.get("/batches/{batch_id}/zip", response_class=FileResponse)
    def get_batch_zip(batch_id: str) -> FileResponse:
        path = service.batch_zip(check_id(batch_id, "batch"), principal=LOCAL)
        path = output_file(settings, path, f"batch {batch_id}")
        return FileResponse(path, media_type="application/zip", filename=f"batch-{batch_id}.zip")

    @router.post("/batches/{batch_id}/retry", status_code=202)
    def retry_batch(batch_id: str, request: Request) -> JSONResponse:
        batch = service.retry_failed(check_id(batch_id, "batch"), principal=LOCAL)
        return JSONResponse(batch_view(batch, request, settings), status_code=202)

    return router


def register_api(app: FastAPI, state: ApiState) -> None:
    """Add the error handlers and every API route; call before Gradio is mounted at '/'."""
    install_error_handlers(app)
    app.include_router(probe_routes(state))
    app.include_router(job_routes(state))
