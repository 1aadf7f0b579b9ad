"""HeyGem-compatible API: POST /easy/submit and GET /easy/query over the job layer.

HeyGem.ai's desktop client and scripts drive a video service on port 8383 with two calls. This
module speaks that protocol so they can point at heygem unchanged; like the web UI it is an
adapter over JobService and never runs the model itself.

    submit  {"audio_url", "video_url", "code", "chaofen", "watermark_switch", "pn"}
            -> {"code": 10000, "msg": ...}; 10002 bad request, 10001 busy, 9999 unexpected
    query   ?code=K -> {"code": 10000, "data": {"code", "status", "msg", "progress", "result"}}
            status 1 queued or running, 2 succeeded, 3 failed or cancelled; progress 0-100;
            an unknown code answers 10004 with success true, as the original does

Paths live in one shared folder (Settings.resolved_compat_root, the folder HeyGem's compose file
mounts at /code/data). As in the original service, its temp/ subfolder is the working folder:
relative paths name files there (the desktop client saves its audio and avatar videos there and
sends bare names), and the result is written there as <code>-r.mp4 and reported as
"/<code>-r.mp4", which the client joins to that same folder. Container paths
("/code/data/...") and absolute paths inside the root work too; anything else is refused.

Who may call: both doors (the main port's /easy routes and the compat port) sit behind the
IdentityGate of heygem.web.identity. With any credential configured, a call needs
"Authorization: Bearer <key>": HEYGEM_COMPAT_TOKEN (tenant compat_tenant) or any API key. The
compat port listens on Settings.compat_host, 127.0.0.1 unless set (the image sets 0.0.0.0).

The client's `code` keys its runs: run 1 is the job with idempotency key "heygem-compat:<code>",
run n > 1 the one keyed "heygem-compat:<code>:<n>". Submitting a code whose latest run is queued
or running starts nothing (10000); once that run has finished, the same code starts a new run, as
the original does (it forgets a task once reported). A query reports the latest run. `pn` picks
the duration policy when the audio outlasts the video: 1 ping-pong, 0 loop. The job layer
publishes the finished video into temp/ before the job turns succeeded, so status 2 always comes
with a complete file.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from heygem.errors import ForbiddenPathError, InputError, JobNotFoundError
from heygem.jobs.api import JobService
from heygem.jobs.records import Job, JobStatus
from heygem.jobs.tenancy import Principal
from heygem.settings import Settings
from heygem.storage.paths import resolve_under
from heygem.web.guard import WebGuard
from heygem.web.http import (
    INTERNAL_ERROR,
    KB,
    Fault,
    classify,
    one_line,
    read_json,
)
from heygem.web.identity import Identity, IdentityGate, principal_of

log = logging.getLogger("heygem.web.compat")

# Top-level reply codes of the protocol; the client treats anything but 10000 as a failure.
CODE_OK = 10000
CODE_BUSY = 10001  # queue full or shutting down: try again later (the original's busy code)
CODE_BAD_REQUEST = 10002  # bad parameters, refused paths, missing files
CODE_UNKNOWN_TASK = 10004  # no task with that code (success stays true, as in the original)
CODE_ERROR = 9999  # anything unexpected (details in the server log only)
# The shared error classification (heygem.web.http) in the protocol's terms.
FAULT_CODES = {
    Fault.CLIENT: CODE_BAD_REQUEST,
    Fault.BUSY: CODE_BUSY,
    Fault.SERVER: CODE_ERROR,
    Fault.INTERNAL: CODE_ERROR,
}

# data.status of a query
STATUS_RUNNING = 1  # queued or running
STATUS_SUCCEEDED = 2
STATUS_FAILED = 3  # failed or cancelled

CONTAINER_ROOT = "/code/data"  # where HeyGem's compose file mounts the shared folder
WORK_FOLDER = "temp"  # the original's working folder inside the shared one (see module doc)
RESULT_SUFFIX = "-r.mp4"  # the original names results <code>-r.mp4
KEY_PREFIX = "heygem-compat:"  # keeps client codes apart from the main API's idempotency keys
MAX_RUNS = 10000  # runs one code may have; finding the latest reads one key per run
DONE_MSG = "任务完成"  # the original's data.msg for a finished task ("task complete")
# pn: what the original does when the audio outlasts the video (1: back and forth, 0: loop)
PN_POLICIES = {1: "pingpong", 0: "loop"}
MAX_CODE_CHARS = 128
# A code becomes a file name: letters, digits, '_', '-' and single dots (UUIDs, timestamps).
CODE_PATTERN = re.compile(r"(?!.*\.\.)[A-Za-z0-9_-][A-Za-z0-9._-]*")  # used with fullmatch
MAX_BODY_BYTES = 64 * KB
WATERMARK_LABEL = "AI generated"  # what watermark_switch=1 burns into the corner
CHAOFEN_NOTE = "super-resolution (chaofen) is not available yet; the video is made without it"
SERVER_START_TIMEOUT_S = 10.0
SERVER_POLL_S = 0.05
SERVER_STOP_TIMEOUT_S = 5.0


# --------------------------------------------------------------------------------------------------
# settings and paths


def compat_service_settings(settings: Settings) -> Settings:
    """Settings for the JobService the compatible API shares: the shared folder becomes one of
    input_roots, so jobs may read the client's files there and publish results into it. Only
    when the compatible API is configured: otherwise no folder is opened to jobs for it."""
    if not settings.compat_enabled:
        return settings
    root = settings.resolved_compat_root
    root.mkdir(parents=True, exist_ok=True)
    if _inside_any(root, settings.input_roots):
        return settings
    return settings.replace(input_roots=(*settings.input_roots, root))


def resolve_shared_path(raw: object, root: Path, field: str) -> Path:
    """The file a client's audio_url / video_url names inside the shared folder `root`.

    "/code/data/x" maps to <root>/x; other absolute paths must lie inside root; relative ones
    name a file in <root>/temp/, or failing that in <root>/. Raises ForbiddenPathError for
    anything outside root and InputError when the file does not exist.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise InputError(f"{field} is required: a path in the shared folder")
    text = raw.strip().replace("\\", "/")  # Windows clients may send backslashes
    try:
        path = _resolve(text, root)
    except ForbiddenPathError:
        raise ForbiddenPathError(f"{field} {raw!r} is outside the shared folder") from None
    if not path.is_file():
        raise InputError(f"{field} file not found in the shared folder: {raw}")
    return path


