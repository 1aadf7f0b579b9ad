"""The job layer's contract: what the web app, the HeyGem-compatible API and the UI may call.

`heygem.jobs.service.JobService(settings, pipeline_factory=None)` implements it (the factory
defaults to heygem.jobs.execute.default_engine); web code is typed against this protocol so that
tests can wrap or replace the service. Nothing starts before start().

Every call that reads or changes jobs names who asks: a heygem.jobs.tenancy.Principal (tenant and
role; LOCAL for the single-user service). Jobs, batches and idempotency keys belong to the tenant
that submitted them.

Records (heygem.jobs.records): Job and Batch are frozen, with .to_dict() for JSON; JobStatus is a
StrEnum (queued, running, succeeded, failed, cancelled). Job.to_dict(data_dir) is the view for
callers: paths relative to the data folder, URLs without their query. Job.output_path is the
finished mp4 under Settings.outputs_dir (<outputs_dir>/<job id>/<output_name or result.mp4>).

Without a server, the CLI's batch command runs a JSONL manifest in-process:
heygem.jobs.manifest.parse_manifest(path, roots) -> list[ManifestItem] (ManifestItem.as_item() is
a submit_batch item) and heygem.jobs.runner.run_manifest(settings, manifest, output_dir, options,
*, pipeline=None, on_progress=None) -> ManifestSummary. Both the queue worker and run_manifest run
each item through heygem.jobs.execute.run_one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from heygem.engine.api import Engine, EngineStatus, SyncOptions
from heygem.jobs.avatars import Avatar
from heygem.jobs.records import Batch, Job
from heygem.jobs.tenancy import Principal
from heygem.settings import Settings

# Builds a worker's engine from the settings; called once per worker thread, which then loads
# it (and warms it up when Settings.warmup is on).
EngineFactory = Callable[[Settings], Engine]


class JobQueue(Protocol):
    """Durable jobs: submit, read, cancel, delete, batches. All methods are thread-safe."""

    def start(self) -> None:
        """Open the store, recover interrupted jobs, sweep stale temporary files, start the
        worker(s) (each builds, loads and warms up its engine) and the retention task."""
        ...

    def stop(self, drain_seconds: float | None = None) -> None:
        """Refuse new work; let the running job finish within the drain window (default
        Settings.drain_seconds), else re-queue it with its attempt count unchanged. Returns
        without waiting for a re-queued run's (daemon) thread. Entry points call it on SIGTERM."""
        ...

    def submit(
        self,
        audio: str | None,
        video: str,
        options: Mapping[str, Any] | SyncOptions | None = None,
        *,
        principal: Principal,
        text: str | None = None,
        voice: str | None = None,
        output_name: str | None = None,
        output_prefix: str | None = None,
        idempotency_key: str | None = None,
        watermark: str | None = None,
        uploaded: Sequence[str | os.PathLike[str]] = (),
        internal: bool = False,
    ) -> Job:
        """Queue one job for principal.tenant from references (a local path under the input
        roots, s3://, obs://, or an allow-listed https:// URL). video may be "avatar:<id>", one
        of the tenant's ready avatars (AvatarNotFoundError for anyone else's, InputError while it
        is preparing or after it failed). Exactly one of audio and text (InputError otherwise):
        a text job synthesises its speech in a "speech" stage first, with `voice` (a provider
        voice name) and the avatar's voice sample as the cloning reference; the text's length
        limit is Settings.tts_max_chars. options: SyncOptions fields
        (InputError names a bad one); watermark, when not None, overrides options["watermark"].
        output_prefix: s3://bucket/prefix/, obs://bucket/prefix/ or a folder under
        HEYGEM_INPUT_ROOTS (never in the data folder), where the result is published as well
        under a free name (an existing file is never replaced); with
        Settings.tenant_output_prefixes set, it must be one of the tenant's. The same
        idempotency key from the same tenant returns the same job (and the files `uploaded` by
        the replayed request are removed); keys starting with a reserved prefix
        (tenancy.RESERVED_KEY_PREFIXES) are refused unless `internal`.

        uploaded: files or folders the caller staged under the inputs folder for this request.
        A local input in an upload folder (<inputs>/<folder>/...) is accepted only inside these;
        the job owns them, and deleting the job removes them. internal: set only by heygem's own
        adapters (the HeyGem-compatible API), never from a client's input.

        Raises QueueFullError (the queue or the tenant's share of it), ShuttingDownError,
        ForbiddenPathError or InputError."""
        ...

    def submit_batch(
        self,
        items: Sequence[Mapping[str, Any]],
        options: Mapping[str, Any] | SyncOptions | None = None,
        *,
        principal: Principal,
        output_prefix: str | None = None,
        uploaded: Sequence[str | os.PathLike[str]] = (),
    ) -> Batch:
        """Queue {"audio" | "text" (+ "voice"?), "video", "output_name"?} items as one batch,
        all or nothing (N items need N free queue places, in the queue and in the tenant's
        share); an item's errors start with "item N:". "video" may be "avatar:<id>"."""
        ...

    # --- avatars (heygem.jobs.avatars): the tenant's stored face videos, prepared once --------

    def create_avatar(
        self,
        name: str,
        media: str | os.PathLike[str],
        *,
        principal: Principal,
        voice_audio: str | os.PathLike[str] | None = None,
        voice_text: str | None = None,
        uploaded: Sequence[str | os.PathLike[str]] | None = None,
    ) -> Avatar:
        """Store media (a video or photo reference; staged files in `uploaded` are moved, the
        staged folders removed) and optionally a voice sample with its transcript (both or
        neither) as a new avatar, status "preparing"; a background thread probes it, computes
        its face track once and makes its thumbnail, then marks it "ready" or "failed" with the
        reason. InputError for a bad name or too many avatars (Settings.max_avatars)."""
        ...

    def list_avatars(self, *, principal: Principal) -> list[Avatar]:
        """Newest first, the principal's tenant only (admins: every tenant)."""
        ...

    def get_avatar(self, avatar_id: str, *, principal: Principal) -> Avatar:
        """AvatarNotFoundError (a JobNotFoundError: 404) for an unknown or another tenant's id."""
        ...

    def rename_avatar(self, avatar_id: str, name: str, *, principal: Principal) -> Avatar: ...

    def delete_avatar(self, avatar_id: str, *, principal: Principal) -> None:
        """Remove the avatar and its folder; videos made from it stay."""
        ...

    def speak(
        self,
        text: str,
        *,
        principal: Principal,
        voice: str | None = None,
        avatar_id: str | None = None,
    ) -> Path:
        """Only the speech for `text` ("hear it"): a WAV file (kept about an hour). SpeechError
        when the provider fails or times out."""
        ...

    # Every read below is limited to the principal's tenant (admins: every tenant). Another
    # tenant's id raises JobNotFoundError exactly like an unknown one; an id that retention
    # deleted raises JobExpiredError (a JobNotFoundError carrying expired_at).

    def get(self, job_id: str, *, principal: Principal) -> Job:
        """JobNotFoundError when there is none (for this principal)."""
        ...

    def get_by_key(self, idempotency_key: str, *, principal: Principal) -> Job:
        """The tenant's job with that key; JobNotFoundError when there is none."""
        ...

    def list_jobs(self, limit: int = 20, offset: int = 0, *, principal: Principal) -> list[Job]:
        """Newest first."""
        ...

    def count_jobs(self, *, principal: Principal) -> int: ...

    def count_by_status(self) -> dict[str, int]:
        """Every JobStatus value -> the number of jobs in it, over every tenant (metrics)."""
        ...

    def queue_depth(self) -> int:
        """Queued jobs over every tenant."""
        ...

    def oldest_queued_age(self) -> float:
        """Seconds the longest-waiting queued job has waited, over every tenant; 0 when none."""
        ...

    def busy_workers(self) -> tuple[int, int]:
        """This instance's (workers running a job, workers): its own state, not the fleet's."""
        ...

    def fleet(self, *, principal: Principal) -> list[dict[str, Any]]:
        """The instances serving the queue (id, device, current jobs, last heartbeat, alive);
        admins only (ForbiddenError otherwise): instance names and job ids span every tenant."""
        ...

    def cancel(self, job_id: str, *, principal: Principal) -> Job:
        """A queued job is cancelled at once; a running one is asked to stop."""
        ...

    def delete(self, job_id: str, *, principal: Principal) -> None:
        """Remove the job, its results and what it uploaded (a running job is cancelled first);
        files it only referenced are kept."""
        ...

    def delete_all(self, *, principal: Principal) -> int:
        """Delete the tenant's jobs (every job for an admin; running ones are cancelled first);
        how many were deleted."""
        ...

    def get_batch(self, batch_id: str, *, principal: Principal) -> Batch:
        """The batch with its items; JobNotFoundError when there is none."""
        ...

    def retry_failed(self, batch_id: str, *, principal: Principal) -> Batch:
        """Queue the batch's failed and cancelled items again."""
        ...

    def batch_zip(self, batch_id: str, *, principal: Principal) -> Path:
        """A ZIP of the batch's results with summary.csv and summary.json."""
        ...

    def wait(self, job_id: str, timeout: float, *, principal: Principal) -> Job:
        """Block until the job ends; TimeoutError after `timeout` seconds."""
        ...


class EngineHealth(Protocol):
    """What probes and the System panel ask of the service's engine."""

    def readiness(self) -> tuple[bool, str]:
        """(True, "ready") or (False, the reason)."""
        ...

    def engine_status(self) -> EngineStatus | None:
        """The first ready worker's engine, or None while it loads."""
        ...

    def deep_check(self, timeout: float) -> float:
        """One warm-up inference in a worker between jobs; its seconds. HeygemError when not
        ready or when it fails; TimeoutError when the worker stays busy past `timeout`."""
        ...


class JobService(JobQueue, EngineHealth, Protocol):
    """The whole surface the web layer uses."""
