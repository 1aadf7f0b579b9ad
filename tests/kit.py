"""The test kit: free ports, polling, the one fake engine, started job services and server processes.

conftest.py registers this module as a pytest plugin, so its fixtures are available everywhere:

- `start_service(settings, factory=FakePipeline)` starts a JobService, stopped at teardown;
- `servers(data_dir, ...)` starts a ServerProcess, stopped at teardown.

Everything that starts something stops it in `finally` or in a fixture's teardown, so a failing
assertion never leaves a thread or a process behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

from heygem.engine.api import EngineStatus, ProgressCallback, SyncOptions, SyncResult
from heygem.errors import UnsupportedMediaError
from heygem.jobs.service import JobService
from heygem.settings import Settings

T = TypeVar("T")

PROJECT = Path(__file__).resolve().parent.parent
LOCALHOST = "127.0.0.1"
POLL_S = 0.05
WAIT_S = 30.0  # generous bound for a fake job to finish on a busy 2-core machine
DRAIN_S = 5.0  # how long a test's service may take to finish its job at teardown
HTTP_PROBE_S = 2.0

# The fake engine's knobs for subprocess servers, which cannot be handed Python objects.
DELAY_ENV = "HEYGEM_FAKE_DELAY_S"  # every run takes this long (in ten progress steps)
LOAD_GATE_ENV = "HEYGEM_FAKE_LOAD_GATE"  # load() lasts until this file exists
RUN_LOG_ENV = "HEYGEM_FAKE_RUN_LOG"  # every finished run appends its job id to this file
RUN_GATE_ENV = "HEYGEM_FAKE_RUN_GATE"  # <file>: every run holds at its first step until it exists
GATE_TIMEOUT_S = 600.0  # a gate nobody opens ends with the test's own timeout, not never
GATE_POLL_S = 0.1
FAKE_STEPS = 10

FAKE_LAUNCHER = PROJECT / "tests" / "web_server.py"  # the real app on FakePipeline
REAL_LAUNCHER = PROJECT / "app.py"
STOP_TIMEOUT_S = 30.0
LOG_TAIL = 4000


# --- ports and polling ---------------------------------------------------------------------------


# The Gradio /generate endpoint's option parameters with the panel's defaults, in API order, for
# gradio_client calls that pass them positionally (as older scripts do).
GENERATE_DEFAULTS = {
    "engine": "auto",
    "pad_top": 0,
    "pad_bottom": 10,
    "pad_left": 0,
    "pad_right": 0,
    "smooth": True,
    "blend": "feather",
    "duration_policy": "loop",
    "face_choice": "largest",
    "face_x": None,
    "face_y": None,
    "watermark": "",
}


def free_ports(count: int) -> list[int]:
    """`count` distinct ports that nothing listens on now; all are held open until all are chosen."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((LOCALHOST, 0))
        return [sock.getsockname()[1] for sock in sockets]


def free_port() -> int:
    return free_ports(1)[0]


def wait_until(
    predicate: Callable[[], T],
    timeout: float = WAIT_S,
    *,
    interval: float = POLL_S,
    message: str | Callable[[], str] = "condition",
) -> T:
    """The first truthy value of `predicate()`, polled every `interval` s; AssertionError naming
    `message` (a string, or a function giving one, e.g. a log tail) once `timeout` has passed.
    Exceptions from `predicate` propagate: a predicate can fail fast (say, when a server died)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout:g} s waiting for {text}")
        time.sleep(interval)


def http_status(url: str, timeout: float = HTTP_PROBE_S) -> int:
    """Status code of a GET, or 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


# --- the fake engine -----------------------------------------------------------------------------


