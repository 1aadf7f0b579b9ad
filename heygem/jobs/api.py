"""The job layer's contract: what the web app, the HeyGem-compatible API and the UI may call.

`heygem.jobs.service.JobService` implements it; web code is typed against this protocol so that
tests can wrap or replace the service.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from heygem.engine.api import Engine, EngineStatus
from heygem.jobs.records import Batch, Job
from heygem.settings import Settings

EngineFactory = Callable[[Settings], Engine]


class JobQueue(Protocol):
    """Durable jobs: submit, read, cancel, delete, batches. All methods are thread-safe."""

    def start(self) -> None:
        """Open the store, recover interrupted jobs, start the worker(s) and the retention task."""
        ...

    def stop(self, drain_seconds: float | None = None) -> None:
        """Refuse new work; let the running job finish within the drain window, else re-queue it."""
        ...

    def submit(
        self,
        audio: str,
        video: str,
        options: Mapping[str, Any] | None = None,
        *,
        output_name: str | None = None,
        output_prefix: str | None = None,
        idempotency_key: str | None = None,
        watermark: str | None = None,
    ) -> Job:
        """Queue one job from references (a local path under the input roots, s3://, obs://, or an
        allow-listed https:// URL). The same idempotency key returns the same job. Raises
        QueueFullError, ShuttingDownError, ForbiddenPathError or InputError."""
        ...

    def submit_batch(
        self,
        items: Sequence[Mapping[str, Any]],
        options: Mapping[str, Any] | None = None,
        *,
        output_prefix: str | None = None,
    ) -> Batch:
        """Queue {"audio", "video", "output_name"?} items as one batch, all or nothing; an item's
        errors start with "item N:"."""
        ...

    def get(self, job_id: str) -> Job: ...

    def get_by_key(self, idempotency_key: str) -> Job: ...

    def list_jobs(self, limit: int = 20, offset: int = 0) -> list[Job]:
        """Newest first."""
        ...

    def count_jobs(self) -> int: ...

    def count_by_status(self) -> dict[str, int]:
        """Every JobStatus value -> the number of jobs in it."""
        ...

    def queue_depth(self) -> int: ...

    def cancel(self, job_id: str) -> Job:
        """A queued job is cancelled at once; a running one is asked to stop."""
        ...

    def delete(self, job_id: str) -> None:
        """Remove the job and its files (a running job is cancelled first)."""
        ...

    def delete_all(self) -> int: ...

    def get_batch(self, batch_id: str) -> Batch: ...

    def retry_failed(self, batch_id: str) -> Batch: ...

    def batch_zip(self, batch_id: str) -> Path:
        """A ZIP of the batch's results with summary.csv and summary.json."""
        ...

    def wait(self, job_id: str, timeout: float) -> Job:
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
        """One warm-up inference in a worker between jobs; its seconds."""
        ...


class JobService(JobQueue, EngineHealth, Protocol):
    """The whole surface the web layer uses."""
