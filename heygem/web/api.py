"""HTTP API: health, readiness, metrics and the /api/v1 job and batch routes.

A thin adapter over JobService: it validates the request shape, streams uploads to the inputs
folder, calls the service and maps heygem.errors to HTTP codes. Every error body is
{"detail": "<one line>"}; tracebacks go to the server log only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from heygem import storage
from heygem.errors import HeygemError, InputError, QueueFullError, ShuttingDownError
from heygem.jobs.api import JobService
from heygem.jobs.avatars import AVATAR_PREFIX, Avatar
from heygem.jobs.records import Batch, Job
from heygem.jobs.tenancy import Principal
from heygem.settings import Settings
from heygem.storage.paths import resolve_under
from heygem.web import batching, media, openapi, uploads
from heygem.web.http import (
    INTERNAL_ERROR,
    MB,
    UnsupportedMediaTypeError,
    check_length,
    classify,
    error_response,
    is_disk_full,
    one_line,
    public_message,
    read_json_object,
    retry_headers,
    strip_paths,
)
from heygem.web.identity import principal_of, require_principal
from heygem.web.metrics import Metrics

log = logging.getLogger("heygem.web.api")

API_PREFIX = "/api/v1"
ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")  # uuid4().hex, as the job store makes them
MULTIPART_SLACK = 64 * 1024  # headers and boundaries around each file part
JOB_UPLOAD_FILES = 2
AVATAR_UPLOAD_FILES = 2  # the face video or photo, and a voice sample
PRIVATE_CACHE = {"Cache-Control": "private, max-age=60"}  # thumbnails are a tenant's own
BATCH_UPLOAD_FILES = 101  # one audio + 100 videos, or a manifest and its files
MAX_JSON_BYTES = MB
MAX_PAGE = 200
DEEP_CHECK_TIMEOUT_S = 60.0  # a deep readiness probe waits this long for the running job to yield
PROBE_THREADS = 2  # ffprobe of uploads runs here, not in the pool the other sync routes share


@dataclass
class ApiState:
    """What the routes share: the one Settings, the job service, metrics and the drain flag."""

    settings: Settings
    service: JobService
    metrics: Metrics
    draining: threading.Event = field(default_factory=threading.Event)
    # Blocking media probes of uploads get their own small pool: a burst of submissions then
    # queues here instead of in the shared thread pool (sync routes, the token check).
    probe_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(PROBE_THREADS, thread_name_prefix="heygem-probe")
    )


def install_error_handlers(app: FastAPI, data_dir: Path | None = None) -> None:
    """Every error leaves as {"detail": one line} without server paths; unexpected ones are
    logged with a traceback, once."""

    async def heygem_error(request: Request, exc: Exception) -> JSONResponse:
        error_class = classify(exc)
        log.info("%s %s -> %d: %s", request.method, request.url.path, error_class.status, one_line(exc))
        detail = public_message(exc, data_dir)
        return error_response(error_class.status, detail, retry_headers(error_class))

    async def os_error(request: Request, exc: Exception) -> JSONResponse:
        # Handled here rather than by the catch-all, which Starlette re-raises (a second traceback).
        if is_disk_full(exc):
            log.warning("%s %s -> 507: %s", request.method, request.url.path, one_line(exc))
            return await heygem_error(request, exc)
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(classify(exc).status, INTERNAL_ERROR)

    async def client_gone(request: Request, exc: Exception) -> Response:
        log.info("%s %s: the client went away before its body was read", request.method, request.url.path)
        return Response(status_code=400)  # nobody reads it

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        return error_response(400, f"invalid request: {where}: {first.get('msg', 'bad value')}")

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(classify(exc).status, INTERNAL_ERROR)

    app.add_exception_handler(HeygemError, heygem_error)
    app.add_exception_handler(OSError, os_error)
    app.add_exception_handler(ClientDisconnect, client_gone)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)


# --------------------------------------------------------------------------------------------------
# helpers


def admission_checker(state: ApiState) -> Callable[[], Any]:
    """A dependency run before the body is read: a draining server or a full queue refuses a
    submission at the cost of one count query, not after streaming the upload and probing it."""

    async def admit() -> None:
        if state.draining.is_set():
            raise ShuttingDownError("the service is shutting down and takes no new jobs; try again shortly")
        waiting = state.service.queue_depth()
        if waiting >= state.settings.queue_size:
            raise QueueFullError(f"queue is full ({waiting} jobs waiting); try again later")

    return admit


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


def result_response(job: Job, settings: Settings) -> Response:
    """The job's video: this instance's file, else (a fleet: another instance made it) the copy
    published to the object store, streamed through."""
    if not _is_here(job.output_path, settings) and job.output_url and storage.is_remote(job.output_url):
        return _stream_object(job.output_url, settings, job.result_name)
    path = output_file(settings, job.output_path, f"job {job.id}")
    return FileResponse(path, media_type="video/mp4", filename=job.result_name)


def _is_here(path: Path | None, settings: Settings) -> bool:
    """The file exists in this instance's outputs folder."""
    if path is None:
        return False
    try:
        return resolve_under(path, [settings.outputs_dir]).is_file()
    except HeygemError:
        return False


