"""The worker: one thread per device, its own engine loaded once, running claimed jobs.

A run (execute.run_one) fetches the inputs into the job's scratch folder, runs the engine into a
temporary name there, moves the result atomically into the outputs folder and publishes it if
the job names an output prefix; the worker records the outcome. Errors end that job only; the
worker carries on. Every line logged during a run carries the job id (job_context).

The engine itself runs in a supervised child process (isolation.ProcessEngine) unless
Settings.worker_isolation says otherwise. When that process dies mid-run the job counts a failed
attempt and goes back to the queue; after max_attempts it fails, naming how the process died.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from heygem.engine.api import Engine
from heygem.errors import HeygemError
from heygem.jobs import files, fleetfiles
from heygem.jobs.api import EngineFactory
from heygem.jobs.avatars import face_for_run
from heygem.jobs.execute import (
    FETCH_STAGE,
    PUBLISH_STAGE,
    SPEECH_STAGE,
    EngineDied,
    RunRequest,
    RunStopped,
    run_one,
)
from heygem.jobs.fleet import RunHeartbeat, tick_seconds
from heygem.jobs.isolation import ProcessEngine, use_process
from heygem.jobs.joblog import job_context, job_logger
from heygem.jobs.manifest import shown_ref
from heygem.jobs.records import Job, JobStatus, Outcome
from heygem.jobs.store import Claim, JobStore, RunState
from heygem.settings import Settings

log = job_logger("heygem.jobs.worker")

IDLE_POLL_S = 1.0  # an idle worker looks at the queue this often even without a wake-up
STORE_RETRY_S = 2.0  # pause after the database could not be reached
PROGRESS_INTERVAL_S = 0.5  # at most this often a progress write, except on a stage change
# Share of the whole run each step covers (the engine's STAGES and ours around them), so that
# progress only moves forward.
STAGE_SPANS = {
    FETCH_STAGE: (0.0, 0.0),
    SPEECH_STAGE: (0.0, 0.05),
    "probe": (0.0, 0.02),
    "audio": (0.02, 0.05),
    "detect": (0.05, 0.35),
    "synthesize": (0.35, 0.95),
    "encode": (0.95, 0.99),
    "done": (0.99, 0.99),
    PUBLISH_STAGE: (0.99, 1.0),
}
CANCELLED_MESSAGE = "cancelled by request"


class Worker(threading.Thread):
    def __init__(
        self,
        index: int,
        settings: Settings,
        store: JobStore,
        pipeline_factory: EngineFactory,
        *,
        wake: threading.Event,
        stopping: threading.Event,
        cancels: set[str],
        on_finish: Callable[[Job], None],
        on_busy_change: Callable[[], None] = lambda: None,
    ) -> None:
        # Daemon: a run still going after the drain window must not keep the process alive.
        super().__init__(name=f"heygem-worker-{index}", daemon=True)
        self.index = index
        self.settings = settings
        self.store = store
        self.pipeline_factory = pipeline_factory
        self._engine: Engine | None = None
        self.ready = threading.Event()
        self.load_error: str | None = None
        self._wake = wake
        self._stopping = stopping
        self._cancels = cancels
        self._on_finish = on_finish
        self._on_busy_change = on_busy_change  # took or ended a run (the fleet row shows it)
        self._current: Claim | None = None
        self._abandoned = threading.Event()
        self._claim_lock = threading.Lock()  # abandon() and taking on a claim exclude each other
        self._probes: queue.SimpleQueue[Future[float]] = queue.SimpleQueue()

    @property
    def current(self) -> Claim | None:
        return self._current

    def abandon(self) -> Claim | None:
        """Stop caring about the current run (drain window over); return it for re-queueing."""
        with self._claim_lock:
            self._abandoned.set()
            return self._current

    def run(self) -> None:
        try:
            if self._load():
                self._serve()
        finally:
            self._close_engine()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            self._serve_probes()
            try:
                claim = self.store.claim()
            except Exception:
                log.exception("%s could not read the job queue; retrying", self.name)
                self._stopping.wait(STORE_RETRY_S)
                continue
            if claim is None:
                self._wake.wait(IDLE_POLL_S)
                self._wake.clear()
                continue
            if not self._take(claim):
                return
            try:
                with job_context(claim.job.id):
                    job = JobRun(claim, self).execute()
            except Exception:
                # Only the store can fail here (the run itself catches everything); the job stays
                # 'running' in the database and the next start puts it back in the queue.
                with job_context(claim.job.id):
                    log.exception("could not record the outcome")
                job = None
            finally:
                self._current = None
                self._on_busy_change()
            if job is not None:
                self._on_finish(job)

    def request_probe(self) -> Future[float]:
        """Ask for one warm-up inference between jobs; the Future gets its seconds."""
        future: Future[float] = Future()
        self._probes.put(future)
        self._wake.set()
        return future

    def _serve_probes(self) -> None:
        while True:
            try:
                future = self._probes.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue  # the caller gave up waiting
            try:
                future.set_result(self.engine.warmup())
            except Exception as exc:
                log.exception("%s: on-demand warm-up inference failed", self.name)
                future.set_exception(exc)

    def _take(self, claim: Claim) -> bool:
        with self._claim_lock:
            if self._abandoned.is_set():
                self.store.release(claim.job.id, claim.token, count_attempt=False)
                return False
            self._current = claim
        self._on_busy_change()
        return True

    @property
    def engine(self) -> Engine:
        """The worker's engine (built by _load; `ready` is set once it has loaded)."""
        if self._engine is None:
            raise RuntimeError(f"{self.name} has no engine loaded")
        return self._engine

    def _build_engine(self) -> Engine:
        settings = self._own_device()
        if use_process(settings, self.pipeline_factory):
            return ProcessEngine(settings, self.pipeline_factory)
        return self.pipeline_factory(settings)

    def _own_device(self) -> Settings:
        """These settings with this worker's GPU: worker i of n takes GPU i mod (GPU count)."""
        from heygem.engine.model.devices import worker_device

        device = worker_device(self.settings.device, self.index, self.settings.workers)
        if device != self.settings.device:
            log.info("%s uses %s", self.name, device)
        return self.settings.replace(device=device)

    def _close_engine(self) -> None:
        # Only a ProcessEngine holds something to release: its child process.
        if isinstance(self._engine, ProcessEngine):
            self._engine.close()

    def _load(self) -> bool:
        started = time.monotonic()
        try:
            engine = self._build_engine()
            self._engine = engine
            engine.load()
            if self.settings.warmup:
                engine.warmup()
        except Exception as exc:
            self.load_error = f"the engine failed to load: {exc}"
            log.exception("%s: %s", self.name, self.load_error)
            return False
        log.info("%s ready in %.1f s", self.name, time.monotonic() - started)
        self.ready.set()
        return True

    def stop_requested(self, job_id: str) -> RunState:
        if self._abandoned.is_set():
            return RunState.GONE
        if job_id in self._cancels:
            return RunState.CANCEL
        return RunState.ACTIVE


