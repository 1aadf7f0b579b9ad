"""The worker: one thread per device, its own pipeline loaded once, running claimed jobs.

A run fetches the inputs into the job's scratch folder, runs the pipeline into a temporary name
there, moves the result atomically into the outputs folder, publishes it if the job names an
output prefix, and records the outcome. Errors end that job only; the worker carries on.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from heygem import storage
from heygem.errors import HeygemError, InputError
from heygem.jobs import files
from heygem.jobs.joblog import job_context
from heygem.jobs.manifest import shown_ref
from heygem.jobs.options import sync_options
from heygem.jobs.records import Job, JobStatus
from heygem.jobs.store import Claim, JobStore, Outcome, RunState
from heygem.settings import Settings

log = logging.getLogger("heygem.jobs.worker")

IDLE_POLL_S = 1.0  # an idle worker looks at the queue this often even without a wake-up
STORE_RETRY_S = 2.0  # pause after the database could not be reached
PROGRESS_INTERVAL_S = 0.5  # at most this often a progress write, except on a stage change
# Share of the whole run each pipeline stage covers, so progress only moves forward.
STAGE_SPANS = {
    "fetch": (0.0, 0.0),
    "probe": (0.0, 0.02),
    "audio": (0.02, 0.05),
    "detect": (0.05, 0.35),
    "synthesize": (0.35, 0.95),
    "encode": (0.95, 0.99),
    "done": (0.99, 0.99),
    "publish": (0.99, 1.0),
}
CANCELLED_MESSAGE = "cancelled by request"

PipelineFactory = Callable[[Settings], Any]


class JobLog(logging.LoggerAdapter):
    """Puts the job id in front of every line."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"job {self.extra['job_id']}: {msg}", kwargs


def job_log(job_id: str) -> JobLog:
    return JobLog(log, {"job_id": job_id})


class _StopRun(Exception):
    """Raised from the progress callback to stop the pipeline (cancel or hand-back)."""