def _stream_object(url: str, settings: Settings, filename: str) -> StreamingResponse:
    stream = storage.open_object(url, settings)

    def chunks() -> Iterator[bytes]:
        try:
            yield from stream.chunks
        finally:
            stream.close()

    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    if stream.length is not None:
        headers["Content-Length"] = str(stream.length)
    return StreamingResponse(chunks(), media_type="video/mp4", headers=headers)


def job_view(job: Job, request: Request, settings: Settings) -> dict[str, Any]:
    data = job.to_dict(settings.data_dir)
    data.pop("output_path", None)  # a server-side path means nothing to a caller
    if isinstance(data.get("error"), str):  # paths outside the data folder too
        data["error"] = strip_paths(data["error"], settings.data_dir)
    # Also after a failed upload: the job says failed, yet its mp4 was made and can be fetched.
    data["result_url"] = _url(request, f"{API_PREFIX}/jobs/{job.id}/result") if job.has_result else None
    data["presigned_url"] = presigned_link(job, settings)
    return data


def presigned_link(job: Job, settings: Settings) -> str | None:
    """Signed now, so the link lasts presign_seconds from this read; the one stored when the job
    finished only when signing is off or fails."""
    if not job.output_url:
        return job.presigned_url
    return storage.presign(job.output_url, settings) or job.presigned_url


def batch_view(batch: Batch, request: Request, settings: Settings) -> dict[str, Any]:
    data = batch.to_dict(settings.data_dir)
    data["items"] = [job_view(item, request, settings) for item in batch.items]
    data["zip_url"] = _url(request, f"{API_PREFIX}/batches/{batch.id}/zip")
    return data


def _url(request: Request, path: str) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/") + path


def _options(raw: object) -> dict[str, Any] | None:
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


def _text(data: dict[str, Any], key: str) -> str | None:
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
                    saved.path,
                    settings.max_duration_s,
                    saved.original_name,
                    require_video=name == "video",
                )


# --------------------------------------------------------------------------------------------------
# submissions


async def _submit_job(state: ApiState, request: Request) -> Job:
    idempotency_key = request.headers.get("idempotency-key") or None
    who = principal_of(request)
    if not _is_multipart(request):
        data = await read_json_object(request, MAX_JSON_BYTES)
        return await run_in_threadpool(_submit_refs, state, data, idempotency_key, who)
    form = await _receive_form(state, request, JOB_UPLOAD_FILES)
    try:
        await _probe_uploads(state, form)
        return await run_in_threadpool(_submit_form, state, form, idempotency_key, who)
    except BaseException:
        form.discard()
        raise


async def _receive_form(state: ApiState, request: Request, max_files: int) -> uploads.UploadedForm:
    """Stream a multipart body's files to the inputs folder, refusing oversize bodies up front."""
    per_file = state.settings.max_upload_mb * MB
    check_length(request, max_files * (per_file + MULTIPART_SLACK))
    return await uploads.receive_multipart(
        request.stream(),
        request.headers["content-type"],
        state.settings.inputs_dir,
        per_file,
        max_files,
    )


def _submit_refs(state: ApiState, data: dict[str, Any], idempotency_key: str | None, who: Principal) -> Job:
    audio, video, text = _text(data, "audio"), _text(data, "video"), _text(data, "text")
    if video is None or (audio is None and text is None):
        raise InputError("give 'video' and either 'audio' or 'text'")
    return state.service.submit(
        audio,
        video,
        _options(data.get("options")),
        text=text,
        voice=_text(data, "voice"),
        output_name=_text(data, "output_name"),
        output_prefix=_text(data, "output_prefix"),
        idempotency_key=_text(data, "idempotency_key") or idempotency_key,
        principal=who,
    )