class JobRun:
    """One run of one claimed job; the caller holds its job_context."""

    def __init__(self, claim: Claim, worker: Worker) -> None:
        self.job = claim.job
        self.token = claim.token
        self.worker = worker
        self.settings = worker.settings
        self.store = worker.store
        self.scratch = files.scratch_dir(self.settings, self.job.id, self.token)
        self._stop: RunState = RunState.ACTIVE
        self._stage = ""
        self._last_write = 0.0
        self._progress = 0.0

    def execute(self) -> Job | None:
        """Run and record the outcome; the finished Job, or None if the run was handed back."""
        log.info(
            "started (attempt %d): audio=%s video=%s",
            self.job.attempts,
            shown_ref(self.job.audio),
            shown_ref(self.job.video),
        )
        self.scratch.mkdir(parents=True, exist_ok=True)
        heartbeat = RunHeartbeat(self.store, self.job.id, self.token, tick_seconds(self.settings), self._lost)
        heartbeat.start()
        try:
            outcome = self._attempt()
        finally:
            heartbeat.stop()
            files.remove_scratch(self.scratch)
        if outcome is None or not self.store.finish(self.job.id, self.token, outcome):
            log.info("handed back before it finished; it stays queued")
            return None
        self._log_outcome(outcome)
        return self.store.get(self.job.id)

    def _attempt(self) -> Outcome | None:
        try:
            avatar = face_for_run(self.store, self.settings, self.job.video, self.job.tenant)
        except HeygemError as exc:
            return Outcome(JobStatus.FAILED, error=str(exc))
        request = RunRequest(
            audio=self.job.audio,
            video=self.job.video,
            options=self.job.options,
            target=files.output_dir(self.settings, self.job.id) / self.job.result_name,
            scratch=self.scratch,
            # The caller's place, else the fleet's: any instance can then serve the result.
            publish_prefix=self.job.output_prefix or fleetfiles.result_prefix(self.settings, self.job.id),
            publish_name=self.job.output_name or f"{self.job.id}.mp4",
            job_id=self.job.id,
            text=self.job.text,
            voice=self.job.voice,
            reference=avatar.reference if avatar else None,
            face=avatar.face if avatar else None,
        )
        try:
            outcome = run_one(
                self.worker.engine,
                request,
                self.settings,
                on_progress=self.report,
                stopped=self._stopped,
            )
        except EngineDied as exc:
            outcome = self._after_engine_died(exc)
        # The stop flags win over the outcome: the engine may wrap our RunStopped.
        if self._stop == RunState.CANCEL:
            return Outcome(JobStatus.CANCELLED, error=CANCELLED_MESSAGE)
        if self._stop == RunState.GONE:
            return None
        return outcome

    def _after_engine_died(self, exc: EngineDied) -> Outcome | None:
        """A failed attempt: the job fails once it has used max_attempts, else goes back in the
        queue at its old place (None: nothing more to record)."""
        attempts = self.job.attempts
        if attempts >= self.settings.max_attempts:
            return Outcome(JobStatus.FAILED, error=died_message(attempts, exc.reason))
        log.warning(
            "the engine process died (%s) on attempt %d of %d; back in the queue",
            exc.reason, attempts, self.settings.max_attempts,
        )  # fmt: skip
        self.store.release(self.job.id, self.token, count_attempt=True)
        return None

    def report(self, done: int, total: int, stage: str) -> None:
        """Progress callback for the run; raises RunStopped when the run must end."""
        self._check_stop()
        fraction = min(1.0, done / total) if total else 0.0
        low, high = STAGE_SPANS.get(stage, (0.0, 1.0))
        self._progress = max(self._progress, low + (high - low) * fraction)
        now = time.monotonic()
        if stage == self._stage and now - self._last_write < PROGRESS_INTERVAL_S:
            return
        self._stage, self._last_write = stage, now
        state = self.store.report_progress(self.job.id, self.token, self._progress, stage)
        if state != RunState.ACTIVE:
            self._stop = state
            self._check_stop()

    def _lost(self, state: RunState) -> None:
        """The heartbeat learnt that the run must end: the next progress report stops it."""
        log.info(
            "the store says %s; stopping the run",
            "it was cancelled" if state == RunState.CANCEL else "it is no longer this run's",
        )
        self._stop = state

    def _stopped(self) -> bool:
        if self._stop == RunState.ACTIVE:
            self._stop = self.worker.stop_requested(self.job.id)
        return self._stop != RunState.ACTIVE

    def _check_stop(self) -> None:
        if self._stopped():
            raise RunStopped(self._stop.value)

    def _log_outcome(self, outcome: Outcome) -> None:
        if outcome.status == JobStatus.SUCCEEDED:
            log.info("succeeded: %s (engine %s)", outcome.output_path, outcome.engine)
        elif outcome.status == JobStatus.CANCELLED:
            log.info("cancelled")
        else:
            log.warning("failed: %s", outcome.error)


def died_message(attempts: int, reason: str) -> str:
    """The error of a job whose engine process died on every attempt."""
    times = "once" if attempts == 1 else f"{attempts} times"
    return f"the engine process died {times} on this job (last time: {reason}); giving up"
