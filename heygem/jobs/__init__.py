"""Durable job layer between the web app / API / CLI and the engine.

CONTRACT (the web app, the HeyGem-compatible API and the CLI code against exactly this):

    service = JobService(settings, pipeline_factory=LipSyncPipeline)   # nothing started yet
    service.start()          # open store, recover interrupted jobs, sweep stale temp files,
                             # start worker thread(s) (each builds its pipeline once, loads and
                             # warms it up) and the retention task
    service.stop(drain_seconds=None) -> None   # refuse new work, let the running job finish
                             # within the drain window, re-queue it otherwise (its attempt count
                             # unchanged); returns without waiting for a re-queued run's thread
                             # (a daemon). The entry point calls this on SIGTERM, then exits 0.

    service.submit(audio, video, options=None, *, output_name=None, output_prefix=None,
                   idempotency_key=None, watermark=None) -> Job
        audio/video: str references (local path under Settings.allowed_input_roots,
        s3://bucket/key, obs://bucket/key, https:// on the allow-list). Raises QueueFullError,
        ShuttingDownError, ForbiddenPathError, InputError. Same idempotency_key -> same Job.
        options: dict of SyncOptions fields (or a SyncOptions); watermark, when not None,
        overrides options["watermark"]. output_prefix: s3://bucket/prefix/, obs://bucket/prefix/
        or a folder under the allowed roots; the result is published there when done.
    service.submit_batch(items, options=None, *, output_prefix=None) -> Batch
        items: list of {"audio": ref, "video": ref, "output_name": optional str}; all or nothing
        (N items need N free queue places); errors start with "item N:".
    service.get(job_id) -> Job             # JobNotFoundError
    service.get_by_key(idempotency_key) -> Job   # JobNotFoundError
    service.list_jobs(limit=20, offset=0) -> list[Job]   # newest first
    service.count_jobs() -> int
    service.count_by_status() -> dict[str, int]   # every JobStatus value -> jobs in it (one query)
    service.cancel(job_id) -> Job          # queued -> cancelled; running -> cancel requested
    service.delete(job_id) -> None         # removes the row and its files (a running job is
                                           # cancelled first)
    service.delete_all() -> int
    service.get_batch(batch_id) -> Batch   # with its items
    service.retry_failed(batch_id) -> Batch
    service.batch_zip(batch_id) -> Path    # ZIP of successful outputs + summary.csv + summary.json
    service.wait(job_id, timeout) -> Job   # blocks until a terminal status; TimeoutError after
    service.queue_depth() -> int
    service.readiness() -> tuple[bool, str]   # (True, "ready") or (False, reason)
    service.engine_status() -> EngineStatus | None
    service.deep_check(timeout) -> float   # one warm-up inference in the worker between jobs,
                                           # seconds; HeygemError if not ready or it fails,
                                           # TimeoutError if the worker stays busy past timeout

    Job / Batch: frozen records with .to_dict() for JSON (see records.py); JobStatus is a StrEnum
    (queued, running, succeeded, failed, cancelled). Job.output_path is the finished mp4 under
    Settings.outputs_dir (<outputs_dir>/<job id>/<output_name or result.mp4>).

    parse_manifest(path, roots) -> list[ManifestItem]   # ManifestItem.as_item() -> submit_batch item
    run_manifest(settings, manifest, output_dir, options=None, *, pipeline=None,
                 on_progress=None) -> ManifestSummary   # the CLI's batch command, no server
        on_progress(ManifestProgress(index, count, item, stage, done, total, result)): index is
        the 1-based item, (done, total, stage) the pipeline's own progress; a final call per item
        has stage "succeeded"/"skipped"/"failed" and result set. The summary
        has .succeeded/.skipped/.failed lists of ItemResult (.describe() gives one line), .ok,
        and .describe().
"""

from __future__ import annotations

from heygem.jobs.manifest import ManifestItem, parse_manifest
from heygem.jobs.records import Batch, Job, JobStatus
from heygem.jobs.runner import ItemResult, ManifestProgress, ManifestSummary, run_manifest
from heygem.jobs.service import JobService
from heygem.jobs.store import JobStore, SQLiteJobStore

__all__ = [
    "JobService",
    "Job",
    "Batch",
    "JobStatus",
    "JobStore",
    "SQLiteJobStore",
    "ManifestItem",
    "parse_manifest",
    "run_manifest",
    "ManifestProgress",
    "ManifestSummary",
    "ItemResult",
]