async def _probe_uploads(state: ApiState, form: uploads.UploadedForm) -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(state.probe_pool, _check_upload_durations, state.settings, form)


def _submit_form(
    state: ApiState, form: uploads.UploadedForm, idempotency_key: str | None, who: Principal
) -> Job:
    fields = form.fields
    text = fields.get("text") or None
    audio = None if text is not None and form.file("audio") is None else _form_reference(form, "audio")
    video = _form_reference(form, "video")
    return state.service.submit(
        audio,
        video,
        _options(fields.get("options")),
        text=text,
        voice=fields.get("voice") or None,
        output_name=fields.get("output_name") or None,
        output_prefix=fields.get("output_prefix") or None,
        idempotency_key=fields.get("idempotency_key") or idempotency_key,
        principal=who,
        uploaded=[form.folder],
    )


def _form_reference(form: uploads.UploadedForm, key: str) -> str:
    """The uploaded file's path, or a reference sent as a plain field."""
    saved = form.file(key)
    reference = str(saved.path) if saved else form.fields.get(key)
    if not reference:
        raise InputError(f"missing the {key!r} file")
    return reference


async def _submit_batch(state: ApiState, request: Request) -> Batch:
    who = principal_of(request)
    if not _is_multipart(request):
        data = await read_json_object(request, MAX_JSON_BYTES)
        return await run_in_threadpool(_submit_batch_json, state, data, who)
    form = await _receive_form(state, request, BATCH_UPLOAD_FILES)
    try:
        await _probe_uploads(state, form)
        return await run_in_threadpool(_submit_batch_form, state, form, who)
    except BaseException:
        form.discard()
        raise


def _submit_batch_json(state: ApiState, data: dict[str, Any], who: Principal) -> Batch:
    items = data.get("items")
    if not isinstance(items, list) or not items:
        raise InputError("'items' must be a non-empty list of {audio, video, output_name}")
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise InputError(f"items[{index}] must be an object")
    return state.service.submit_batch(
        items,
        _options(data.get("options")),
        output_prefix=_text(data, "output_prefix"),
        principal=who,
    )


def _submit_batch_form(state: ApiState, form: uploads.UploadedForm, who: Principal) -> Batch:
    manifest = form.file("manifest")
    if manifest is not None:
        items = batching.manifest_items(manifest.path, state.settings)
    else:
        items = batching.pair_uploads(
            [f.path for f in form.files.get("audio", [])],
            [f.path for f in form.files.get("video", [])],
        )
    return state.service.submit_batch(
        items,
        _options(form.fields.get("options")),
        output_prefix=form.fields.get("output_prefix") or None,
        principal=who,
        uploaded=[form.folder],
    )


# --------------------------------------------------------------------------------------------------
# routes


def _deep_ready(state: ApiState, body: dict[str, Any]) -> JSONResponse:
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

    # /health and /ready are async: they answer on the event loop and never wait for a thread
    # of the pool that uploads and other sync routes use.
    @router.get("/health")
    async def health() -> dict[str, Any]:
        # Answers while the process is up; never touches the queue, the store or the models.
        return {"health": "true"}

    @router.get("/ready")
    async def ready(deep: bool = False) -> JSONResponse:
        if state.draining.is_set():
            return JSONResponse({"ready": False, "reason": "draining"}, status_code=503)
        ok, reason = state.service.readiness()
        if not ok:
            return JSONResponse({"ready": False, "reason": reason}, status_code=503)
        body: dict[str, Any] = {"ready": True, "reason": reason}
        if deep:
            return await run_in_threadpool(_deep_ready, state, body)
        return JSONResponse(body)

    @router.get("/metrics")
    def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router


