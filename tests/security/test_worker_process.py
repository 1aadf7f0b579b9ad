"""Issue 12, finding 3 (second half): a job that kills the engine must not kill the server.

The engine runs in a supervised child process. These tests use real processes: the test process
hosts the JobService (it plays the web server), the engine process is killed for real (SIGKILL,
as the kernel's out-of-memory killer does, or its own memory limit), and a cancel must end a run
that reports no progress, within seconds.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from heygem.jobs.execute import default_engine
from heygem.jobs.isolation import use_process
from heygem.jobs.records import JobStatus
from heygem.jobs.service import JobService
from heygem.jobs.tenancy import LOCAL
from tests import media, process_fakes
from tests.jobs_support import place_inputs
from tests.kit import wait_until

START_S = 60.0  # spawning the engine process imports numpy, OpenCV and the engine on 2 busy cores
JOB_S = 120.0
CANCEL_WITHIN_S = 6.0  # stop grace (2 s) + SIGTERM grace (2 s) + polling
MEMORY_LIMIT_MB = 2048  # above what the fake engine's process needs to start, far below the hog


def _start(settings, factory=None) -> JobService:
    service = JobService(settings, pipeline_factory=factory)
    service.start()
    wait_until(lambda: service.readiness()[0], START_S, message="the engine process to load")
    return service


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def inputs(settings, speech_wav, face_video):
    return place_inputs(settings, speech_wav, face_video)


@pytest.mark.slow
def test_a_job_whose_engine_process_is_killed_goes_back_to_the_queue_and_succeeds(settings, inputs):
    settings = settings.replace(worker_isolation="process")
    service = _start(settings, process_fakes.KillOnceEngine)
    try:
        job = service.submit(str(inputs.audio), str(inputs.video), principal=LOCAL)
        done = service.wait(job.id, JOB_S, principal=LOCAL)
        ready = service.readiness()
    finally:
        service.stop(drain_seconds=5)
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert done.attempts == 2
    first, second = process_fakes.engine_pids(settings)
    assert first != second and not _alive(first)  # a new engine process ran the second attempt
    assert ready == (True, "ready")


@pytest.mark.slow
def test_a_job_that_kills_its_engine_every_time_fails_after_max_attempts(settings, inputs):
    settings = settings.replace(worker_isolation="process", max_attempts=2)
    service = _start(settings, process_fakes.AlwaysKilledEngine)
    try:
        job = service.submit(str(inputs.audio), str(inputs.video), principal=LOCAL)
        done = service.wait(job.id, JOB_S, principal=LOCAL)
        # The server (this process) is still serving, and its engine comes back for the next job.
        ready = service.readiness()
        status = service.engine_status()
    finally:
        service.stop(drain_seconds=5)
    assert done.status == JobStatus.FAILED
    assert done.attempts == 2
    assert done.error.startswith("the engine process died 2 times on this job")
    assert "SIGKILL" in done.error and "out of memory" in done.error
    assert "\n" not in done.error
    assert len(process_fakes.engine_pids(settings)) == 2  # no crash loop: two runs, then it stopped
    assert ready == (True, "ready") and status is not None and status.engine == "fake"


@pytest.mark.slow
def test_the_memory_limit_ends_the_engine_process_not_the_server(settings, inputs):
    settings = settings.replace(worker_isolation="process", worker_memory_mb=MEMORY_LIMIT_MB, max_attempts=1)
    service = _start(settings, process_fakes.MemoryHogEngine)
    try:
        job = service.submit(str(inputs.audio), str(inputs.video), principal=LOCAL)
        done = service.wait(job.id, JOB_S, principal=LOCAL)
    finally:
        service.stop(drain_seconds=5)
    assert done.status == JobStatus.FAILED
    assert done.error == ("the engine process died once on this job (last time: out of memory); giving up")


@pytest.mark.slow
def test_cancel_ends_an_engine_that_reports_no_progress_within_seconds(settings, inputs):
    settings = settings.replace(worker_isolation="process")
    service = _start(settings, process_fakes.StuckEngine)
    try:
        job = service.submit(str(inputs.audio), str(inputs.video), principal=LOCAL)
        wait_until(
            lambda: service.get(job.id, principal=LOCAL).stage == "detect", JOB_S, message="the run to start"
        )
        (pid,) = process_fakes.engine_pids(settings)
        started = time.monotonic()
        service.cancel(job.id, principal=LOCAL)
        done = service.wait(job.id, CANCEL_WITHIN_S, principal=LOCAL)
        took = time.monotonic() - started
    finally:
        service.stop(drain_seconds=5)
    assert done.status == JobStatus.CANCELLED
    assert took < CANCEL_WITHIN_S
    assert not _alive(pid)


def _preview_settings(settings):
    # The built-in engine (no factory given, worker_isolation auto = process) without weights.
    settings.inputs_dir.mkdir(parents=True, exist_ok=True)
    return settings.replace(engine="preview", warmup=True)


@pytest.mark.slow
def test_the_real_engine_process_killed_mid_run_is_restarted_and_the_job_retried(settings, speech_wav):
    settings = _preview_settings(settings)
    face = media.make_face_video(settings.inputs_dir / "long-face.mp4", seconds=6.0)
    audio = media.make_tone(settings.inputs_dir / "tone.wav", seconds=4.0)
    service = _start(settings)
    try:
        engine = service._workers[0].engine
        first_pid = engine.pid
        assert first_pid is not None and first_pid != os.getpid()
        assert service.engine_status().engine == "preview"  # answered through the child
        assert service.deep_check(JOB_S) >= 0.0  # a warm-up inference in the child
        job = service.submit(str(audio), str(face), principal=LOCAL)
        wait_until(
            lambda: service.get(job.id, principal=LOCAL).stage in ("detect", "synthesize"),
            JOB_S,
            message="the run to start",
        )
        os.kill(first_pid, signal.SIGKILL)
        done = service.wait(job.id, JOB_S, principal=LOCAL)
        second_pid = engine.pid
    finally:
        service.stop(drain_seconds=5)
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert done.attempts == 2
    assert second_pid not in (None, first_pid)
    assert sorted(media.stream_types(done.output_path)) == ["audio", "video"]


@pytest.mark.slow
def test_cancel_during_detection_of_the_real_engine_stops_within_seconds(settings):
    settings = _preview_settings(settings).replace(warmup=False, detect_batch_size=1)
    face = media.make_face_video(settings.inputs_dir / "long-face.mp4", seconds=20.0)
    # Shorter than the video: faces are detected in a pass of their own before synthesis (with
    # the whole video shown, they are detected while synthesizing, which a cancel stops the same way).
    audio = media.make_tone(settings.inputs_dir / "tone.wav", seconds=19.0)
    service = _start(settings)
    try:
        job = service.submit(str(audio), str(face), principal=LOCAL)
        wait_until(
            lambda: service.get(job.id, principal=LOCAL).stage == "detect",
            JOB_S,
            message="detection to start",
        )
        started = time.monotonic()
        service.cancel(job.id, principal=LOCAL)
        done = service.wait(job.id, CANCEL_WITHIN_S, principal=LOCAL)
        took = time.monotonic() - started
    finally:
        service.stop(drain_seconds=5)
    assert done.status == JobStatus.CANCELLED
    assert took < CANCEL_WITHIN_S


@pytest.mark.parametrize(
    ("isolation", "custom", "expected"),
    [("auto", False, True), ("auto", True, False), ("process", True, True), ("thread", False, False)],
)
def test_which_engines_run_in_a_child_process(settings, isolation, custom, expected):
    factory = process_fakes.KillOnceEngine if custom else default_engine
    assert use_process(settings.replace(worker_isolation=isolation), factory) is expected


def test_an_unknown_isolation_is_refused(settings):
    with pytest.raises(ValueError, match="worker_isolation must be one of auto, process, thread"):
        settings.replace(worker_isolation="fork")
