"""Durable job layer between the web app / API / CLI and the engine.

CONTRACT (the web app, the HeyGem-compatible API and the CLI code against exactly this):

    service = JobService(settings, pipeline_factory=LipSyncPipeline)   # nothing started yet
    service.start()          # open store, recover interrupted jobs, sweep stale temp files,
                             # start worker thread(s) (each builds its pipeline once, loads and
                             # warms it up) and the retention task
    service.stop(drain_seconds=None) -> None   # refuse new work, let the running job finish
                             # within the drain window, re-queue it otherwise; joins threads

    service.submit(audio, video, options=None, *, output_name=None, output_prefix=None,
                   idempotency_key=None, watermark=...) -> Job
        audio/video: str references (local path under Settings.allowed_input_roots,
        s3://bucket/key, obs://bucket/key, https:// on the allow-list). Raises QueueFullError,
        ShuttingDownError, ForbiddenPathError, InputError. Same idempotency_key -> same Job.
    service.submit_batch(items, options=None, *, output_prefix=None) -> Batch
        items: list of {"audio": ref, "video": ref, "output_name": optional str}
    service.get(job_id) -> Job             # JobNotFoundError
    service.list_jobs(limit=20, offset=0) -> list[Job]   # newest first
    service.count_jobs() -> int
    service.cancel(job_id) -> Job          # queued -> cancelled; running -> cancel requested
    service.delete(job_id) -> None         # removes the row and its files
    service.delete_all() -> int
    service.get_batch(batch_id) -> Batch   # with its items
    service.retry_failed(batch_id) -> Batch
    service.batch_zip(batch_id) -> Path    # ZIP of successful outputs + summary.csv + summary.json
    service.wait(job_id, timeout) -> Job   # blocks until a terminal status (tests, CLI)
    service.queue_depth() -> int
    service.readiness() -> tuple[bool, str]   # (True, "ready") or (False, reason)
    service.engine_status() -> EngineStatus | None
"""