def job_routes(state: ApiState) -> APIRouter:
    router = APIRouter(prefix=API_PREFIX, tags=["jobs"], dependencies=[Depends(require_principal)])
    service, settings = state.service, state.settings
    admit = [Depends(admission_checker(state))]

    @router.post("/jobs", status_code=202, openapi_extra=openapi.job_body_doc(), dependencies=admit)
    async def submit_job(request: Request) -> JSONResponse:
        job = await _submit_job(state, request)
        log.info("job %s submitted through the API", job.id)
        return JSONResponse(job_view(job, request, settings), status_code=202)

    @router.get("/jobs")
    def list_jobs(
        request: Request,
        limit: int = Query(20, ge=1, le=MAX_PAGE),
        offset: int = Query(0, ge=0),
    ) -> dict[str, Any]:
        jobs = service.list_jobs(limit=limit, offset=offset, principal=principal_of(request))
        return {
            "jobs": [job_view(job, request, settings) for job in jobs],
            "total": service.count_jobs(principal=principal_of(request)),
            "limit": limit,
            "offset": offset,
        }

    @router.get("/jobs/{job_id}")
    def get_job(job_id: str, request: Request) -> dict[str, Any]:
        return job_view(service.get(check_id(job_id), principal=principal_of(request)), request, settings)

    @router.get("/jobs/{job_id}/result", response_class=FileResponse)
    def get_result(job_id: str, request: Request) -> Response:
        job = service.get(check_id(job_id), principal=principal_of(request))
        if not job.has_result:
            raise StarletteHTTPException(409, f"job {job.id} is {job.status}; it has no video to download")
        return result_response(job, settings)

    @router.delete("/jobs/{job_id}")
    def delete_job(job_id: str, request: Request) -> dict[str, Any]:
        job = service.get(check_id(job_id), principal=principal_of(request))
        if not job.terminal:
            return {
                "deleted": False,
                "job": job_view(service.cancel(job.id, principal=principal_of(request)), request, settings),
            }
        service.delete(job.id, principal=principal_of(request))
        return {"deleted": True, "id": job.id}

    @router.post("/batches", status_code=202, openapi_extra=openapi.batch_body_doc(), dependencies=admit)
    async def submit_batch(request: Request) -> JSONResponse:
        batch = await _submit_batch(state, request)
        log.info("batch %s submitted through the API with %d items", batch.id, len(batch.items))
        return JSONResponse(batch_view(batch, request, settings), status_code=202)

    @router.get("/batches/{batch_id}")
    def get_batch(batch_id: str, request: Request) -> dict[str, Any]:
        return batch_view(
            service.get_batch(check_id(batch_id, "batch"), principal=principal_of(request)), request, settings
        )

    @router.get("/batches/{batch_id}/zip", response_class=FileResponse)
    def get_batch_zip(batch_id: str, request: Request) -> FileResponse:
        path = service.batch_zip(check_id(batch_id, "batch"), principal=principal_of(request))
        path = output_file(settings, path, f"batch {batch_id}")
        return FileResponse(path, media_type="application/zip", filename=f"batch-{batch_id}.zip")

    @router.get("/fleet")
    def fleet(request: Request) -> dict[str, Any]:
        """The instances serving the queue (admins only), and the scaling signals."""
        return {
            "instances": service.fleet(principal=principal_of(request)),
            "queue_depth": service.queue_depth(),
            "oldest_queued_age_s": round(service.oldest_queued_age(), 3),
        }

    @router.post("/batches/{batch_id}/retry", status_code=202)
    def retry_batch(batch_id: str, request: Request) -> JSONResponse:
        batch = service.retry_failed(check_id(batch_id, "batch"), principal=principal_of(request))
        return JSONResponse(batch_view(batch, request, settings), status_code=202)

    return router


def avatar_view(avatar: Avatar, request: Request, settings: Settings) -> dict[str, Any]:
    data = avatar.to_dict(settings.data_dir)
    if isinstance(data.get("error"), str):
        data["error"] = strip_paths(data["error"], settings.data_dir)
    thumbnail = f"{API_PREFIX}/avatars/{avatar.id}/thumbnail"
    data["thumbnail_url"] = _url(request, thumbnail) if avatar.thumbnail is not None else None
    return data


async def _create_avatar(state: ApiState, request: Request) -> Avatar:
    if not _is_multipart(request):
        raise UnsupportedMediaTypeError(
            'send multipart/form-data: a "media" file, a "name" field, optionally a "voice" file '
            'and its "voice_text"'
        )
    form = await _receive_form(state, request, AVATAR_UPLOAD_FILES)
    try:
        return await run_in_threadpool(_create_avatar_form, state, form, principal_of(request))
    except BaseException:
        form.discard()
        raise


