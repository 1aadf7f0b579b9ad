"""The records the job layer hands out: Job, Batch and JobStatus (plain data, no I/O).

Job's dataclass fields are the one list of job fields: the store's row mapping and to_dict()
are derived from them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import Field, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

DEFAULT_OUTPUT_NAME = "result.mp4"
DEFAULT_TENANT = "default"  # owner of jobs written before tenancy, and of the single-user service
# Field metadata: kept in the store but left out of to_dict() (the API's and summaries' view).
INTERNAL: dict[str, bool] = {"internal": True}


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
RETRYABLE_STATUSES = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})


class JobKind(StrEnum):
    SINGLE = "single"
    BATCH_ITEM = "batch_item"


@dataclass(frozen=True)
class NewJob:
    """What a submission asks for, already validated; the store adds id, status and times."""

    audio: str  # the reference as submitted: local path, s3://, obs:// or https://
    video: str
    options: dict[str, Any] = field(default_factory=dict)
    output_name: str | None = None  # plain file name ending in .mp4; None = result.mp4
    output_prefix: str | None = None  # where to publish the result, if anywhere
    idempotency_key: str | None = None
    # Files or folders under the inputs folder that the submitter staged for this job: the job
    # owns them, and deleting it removes them (nothing else it merely references).
    uploads: tuple[str, ...] = ()
    # A text job: speech is synthesised from `text` (audio is then "") with `voice`, if named.
    text: str | None = None
    voice: str | None = None


@dataclass(frozen=True)
class Job:
    id: str  # uuid4 hex
    tenant: str  # the owner (heygem.jobs.tenancy.Principal.tenant); filters every read
    kind: JobKind
    batch_id: str | None
    item_index: int | None  # position in the batch, from 0
    audio: str  # "" for a text job
    video: str  # a reference, or "avatar:<id>"
    text: str | None  # a text job's script: speech is synthesised from it before the engine runs
    voice: str | None  # the speech voice a text job asked for; None = the provider's default
    options: dict[str, Any]
    output_name: str | None
    output_prefix: str | None
    idempotency_key: str | None
    status: JobStatus
    progress: float  # 0-1
    stage: str
    error: str | None
    attempts: int  # times a worker started it
    cancel_requested: bool = field(metadata=INTERNAL)
    engine: str | None  # engine that actually ran (from SyncResult.engine)
    frames_without_face: int | None
    frames: int | None  # frames the engine wrote (SyncResult.frames); None before a run ends
    run_seconds: float | None  # wall time of the engine run alone (SyncResult.seconds)
    created_at: float  # unix seconds
    # last time it entered the queue (submit, retry); orders the queue
    queued_at: float = field(metadata=INTERNAL)
    started_at: float | None
    finished_at: float | None
    output_path: Path | None  # the finished mp4 under Settings.outputs_dir
    output_url: str | None  # object URL after publishing to output_prefix
    presigned_url: str | None
    uploads: tuple[str, ...] = field(metadata=INTERNAL)  # what this job owns under inputs/

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    @property
    def is_text(self) -> bool:
        return self.text is not None

    @property
    def has_result(self) -> bool:
        """The mp4 was finished: the job succeeded, or it failed only while publishing the result
        to output_prefix (a failed run records output_path only once the mp4 is in place)."""
        return self.output_path is not None and self.status in (JobStatus.SUCCEEDED, JobStatus.FAILED)

    @property
    def result_name(self) -> str:
        return self.output_name or DEFAULT_OUTPUT_NAME

    @property
    def seconds(self) -> float | None:
        """Wall time of the last run, when it has finished."""
        if self.started_at is None or self.finished_at is None:
            return None
        return max(0.0, self.finished_at - self.started_at)

    def to_dict(self, data_dir: Path | None = None) -> dict[str, Any]:
        """JSON-ready view for the API and summaries: every field but the internal ones, and the
        run's `seconds` after finished_at. References lose their URL query (a signature is a
        credential); with `data_dir`, paths inside it are shown relative to it, in the error too,
        so callers never learn the server's folders."""
        view: dict[str, Any] = {}
        for name in public_job_fields():
            value = getattr(self, name)
            view[name] = _JSON_VALUES[name](value) if name in _JSON_VALUES else value
            if name == "finished_at":
                view["seconds"] = self.seconds
        if data_dir is not None:
            for name in _SHOWN_PATHS:
                view[name] = shown_path(view[name], data_dir)
            view["error"] = scrub_paths(view["error"], data_dir)
        return view