class FakePipeline:
    """A fast stand-in for LipSyncPipeline (implements heygem.engine.api.Engine), for tests whose
    subject is not the engine.

    `run` checks its inputs with ffprobe (typed errors, like the real engine), reports progress in
    ten steps spread over `delay_s`, and writes a real mp4: the face video's frames with the audio
    muxed in. `load` waits for the gate: a threading.Event in-process, or the file named by
    HEYGEM_FAKE_LOAD_GATE in a server subprocess, like a model that takes long to load. With
    `run_log` (or HEYGEM_FAKE_RUN_LOG in a server subprocess), each finished run appends its job id
    (the output's grandparent folder) to that file, so tests can count runs across processes.
    """

    def __init__(
        self,
        settings: Settings,
        delay_s: float | None = None,
        *,
        gate: threading.Event | None = None,
        run_log: Path | None = None,
    ) -> None:
        self.settings = settings
        self.delay_s = float(os.environ.get(DELAY_ENV, "0")) if delay_s is None else delay_s
        gate_file = os.environ.get(LOAD_GATE_ENV)
        self.gate_file = Path(gate_file) if gate_file else None
        run_gate = os.environ.get(RUN_GATE_ENV)
        self.run_gate = Path(run_gate) if run_gate else None
        self.gate = gate
        shared_log = os.environ.get(RUN_LOG_ENV)
        self.run_log = run_log or (Path(shared_log) if shared_log else None)
        self.loaded = False
        self.runs: list[tuple[Path, Path]] = []
        self._lock = threading.Lock()

    def load(self) -> None:
        # Holding load() keeps the worker from claiming, so tests can fill the queue exactly.
        if self.gate is not None:
            self.gate.wait()
        if self.gate_file is not None:
            wait_until(self.gate_file.exists, GATE_TIMEOUT_S, interval=0.1, message="the load gate")
        self.loaded = True

    def status(self) -> EngineStatus:
        return EngineStatus(
            engine="fake",
            reason="test double",
            checkpoint="",
            detector="none",
            device="cpu",
            device_name="test",
            loaded=self.loaded,
        )

    def warmup(self) -> float:
        return 0.0

    def run(
        self,
        audio: Path,
        face: Path,
        output: Path,
        options: SyncOptions | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> SyncResult:
        started = time.monotonic()
        audio, face, output = Path(audio), Path(face), Path(output)
        with self._lock:
            self.runs.append((audio, face))
        # Muxing first doubles as the input check: ffprobe runs only when ffmpeg has failed.
        partial = output.with_name(output.stem + ".partial.mp4")
        _mux(face, audio, partial)
        self._hold(on_progress)
        for step in range(FAKE_STEPS):
            if on_progress:
                on_progress(step, FAKE_STEPS, "synthesize")
            time.sleep(self.delay_s / FAKE_STEPS)
        shutil.move(partial, output)
        if on_progress:
            on_progress(FAKE_STEPS, FAKE_STEPS, "done")
        if self.run_log is not None:
            with open(self.run_log, "a", encoding="utf-8") as log:
                log.write(output.parent.parent.name + "\n")
        return SyncResult(
            output=output,
            engine="fake",
            frames=0,
            frames_without_face=0,
            fps=25.0,
            duration_s=0.0,
            seconds=time.monotonic() - started,
        )

    def _hold(self, on_progress: ProgressCallback | None) -> None:
        """With a run gate, stay "running" until its file exists, reporting progress (which is
        where a cancel request is noticed) so that a test can cancel or reload mid-job."""
        deadline = time.monotonic() + GATE_TIMEOUT_S
        while self.run_gate is not None and not self.run_gate.exists() and time.monotonic() < deadline:
            if on_progress:
                on_progress(1, FAKE_STEPS, "synthesize")
            time.sleep(GATE_POLL_S)


def _mux(face: Path, audio: Path, partial: Path) -> None:
    """The face video's frames with the audio, into `partial`; UnsupportedMediaError naming the
    input that lacks its stream, like the real engine's probe."""
    folder = partial.parent
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    argv = [
        "ffmpeg", "-y", "-loglevel", "error", "-i", str(face), "-i", str(audio),
        "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", "-shortest", str(partial),
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode == 0:
        return
    partial.unlink(missing_ok=True)
    if created and not any(folder.iterdir()):
        folder.rmdir()
    _require_stream(face, "video")
    _require_stream(audio, "audio")
    raise subprocess.CalledProcessError(result.returncode, argv, result.stdout, result.stderr)


def _require_stream(path: Path, kind: str) -> None:
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", kind[0], "-show_entries",
         "stream=codec_type", "-of", "csv=p=0", str(path)],
        capture_output=True,
        text=True,
    )  # fmt: skip
    if result.returncode != 0 or kind not in result.stdout:
        raise UnsupportedMediaError(f"{path.name}: no {kind} stream that ffmpeg can read")


