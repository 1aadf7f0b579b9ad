"""The engine in a supervised child process, so that a file which crashes or exhausts the engine
takes down one replaceable process instead of the web server and every other job.

`ProcessEngine` implements the Engine protocol in the worker thread (the parent). It starts one
child with the spawn context (a fresh interpreter: no threads or locks inherited from the server),
which builds the engine from Settings with the worker's factory and loads the models once. Each
call is one request over a multiprocessing Pipe; the child answers with progress messages, its log
lines (re-logged in the parent, where the job id is added) and then the result or the error.

* Cancel: while a request runs, the parent calls the caller's progress callback at least every
  HEARTBEAT_S, also when the child is silent (a long detection pass). When that callback raises
  (cancel, drain), the parent asks the child to stop; a child that has not stopped within
  STOP_GRACE_S is ended: SIGTERM to its process group (the child and its ffmpeg helpers), then
  SIGKILL after TERM_GRACE_S.
* Crash: when the child dies (killed, segfault, MemoryError under the worker_memory_mb limit) the
  request raises EngineDied naming how; the worker counts a failed attempt. The next request
  starts a new child.
* Settings.worker_memory_mb limits the child's address space (RLIMIT_AS, inherited by ffmpeg).
  torch reserves far more virtual memory than it uses, so the limit must be generous (several GB).
* Settings.worker_isolation: "process" always, "thread" never (the engine runs in the worker
  thread, as test fakes that share state with the test through threads need), "auto" = process for
  the built-in engine and thread for an engine factory a caller passes.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import pickle
import resource
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from heygem.engine.api import (
    STAGES,
    Engine,
    EngineStatus,
    ProgressCallback,
    SyncOptions,
    SyncResult,
)
from heygem.errors import HeygemError
from heygem.jobs.api import EngineFactory
from heygem.jobs.execute import EngineDied, default_engine
from heygem.settings import Settings

log = logging.getLogger("heygem.jobs.isolation")

HEARTBEAT_S = 0.5  # the progress callback runs at least this often while a request runs
STOP_GRACE_S = 2.0  # a child asked to stop has this long before it is terminated
TERM_GRACE_S = 2.0  # after SIGTERM, this long before SIGKILL
EXIT_WAIT_S = 5.0  # close(): how long a child asked to exit may take
CHILD_PROGRESS_INTERVAL_S = 0.1  # the child sends progress at most this often per stage
EXIT_OUT_OF_MEMORY = 3  # the child's exit code after a MemoryError
MB = 1024 * 1024
# A process killed by SIGKILL is most often the kernel's out-of-memory killer.
SIGNAL_HINTS = {signal.SIGKILL: "e.g. out of memory", signal.SIGSEGV: "a crash in native code"}

# Messages: parent -> child ("load",) | ("run", audio, face, output, options) | ("warmup",) |
# ("stop",) | ("exit",); child -> parent ("ok", value) | ("error", exception) | ("stopped",) |
# ("progress", done, total, stage) | ("log", logger, level, text) | ("died", reason).
Message = tuple[Any, ...]
T = TypeVar("T")


def use_process(settings: Settings, factory: EngineFactory) -> bool:
    """Whether a worker runs its engine in a child process (see Settings.worker_isolation)."""
    if settings.worker_isolation == "auto":
        return factory is default_engine
    return settings.worker_isolation == "process"


class EngineFailure(Exception):
    """An engine error that could not be sent as itself (it does not pickle); names its type."""


class _Stop(Exception):
    """Raised in the child's progress callback when the parent asks the run to stop."""