def _resolve(text: str, root: Path) -> Path:
    if text == CONTAINER_ROOT or text.startswith(CONTAINER_ROOT + "/"):
        return resolve_under(root / text[len(CONTAINER_ROOT) :].lstrip("/"), [root])
    if Path(text).is_absolute():
        return resolve_under(text, [root])
    in_work_folder = resolve_under(text, [root], base=root / WORK_FOLDER)
    if in_work_folder.is_file():
        return in_work_folder
    return resolve_under(text, [root], base=root)


def _inside_any(path: Path, roots: tuple[Path, ...]) -> bool:
    resolved = Path(path).expanduser().resolve()
    return any(resolved.is_relative_to(Path(r).expanduser().resolve()) for r in roots)


def check_code(raw: object) -> str:
    """The client's task code, checked: it names the result file and keys the job."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str) or not raw:
        raise InputError("code is required: a unique task key chosen by the client")
    if len(raw) > MAX_CODE_CHARS or not CODE_PATTERN.fullmatch(raw):
        raise InputError(
            f"code {raw[:MAX_CODE_CHARS]!r} must be 1-{MAX_CODE_CHARS} letters, digits, '_', '-' "
            "or single dots (a UUID works)"
        )
    return raw


def _flag(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name, 0)
    if isinstance(value, bool):
        return value
    if value in (None, "", 0, "0"):
        return False
    if value in (1, "1"):
        return True
    raise InputError(f"{name} must be 0 or 1, got {value!r}")


# --------------------------------------------------------------------------------------------------
# the two calls, without HTTP


def submit_task(service: JobService, root: Path, body: object, who: Principal) -> dict[str, Any]:
    """Queue the client's task (or find the one with its code); the protocol reply on success.

    Raises HeygemError subclasses; `reply_for_error` turns them into protocol replies.
    """
    if not isinstance(body, Mapping):
        raise InputError(
            'the body must be a JSON object like {"audio_url": ..., "video_url": ..., "code": ...}'
        )
    root = Path(root).expanduser().resolve()
    code = check_code(body.get("code"))
    chaofen = _flag(body, "chaofen")
    watermark = _flag(body, "watermark_switch")
    policy = _duration_policy(body)
    note = f"; {CHAOFEN_NOTE}" if chaofen else ""
    run, latest = _latest_run(service, code, who)
    if latest is not None and not latest.terminal:
        return _reply(CODE_OK, f"task {code} is already {latest.status.value}; nothing new was started{note}")
    audio = resolve_shared_path(body.get("audio_url"), root, "audio_url")
    video = resolve_shared_path(body.get("video_url"), root, "video_url")
    job = service.submit(
        str(audio),
        str(video),
        {"duration_policy": policy},
        output_name=code + RESULT_SUFFIX,
        output_prefix=str(root / WORK_FOLDER),
        idempotency_key=run_key(code, run + 1),
        watermark=WATERMARK_LABEL if watermark else None,
        principal=who,
        internal=True,
    )
    log.info(
        "task %s run %d: job %s (watermark %s, chaofen %s, %s)",
        code,
        run + 1,
        job.id,
        watermark,
        chaofen,
        policy,
    )
    return _reply(CODE_OK, f"task {code} accepted{note}")


def run_key(code: str, run: int) -> str:
    """The idempotency key of a code's run (1-based); run 1's is the code's key of old."""
    return KEY_PREFIX + code if run == 1 else f"{KEY_PREFIX}{code}:{run}"


