"""One run of one request: fetch the inputs, run the engine, move the result into place, publish
it, and turn whatever went wrong into an Outcome.

The queue worker (worker.py) and the CLI's manifest runner (runner.py) both run through run_one;
they differ only in where the scratch folder and the result go, and in how a run is stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from heygem import storage
from heygem.engine.api import Engine, ProgressCallback, SyncOptions, SyncResult
from heygem.errors import HeygemError, InputError
from heygem.jobs import files
from heygem.jobs.joblog import job_logger
from heygem.jobs.manifest import shown_ref
from heygem.jobs.options import sync_options
from heygem.jobs.records import JobStatus, Outcome
from heygem.settings import Settings
from heygem.speech.api import VoiceReference

log = job_logger("heygem.jobs.execute")

# Steps of a run around the engine's own STAGES, reported through the same progress callback.
FETCH_STAGE = "fetch"
SPEECH_STAGE = "speech"  # a text job's speech synthesis (heygem.speech.SPEECH_STAGE)
PUBLISH_STAGE = "publish"
RESULT_SUFFIX = ".mp4"
SPEECH_FILE = "speech.wav"  # a text job's synthesised audio, in the run's scratch folder


class RunStopped(Exception):
    """Raised by a caller's progress callback (or by run_one) to end a run the caller stopped."""


