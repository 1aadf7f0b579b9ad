"""One FastAPI app on one port: the HTTP API first, the Gradio UI mounted at "/" after it.

`serve` runs uvicorn directly (not `demo.launch`) so that SIGTERM drains instead of killing the
running job: readiness turns false at once, the job service stops taking work and lets the running
job finish within Settings.drain_seconds, then uvicorn shuts down and the process exits 0.

Importing gradio and building the page takes several seconds on a small machine, so `serve`
starts answering /health first and builds the UI in a thread; until it is mounted, "/" shows a
short "starting" page that reloads itself.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable
from types import FrameType

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from heygem.errors import HeygemError
from heygem.jobs.api import EngineFactory, JobService
from heygem.settings import Settings
from heygem.web.api import ApiState, register_api
from heygem.web.compat import (
    compat_service_settings,
    create_compat_router,
    start_compat_server,
)
from heygem.web.guard import WebGuard
from heygem.web.identity import (
    MAIN_PUBLIC_PATHS,
    MAIN_PUBLIC_PREFIXES,
    Identity,
    IdentityGate,
)
from heygem.web.metrics import Metrics

log = logging.getLogger("heygem.web.server")

LOG_TAIL_LINES = 500  # lines of the service log kept in memory for the System tab
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
GRACEFUL_SHUTDOWN_S = 10  # after the drain: how long open connections (UI streams) may linger
STARTING_RELOAD_S = 2
STARTING_PAGE = f"""<!doctype html><html><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{STARTING_RELOAD_S}"><title>heygem</title></head>
<body style="font-family:sans-serif;margin:3em"><h2>heygem is starting&hellip;</h2>
<p>The web page is being prepared; this page reloads by itself.</p>
<p>heygem 正在启动，页面准备好后会自动刷新。</p></body></html>"""


class LogBuffer(logging.Handler):
    """The last LOG_TAIL_LINES formatted log records, for the System tab."""

    def __init__(self, capacity: int = LOG_TAIL_LINES) -> None:
        super().__init__(level=logging.INFO)
        self.lines: collections.deque[str] = collections.deque(maxlen=capacity)
        self.setFormatter(logging.Formatter(LOG_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # noqa: BLE001 - a logging handler must never raise into the caller
            self.handleError(record)

    def tail(self, count: int) -> list[str]:
        return list(self.lines)[-count:]


def install_log_buffer() -> LogBuffer:
    buffer = LogBuffer()
    logging.getLogger("heygem").addHandler(buffer)
    return buffer


class DeferredUI:
    """ASGI app at "/": a self-reloading "starting" page until the Gradio app is ready."""

    def __init__(self) -> None:
        self.app: ASGIApp | None = None
        self.host: FastAPI | None = None  # the FastAPI that Gradio is mounted on

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.app is not None:
            await self.app(scope, receive, send)
        elif scope["type"] == "http":
            await _starting_page(send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1013})

    async def run(self, build: Callable[[], FastAPI], started: asyncio.Event, stop: asyncio.Event) -> None:
        """Build (in a thread), enter Gradio's lifespan, serve, and leave it when `stop` is set."""
        try:
            host = self.host if self.host is not None else await asyncio.to_thread(build)
            # Entered and left in this one task: Gradio's lifespan may hold task groups.
            async with host.router.lifespan_context(host):
                self.host, self.app = host, host
                started.set()
                log.info("web UI ready")
                await stop.wait()
        except Exception:
            log.exception("the web UI could not be started; the HTTP API keeps working")
        finally:
            self.app = None
            started.set()


async def _starting_page(send: Send) -> None:
    body = STARTING_PAGE.encode()
    headers = [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(STARTING_RELOAD_S).encode()),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class PrefixTolerance:
    """Accept requests with or without the root path: the ModelArts gateway may or may not strip it."""

    def __init__(self, app: ASGIApp, root_path: str) -> None:
        self.app = app
        self.prefix = root_path.rstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and self.prefix:
            doubled = self.prefix + self.prefix
            path = scope["path"]
            if path == doubled or path.startswith(doubled + "/"):
                scope = dict(scope, path=path[len(self.prefix) :])
        await self.app(scope, receive, send)