class Pipelines:
    """A pipeline factory that keeps the FakePipelines it built, all sharing one optional gate."""

    def __init__(self, delay_s: float = 0.0, gate: threading.Event | None = None) -> None:
        self.delay_s = delay_s
        self.gate = gate
        self.built: list[FakePipeline] = []

    def __call__(self, settings: Settings) -> FakePipeline:
        pipeline = FakePipeline(settings, self.delay_s, gate=self.gate)
        self.built.append(pipeline)
        return pipeline

    def open_gate(self) -> None:
        if self.gate is not None:
            self.gate.set()

    @property
    def runs(self) -> list[tuple[Path, Path]]:
        return [run for pipeline in self.built for run in pipeline.runs]


# --- job services --------------------------------------------------------------------------------


@contextlib.contextmanager
def running_service(
    settings: Settings, factory: Callable[[Settings], object] = FakePipeline, drain_s: float = DRAIN_S
) -> Iterator[JobService]:
    """A started JobService, stopped on the way out; a gated factory is opened first, so that a
    worker waiting in load() can stop."""
    service = JobService(settings, pipeline_factory=factory)
    service.start()
    try:
        yield service
    finally:
        if isinstance(factory, Pipelines):
            factory.open_gate()
        service.stop(drain_seconds=drain_s)


@pytest.fixture
def start_service() -> Iterator[Callable[..., JobService]]:
    """`start_service(settings, factory=FakePipeline)`: a started JobService, stopped at teardown."""
    with contextlib.ExitStack() as stack:

        def start(settings: Settings, factory: Callable[[Settings], object] = FakePipeline) -> JobService:
            return stack.enter_context(running_service(settings, factory))

        yield start


# --- server processes ----------------------------------------------------------------------------


class ServerProcess:
    """One server subprocess on a free 127.0.0.1 port, its output in <data_dir>/server-N.log.

    `argv` defaults to tests/web_server.py (the real app on FakePipeline); REAL_LAUNCHER runs
    app.py. Settings go in as HEYGEM_* variables. `log_path` puts the output elsewhere (say, off
    a volume a test fills up). `started_at` is taken just before the spawn.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        argv: Sequence[str] = (str(FAKE_LAUNCHER),),
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://{LOCALHOST}:{self.port}"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path or data_dir / f"server-{time.monotonic_ns()}.log"
        environment = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "HEYGEM_DATA_DIR": str(data_dir),
            "HEYGEM_HOST": LOCALHOST,
            "HEYGEM_PORT": str(self.port),
            **(env or {}),
        }
        with open(self.log_path, "wb") as log:
            self.started_at = time.monotonic()
            self.process = subprocess.Popen(
                [sys.executable, *argv],
                cwd=PROJECT,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self) -> str:
        return self.log()[-LOG_TAIL:]

    def alive(self) -> bool:
        """True while the process runs; AssertionError with its log once it has exited."""
        if self.process.poll() is not None:
            raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
        return True

    def wait_for(self, path: str, status: int, timeout: float) -> float:
        """Seconds since spawn when `path` first answered `status`; AssertionError past timeout
        or as soon as the process exits."""
        wait_until(
            lambda: self.alive() and http_status(self.url + path) == status,
            timeout,
            interval=0.1,
            message=lambda: f"{path} to answer {status}:\n{self.log_tail()}",
        )
        return time.monotonic() - self.started_at

    def wait_healthy(self, timeout: float) -> float:
        return self.wait_for("/health", 200, timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash would end it."""
        self.process.kill()
        self.process.wait(STOP_TIMEOUT_S)

    def terminate(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM (the drain path) and the exit code; TimeoutExpired if it outlasts `timeout`."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it hangs; the exit code. Safe to call again."""
        if self.process.poll() is None:
            try:
                self.terminate()
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def stop_cleanly(self) -> None:
        """Stop through the drain path and require exit code 0; the log is printed for pytest,
        which shows it only when a test failed."""
        code = self.stop()
        print(self.log_tail())
        assert code == 0, f"server exited with {code}"

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@pytest.fixture
def servers() -> Iterator[Callable[..., ServerProcess]]:
    """`servers(data_dir, argv=..., env=...)`: a started ServerProcess, stopped at teardown."""
    with contextlib.ExitStack() as stack:

        def start(
            data_dir: Path,
            *,
            argv: Sequence[str] = (str(FAKE_LAUNCHER),),
            env: Mapping[str, str] | None = None,
            log_path: Path | None = None,
        ) -> ServerProcess:
            return stack.enter_context(ServerProcess(data_dir, argv=argv, env=env, log_path=log_path))

        yield start