def _latest_run(service: JobService, code: str, who: Principal) -> tuple[int, Job | None]:
    """(n, job) of the code's latest run; (0, None) when it has none."""
    latest: Job | None = None
    for run in range(1, MAX_RUNS + 1):
        job = _find(service, run_key(code, run), who)
        if job is None:
            return run - 1, latest
        latest = job
    raise InputError(f"code {code} has been used for {MAX_RUNS} tasks; choose a new code")


def _duration_policy(body: Mapping[str, Any]) -> str:
    value = body.get("pn", 1)  # the official client always sends 1
    if isinstance(value, bool) or value in (None, ""):
        value = int(bool(value)) if isinstance(value, bool) else 1
    try:
        return PN_POLICIES[int(value)]
    except (TypeError, ValueError, KeyError):
        raise InputError(f"pn must be 0 (loop) or 1 (ping-pong), got {value!r}") from None


def query_task(service: JobService, root: Path, raw_code: object, who: Principal) -> dict[str, Any]:
    """The protocol reply for one task code: its latest run, or 10004 for an unknown code."""
    code = check_code(raw_code)
    _, job = _latest_run(service, code, who)
    if job is None:
        return _reply(CODE_UNKNOWN_TASK, f"no task with code {code!r}", {"code": code}, success=True)
    return _reply(CODE_OK, "ok", {"code": code, **task_view(job, root)})


def task_view(job: Job, root: Path) -> dict[str, Any]:
    """data of a query reply: status 1/2/3, msg (stage or error), progress 0-100, result."""
    if job.status == JobStatus.SUCCEEDED:
        result, problem = _result_path(job, root)
        if problem is None:
            return _view(STATUS_SUCCEEDED, DONE_MSG, 100, result)
        return _view(STATUS_FAILED, problem, 100, "")
    if job.status in (JobStatus.FAILED, JobStatus.CANCELLED):
        return _view(STATUS_FAILED, job.error or str(job.status), _percent(job.progress), "")
    if job.status == JobStatus.QUEUED:
        return _view(STATUS_RUNNING, "queued", 0, "")
    return _view(STATUS_RUNNING, f"running: {job.stage or 'starting'}", _percent(job.progress), "")


def _result_path(job: Job, root: Path) -> tuple[str, str | None]:
    """("/<name>" relative to the working folder, None), or ("", why the file is unusable)."""
    work_folder = (root / WORK_FOLDER).resolve()
    if not job.output_url:
        return "", "the task finished but its video was not placed in the shared folder"
    path = Path(job.output_url).resolve()
    if not path.is_relative_to(work_folder):
        return "", "the task finished but its video is outside the shared folder"
    if not path.is_file():
        return "", f"the finished video {path.name} is no longer in the shared folder"
    return "/" + path.relative_to(work_folder).as_posix(), None


def _percent(fraction: float) -> int:
    return max(0, min(100, int(fraction * 100)))


def _find(service: JobService, key: str, who: Principal) -> Job | None:
    try:
        return service.get_by_key(key, principal=who)
    except JobNotFoundError:
        return None


def _view(status: int, msg: str, progress: int, result: str) -> dict[str, Any]:
    return {"status": status, "msg": one_line(msg), "progress": progress, "result": result}


def _reply(
    code: int, msg: str, data: dict[str, Any] | None = None, *, success: bool | None = None
) -> dict[str, Any]:
    # "success" and "data" as the original sends them; scripts written for it read both.
    ok = code == CODE_OK if success is None else success
    return {"code": code, "msg": one_line(msg), "success": ok, "data": data or {}}


def reply_for_error(exc: BaseException, what: str) -> dict[str, Any]:
    """Protocol failure reply: 10001 when busy, 10002 for the client's mistakes, else 9999."""
    fault = classify(exc).fault
    if fault == Fault.INTERNAL:
        log.error("%s failed unexpectedly", what, exc_info=exc)
        return _reply(CODE_ERROR, INTERNAL_ERROR)
    if fault == Fault.SERVER:  # the engine failed to load, storage trouble...
        log.warning("%s failed: %s", what, exc)
    else:
        log.info("%s refused%s: %s", what, " (busy)" if fault == Fault.BUSY else "", exc)
    return _reply(FAULT_CODES[fault], str(exc))


# --------------------------------------------------------------------------------------------------
# HTTP