@dataclass(frozen=True)
class Instance:
    """One heygem process serving the queue, as its last heartbeat described it."""

    id: str
    device: str  # what its engine runs on ("cuda:0", "cpu"), "" while loading
    jobs: tuple[str, ...]  # ids of the jobs its workers are running now
    workers: int
    started_at: float  # unix seconds
    heartbeat_at: float  # unix seconds, by the store's clock

    def to_dict(self, now: float, lease_s: float) -> dict[str, Any]:
        """The API's view: `alive` while its last heartbeat is younger than one lease."""
        return {
            "id": self.id,
            "device": self.device,
            "current_jobs": list(self.jobs),
            "workers": self.workers,
            "started_at": self.started_at,
            "last_heartbeat": self.heartbeat_at,
            "heartbeat_age_s": round(max(0.0, now - self.heartbeat_at), 3),
            "alive": now - self.heartbeat_at < lease_s,
        }


def _path_text(path: Path | None) -> str | None:
    return str(path) if path else None


def without_query(ref: str | None) -> str | None:
    """A reference with any URL query and fragment removed (local paths unchanged)."""
    if ref is None or "://" not in ref:
        return ref
    return ref.split("#", 1)[0].split("?", 1)[0]


def shown_path(text: str | None, data_dir: Path) -> str | None:
    """A local path inside data_dir as a path relative to it; anything else unchanged."""
    if not text or "://" in text:
        return text
    for root in _roots(data_dir):
        if text == root:
            return "."
        if text.startswith(root + "/"):
            return text[len(root) + 1 :]
    return text


def scrub_paths(text: str | None, data_dir: Path) -> str | None:
    """Replace the data folder's absolute path wherever it occurs in a message."""
    if not text:
        return text
    for root in _roots(data_dir):
        text = text.replace(root + "/", "").replace(root, ".")
    return text


def _roots(data_dir: Path) -> list[str]:
    # Both spellings: jobs store resolved paths, settings may hold a symlinked one.
    spelled = {str(data_dir), str(data_dir.resolve())}
    return sorted((root.rstrip("/") for root in spelled if root.strip("/")), key=len, reverse=True)


# Path fields that to_dict(data_dir) shows relative to the data folder.
_SHOWN_PATHS = ("audio", "video", "output_path", "output_url", "output_prefix")


def _enum_value(member: StrEnum) -> str:
    return member.value


# Fields whose JSON form differs from the attribute.
_JSON_VALUES: dict[str, Callable[[Any], Any]] = {
    "kind": _enum_value,
    "status": _enum_value,
    "progress": lambda progress: round(progress, 4),
    "output_path": _path_text,
    "audio": without_query,
    "video": without_query,
    "output_url": without_query,
    "output_prefix": without_query,
}


@functools.cache
def job_fields() -> tuple[Field[Any], ...]:
    """Job's fields in order: the store's columns and to_dict()'s keys come from these."""
    return fields(Job)


@functools.cache
def public_job_fields() -> tuple[str, ...]:
    return tuple(f.name for f in job_fields() if not f.metadata.get("internal"))


@dataclass(frozen=True)
class Outcome:
    """The end of one run, as the store records it."""

    status: JobStatus
    error: str | None = None
    engine: str | None = None
    frames_without_face: int | None = None
    frames: int | None = None
    run_seconds: float | None = None
    output_path: Path | None = None
    output_url: str | None = None
    presigned_url: str | None = None


@dataclass(frozen=True)
class Batch:
    id: str
    created_at: float
    options: dict[str, Any]
    output_prefix: str | None
    items: tuple[Job, ...] = ()
    tenant: str = DEFAULT_TENANT

    def to_dict(self, data_dir: Path | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "created_at": self.created_at,
            "options": self.options,
            "output_prefix": shown_path(without_query(self.output_prefix), data_dir)
            if data_dir is not None
            else self.output_prefix,
            "status": self.status,
            "progress": round(self.progress, 4),
            "counts": {status.value: self.count(status) for status in JobStatus},
            "items": [item.to_dict(data_dir) for item in self.items],
        }

    def count(self, status: JobStatus) -> int:
        return sum(1 for item in self.items if item.status == status)

    @property
    def succeeded(self) -> tuple[Job, ...]:
        return tuple(item for item in self.items if item.status == JobStatus.SUCCEEDED)

    @property
    def failed(self) -> tuple[Job, ...]:
        return tuple(item for item in self.items if item.status == JobStatus.FAILED)

    @property
    def finished(self) -> bool:
        return all(item.terminal for item in self.items)

    @property
    def progress(self) -> float:
        if not self.items:
            return 1.0
        done = sum(1.0 if item.terminal else item.progress for item in self.items)
        return done / len(self.items)

    @property
    def status(self) -> str:
        """queued (nothing started), running, or finished (every item terminal)."""
        if self.finished:
            return "finished"
        if all(item.status == JobStatus.QUEUED for item in self.items):
            return "queued"
        return "running"