def create_app(
    settings: Settings,
    service: JobService,
    *,
    log_buffer: LogBuffer | None = None,
    ui: bool = True,
    ui_in_background: bool = False,
    identity: Identity | None = None,
) -> FastAPI:
    """The API routes, then Gradio at "/" (built now, or in a thread at start-up), all behind one
    IdentityGate. `identity` None builds it from `settings` (ValueError for a bad keys file)."""
    ui_slot = DeferredUI()
    gate = identity if identity is not None else Identity(settings)

    def build_ui() -> FastAPI:
        from heygem.web.ui import (
            mount_ui,  # gradio is slow to import: only when the UI is wanted
        )

        return mount_ui(settings, service, log_buffer, gate)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started, stop_ui = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(ui_slot.run(build_ui, started, stop_ui)) if ui else None
        if task is not None and not ui_in_background:
            await started.wait()
        try:
            yield
        finally:
            stop_ui.set()
            if task is not None:
                await task

    app = FastAPI(
        title="heygem",
        version=_version(),
        lifespan=lifespan,
        description="Lip-sync jobs: submit audio + a face video or photo, poll, download the mp4.",
    )
    state = ApiState(settings=settings, service=service, metrics=Metrics(service))
    app.state.heygem = state
    app.add_middleware(WebGuard, settings=settings)  # hosts, origins, body caps, UI upload quota, headers
    register_api(app, state)
    if settings.compat_enabled:  # only then is its shared folder open to jobs
        app.include_router(create_compat_router(service, settings))
    app.add_middleware(
        IdentityGate, identity=gate, public_paths=MAIN_PUBLIC_PATHS, public_prefixes=MAIN_PUBLIC_PREFIXES
    )
    app.state.identity = gate
    if ui and not ui_in_background:
        ui_slot.host = build_ui()
    if ui:
        app.mount("/", ui_slot)
    return app


def _version() -> str:
    from heygem import __version__

    return __version__


def _prepare_gradio_environment(settings: Settings) -> None:
    # Gradio reads these when it is imported: no phoning home (no internet here, nor in most
    # deployments), and its upload cache on the data volume that uid 1000 can write.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("GRADIO_TEMP_DIR", str(settings.cache_dir / "gradio"))


def _log_auth(identity: Identity) -> None:
    log.info("credentials: %s", identity.describe())


class _DrainingServer(uvicorn.Server):
    """First SIGTERM/SIGINT drains the job service while still serving; a second one stops at once."""

    def __init__(self, config: uvicorn.Config, drain: Callable[[], None]) -> None:
        super().__init__(config)
        self._drain = drain
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not calling super(): uvicorn would re-raise the signal after shutdown (exit code != 0).
        if self._draining:
            log.warning("second %s: stopping without waiting", signal.Signals(sig).name)
            self.should_exit = True
            self.force_exit = True
            return
        self._draining = True
        log.info("%s received: draining", signal.Signals(sig).name)
        threading.Thread(target=self._drain_then_exit, name="heygem-drain", daemon=True).start()

    def _drain_then_exit(self) -> None:
        try:
            self._drain()
        except Exception:
            log.exception("drain failed")
        self.should_exit = True


def serve(settings: Settings, pipeline_factory: EngineFactory | None = None) -> int:
    """Run the web app and API until SIGTERM/SIGINT; return the process exit code."""
    from heygem.jobs.service import JobService

    _prepare_gradio_environment(settings)
    log_buffer = install_log_buffer()
    try:
        identity = Identity(settings)
    except ValueError as exc:
        log.error("cannot start: %s", exc)
        return 1
    _log_auth(identity)
    # The HeyGem-compatible API reads clients' files from, and writes results into, its shared folder.
    service = JobService(
        compat_service_settings(settings),
        pipeline_factory=pipeline_factory,  # None: heygem.jobs.execute.default_engine
    )
    try:
        service.start()
    except HeygemError as exc:  # the job database cannot be opened: one line, no traceback
        log.error("cannot start: %s", exc)
        service.stop(0)
        return 1
    app = create_app(settings, service, log_buffer=log_buffer, ui_in_background=True, identity=identity)
    state: ApiState = app.state.heygem
    try:
        # None unless HEYGEM_COMPAT_PORT is set; the same identity: one session, one key list.
        compat = start_compat_server(service, settings, identity)
    except OSError as exc:
        log.error("cannot serve the HeyGem-compatible API: %s", exc)
        service.stop(0)
        return 1

    def drain() -> None:
        state.draining.set()
        service.stop(settings.drain_seconds)
        log.info("job service stopped; shutting the server down")

    config = uvicorn.Config(
        PrefixTolerance(app, settings.root_path),
        host=settings.host,
        port=settings.port,
        root_path=settings.root_path,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        timeout_keep_alive=math.ceil(settings.keep_alive_s),
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    server = _DrainingServer(config, drain)
    log.info("serving on http://%s:%d%s", settings.host, settings.port, settings.root_path or "/")
    try:
        server.run()
    finally:
        if not state.draining.is_set():
            state.draining.set()
            service.stop(0)
        if compat is not None:
            compat.stop()  # after the drain, so HeyGem clients can poll until their job ends
    return 0 if server.started else 1


__all__ = ["create_app", "serve", "LogBuffer", "install_log_buffer", "PrefixTolerance"]