class ProcessEngine:
    """An Engine whose work happens in a supervised child process; used by one worker thread."""

    def __init__(self, settings: Settings, factory: EngineFactory) -> None:
        self.settings = settings
        self.factory = factory
        self._proc: BaseProcess | None = None
        self._conn: Connection | None = None
        self._status: EngineStatus | None = None

    # --- the Engine protocol ----------------------------------------------------------------
    def load(self) -> None:
        self._ensure_child()

    def status(self) -> EngineStatus:
        # Answered from what the child reported when it loaded: a status request must not wait
        # behind a running job.
        if self._status is None:
            raise RuntimeError("the engine process has not loaded yet")
        return self._status

    def warmup(self) -> float:
        seconds: float = self._request(("warmup",))
        return seconds

    def run(
        self,
        audio: Path,
        face: Path,
        output: Path,
        options: SyncOptions | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> SyncResult:
        request = ("run", Path(audio), Path(face), Path(output), options or SyncOptions())
        result: SyncResult = self._request(request, on_progress)
        return result

    def close(self) -> None:
        """Ask the child to exit; end it if it does not."""
        if self._proc is None:
            return
        try:
            self._send(("exit",))
            self._proc.join(EXIT_WAIT_S)
        except EngineDied:
            pass
        self._end_child()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # --- requests ---------------------------------------------------------------------------
    def _request(self, message: Message, on_progress: ProgressCallback | None = None) -> Any:
        self._ensure_child()
        return self._exchange(message, on_progress)

    def _exchange(self, message: Message, on_progress: ProgressCallback | None = None) -> Any:
        """Send one request to the running child and wait for its answer."""
        self._send(message)
        last: tuple[int, int, str] = (0, 1, STAGES[0])
        while True:
            reply = self._receive(HEARTBEAT_S)
            if reply is None or reply[0] == "progress":
                if reply is not None:
                    last = (int(reply[1]), int(reply[2]), str(reply[3]))
                if on_progress is not None:
                    self._report(on_progress, last)
                continue
            if reply[0] == "ok":
                return reply[1]
            if reply[0] == "error":
                raise reply[1]
            if reply[0] == "stopped":  # a stop we did not ask for: treat it as an error
                raise EngineFailure("the engine process stopped the run by itself")

    def _report(self, on_progress: ProgressCallback, progress: tuple[int, int, str]) -> None:
        try:
            on_progress(*progress)
        except BaseException:
            # The caller ends the run (cancel, drain): the child must stop working on it too.
            self._stop_child()
            raise

    def _send(self, message: Message) -> None:
        assert self._conn is not None
        try:
            self._conn.send(message)
        except (OSError, ValueError):
            self._died()

    def _receive(self, timeout: float) -> Message | None:
        """The next message that is not a log line; None after `timeout` without one."""
        assert self._conn is not None and self._proc is not None
        deadline = time.monotonic() + timeout
        while True:
            try:
                if not self._conn.poll(max(0.0, deadline - time.monotonic())):
                    if not self._proc.is_alive():
                        self._died()
                    return None
                message: Message = self._conn.recv()
            except (EOFError, OSError):
                self._died()
            if message[0] == "log":
                logging.getLogger(message[1]).log(message[2], "%s", message[3])
            elif message[0] == "died":
                self._died(str(message[1]))
            else:
                return message

    # --- the child's life -------------------------------------------------------------------
    def _ensure_child(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            return
        self._end_child()
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe()
        started = time.monotonic()
        # Daemon: if the server exits without close(), multiprocessing ends the child too.
        proc = context.Process(
            target=child_main, args=(child_end, self.settings, self.factory),
            name="heygem-engine", daemon=True,
        )  # fmt: skip
        proc.start()
        child_end.close()
        self._proc, self._conn = proc, parent_end
        try:
            status: EngineStatus = self._exchange(("load",))
        except Exception:
            self._end_child()  # a child without an engine serves nothing
            raise
        self._status = status
        log.info("engine process %d loaded in %.1f s", proc.pid, time.monotonic() - started)

    def _stop_child(self) -> None:
        """Ask the running request to stop; end the child if it has not within STOP_GRACE_S."""
        deadline = time.monotonic() + STOP_GRACE_S
        try:
            self._send(("stop",))
            while (remaining := deadline - time.monotonic()) > 0:
                reply = self._receive(remaining)
                if reply is not None and reply[0] in ("ok", "error", "stopped"):
                    return  # the child is idle again and keeps its loaded models
        except EngineDied:
            return
        log.warning("the engine process did not stop within %g s; ending it", STOP_GRACE_S)
        self._end_child()

    def _died(self, reason: str | None = None) -> NoReturn:
        """Clean up after a child that is gone and raise EngineDied naming how it ended."""
        proc = self._proc
        if proc is not None:
            proc.join(TERM_GRACE_S)
        how = reason or _exit_reason(proc.exitcode if proc is not None else None)
        log.error("the engine process died: %s", how)
        self._end_child()
        raise EngineDied(how)

    def _end_child(self) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            conn.close()
        if proc is None:
            return
        if proc.is_alive():
            _signal_group(proc, signal.SIGTERM)
            proc.join(TERM_GRACE_S)
        # The child's ffmpeg helpers share its process group; end any that are left too.
        _signal_group(proc, signal.SIGKILL)
        proc.join(TERM_GRACE_S)
        proc.close()


def end_process_helpers() -> None:
    """Reap multiprocessing's resource tracker, a child started with the first engine process.

    Left to itself it exits just after the server and stays a zombie wherever PID 1 does not reap
    orphans (many containers); the next engine process starts a new one if needed."""
    tracker = getattr(resource_tracker, "_resource_tracker", None)
    stop = getattr(tracker, "_stop", None)  # private in 3.11, but the only way to join it
    if callable(stop):
        stop()


def _signal_group(proc: BaseProcess, signum: signal.Signals) -> None:
    """Signal the child's process group (the child and its ffmpeg helpers)."""
    if proc.pid is None:
        return
    try:
        # The child leads its own group (child_main: setpgid). A group id is not reused while the
        # group has members, so this reaches only our helpers even after the child has gone.
        os.killpg(proc.pid, signum)
        return
    except (ProcessLookupError, PermissionError):
        pass  # no such group: the child died, or had not got as far as setpgid
    if proc.is_alive():
        os.kill(proc.pid, signum)


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "it stopped answering"
    if code == EXIT_OUT_OF_MEMORY:
        return "out of memory"
    if code < 0:
        signum = signal.Signals(-code)
        hint = SIGNAL_HINTS.get(signum)
        return f"killed by {signum.name}" + (f", {hint}" if hint else "")
    return f"it exited with code {code}"


# --- the child --------------------------------------------------------------------------------


def child_main(conn: Connection, settings: Settings, factory: EngineFactory) -> None:
    """Entry point of the engine process: load the engine, then answer requests until told to exit
    or until the parent is gone."""
    # Its own process group: the parent ends the child and its ffmpeg helpers in one signal.
    os.setpgid(0, 0)
    channel = _Channel(conn)
    _forward_logs(channel, settings.log_level)
    _limit_memory(settings.worker_memory_mb)
    engine: Engine | None = None
    while True:
        try:
            message: Message = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if message[0] == "exit":
            return
        if message[0] == "stop":
            continue  # it arrived after the run it was meant for had ended
        if message[0] == "load":
            engine = _answer(channel, functools.partial(_load, settings, factory), reply=_status_of)
        else:
            _answer(channel, functools.partial(_serve, engine, message, channel))


def _load(settings: Settings, factory: EngineFactory) -> Engine:
    engine = factory(settings)
    engine.load()
    return engine


def _status_of(engine: Engine) -> EngineStatus:
    return engine.status()


def _serve(engine: Engine | None, message: Message, channel: _Channel) -> Any:
    if engine is None:
        raise EngineFailure("the engine is not loaded")
    if message[0] == "warmup":
        return engine.warmup()
    if message[0] == "run":
        _, audio, face, output, options = message
        return engine.run(audio, face, output, options, on_progress=_ChildProgress(channel))
    raise EngineFailure(f"unknown request {message[0]!r}")


def _answer(channel: _Channel, work: Callable[[], T], reply: Callable[[T], Any] | None = None) -> T | None:
    """Run one request and send its answer (`reply` turns the value into what is sent); return
    the value for the child's own use, None when the request failed."""
    try:
        value = work()
        channel.send(("ok", reply(value) if reply is not None else value))
        return value
    except _Stop:
        channel.send(("stopped",))
    except MemoryError:
        channel.send(("died", "out of memory"))
        os._exit(EXIT_OUT_OF_MEMORY)  # the process state is not trustworthy any more
    except Exception as exc:  # noqa: BLE001 - every failure is the request's answer
        if channel.stopping:
            channel.send(("stopped",))
        else:
            if not isinstance(exc, HeygemError):
                log.exception("engine request failed")
            channel.send(("error", _portable(exc)))
    return None


def _portable(exc: Exception) -> Exception:
    """The exception itself when it survives pickling, else an EngineFailure naming it."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - any pickling failure means "send a plain copy"
        return EngineFailure(f"{type(exc).__name__}: {exc}")
    return exc


class _Channel:
    """The child's end of the pipe: sends from any thread (log lines come from ffmpeg readers)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.stopping = False
        self._lock = threading.Lock()

    def send(self, message: Message) -> None:
        with self._lock:
            try:
                self.conn.send(message)
            except (OSError, ValueError):
                pass  # the parent is gone; the request loop notices and exits

    def stop_requested(self) -> bool:
        """True once the parent asked to stop (or went away); reads only what is waiting."""
        try:
            while not self.stopping and self.conn.poll(0):
                if self.conn.recv()[0] == "stop":
                    self.stopping = True
        except (EOFError, OSError):
            self.stopping = True
        return self.stopping


class _ChildProgress:
    """The progress callback given to the engine in the child: forwards progress, stops on request."""

    def __init__(self, channel: _Channel) -> None:
        self.channel = channel
        self.channel.stopping = False
        self._stage = ""
        self._last = 0.0

    def __call__(self, done: int, total: int, stage: str) -> None:
        if self.channel.stop_requested():
            raise _Stop()
        now = time.monotonic()
        if stage != self._stage or now - self._last >= CHILD_PROGRESS_INTERVAL_S:
            self._stage, self._last = stage, now
            self.channel.send(("progress", done, total, stage))


class _PipeHandler(logging.Handler):
    def __init__(self, channel: _Channel) -> None:
        super().__init__()
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self.channel.send(("log", record.name, record.levelno, text))


def _forward_logs(channel: _Channel, level: str) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    root.addHandler(_PipeHandler(channel))
    root.setLevel(level.upper())


def _limit_memory(megabytes: int) -> None:
    if megabytes > 0:
        limit = megabytes * MB
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