class Worker(threading.Thread):
    def __init__(
        self, index: int, settings: Settings, store: JobStore, pipeline_factory: PipelineFactory,
        *, wake: threading.Event, stopping: threading.Event, cancels: set[str],
        on_finish: Callable[[Job], None],
    ) -> None:
        # Daemon: a run still going after the drain window must not keep the process alive.
        super().__init__(name=f"heygem-worker-{index}", daemon=True)
        self.settings = settings
        self.store = store
        self.pipeline_factory = pipeline_factory
        self.pipeline: Any = None
        self.ready = threading.Event()
        self.load_error: str | None = None
        self._wake = wake
        self._stopping = stopping
        self._cancels = cancels
        self._on_finish = on_finish
        self._current: Claim | None = None
        self._abandoned = threading.Event()
        self._claim_lock = threading.Lock()  # abandon() and taking on a claim exclude each other
        self._probes: queue.SimpleQueue[Future] = queue.SimpleQueue()

    @property
    def current(self) -> Claim | None:
        return self._current

    def abandon(self) -> Claim | None:
        """Stop caring about the current run (drain window over); return it for re-queueing."""
        with self._claim_lock:
            self._abandoned.set()
            return self._current

    def run(self) -> None:
        if not self._load():
            return
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
                job = JobRun(claim, self).execute()
            except Exception:
                # Only the store can fail here (the run itself catches everything); the job stays
                # 'running' in the database and the next start puts it back in the queue.
                log.exception("job %s: could not record the outcome", claim.job.id)
                job = None
            finally:
                self._current = None
            if job is not None:
                self._on_finish(job)

    def request_probe(self) -> Future:
        """Ask for one warm-up inference between jobs; the Future gets its seconds."""
        future: Future = Future()
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
                future.set_result(self.pipeline.warmup())
            except Exception as exc:
                log.exception("%s: on-demand warm-up inference failed", self.name)
                future.set_exception(exc)

    def _take(self, claim: Claim) -> bool:
        with self._claim_lock:
            if self._abandoned.is_set():
                self.store.release(claim.job.id, claim.token, count_attempt=False)
                return False
            self._current = claim
            return True

    def _load(self) -> bool:
        started = time.monotonic()
        try:
            self.pipeline = self.pipeline_factory(self.settings)
            self.pipeline.load()
            if self.settings.warmup:
                self.pipeline.warmup()
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
    """One run of one claimed job."""

    def __init__(self, claim: Claim, worker: Worker) -> None:
        self.job = claim.job
        self.token = claim.token
        self.worker = worker
        self.settings = worker.settings
        self.store = worker.store
        self.log = job_log(self.job.id)
        self.scratch = files.scratch_dir(self.settings, self.job.id, self.token)
        self._stop: RunState = RunState.ACTIVE
        self._stage = ""
        self._last_write = 0.0
        self._progress = 0.0

    def execute(self) -> Job | None:
        """Run and record the outcome; the finished Job, or None if the run was handed back."""
        self.log.info(
            "started (attempt %d): audio=%s video=%s",
            self.job.attempts, shown_ref(self.job.audio), shown_ref(self.job.video),
        )
        self.scratch.mkdir(parents=True, exist_ok=True)
        try:
            outcome = self._attempt()
        finally:
            files.remove_scratch(self.scratch)
        if outcome is None or not self.store.finish(self.job.id, self.token, outcome):
            self.log.info("handed back before it finished; it stays queued")
            return None
        self._log_outcome(outcome)
        return self.store.get(self.job.id)

    def _attempt(self) -> Outcome | None:
        output: Path | None = None
        result: Any = None
        try:
            self.report(0, 1, "fetch")
            audio = self._fetch(self.job.audio, "audio")
            video = self._fetch(self.job.video, "video")
            options = sync_options(self.job.options)
            temp = self.scratch / files.temp_name(".mp4")
            with job_context(self.job.id):
                result = self.worker.pipeline.run(audio, video, temp, options, on_progress=self.report)
            self._check_stop()
            output = files.move_atomic(Path(result.output), self._final_path())
            url, presigned = self._publish(output)
            return Outcome(
                JobStatus.SUCCEEDED, engine=result.engine,
                frames_without_face=result.frames_without_face, frames=result.frames,
                run_seconds=result.seconds, output_path=output, output_url=url,
                presigned_url=presigned,
            )
        except Exception as exc:
            outcome = self._outcome_of(exc, output)
            if outcome is None or output is None or result is None:
                return outcome
            # The video was made (publishing failed): its run counts for the frame rate too.
            return replace(outcome, frames=result.frames, run_seconds=result.seconds)

    def _outcome_of(self, exc: Exception, output: Path | None) -> Outcome | None:
        # The stop flags win over the exception type: the pipeline may wrap our _StopRun.
        if self._stop == RunState.GONE:
            return None
        if self._stop == RunState.CANCEL:
            return Outcome(JobStatus.CANCELLED, error=CANCELLED_MESSAGE)
        # output is set only once the finished mp4 is in place, so a failure that keeps it is a
        # publishing failure: Job.has_result, and the API still serves the file.
        if isinstance(exc, HeygemError):
            return Outcome(JobStatus.FAILED, error=str(exc), output_path=output)
        self.log.exception("unexpected error")
        return Outcome(
            JobStatus.FAILED, output_path=output,
            error=f"internal error ({type(exc).__name__}); the service log has details for job {self.job.id}",
        )

    def report(self, done: int, total: int, stage: str) -> None:
        """Progress callback for the pipeline; raises _StopRun when the run must end."""
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

    def _check_stop(self) -> None:
        if self._stop == RunState.ACTIVE:
            self._stop = self.worker.stop_requested(self.job.id)
        if self._stop != RunState.ACTIVE:
            raise _StopRun(self._stop.value)

    def _fetch(self, ref: str, kind: str) -> Path:
        dest = self.scratch / kind
        dest.mkdir(exist_ok=True)
        path = Path(storage.fetch_input(ref, dest, self.settings))
        if not path.is_file():
            raise InputError(f"{kind} file not found: {shown_ref(ref)}")
        return path

    def _final_path(self) -> Path:
        return files.output_dir(self.settings, self.job.id) / self.job.result_name

    def _publish(self, output: Path) -> tuple[str | None, str | None]:
        if not self.job.output_prefix:
            return None, None
        self.report(0, 1, "publish")
        name = self.job.output_name or f"{self.job.id}.mp4"
        published = storage.publish_output(output, self.job.output_prefix, self.settings, name=name)
        self.log.info("published to %s", published.url)
        return published.url, published.presigned_url

    def _log_outcome(self, outcome: Outcome) -> None:
        if outcome.status == JobStatus.SUCCEEDED:
            self.log.info("succeeded: %s (engine %s)", outcome.output_path, outcome.engine)
        elif outcome.status == JobStatus.CANCELLED:
            self.log.info("cancelled")
        else:
            self.log.warning("failed: %s", outcome.error)
