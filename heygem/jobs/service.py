"""JobService: the one object the web app, the compatible API and the CLI talk to.

Life cycle: `start()` opens the store, puts interrupted jobs back in the queue (or fails them
after max_attempts), sweeps stale temporary files, and starts the worker(s) and the retention
task. `stop(drain_seconds)` refuses new work, gives the running job the drain window, and hands it
back to the queue if it is not done by then. Signal handling belongs to the entry point, which
calls `stop()` on SIGTERM.

On SQLite, one service per data folder: start-up treats every 'running' row and every scratch
folder as left over from a crash (other processes may still add jobs to the same database). On
PostgreSQL, a fleet shares the queue: start-up takes back only expired leases and this instance's
own earlier claims, and a FleetTask (heygem.jobs.fleet) keeps the leases honest while it runs.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heygem import storage
from heygem.engine.api import EngineStatus, SyncOptions
from heygem.errors import (
    ForbiddenError,
    ForbiddenPathError,
    HeygemError,
    InputError,
    JobExpiredError,
    JobNotFoundError,
    ModelError,
    ShuttingDownError,
)
from heygem.jobs import archive, avatars, files, fleetfiles, retention
from heygem.jobs.api import EngineFactory
from heygem.jobs.avatars import (
    Avatar,
    AvatarBook,
    AvatarPreparer,
    avatar_id_of,
    check_usable,
)
from heygem.jobs.execute import default_engine
from heygem.jobs.fleet import FleetTask
from heygem.jobs.isolation import end_process_helpers
from heygem.jobs.joblog import job_context, job_logger
from heygem.jobs.manifest import default_output_name, shown_ref
from heygem.jobs.options import options_dict
from heygem.jobs.records import Batch, Instance, Job, JobStatus, NewJob
from heygem.jobs.store import JobStore, Tombstone, open_store
from heygem.jobs.tenancy import Principal, check_key, check_tenant_prefix
from heygem.jobs.worker import Worker
from heygem.settings import Settings
from heygem.storage import is_remote
from heygem.storage.paths import resolve_under, safe_output_name

log = job_logger("heygem.jobs.service")

MAX_PAGE = 500  # most jobs one list_jobs call returns
MAX_KEY_CHARS = 200  # longest accepted idempotency key
WAIT_POLL_S = 0.2  # wait() re-reads the store this often (another process may finish the job)
DRAIN_POLL_S = 0.1  # how often stop() looks whether the running job has finished
IDLE_EXIT_S = 2.0  # how long stop() waits for an idle worker thread to notice and exit
DELETE_WAIT_S = 10.0  # how long delete() waits for a cancelled running job to stop

_NEW, _RUNNING, _DRAINING, _STOPPED = "new", "running", "draining", "stopped"
BATCH_ITEM_KEYS = ("audio", "text", "voice", "video", "output_name")
TEXT_STEM = "text"  # a text item's default output name uses this in place of the audio's name
SPEECH_FOLDER = "speech"  # <data_dir>/speech: "hear it" WAVs, removed after SPEECH_KEEP_S
SPEECH_KEEP_S = 3600.0


@dataclass(frozen=True)
class SpeechSpec:
    """A submission's speech: an audio reference, or text (audio "") with an optional voice."""

    audio: str
    text: str | None = None
    voice: str | None = None


