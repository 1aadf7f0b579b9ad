"""The job layer's contract: what the web app, the HeyGem-compatible API and the UI may call.

`heygem.jobs.service.JobService(settings, pipeline_factory=None)` implements it (the factory
defaults to heygem.jobs.execute.default_engine); web code is typed against this protocol so that
tests can wrap or replace the service. Nothing starts before start().

Every call that reads or changes jobs names who asks: a heygem.jobs.tenancy.Principal (tenant and
role; LOCAL for the single-user service). Jobs, batches and idempotency keys belong to the tenant
that submitted them.

Records (heygem.jobs.records): Job and Batch are frozen, with .to_dict() for JSON; JobStatus is a
StrEnum (queued, running, succeeded, failed, cancelled). Job.to_dict(data_dir) is the view for
callers: paths relative to the data folder, URLs without their query. Job.output_path is the finished mp4 under
Settings.outputs_dir (<outputs_dir>/<job id>/<output_name or result.mp4>).

Without a server, the CLI's batch command runs a JSONL manifest in-process:
heygem.jobs.manifest.parse_manifest(path, roots) -> list[ManifestItem] (ManifestItem.as_item() is
a submit_batch item) and heygem.jobs.runner.run_manifest(settings, manifest, output_dir, options,
*, pipeline=None, on_progress=None) -> ManifestSummary. Both the queue worker and run_manifest run
each item through heygem.jobs.execute.run_one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from heygem.engine.api import Engine, EngineStatus, SyncOptions
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
        audio: str,
        video: str,
        options: Mapping[str, Any] | SyncOptions | None = None,
        *,
        principal: Principal,
        output_name: str | None = None,
        output_prefix: str | None = None,
        idempotency_key: str | None = None,
        watermark: str | None = None,
        uploaded: Sequence[str | os.PathLike[str]] = (),
        internal: bool = False,
    ) -> Job:
        """Queue one job for principal.tenant from references (a local path under the input
        roots, s3://, obs://, or an allow-listed https:// URL). options: SyncOptions fields
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
        """Queue {"audio", "video", "output_name"?} items as one batch, all or nothing (N items
        need N free queue places, in the queue and in the tenant's share); an item's errors
        start with "item N:"."""
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