class EngineDied(Exception):
    """The process the engine ran in ended in the middle of a request (killed, crashed, out of
    memory). Not the input's fault as far as anyone can tell, so it is not a failed Outcome:
    run_one lets it through and the queue worker decides whether the job runs again."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class RunRequest:
    # References: a local path, s3://bucket/key, obs://bucket/key or an allowed https:// URL.
    audio: str
    video: str
    # A mapping is checked inside the run: a bad option fails the run (InputError).
    options: SyncOptions | Mapping[str, Any]
    # Where the finished mp4 is moved, atomically.
    target: Path
    # An existing folder of this run's own: downloads and the engine's temporary output.
    scratch: Path
    # Where to publish the result as well, if anywhere, and under which name (default: the
    # target's).
    publish_prefix: str | None = None
    publish_name: str | None = None
    # True when the caller resolved and checked local paths against its own roots already (the
    # manifest's); else storage checks them against Settings.allowed_input_roots.
    local_checked: bool = False
    # A queued job: an internal error's message points to the service log instead of showing
    # the exception (API clients see it).
    job_id: str | None = None
    # Names the run in log lines when no job_context does (e.g. "manifest line 3").
    label: str | None = None
    # A text job: speech is synthesised from `text` (with `voice`) instead of fetching `audio`;
    # `reference` is the voice sample to clone (an avatar's), for providers that clone.
    text: str | None = None
    voice: str | None = None
    reference: VoiceReference | None = None
    # The face as a local file already resolved and checked (an avatar's stored media); when
    # set, `video` only names it in messages.
    face: Path | None = None


def default_engine(settings: Settings) -> Engine:
    """The EngineFactory used unless a caller passes its own: the real LipSyncPipeline."""
    # Imported here so that the job layer does not load the engine's heavy modules until needed.
    from heygem.engine.pipeline import LipSyncPipeline

    return LipSyncPipeline(settings)


def run_one(
    engine: Engine,
    request: RunRequest,
    settings: Settings,
    *,
    on_progress: ProgressCallback | None = None,
    stopped: Callable[[], bool] | None = None,
) -> Outcome | None:
    """Run one request to its Outcome (succeeded or failed); None when the caller stopped it.

    on_progress gets (done, total, stage) for "fetch", "speech" (a text job), the engine's
    stages and "publish"; it
    may raise (RunStopped) to end the run. stopped() tells whether the caller has ended the run:
    it is asked once the engine returns and before an error is mapped, since the engine may wrap
    the callback's exception in its own. An error never escapes: it becomes a failed Outcome,
    except EngineDied (the engine's process was lost), which the caller handles.
    """
    report = on_progress or _ignore_progress
    is_stopped = stopped or _never_stopped
    result: SyncResult | None = None
    output: Path | None = None
    try:
        report(0, 1, FETCH_STAGE)
        video = request.face or fetch(request.video, "video", request, settings)
        if request.text is not None:
            audio = speak(request, settings, report)
        else:
            audio = fetch(request.audio, "audio", request, settings)
        options = _options(request.options)
        temp = request.scratch / files.temp_name(RESULT_SUFFIX)
        result = engine.run(audio, video, temp, options, on_progress=report)
        if is_stopped():
            raise RunStopped
        output = files.move_atomic(Path(result.output), request.target)
        url, presigned = _publish(output, request, settings, report)
        return Outcome(
            JobStatus.SUCCEEDED,
            engine=result.engine,
            frames_without_face=result.frames_without_face,
            frames=result.frames,
            run_seconds=result.seconds,
            output_path=output,
            output_url=url,
            presigned_url=presigned,
        )
    except EngineDied:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the engine raised becomes the job's outcome
        if is_stopped():
            return None
        outcome = _failure(exc, output, request)
        if output is None or result is None:
            return outcome
        # The video was made (publishing failed): its run counts for the frame rate too.
        return replace(outcome, frames=result.frames, run_seconds=result.seconds)


def fetch(ref: str, kind: str, request: RunRequest, settings: Settings) -> Path:
    """A local file for one input: the checked path itself, or a download into the scratch."""
    if request.local_checked and not storage.is_url(ref):
        path = Path(ref)
    else:
        # storage checks local paths against the allowed roots again and refuses other URLs.
        path = storage.fetch_input(ref, request.scratch / kind, settings)
    if not path.is_file():
        raise InputError(f"{kind} file not found: {shown_ref(ref)}")
    return path


def speak(request: RunRequest, settings: Settings, report: ProgressCallback) -> Path:
    """The "speech" stage: synthesise the text job's audio into the scratch folder. SpeechError
    (the provider failed or timed out: one line) fails the run like any HeygemError."""
    from heygem.speech import synthesize_text  # the providers load only for text jobs

    assert request.text is not None
    report(0, 1, SPEECH_STAGE)
    result = synthesize_text(
        request.text,
        request.scratch / SPEECH_FILE,
        settings,
        voice=request.voice,
        reference=request.reference,
        on_progress=report,
    )
    log.info(
        "%sspeech: %.1f s from %d piece(s) with %s",
        _prefix(request),
        result.duration_s,
        result.pieces,
        result.provider,
    )
    return result.path


def _options(options: SyncOptions | Mapping[str, Any]) -> SyncOptions:
    return options if isinstance(options, SyncOptions) else sync_options(options)


def _publish(
    output: Path, request: RunRequest, settings: Settings, report: ProgressCallback
) -> tuple[str | None, str | None]:
    if not request.publish_prefix:
        return None, None
    report(0, 1, PUBLISH_STAGE)
    published = storage.publish_output(output, request.publish_prefix, settings, name=request.publish_name)
    log.info("%spublished to %s", _prefix(request), published.url)
    return published.url, published.presigned_url


def _failure(exc: Exception, output: Path | None, request: RunRequest) -> Outcome:
    # output is set only once the finished mp4 is in place, so a failure that keeps it is a
    # publishing failure: Job.has_result, and the API still serves the file.
    if isinstance(exc, HeygemError):
        return Outcome(JobStatus.FAILED, error=str(exc), output_path=output)
    if storage.is_disk_full(exc):
        # A full disk is the operator's to fix; the message names no server path.
        log.error("%sthe disk is full: %s", _prefix(request), exc)
        return Outcome(JobStatus.FAILED, error=str(storage.disk_full_error()), output_path=output)
    log.exception("%sunexpected error", _prefix(request))
    return Outcome(JobStatus.FAILED, error=internal_error(exc, request.job_id), output_path=output)


def internal_error(exc: BaseException, job_id: str | None) -> str:
    """The message for an error that is not a HeygemError. The service's clients get the job to
    look up in its log; the CLI's user runs the process and sees the exception itself."""
    if job_id is None:
        return f"internal error: {type(exc).__name__}: {exc}"
    return f"internal error ({type(exc).__name__}); the service log has details for job {job_id}"


def _prefix(request: RunRequest) -> str:
    return f"{request.label}: " if request.label else ""


def _ignore_progress(done: int, total: int, stage: str) -> None:
    return None


def _never_stopped() -> bool:
    return False


__all__ = [
    "FETCH_STAGE",
    "PUBLISH_STAGE",
    "SPEECH_STAGE",
    "EngineDied",
    "RunRequest",
    "RunStopped",
    "default_engine",
    "fetch",
    "internal_error",
    "run_one",
    "speak",
]