def _create_avatar_form(state: ApiState, form: uploads.UploadedForm, who: Principal) -> Avatar:
    fields = form.fields
    voice = form.file("voice")
    voice_ref = str(voice.path) if voice else (fields.get("voice") or None)
    return state.service.create_avatar(
        fields.get("name", ""),
        _form_reference(form, "media"),
        principal=who,
        voice_audio=voice_ref,
        voice_text=fields.get("voice_text") or None,
        uploaded=[form.folder],
    )


def _avatar_file(settings: Settings, path: Path | None, what: str) -> Path:
    """A file of an avatar we may serve: it exists inside the avatars folder."""
    if path is None:
        raise StarletteHTTPException(404, f"{what} has none yet")
    resolved = resolve_under(path, [settings.avatars_dir])
    if not resolved.is_file():
        raise StarletteHTTPException(404, f"{what} is gone")
    return resolved


def avatar_routes(state: ApiState) -> APIRouter:
    """/api/v1/avatars (a tenant's stored faces) and /api/v1/speech ("hear it")."""
    router = APIRouter(prefix=API_PREFIX, tags=["avatars"], dependencies=[Depends(require_principal)])
    service, settings = state.service, state.settings

    @router.post("/avatars", status_code=201)
    async def create_avatar(request: Request) -> JSONResponse:
        avatar = await _create_avatar(state, request)
        return JSONResponse(avatar_view(avatar, request, settings), status_code=201)

    @router.get("/avatars")
    def list_avatars(request: Request) -> dict[str, Any]:
        found = service.list_avatars(principal=principal_of(request))
        return {"avatars": [avatar_view(avatar, request, settings) for avatar in found]}

    @router.get("/avatars/{avatar_id}")
    def get_avatar(avatar_id: str, request: Request) -> dict[str, Any]:
        avatar = service.get_avatar(check_id(avatar_id, "avatar"), principal=principal_of(request))
        return avatar_view(avatar, request, settings)

    @router.patch("/avatars/{avatar_id}")
    async def rename_avatar(avatar_id: str, request: Request) -> dict[str, Any]:
        data = await read_json_object(request, MAX_JSON_BYTES)
        name = data.get("name")
        if not isinstance(name, str):
            raise InputError('send {"name": "<the new name>"}')
        avatar = await run_in_threadpool(
            service.rename_avatar, check_id(avatar_id, "avatar"), name, principal=principal_of(request)
        )
        return avatar_view(avatar, request, settings)

    @router.delete("/avatars/{avatar_id}")
    def delete_avatar(avatar_id: str, request: Request) -> dict[str, Any]:
        service.delete_avatar(check_id(avatar_id, "avatar"), principal=principal_of(request))
        return {"deleted": True, "id": avatar_id}

    @router.get("/avatars/{avatar_id}/thumbnail", response_class=FileResponse)
    def get_thumbnail(avatar_id: str, request: Request) -> FileResponse:
        avatar = service.get_avatar(check_id(avatar_id, "avatar"), principal=principal_of(request))
        path = _avatar_file(settings, avatar.thumbnail, f"avatar {avatar.id}'s thumbnail")
        return FileResponse(path, media_type="image/jpeg", headers=PRIVATE_CACHE)

    @router.post("/speech", response_class=FileResponse)
    async def speech(request: Request) -> FileResponse:
        data = await read_json_object(request, MAX_JSON_BYTES)
        text = data.get("text")
        if not isinstance(text, str):
            raise InputError('send {"text": "...", "voice"?: "...", "avatar"?: "<id>"}')
        avatar = _text(data, "avatar")
        if avatar is not None:
            avatar = avatar.removeprefix(AVATAR_PREFIX)
        path = await run_in_threadpool(
            service.speak,
            text,
            principal=principal_of(request),
            voice=_text(data, "voice"),
            avatar_id=check_id(avatar, "avatar") if avatar else None,
        )
        return FileResponse(
            path,
            media_type="audio/wav",
            filename="speech.wav",
            background=BackgroundTask(path.unlink, missing_ok=True),
        )

    return router


def register_api(app: FastAPI, state: ApiState) -> None:
    """Add the error handlers and every API route; call before Gradio is mounted at '/'."""
    install_error_handlers(app, state.settings.data_dir)
    app.include_router(probe_routes(state))
    app.include_router(job_routes(state))
    app.include_router(avatar_routes(state))