def create_compat_router(service: JobService, settings: Settings) -> APIRouter:
    """/easy/submit and /easy/query. Every reply is HTTP 200 with a protocol code. Who may call
    them is the IdentityGate's business (heygem.web.identity), in front of the app that
    includes this router: a refusal there is HTTP 401 with protocol code 10002."""
    root = settings.resolved_compat_root.expanduser().resolve()
    _check_setup(service, root)
    router = APIRouter(tags=["HeyGem compatible"])

    @router.post("/easy/submit")
    async def submit(request: Request) -> JSONResponse:
        """Queue a lip-sync task: audio_url + video_url in the shared folder, keyed by code."""
        try:
            body = await read_json(request, MAX_BODY_BYTES)
            reply = await run_in_threadpool(submit_task, service, root, body, principal_of(request))
        except Exception as exc:  # noqa: BLE001 - every failure leaves in the protocol's shape
            reply = reply_for_error(exc, "submit")
        return JSONResponse(reply)

    @router.get("/easy/query")
    def query(request: Request) -> JSONResponse:
        """Status (1 running, 2 done, 3 failed), stage or error, progress 0-100 and result."""
        try:
            reply = query_task(service, root, request.query_params.get("code"), principal_of(request))
        except Exception as exc:  # noqa: BLE001 - every failure leaves in the protocol's shape
            reply = reply_for_error(exc, "query")
        return JSONResponse(reply)

    return router


def _check_setup(service: JobService, root: Path) -> None:
    # Warn at start-up rather than on every submit: the service must be allowed to read root.
    service_settings = getattr(service, "settings", None)
    if isinstance(service_settings, Settings) and not _inside_any(root, service_settings.input_roots):
        log.warning(
            "the HeyGem-compatible API cannot work: the job service may not read the shared folder "
            "%s (build it with heygem.web.compat.compat_service_settings(settings))",
            root,
        )
    if not root.is_dir():
        log.warning("the HeyGem shared folder %s does not exist yet", root)


def create_compat_app(service: JobService, settings: Settings, identity: Identity | None = None) -> FastAPI:
    """Only the compatible routes, for the separate HEYGEM_COMPAT_PORT, behind the same identity
    gate as the main port: with any credential configured, a bearer key (compat_token or any API
    key) is needed. `identity` shares the main port's; None builds one from `settings`."""
    app = FastAPI(
        title="heygem (HeyGem-compatible API)",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(reply_for_error(exc, f"{request.method} {request.url.path}"))

    app.add_exception_handler(Exception, unexpected)
    app.include_router(create_compat_router(service, settings))
    app.add_middleware(IdentityGate, identity=identity if identity is not None else Identity(settings))
    app.add_middleware(WebGuard, settings=settings)  # added last: runs first, before any identity work
    return app


class CompatServer:
    """create_compat_app served by uvicorn on Settings.compat_port, in a thread of this process.

    A thread, not a second event loop in the main one: uvicorn installs signal handlers only in
    the main thread, so SIGTERM stays with the main server, which stops this one after its drain.
    """

    def __init__(self, service: JobService, settings: Settings, identity: Identity | None = None) -> None:
        self.host, self.port = settings.compat_host, settings.compat_port
        config = uvicorn.Config(
            create_compat_app(service, settings, identity),
            host=settings.compat_host,
            port=self.port,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=int(SERVER_STOP_TIMEOUT_S),
            timeout_keep_alive=math.ceil(settings.keep_alive_s),
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, name="heygem-compat", daemon=True)

    def _run(self) -> None:
        try:
            self.server.run()
        except SystemExit:
            pass  # uvicorn exits this way when it cannot open the port; start() reports it

    def start(self, timeout: float = SERVER_START_TIMEOUT_S) -> None:
        """Serve; OSError when the port cannot be opened (uvicorn has logged why)."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise OSError(f"cannot serve the HeyGem-compatible API on port {self.port}")
            time.sleep(SERVER_POLL_S)
        log.info("HeyGem-compatible API on %s:%d", self.host, self.port)

    def stop(self, timeout: float = SERVER_STOP_TIMEOUT_S) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout)


def start_compat_server(
    service: JobService, settings: Settings, identity: Identity | None = None
) -> CompatServer | None:
    """Start the compat port when Settings.compat_port is set; None when it is 0."""
    if not settings.compat_port:
        return None
    server = CompatServer(service, settings, identity)
    server.start()
    return server


__all__ = [
    "create_compat_router",
    "create_compat_app",
    "compat_service_settings",
    "start_compat_server",
    "CompatServer",
    "resolve_shared_path",
    "CODE_OK",
    "CODE_BAD_REQUEST",
    "CODE_BUSY",
    "CODE_ERROR",
    "CODE_UNKNOWN_TASK",
]