class JobService:
    """Implements heygem.jobs.api.JobService: the durable queue, its worker(s) and retention."""

    def __init__(
        self,
        settings: Settings,
        pipeline_factory: EngineFactory | None = None,
        *,
        store: JobStore | None = None,
    ) -> None:
        self.settings = settings
        self.store: JobStore = store if store is not None else open_store(settings)
        self._pipeline_factory = pipeline_factory
        self._state = _NEW
        self._state_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._cancels: set[str] = set()
        self._finished = threading.Condition()
        self._workers: list[Worker] = []
        self._retention: retention.RetentionTask | None = None
        self._preparer: AvatarPreparer | None = None
        self._fleet: FleetTask | None = None
        self._started_at = time.time()

    # --- life cycle ----------------------------------------------------------------------------
    def start(self) -> None:
        with self._state_lock:
            if self._state != _NEW:
                raise RuntimeError("JobService.start() may be called once")
            self._state = _RUNNING
        factory = self._pipeline_factory or default_engine
        files.ensure_folders(self.settings)
        self.store.open()
        self._recover()
        files.sweep_stale(self.settings, still_running=self._running_elsewhere)
        for index in range(self.settings.workers):
            worker = Worker(
                index,
                self.settings,
                self.store,
                factory,
                wake=self._wake,
                stopping=self._stopping,
                cancels=self._cancels,
                on_finish=self._job_finished,
                on_busy_change=self._busy_changed,
            )
            worker.start()
            self._workers.append(worker)
        self._fleet = FleetTask(self.store, self.settings, self._stopping, self._instance)
        self._fleet.start()
        if retention.enabled(self.settings):
            self._retention = retention.RetentionTask(self.store, self.settings, self._stopping)
            self._retention.start()
        self._preparer = AvatarPreparer(self.settings, self.store)
        for avatar in self.store.list_avatars():
            if avatar.status == avatars.PREPARING:  # interrupted by the last stop: prepare again
                self._preparer.submit(avatar)
        log.info(
            "job service started: %d worker(s), queue limit %d, %d job(s) waiting",
            len(self._workers),
            self.settings.queue_size,
            self.store.count_queued(),
        )

    def stop(self, drain_seconds: float | None = None) -> None:
        """Refuse new work, let the running job finish within the window, re-queue it if not.

        A job handed back here keeps its attempt count: a planned stop is not the job's fault,
        while a crash (counted at the next start) might be.
        """
        with self._state_lock:
            if self._state in (_NEW, _STOPPED):
                self._state = _STOPPED
                return
            self._state = _DRAINING
        window = self.settings.drain_seconds if drain_seconds is None else drain_seconds
        log.info("shutting down: refusing new jobs, draining for up to %g s", window)
        self._stopping.set()
        self._wake.set()
        self._busy_changed()  # the fleet task notices the stop at once
        if self._preparer is not None:
            self._preparer.stop()
        self._drain(time.monotonic() + window)
        stragglers: list[threading.Thread] = [w for w in self._workers if w.is_alive()]
        for worker in self._workers:
            if worker.is_alive():
                self._hand_back(worker)
        for task in (self._retention, self._fleet):
            if task is not None:
                task.join(IDLE_EXIT_S)
                stragglers += [task] if task.is_alive() else []
        if self._fleet is not None:
            self._fleet.leave()
        if not stragglers:
            self.store.close()  # else a thread may still use it; the process exit closes it
        end_process_helpers()
        with self._state_lock:
            self._state = _STOPPED
        with self._finished:
            self._finished.notify_all()
        log.info("job service stopped")

    def _recover(self) -> None:
        requeued, failed = self.store.recover(self.settings.max_attempts)
        for job in requeued:
            with job_context(job.id):
                log.warning(
                    "was running when the service stopped (attempt %d); back in the queue",
                    job.attempts,
                )
        for job in failed:
            with job_context(job.id):
                log.error("%s", job.error)

    def _busy_changed(self) -> None:
        if self._fleet is not None:
            self._fleet.poke()

    def _running_elsewhere(self, job_id: str) -> bool:
        """A scratch folder in a shared data folder may be another instance's live run."""
        if not self.settings.shared_data_dir:
            return False
        job = self.store.get(job_id)
        return job is not None and job.status == JobStatus.RUNNING

    def _instance(self) -> Instance:
        """This instance now, for its heartbeat row."""
        status = self.engine_status()
        return Instance(
            id=self.settings.resolved_instance_id,
            device=status.device if status is not None else "",
            jobs=tuple(w.current.job.id for w in self._workers if w.current is not None),
            workers=len(self._workers),
            started_at=self._started_at,
            heartbeat_at=time.time(),
        )

    def _drain(self, deadline: float) -> None:
        while True:
            busy = [w for w in self._workers if w.is_alive() and w.current is not None]
            remaining = deadline - time.monotonic()
            if not busy or remaining <= 0:
                break
            busy[0].join(min(remaining, DRAIN_POLL_S))
        for worker in self._workers:
            if worker.is_alive() and worker.current is None:
                worker.join(IDLE_EXIT_S)

    def _hand_back(self, worker: Worker) -> None:
        claim = worker.abandon()
        if claim is None:
            return
        if not self.store.release(claim.job.id, claim.token, count_attempt=False):
            return  # it finished (or was deleted) just in time
        released = self.store.get(claim.job.id)
        if released is not None and released.status == JobStatus.QUEUED:
            with job_context(claim.job.id):
                log.warning("not finished within the drain window; back in the queue for the next start")

    # --- submitting ----------------------------------------------------------------------------
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
        """Queue one job for the principal's tenant. Exactly one of audio and text: a text job
        synthesises its speech (with voice) first. video may be "avatar:<id>" (a ready avatar of
        the tenant). watermark, when given, overrides options["watermark"]. uploaded: what the
        caller staged under the inputs folder for this request (the job may read it and owns
        it). internal: heygem's own adapters only (reserved key prefixes, no per-tenant output
        list)."""
        self._check_accepting()
        key = check_key(idempotency_key, max_chars=MAX_KEY_CHARS, internal=internal)
        owned = self._check_uploaded(uploaded)
        if key is not None:
            existing = self.store.get_by_key(key, principal.tenant)
            if existing is not None:
                self._discard_replayed(owned, existing)
                return existing
        speech = self._check_speech(audio, text, voice, owned)
        spec = NewJob(
            audio=speech.audio,
            video=self._check_face(video, owned, principal),
            text=speech.text,
            voice=speech.voice,
            options=options_dict(options, watermark),
            output_name=safe_output_name(output_name) if output_name is not None else None,
            output_prefix=self._check_prefix(output_prefix, principal, internal),
            idempotency_key=key,
            uploads=owned,
        )
        (spec,) = self._share_uploads([spec], owned)
        try:
            _, (job,) = self.store.add(
                [spec],
                queue_limit=self.settings.queue_size,
                tenant=principal.tenant,
                tenant_limit=self.settings.resolved_tenant_queue_size,
            )
        except HeygemError:
            fleetfiles.discard_staged([spec], self.settings)
            raise
        if job.uploads != spec.uploads:  # another request with the same key won the race
            fleetfiles.discard_staged([spec], self.settings)
            self._discard_replayed(owned, job)
            return job
        self._wake.set()
        with job_context(job.id):
            log.info(
                "queued: audio=%s video=%s tenant=%s",
                shown_ref(job.audio),
                shown_ref(job.video),
                job.tenant,
            )
        return job

    def submit_batch(
        self,
        items: Sequence[Mapping[str, Any]],
        options: Mapping[str, Any] | SyncOptions | None = None,
        *,
        principal: Principal,
        output_prefix: str | None = None,
        uploaded: Sequence[str | os.PathLike[str]] = (),
    ) -> Batch:
        """Queue N items as one batch, all or nothing; item i's errors start with "item i:"."""
        self._check_accepting()
        if not items:
            raise InputError("a batch needs at least one item")
        shared = options_dict(options)
        prefix = self._check_prefix(output_prefix, principal, internal=False)
        owned = self._check_uploaded(uploaded)
        specs: list[NewJob] = []
        names: dict[str, int] = {}
        for number, item in enumerate(items, start=1):
            try:
                spec = self._batch_item(item, number, shared, prefix, owned, principal)
                if spec.output_name in names:
                    raise InputError(
                        f"output_name {spec.output_name!r} is already used by item {names[spec.output_name]}"
                    )
            except HeygemError as exc:
                raise type(exc)(f"item {number}: {exc}") from None
            names[spec.output_name or ""] = number
            specs.append(spec)
        specs = self._share_uploads(specs, owned)
        try:
            batch, _ = self.store.add(
                specs,
                queue_limit=self.settings.queue_size,
                tenant=principal.tenant,
                tenant_limit=self.settings.resolved_tenant_queue_size,
                batch_options=shared,
                batch_prefix=prefix,
                as_batch=True,
            )
        except HeygemError:
            fleetfiles.discard_staged(specs, self.settings)
            raise
        assert batch is not None
        self._wake.set()
        log.info("batch %s: queued %d item(s) for tenant %s", batch.id, len(batch.items), batch.tenant)
        return batch

    def retry_failed(self, batch_id: str, *, principal: Principal) -> Batch:
        """Queue the batch's failed and cancelled items again; the others are left alone."""
        self._check_accepting()
        self.get_batch(batch_id, principal=principal)
        retried = self.store.retry(
            batch_id,
            queue_limit=self.settings.queue_size,
            tenant_limit=self.settings.resolved_tenant_queue_size,
        )
        if retried:
            self._wake.set()
        log.info("batch %s: retrying %d item(s)", batch_id, len(retried))
        return self.get_batch(batch_id, principal=principal)

    def _batch_item(
        self,
        item: Mapping[str, Any],
        number: int,
        options: dict[str, Any],
        prefix: str | None,
        owned: tuple[str, ...],
        principal: Principal,
    ) -> NewJob:
        if not isinstance(item, Mapping):
            raise InputError('expected an object like {"audio": ..., "video": ...}')
        unknown = sorted(set(item) - set(BATCH_ITEM_KEYS))
        if unknown:
            raise InputError(f"unknown key(s) {', '.join(unknown)}")
        speech = self._check_speech(item.get("audio"), item.get("text"), item.get("voice"), owned)
        video = self._check_face(item.get("video"), owned, principal)
        name = item.get("output_name")
        if name is None:
            name = default_output_name(number, speech.audio or TEXT_STEM, video)
        return NewJob(
            audio=speech.audio,
            video=video,
            text=speech.text,
            voice=speech.voice,
            options=options,
            output_name=safe_output_name(name),
            output_prefix=prefix,
            uploads=owned,
        )

    def _check_speech(self, audio: object, text: object, voice: object, owned: tuple[str, ...]) -> SpeechSpec:
        """Exactly one of audio and text; text within the speech limits, voice a plain name."""
        has_audio = audio is not None and audio != ""
        has_text = text is not None
        if has_audio and has_text:
            raise InputError("give either audio or text, not both")
        if not has_audio and not has_text:
            raise InputError("audio is required (or text, to synthesise the speech)")
        if not has_text:
            if voice is not None and voice != "":
                raise InputError("voice goes with text: an audio job has its voice already")
            return SpeechSpec(self._check_input(audio, "audio", owned))
        if not isinstance(text, str):
            raise InputError("text must be a string")
        if voice is not None and not isinstance(voice, str):
            raise InputError("voice must be a string")
        from heygem.speech import check_text, check_voice

        cleaned = check_text(text, self.settings.tts_max_chars)
        chosen = check_voice(voice) if voice and voice.strip() else None
        return SpeechSpec("", cleaned, chosen)

    def _check_face(self, ref: object, owned: tuple[str, ...], principal: Principal) -> str:
        """A face reference, or "avatar:<id>" for one of the tenant's ready avatars."""
        avatar_id = avatar_id_of(ref) if isinstance(ref, str) else None
        if avatar_id is None:
            return self._check_input(ref, "video", owned)
        avatar = self.get_avatar(avatar_id, principal=principal)
        check_usable(avatar)
        return avatar.ref

    def _share_uploads(self, specs: list[NewJob], owned: tuple[str, ...]) -> list[NewJob]:
        """With storage_url, the uploads go to the object store for the worker that claims the
        job (any instance); this instance's copies are removed. Unchanged otherwise."""
        if not self.settings.uses_object_store:
            return specs
        shared = fleetfiles.stage_uploads(specs, self.settings)
        for entry in owned:
            _remove_path(Path(entry))
            files.remove_upload_folder(self.settings, Path(entry).parent)
        return shared

    def _check_accepting(self) -> None:
        with self._state_lock:
            state = self._state
        if state == _RUNNING:
            self._check_engine()
            return
        if state == _NEW:
            raise ShuttingDownError("the job service has not started yet; try again shortly")
        raise ShuttingDownError("the service is shutting down and takes no new jobs; try again shortly")

    def _check_engine(self) -> None:
        # Queueing behind an engine that cannot load would leave the job waiting forever.
        errors = [worker.load_error for worker in self._workers if worker.load_error]
        if errors and len(errors) == len(self._workers):
            raise ModelError(errors[0])

    def _check_input(self, ref: object, kind: str, owned: tuple[str, ...]) -> str:
        if not isinstance(ref, str) or not ref.strip():
            raise InputError(f"{kind} is required")
        # Checks the roots and refuses the data folder's own state (database, outputs...).
        storage.check_reference(ref, self.settings)
        if is_remote(ref):
            fleetfiles.check_not_fleet_area(ref, self.settings, kind)
            return ref
        # Relative paths mean files in the inputs folder, as storage.fetch_input reads them.
        path = resolve_under(ref, self.settings.allowed_input_roots, base=self.settings.inputs_dir)
        if not storage.is_file(path, ref):
            raise InputError(f"{kind} file not found: {storage.shown_path(ref)}")
        self._check_upload_owner(path, ref, kind, owned)
        return str(path)

    def _check_upload_owner(self, path: Path, ref: str, kind: str, owned: tuple[str, ...]) -> None:
        """A file in an upload folder (<inputs>/<32 hex>/..., as the web layer names them) is
        readable only by the request that staged it: another client's upload is not an input.
        Other files in inputs/ are the operator's and stay shared."""
        if files.upload_folder_of(self.settings, path) is None:
            return
        if any(path.is_relative_to(Path(entry)) for entry in owned):
            return
        raise ForbiddenPathError(
            f"{kind} {storage.shown_path(ref)} belongs to another upload; upload the file with this "
            "request instead"
        )

    def _check_uploaded(self, uploaded: Sequence[str | os.PathLike[str]]) -> tuple[str, ...]:
        """The caller's staged files or folders, resolved; each must lie in the inputs folder."""
        inputs = self.settings.inputs_dir.expanduser().resolve()
        owned: list[str] = []
        for entry in uploaded:
            path = Path(entry).expanduser().resolve()
            if path == inputs or not path.is_relative_to(inputs):
                raise InputError("uploaded files must lie in an upload folder under the inputs folder")
            owned.append(str(path))
        return tuple(dict.fromkeys(owned))

    def _discard_replayed(self, owned: tuple[str, ...], existing: Job) -> None:
        """A replayed submit returns the existing job: the files this request staged are not
        used by it, so they go now instead of lingering until retention."""
        used = {os.path.realpath(ref) for ref in (existing.audio, existing.video) if not is_remote(ref)}
        for entry in owned:
            if entry in existing.uploads or any(Path(ref).is_relative_to(entry) for ref in used):
                continue
            _remove_path(Path(entry))
            files.remove_upload_folder(self.settings, Path(entry).parent)
        if owned:
            with job_context(existing.id):
                log.info("replayed idempotency key: removed this request's %d staged upload(s)", len(owned))

    def _check_prefix(self, prefix: str | None, principal: Principal, internal: bool) -> str | None:
        if prefix is None or not prefix.strip():
            return None
        # The check publish_output repeats: a prefix accepted here cannot fail only after rendering.
        checked = storage.check_output_prefix(prefix, self.settings)
        fleetfiles.check_not_fleet_area(checked, self.settings, "output_prefix")
        if not internal:
            check_tenant_prefix(checked, principal, self.settings)
        return checked

    # --- reading -------------------------------------------------------------------------------
    def get(self, job_id: str, *, principal: Principal) -> Job:
        """The job if the principal may see it; JobNotFoundError otherwise (another tenant's job
        looks exactly like one that never existed), JobExpiredError after retention."""
        job = self.store.get(job_id)
        if job is None or not principal.can_see(job):
            raise self._missing("job", job_id, principal, job is None)
        return job

    def get_by_key(self, idempotency_key: str, *, principal: Principal) -> Job:
        job = self.store.get_by_key(idempotency_key, principal.tenant)
        if job is None:
            raise JobNotFoundError("no job with that idempotency key")
        return job

    def list_jobs(self, limit: int = 20, offset: int = 0, *, principal: Principal) -> list[Job]:
        """Newest first; the principal's tenant only (every tenant for admins)."""
        return self.store.list_jobs(max(1, min(limit, MAX_PAGE)), max(0, offset), principal.scope)

    def count_jobs(self, *, principal: Principal) -> int:
        return self.store.count_jobs(principal.scope)

    def count_by_status(self) -> dict[str, int]:
        """Jobs per status over every tenant (every status, zeros included), from one store
        query: the operator's metrics."""
        counts = dict.fromkeys((status.value for status in JobStatus), 0)
        counts.update(self.store.count_by_status())
        return counts

    def queue_depth(self) -> int:
        """Queued jobs over every tenant (a number, no job details)."""
        return self.store.count_queued()

    def oldest_queued_age(self) -> float:
        oldest = self.store.oldest_queued_at()
        return max(0.0, time.time() - oldest) if oldest is not None else 0.0

    def busy_workers(self) -> tuple[int, int]:
        return sum(1 for w in self._workers if w.current is not None), len(self._workers)

    def fleet(self, *, principal: Principal) -> list[dict[str, Any]]:
        if not principal.is_admin:
            raise ForbiddenError("the fleet view is for admins: it names every tenant's running jobs")
        now = time.time()
        return [item.to_dict(now, self.settings.lease_s) for item in self.store.list_instances()]

    def get_batch(self, batch_id: str, *, principal: Principal) -> Batch:
        batch = self.store.get_batch(batch_id)
        if batch is None or not principal.can_see(batch):
            raise self._missing("batch", batch_id, principal, batch is None)
        return batch

    def batch_zip(self, batch_id: str, *, principal: Principal) -> Path:
        """Build the batch's ZIP (successful videos, summary.csv, summary.json); return its path."""
        return archive.build_zip(self.get_batch(batch_id, principal=principal), self.settings)

    def wait(self, job_id: str, timeout: float, *, principal: Principal) -> Job:
        """Block until the job is finished; raise TimeoutError if it is not within `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id, principal=principal)
            remaining = deadline - time.monotonic()
            if job.terminal:
                return job
            if remaining <= 0:
                raise TimeoutError(f"job {job_id} is still {job.status.value} after {timeout:g} s")
            with self._finished:
                self._finished.wait(min(remaining, WAIT_POLL_S))

    def _missing(self, what: str, item_id: str, principal: Principal, absent: bool) -> JobNotFoundError:
        """Not found, or expired when retention deleted it (and it was the principal's)."""
        tomb: Tombstone | None = self.store.tombstone(item_id) if absent else None
        if tomb is not None and (principal.is_admin or tomb.tenant == principal.tenant):
            when = datetime.fromtimestamp(tomb.expired_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
            return JobExpiredError(
                f"{what} {item_id} expired on {when}: finished {what}s are kept "
                f"{self.settings.retention_days:g} days",
                tomb.expired_at,
            )
        return JobNotFoundError(f"no {what} with id {item_id!r}")

    def readiness(self) -> tuple[bool, str]:
        with self._state_lock:
            state = self._state
        if state == _NEW:
            return False, "the job service has not started"
        if state != _RUNNING:
            return False, "shutting down"
        if any(w.ready.is_set() and w.is_alive() for w in self._workers):
            return True, "ready"
        errors = [w.load_error for w in self._workers if w.load_error]
        if errors:
            return False, errors[0]
        if not any(w.is_alive() for w in self._workers):
            return False, "the worker has stopped"
        return False, "loading the model"

    def deep_check(self, timeout: float) -> float:
        """One warm-up inference in a ready worker, between jobs; its duration in seconds.

        Raises HeygemError naming the reason when not ready or when the inference fails, and
        TimeoutError when the worker is busy (or slow) for longer than `timeout`.
        """
        ready, reason = self.readiness()
        worker = next((w for w in self._workers if w.ready.is_set() and w.is_alive()), None)
        if not ready or worker is None:
            raise HeygemError(f"not ready: {reason}")
        future = worker.request_probe()
        try:
            seconds: float = future.result(timeout)
            return seconds
        except TimeoutError:
            future.cancel()
            raise TimeoutError(f"the warm-up inference did not finish within {timeout:g} s") from None
        except HeygemError:
            raise
        except Exception as exc:  # noqa: BLE001 - any engine failure means "not ready"
            raise ModelError(f"warm-up inference failed: {type(exc).__name__}: {exc}") from None

    def engine_status(self) -> EngineStatus | None:
        """The first ready worker's EngineStatus, or None while loading."""
        for worker in self._workers:
            if worker.ready.is_set():
                return worker.engine.status()
        return None

    # --- avatars (the bookkeeping is heygem.jobs.avatars.AvatarBook's) ------------------------
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
        """Store the media (and voice sample) in a new avatar folder and prepare it in the
        background: status 'preparing', later 'ready' or 'failed'. media and voice_audio are
        references like a job's inputs; files inside `uploaded` (the caller's staged folders)
        are moved, anything else is copied. The staged folders are removed either way."""
        try:
            self._check_running()
            owned = self._check_uploaded(uploaded or ())
            return self._avatar_book().create(
                name,
                media,
                principal=principal,
                voice_audio=voice_audio,
                voice_text=voice_text,
                owned=owned,
            )
        finally:
            for entry in uploaded or ():
                _remove_path(Path(entry))
                files.remove_upload_folder(self.settings, Path(entry).parent)

    def list_avatars(self, *, principal: Principal) -> list[Avatar]:
        """Newest first; the principal's tenant only (every tenant for admins)."""
        return self.store.list_avatars(principal.scope)

    def get_avatar(self, avatar_id: str, *, principal: Principal) -> Avatar:
        """AvatarNotFoundError for an unknown id and for another tenant's avatar alike."""
        return self._avatar_book().get(avatar_id, principal=principal)

    def rename_avatar(self, avatar_id: str, name: str, *, principal: Principal) -> Avatar:
        return self._avatar_book().rename(avatar_id, name, principal=principal)

    def delete_avatar(self, avatar_id: str, *, principal: Principal) -> None:
        """Remove the avatar and its folder. Finished jobs keep their videos; a queued job that
        names it fails when it runs ("no longer exists")."""
        self._avatar_book().delete(avatar_id, principal=principal)
        fleetfiles.remove_avatar_objects(self.settings, avatar_id)

    def _avatar_book(self) -> AvatarBook:
        def prepare(avatar: Avatar) -> None:
            if self._preparer is None:
                raise ShuttingDownError("the job service is not running; try again shortly")
            self._preparer.submit(avatar)

        return AvatarBook(self.settings, self.store, self._check_input, prepare)

    def speak(
        self,
        text: str,
        *,
        principal: Principal,
        voice: str | None = None,
        avatar_id: str | None = None,
    ) -> Path:
        """Synthesise `text` only ("hear it"): a WAV under <data_dir>/speech/, kept an hour.
        With avatar_id, the avatar's voice sample is the cloning reference."""
        from heygem.speech import synthesize_text

        self._check_running()
        speech = self._check_speech(None, text, voice, ())
        reference = None
        if avatar_id:
            reference = avatars.voice_reference(self.get_avatar(avatar_id, principal=principal))
        folder = self.settings.data_dir / SPEECH_FOLDER
        _prune_old_files(folder, time.time() - SPEECH_KEEP_S)
        assert speech.text is not None
        result = synthesize_text(
            speech.text,
            folder / f"speech-{uuid.uuid4().hex}.wav",
            self.settings,
            voice=speech.voice,
            reference=reference,
        )
        return result.path

    def _check_running(self) -> None:
        with self._state_lock:
            state = self._state
        if state != _RUNNING:
            raise ShuttingDownError("the job service is not running; try again shortly")

    # --- cancelling and deleting ---------------------------------------------------------------
    def cancel(self, job_id: str, *, principal: Principal) -> Job:
        """Queued -> cancelled now; running -> cancel requested (the run stops within ~1 s)."""
        self.get(job_id, principal=principal)
        return self._cancel(job_id)

    def _cancel(self, job_id: str) -> Job:
        job = self.store.cancel(job_id)
        if job is None:
            raise JobNotFoundError(f"no job with id {job_id!r}")
        with job_context(job_id):
            if job.status == JobStatus.RUNNING:
                self._cancels.add(job_id)
                log.info("cancel requested")
            elif job.status == JobStatus.CANCELLED:
                log.info("cancelled")
                self._job_finished(job)
        return job

    def delete(self, job_id: str, *, principal: Principal) -> None:
        """Remove the job's row, its files and the uploads it owns that no other job uses
        (cancels it first)."""
        job = self.get(job_id, principal=principal)
        if job.status == JobStatus.RUNNING:
            self._cancel(job_id)
            self._wait_not_running([job_id])
        deleted = self.store.delete([job_id])
        if not deleted:
            raise InputError(f"job {job_id} is still stopping; try again in a moment")
        self._remove_files(deleted)
        with job_context(job_id):
            log.info("deleted")

    def delete_all(self, *, principal: Principal) -> int:
        """Delete the tenant's jobs (every job for admins; running ones are cancelled first);
        return how many were deleted."""
        scope = principal.scope
        visible = self.store.list_jobs(self.store.count_jobs(scope) + 1, 0, scope)
        running = [job.id for job in visible if job.status == JobStatus.RUNNING]
        for job_id in running:
            self._cancel(job_id)
        self._wait_not_running(running)
        deleted = self.store.delete(sorted(self.store.all_job_ids(scope)))
        self._remove_files(deleted)
        log.info("deleted %d job(s) of %s", len(deleted), scope or "every tenant")
        return len(deleted)

    def _wait_not_running(self, job_ids: Sequence[str]) -> None:
        deadline = time.monotonic() + DELETE_WAIT_S
        for job_id in job_ids:
            while time.monotonic() < deadline:
                job = self.store.get(job_id)
                if job is None or job.status != JobStatus.RUNNING:
                    break
                with self._finished:
                    self._finished.wait(WAIT_POLL_S)

    def _remove_files(self, jobs: Sequence[Job]) -> None:
        """The jobs' scratch and outputs, and what they uploaded unless a remaining job still
        reads from it. A file a job merely referenced (an operator's) is never touched."""
        references = self.store.references(active_only=False)
        remote = {ref for ref in references if is_remote(ref)}
        for job in jobs:
            files.remove_job_files(self.settings, job.id)
            fleetfiles.remove_job_objects(self.settings, job.id, job.uploads, remote)
        still_used = [Path(os.path.realpath(ref)) for ref in references if not is_remote(ref)]
        for entry in sorted({Path(owned) for job in jobs for owned in job.uploads}):
            if any(ref == entry or ref.is_relative_to(entry) for ref in still_used):
                continue
            _remove_path(entry)
            files.remove_upload_folder(self.settings, entry.parent)  # an owned file's folder
        for batch_id in self.store.delete_empty_batches():
            files.remove_tree(files.output_dir(self.settings, batch_id))

    def _job_finished(self, job: Job) -> None:
        self._cancels.discard(job.id)
        with self._finished:
            self._finished.notify_all()


def _prune_old_files(folder: Path, before: float) -> None:
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        try:
            if path.is_file() and path.stat().st_mtime < before:
                path.unlink(missing_ok=True)
        except OSError:
            continue  # removed meanwhile


def _remove_path(path: Path) -> None:
    """Remove an upload (a file or a staged folder); missing is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


if TYPE_CHECKING:
    from heygem.jobs import api

    def _implements_the_contract(service: JobService) -> api.JobService:
        return service  # mypy checks that JobService has the protocol's methods and signatures
