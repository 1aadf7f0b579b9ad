"""Where jobs live: the JobStore interface and its SQLite implementation.

SQLite (standard library) runs in WAL mode with a busy timeout; each thread gets its own
connection, and every write that reads first (queue bound, claim, recovery) runs in one
`BEGIN IMMEDIATE` transaction, so several threads or processes can share one database file.
A database shared by several hosts is heygem.jobs.store_pg (PostgreSQL, with leased claims);
open_store() picks one from Settings.database_url.

A claimed job carries a random run token; a worker's later writes (progress, result) only land
while the token still matches, so a run that was handed back to the queue (drain) or deleted
cannot overwrite the job's newer state.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from heygem.errors import HeygemError, QueueFullError
from heygem.jobs.avatars import Avatar
from heygem.jobs.records import (
    DEFAULT_TENANT,
    RETRYABLE_STATUSES,
    TERMINAL_STATUSES,
    Batch,
    Instance,
    Job,
    JobKind,
    JobStatus,
    NewJob,
    Outcome,
    job_fields,
)
from heygem.settings import Settings

log = logging.getLogger("heygem.jobs.store")

SCHEMA_VERSION = 4
BUSY_TIMEOUT_S = 15.0  # how long a writer waits for another writer before giving up

_SCHEMA_V1 = """
CREATE TABLE batches (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    options TEXT NOT NULL DEFAULT '{}',
    output_prefix TEXT
);
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    batch_id TEXT REFERENCES batches(id),
    item_index INTEGER,
    audio TEXT NOT NULL,
    video TEXT NOT NULL,
    options TEXT NOT NULL DEFAULT '{}',
    output_name TEXT,
    output_prefix TEXT,
    idempotency_key TEXT UNIQUE,
    status TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    stage TEXT NOT NULL DEFAULT '',
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    run_token TEXT,
    engine TEXT,
    frames_without_face INTEGER,
    created_at REAL NOT NULL,
    queued_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    output_path TEXT,
    output_url TEXT,
    presigned_url TEXT
);
CREATE INDEX jobs_queue ON jobs(status, queued_at);
CREATE INDEX jobs_batch ON jobs(batch_id, item_index);
CREATE INDEX jobs_created ON jobs(created_at);
"""
# Version 2: what the engine reported, so /metrics needs no ffprobe of the outputs.
_SCHEMA_V2 = """
ALTER TABLE jobs ADD COLUMN frames INTEGER;
ALTER TABLE jobs ADD COLUMN run_seconds REAL;
"""
# Version 3: tenancy. Jobs and batches get an owner (existing rows: "default"); an idempotency key
# is unique per tenant, not globally, so the jobs table is rebuilt without the column's UNIQUE.
# A job owns the uploads it was submitted with. Retention leaves a tombstone per deleted job or
# batch, so an expired id answers differently from one that never existed.
_SCHEMA_V3 = """
CREATE TABLE jobs_v3 (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL DEFAULT 'default',
    kind TEXT NOT NULL,
    batch_id TEXT REFERENCES batches(id),
    item_index INTEGER,
    audio TEXT NOT NULL,
    video TEXT NOT NULL,
    options TEXT NOT NULL DEFAULT '{}',
    output_name TEXT,
    output_prefix TEXT,
    idempotency_key TEXT,
    status TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    stage TEXT NOT NULL DEFAULT '',
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    run_token TEXT,
    engine TEXT,
    frames_without_face INTEGER,
    created_at REAL NOT NULL,
    queued_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    output_path TEXT,
    output_url TEXT,
    presigned_url TEXT,
    frames INTEGER,
    run_seconds REAL,
    uploads TEXT NOT NULL DEFAULT '[]'
);
INSERT INTO jobs_v3 (rowid, id, kind, batch_id, item_index, audio, video, options, output_name,
    output_prefix, idempotency_key, status, progress, stage, error, attempts, cancel_requested,
    run_token, engine, frames_without_face, created_at, queued_at, started_at, finished_at,
    output_path, output_url, presigned_url, frames, run_seconds)
    SELECT rowid, id, kind, batch_id, item_index, audio, video, options, output_name,
    output_prefix, idempotency_key, status, progress, stage, error, attempts, cancel_requested,
    run_token, engine, frames_without_face, created_at, queued_at, started_at, finished_at,
    output_path, output_url, presigned_url, frames, run_seconds FROM jobs ORDER BY rowid;
DROP TABLE jobs;
ALTER TABLE jobs_v3 RENAME TO jobs;
CREATE INDEX jobs_queue ON jobs(status, queued_at);
CREATE INDEX jobs_batch ON jobs(batch_id, item_index);
CREATE INDEX jobs_created ON jobs(created_at);
CREATE INDEX jobs_tenant_created ON jobs(tenant, created_at);
CREATE INDEX jobs_tenant_started ON jobs(tenant, started_at);
CREATE UNIQUE INDEX jobs_tenant_key ON jobs(tenant, idempotency_key);
ALTER TABLE batches ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
CREATE TABLE tombstones (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    tenant TEXT NOT NULL,
    expired_at REAL NOT NULL
);
"""
# Version 4: avatars (a tenant's stored, prepared face videos) and text jobs (speech is
# synthesised from `text` with `voice`; such a job's audio is "").
_SCHEMA_V4 = """
CREATE TABLE avatars (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    media TEXT NOT NULL,
    thumbnail TEXT,
    voice_audio TEXT,
    voice_text TEXT,
    created_at REAL NOT NULL,
    duration_s REAL,
    is_image INTEGER NOT NULL DEFAULT 0,
    track_key TEXT
);
CREATE INDEX avatars_tenant_created ON avatars(tenant, created_at);
ALTER TABLE jobs ADD COLUMN text TEXT;
ALTER TABLE jobs ADD COLUMN voice TEXT;
"""
# version -> script that brings version-1 to it; released scripts are never edited
_MIGRATIONS = {1: _SCHEMA_V1, 2: _SCHEMA_V2, 3: _SCHEMA_V3, 4: _SCHEMA_V4}
# Avatar fields the store may change after creation, and how each is written.
AVATAR_UPDATES: dict[str, Callable[[Any], Any]] = {
    "name": str,
    "status": str,
    "error": lambda value: value,
    "duration_s": lambda value: value,
    "is_image": int,
    "thumbnail": lambda value: str(value) if value is not None else None,
    "track_key": lambda value: value,
}

TERMINAL_SQL = ", ".join(f"'{s.value}'" for s in sorted(TERMINAL_STATUSES))
RETRYABLE_SQL = ", ".join(f"'{s.value}'" for s in sorted(RETRYABLE_STATUSES))


class RunState(Enum):
    """What a running worker learns when it reports progress."""

    ACTIVE = "active"  # carry on
    CANCEL = "cancel"  # a cancel was requested: stop and mark the job cancelled
    GONE = "gone"  # the run is no longer this worker's (re-queued or deleted): stop quietly


@dataclass(frozen=True)
class Claim:
    job: Job
    token: str  # must accompany every later write about this run


@dataclass(frozen=True)
class Tombstone:
    """What is left of a job or batch that retention deleted."""

    id: str
    kind: str  # TOMBSTONE_JOB or TOMBSTONE_BATCH
    tenant: str
    expired_at: float  # unix seconds


TOMBSTONE_JOB = "job"
TOMBSTONE_BATCH = "batch"


class AvatarStore(Protocol):
    """Avatars (heygem.jobs.avatars): tenant-owned rows; `tenant=None` lists every tenant's."""

    def add_avatar(self, avatar: Avatar) -> None: ...
    def get_avatar(self, avatar_id: str) -> Avatar | None: ...
    def list_avatars(self, tenant: str | None = None) -> list[Avatar]:
        """Newest first."""
        ...

    def count_avatars(self, tenant: str | None = None) -> int: ...
    def update_avatar(self, avatar_id: str, **changes: Any) -> Avatar | None:
        """Change the given fields (AVATAR_UPDATES); None when the avatar is gone."""
        ...

    def delete_avatar(self, avatar_id: str) -> Avatar | None: ...
    def avatar_track_keys(self) -> set[str]:
        """The face-track cache keys of every avatar (retention keeps those entries)."""
        ...


class JobStore(AvatarStore, Protocol):
    """The store contract (tests/test_jobs_store_contract.py runs it against every store).

    `tenant=None` in a read means every tenant (an admin's view); the service decides the scope.
    """

    def open(self) -> None: ...
    def close(self) -> None: ...
    def add(
        self,
        jobs: Sequence[NewJob],
        *,
        queue_limit: int,
        tenant: str = DEFAULT_TENANT,
        tenant_limit: int | None = None,
        batch_options: dict[str, Any] | None = None,
        batch_prefix: str | None = None,
        as_batch: bool = False,
    ) -> tuple[Batch | None, list[Job]]: ...
    def get(self, job_id: str) -> Job | None: ...
    def get_by_key(self, idempotency_key: str, tenant: str = DEFAULT_TENANT) -> Job | None: ...
    def list_jobs(self, limit: int, offset: int, tenant: str | None = None) -> list[Job]: ...
    def count_jobs(self, tenant: str | None = None) -> int: ...
    def count_queued(self, tenant: str | None = None) -> int: ...
    def count_by_status(self) -> dict[str, int]: ...
    def claim(self) -> Claim | None: ...
    def report_progress(self, job_id: str, token: str, progress: float, stage: str) -> RunState:
        """Record progress; a leasing store also renews the run's lease."""
        ...

    def heartbeat(self, job_id: str, token: str) -> RunState:
        """Renew the run's lease while a long stage runs; tells the worker whether to go on."""
        ...

    def requeue_expired(self, max_attempts: int) -> tuple[list[Job], list[Job]]:
        """Runs whose lease expired go back to the queue (or fail once out of attempts):
        (requeued, failed). A store without leases returns ([], [])."""
        ...

    def finish(self, job_id: str, token: str, outcome: Outcome) -> bool: ...
    def release(self, job_id: str, token: str, *, count_attempt: bool) -> bool: ...
    def cancel(self, job_id: str) -> Job | None: ...
    def recover(self, max_attempts: int) -> tuple[list[Job], list[Job]]: ...
    def delete(self, job_ids: Sequence[str]) -> list[Job]: ...
    def expire(self, job_ids: Sequence[str], expired_at: float) -> list[Job]: ...
    def tombstone(self, item_id: str) -> Tombstone | None: ...
    def prune_tombstones(self, before: float) -> int: ...
    def get_batch(self, batch_id: str) -> Batch | None: ...
    def retry(self, batch_id: str, *, queue_limit: int, tenant_limit: int | None = None) -> list[Job]: ...
    def finished_before(self, cutoff: float) -> list[Job]: ...
    def references(self, *, active_only: bool) -> set[str]: ...
    def all_job_ids(self, tenant: str | None = None) -> set[str]: ...
    def delete_empty_batches(self, expired_at: float | None = None) -> list[str]: ...
    def oldest_queued_at(self) -> float | None:
        """When the longest-waiting queued job was queued (unix seconds); None if none waits."""
        ...

    def record_instance(self, instance: Instance) -> None:
        """Write this instance's heartbeat row (its heartbeat_at is the store's clock)."""
        ...

    def list_instances(self) -> list[Instance]:
        """The instances serving this queue, most recent heartbeat first."""
        ...

    def forget_instances(self, *, instance_id: str | None = None, silent_for_s: float | None = None) -> int:
        """Remove one instance's row (a clean stop), or every row silent for that long."""
        ...

    def exclusive(self, name: str) -> AbstractContextManager[bool]:
        """Hold a fleet-wide lock named `name` for the block if free: True when this caller got
        it (one instance at a time runs the block), False when another holds it."""
        ...


class SQLiteJobStore:
    """JobStore on one SQLite file; safe to share between threads and processes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        # One host owns the file: the instance list is this process's own heartbeat.
        self._instances: dict[str, Instance] = {}

    # --- connections ---------------------------------------------------------------------------
    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._conn()
        conn.execute("PRAGMA journal_mode=WAL")
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise HeygemError(
                    f"{self.path} was written by a newer heygem (schema {version}, "
                    f"this one knows {SCHEMA_VERSION})"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                log.info("job database %s: migrating schema to version %d", self.path, target)
                for statement in _MIGRATIONS[target].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target}")

    def close(self) -> None:
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        self._local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            conn.row_factory = sqlite3.Row
            # FULL: an accepted job must survive a power cut, not only a process kill.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Job]:
        return [job_from_row(row) for row in self._conn().execute(sql, params).fetchall()]

    # --- submitting ----------------------------------------------------------------------------
    def add(
        self,
        jobs: Sequence[NewJob],
        *,
        queue_limit: int,
        tenant: str = DEFAULT_TENANT,
        tenant_limit: int | None = None,
        batch_options: dict[str, Any] | None = None,
        batch_prefix: str | None = None,
        as_batch: bool = False,
    ) -> tuple[Batch | None, list[Job]]:
        """Insert the tenant's jobs (optionally as one batch) all-or-nothing, within the queue
        bound and the tenant's own bound.

        A job whose idempotency key the tenant already used is not inserted; the existing job is
        returned.
        """
        now = time.time()
        with self._write() as conn:
            if not as_batch and len(jobs) == 1 and jobs[0].idempotency_key:
                row = conn.execute(
                    "SELECT * FROM jobs WHERE tenant = ? AND idempotency_key = ?",
                    (tenant, jobs[0].idempotency_key),
                ).fetchone()
                if row is not None:
                    return None, [job_from_row(row)]
            _check_room(conn, len(jobs), queue_limit)
            _check_tenant_room(conn, len(jobs), tenant, tenant_limit)
            batch_id = uuid.uuid4().hex if as_batch else None
            if batch_id:
                conn.execute(
                    "INSERT INTO batches (id, tenant, created_at, options, output_prefix)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (batch_id, tenant, now, json.dumps(batch_options or {}), batch_prefix),
                )
            ids = []
            for index, spec in enumerate(jobs):
                job_id = uuid.uuid4().hex
                ids.append(job_id)
                conn.execute(job_insert_sql("?"), new_job_values(job_id, spec, tenant, batch_id, index, now))
        added = [self.get(job_id) for job_id in ids]
        batch = self.get_batch(batch_id) if batch_id else None
        return batch, [job for job in added if job is not None]

    # --- reading -------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        found = self._rows("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return found[0] if found else None

    def get_by_key(self, idempotency_key: str, tenant: str = DEFAULT_TENANT) -> Job | None:
        """Keys are the tenant's own: another tenant's job with the same key is not found."""
        found = self._rows(
            "SELECT * FROM jobs WHERE tenant = ? AND idempotency_key = ?", (tenant, idempotency_key)
        )
        return found[0] if found else None

    def list_jobs(self, limit: int, offset: int, tenant: str | None = None) -> list[Job]:
        where, params = _tenant_filter(tenant)
        return self._rows(
            f"SELECT * FROM jobs{where} ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )

    def count_jobs(self, tenant: str | None = None) -> int:
        where, params = _tenant_filter(tenant)
        return _count(self._conn(), f"SELECT COUNT(*) FROM jobs{where}", params)

    def count_queued(self, tenant: str | None = None) -> int:
        return _queued(self._conn(), tenant)

    def count_by_status(self) -> dict[str, int]:
        """Jobs per status in one query; statuses without jobs are absent."""
        rows = self._conn().execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return {row[0]: row[1] for row in rows}

    def get_batch(self, batch_id: str) -> Batch | None:
        row = self._conn().execute("SELECT * FROM batches WHERE id = ?", (batch_id,)).fetchone()
        if row is None:
            return None
        items = self._rows("SELECT * FROM jobs WHERE batch_id = ? ORDER BY item_index", (batch_id,))
        return Batch(
            id=row["id"],
            created_at=row["created_at"],
            options=json.loads(row["options"]),
            output_prefix=row["output_prefix"],
            items=tuple(items),
            tenant=row["tenant"],
        )

    def finished_before(self, cutoff: float) -> list[Job]:
        return self._rows(
            f"SELECT * FROM jobs WHERE status IN ({TERMINAL_SQL}) AND finished_at < ?", (cutoff,)
        )

    def references(self, *, active_only: bool) -> set[str]:
        """Input references of queued/running jobs (active_only) or of every job."""
        where = " WHERE status IN ('queued', 'running')" if active_only else ""
        rows = self._conn().execute("SELECT audio, video FROM jobs" + where).fetchall()
        return {ref for row in rows for ref in (row["audio"], row["video"])}

    def all_job_ids(self, tenant: str | None = None) -> set[str]:
        where, params = _tenant_filter(tenant)
        rows = self._conn().execute(f"SELECT id FROM jobs{where}", params).fetchall()
        return {row[0] for row in rows}

    def tombstone(self, item_id: str) -> Tombstone | None:
        row = self._conn().execute("SELECT * FROM tombstones WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            return None
        return Tombstone(row["id"], row["kind"], row["tenant"], row["expired_at"])

    # --- running -------------------------------------------------------------------------------
    def claim(self) -> Claim | None:
        """Take the next queued job atomically, fairly between tenants; None when none is queued.

        Fair: the tenant with the fewest running jobs goes first; among equals, the tenant whose
        last job started longest ago (or never), so one worker alternates between tenants instead
        of serving a 500-item batch before another tenant's single job; within a tenant, the
        oldest queued job.
        """
        token = uuid.uuid4().hex
        rows = (
            self._conn()
            .execute(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, run_token = ?,"
                " started_at = ?, finished_at = NULL, progress = 0, stage = 'starting', error = NULL"
                " WHERE id = (" + _NEXT_FAIR_SQL + ") AND status = 'queued' RETURNING *",
                (token, time.time()),
            )
            .fetchall()
        )
        return Claim(job_from_row(rows[0]), token) if rows else None

    def report_progress(self, job_id: str, token: str, progress: float, stage: str) -> RunState:
        rows = (
            self._conn()
            .execute(
                "UPDATE jobs SET progress = ?, stage = ? WHERE id = ? AND run_token = ?"
                " AND status = 'running' RETURNING cancel_requested",
                (progress, stage, job_id, token),
            )
            .fetchall()
        )
        if not rows:
            return RunState.GONE
        return RunState.CANCEL if rows[0][0] else RunState.ACTIVE

    def heartbeat(self, job_id: str, token: str) -> RunState:
        """No lease to renew (one host owns the file); only tells whether the run goes on."""
        row = (
            self._conn()
            .execute(
                "SELECT cancel_requested FROM jobs WHERE id = ? AND run_token = ? AND status = 'running'",
                (job_id, token),
            )
            .fetchone()
        )
        if row is None:
            return RunState.GONE
        return RunState.CANCEL if row[0] else RunState.ACTIVE

    def requeue_expired(self, max_attempts: int) -> tuple[list[Job], list[Job]]:
        """No leases here: the service starting on this file recovers its runs (recover())."""
        return [], []

    def finish(self, job_id: str, token: str, outcome: Outcome) -> bool:
        """Record the end of a run; False when the run was no longer this worker's."""
        rows = (
            self._conn()
            .execute(
                "UPDATE jobs SET status = ?, error = ?, engine = COALESCE(?, engine),"
                " frames_without_face = ?, frames = ?, run_seconds = ?,"
                " output_path = ?, output_url = ?, presigned_url = ?,"
                " finished_at = ?, progress = CASE WHEN ? THEN 1.0 ELSE progress END,"
                " stage = CASE WHEN ? THEN 'done' ELSE stage END, run_token = NULL"
                " WHERE id = ? AND run_token = ? AND status = 'running' RETURNING id",
                finish_values(outcome, job_id, token),
            )
            .fetchall()
        )
        return bool(rows)

    def release(self, job_id: str, token: str, *, count_attempt: bool) -> bool:
        """Put a running job back in the queue at its old place (drain); cancel it if asked to."""
        rows = (
            self._conn()
            .execute(
                "UPDATE jobs SET run_token = NULL, progress = 0, started_at = NULL,"
                " attempts = attempts - ?,"
                " status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END,"
                " stage = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END,"
                " error = CASE WHEN cancel_requested THEN 'cancelled by request' ELSE NULL END,"
                " finished_at = CASE WHEN cancel_requested THEN ? ELSE NULL END"
                " WHERE id = ? AND run_token = ? AND status = 'running' RETURNING id",
                (0 if count_attempt else 1, time.time(), job_id, token),
            )
            .fetchall()
        )
        return bool(rows)

    def cancel(self, job_id: str) -> Job | None:
        """Queued -> cancelled now; running -> cancel requested; finished jobs are left alone."""
        with self._write() as conn:
            conn.execute(
                "UPDATE jobs SET status = 'cancelled', error = 'cancelled by request',"
                " finished_at = ?, stage = 'cancelled' WHERE id = ? AND status = 'queued'",
                (time.time(), job_id),
            )
            conn.execute(
                "UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running'",
                (job_id,),
            )
        return self.get(job_id)

    def recover(self, max_attempts: int) -> tuple[list[Job], list[Job]]:
        """After a crash: running jobs go back to the queue, or fail once out of attempts.

        Assumes one service per database (the one starting now owns every 'running' row).
        """
        now = time.time()
        with self._write() as conn:
            # A cancel asked for before the crash still counts.
            conn.execute(
                "UPDATE jobs SET status = 'cancelled', run_token = NULL, finished_at = ?,"
                " stage = 'cancelled', error = 'cancelled by request'"
                " WHERE status = 'running' AND cancel_requested = 1",
                (now,),
            )
            failed = conn.execute(
                "UPDATE jobs SET status = 'failed', run_token = NULL, finished_at = ?,"
                " error = 'interrupted ' || attempts || ' times (the service restarted while it"
                " ran); giving up' WHERE status = 'running' AND attempts >= ? RETURNING *",
                (now, max_attempts),
            ).fetchall()
            requeued = conn.execute(
                "UPDATE jobs SET status = 'queued', run_token = NULL, progress = 0,"
                " stage = 'queued', started_at = NULL WHERE status = 'running' RETURNING *"
            ).fetchall()
        return [job_from_row(row) for row in requeued], [job_from_row(row) for row in failed]

    # --- batches -------------------------------------------------------------------------------
    def retry(self, batch_id: str, *, queue_limit: int, tenant_limit: int | None = None) -> list[Job]:
        """Queue a batch's failed and cancelled items again (fresh attempts), all-or-nothing,
        within the queue bound and the batch's tenant's bound."""
        with self._write() as conn:
            rows = conn.execute(
                f"SELECT id, tenant FROM jobs WHERE batch_id = ? AND status IN ({RETRYABLE_SQL})",
                (batch_id,),
            ).fetchall()
            ids = [row[0] for row in rows]
            if not ids:
                return []
            _check_room(conn, len(ids), queue_limit)
            _check_tenant_room(conn, len(ids), rows[0][1], tenant_limit)
            marks = ", ".join("?" for _ in ids)
            rows = conn.execute(
                "UPDATE jobs SET status = 'queued', error = NULL, progress = 0, stage = 'queued',"
                " attempts = 0, cancel_requested = 0, started_at = NULL, finished_at = NULL,"
                " output_path = NULL, output_url = NULL, presigned_url = NULL, engine = NULL,"
                " frames_without_face = NULL, frames = NULL, run_seconds = NULL,"
                f" queued_at = ? WHERE id IN ({marks}) RETURNING *",
                (time.time(), *ids),
            ).fetchall()
        return [job_from_row(row) for row in rows]

    # --- deleting ------------------------------------------------------------------------------
    def delete(self, job_ids: Sequence[str]) -> list[Job]:
        """Delete the given rows unless running; return what was deleted."""
        if not job_ids:
            return []
        deleted: list[Job] = []
        with self._write() as conn:
            for job_id in job_ids:
                rows = conn.execute(
                    "DELETE FROM jobs WHERE id = ? AND status != 'running' RETURNING *", (job_id,)
                ).fetchall()
                deleted.extend(job_from_row(row) for row in rows)
        return deleted

    def expire(self, job_ids: Sequence[str], expired_at: float) -> list[Job]:
        """Retention: delete the given rows unless running, leaving a tombstone for each."""
        if not job_ids:
            return []
        deleted: list[Job] = []
        with self._write() as conn:
            for job_id in job_ids:
                rows = conn.execute(
                    "DELETE FROM jobs WHERE id = ? AND status != 'running' RETURNING *", (job_id,)
                ).fetchall()
                for row in rows:
                    _bury(conn, row["id"], TOMBSTONE_JOB, row["tenant"], expired_at)
                    deleted.append(job_from_row(row))
        return deleted

    def delete_empty_batches(self, expired_at: float | None = None) -> list[str]:
        """Delete batches without items; with expired_at (retention), leave tombstones."""
        with self._write() as conn:
            rows = conn.execute(
                "DELETE FROM batches WHERE NOT EXISTS"
                " (SELECT 1 FROM jobs WHERE jobs.batch_id = batches.id) RETURNING id, tenant"
            ).fetchall()
            if expired_at is not None:
                for row in rows:
                    _bury(conn, row[0], TOMBSTONE_BATCH, row[1], expired_at)
        return [row[0] for row in rows]

    def prune_tombstones(self, before: float) -> int:
        rows = (
            self._conn()
            .execute("DELETE FROM tombstones WHERE expired_at < ? RETURNING id", (before,))
            .fetchall()
        )
        return len(rows)

    # --- avatars -------------------------------------------------------------------------------
    def add_avatar(self, avatar: Avatar) -> None:
        self._conn().execute(avatar_insert_sql("?"), avatar_values(avatar))

    def get_avatar(self, avatar_id: str) -> Avatar | None:
        row = self._conn().execute("SELECT * FROM avatars WHERE id = ?", (avatar_id,)).fetchone()
        return avatar_from_row(row) if row is not None else None

    def list_avatars(self, tenant: str | None = None) -> list[Avatar]:
        where, params = _tenant_filter(tenant)
        rows = (
            self._conn()
            .execute(f"SELECT * FROM avatars{where} ORDER BY created_at DESC, rowid DESC", params)
            .fetchall()
        )
        return [avatar_from_row(row) for row in rows]

    def count_avatars(self, tenant: str | None = None) -> int:
        where, params = _tenant_filter(tenant)
        return _count(self._conn(), f"SELECT COUNT(*) FROM avatars{where}", params)

    def update_avatar(self, avatar_id: str, **changes: Any) -> Avatar | None:
        unknown = sorted(set(changes) - set(AVATAR_UPDATES))
        if unknown:
            raise ValueError(f"avatar fields that cannot change: {', '.join(unknown)}")
        if not changes:
            return self.get_avatar(avatar_id)
        columns = ", ".join(f"{name} = ?" for name in changes)
        values = [AVATAR_UPDATES[name](value) for name, value in changes.items()]
        row = (
            self._conn()
            .execute(f"UPDATE avatars SET {columns} WHERE id = ? RETURNING *", (*values, avatar_id))
            .fetchone()
        )
        return avatar_from_row(row) if row is not None else None

    def delete_avatar(self, avatar_id: str) -> Avatar | None:
        row = self._conn().execute("DELETE FROM avatars WHERE id = ? RETURNING *", (avatar_id,)).fetchone()
        return avatar_from_row(row) if row is not None else None

    def avatar_track_keys(self) -> set[str]:
        rows = self._conn().execute("SELECT track_key FROM avatars WHERE track_key IS NOT NULL").fetchall()
        return {row[0] for row in rows}

    # --- the fleet (one instance here) -------------------------------------------------------------
    def oldest_queued_at(self) -> float | None:
        row = self._conn().execute("SELECT MIN(queued_at) FROM jobs WHERE status = 'queued'").fetchone()
        return float(row[0]) if row is not None and row[0] is not None else None

    def record_instance(self, instance: Instance) -> None:
        self._instances[instance.id] = dataclasses.replace(instance, heartbeat_at=time.time())

    def list_instances(self) -> list[Instance]:
        return sorted(self._instances.values(), key=lambda item: item.heartbeat_at, reverse=True)

    def forget_instances(self, *, instance_id: str | None = None, silent_for_s: float | None = None) -> int:
        cutoff = time.time() - silent_for_s if silent_for_s is not None else None
        gone = [
            key
            for key, item in self._instances.items()
            if key == instance_id or (cutoff is not None and item.heartbeat_at < cutoff)
        ]
        for key in gone:
            del self._instances[key]
        return len(gone)

    @contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """An flock on <database>.<name>.lock: processes sharing the file take turns."""
        with open(self.path.with_name(f"{self.path.name}.{name}.lock"), "a+b") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


# The next job to claim (see SQLiteJobStore.claim): per tenant, its running jobs and its latest
# start, then that tenant's oldest queued job.
_NEXT_FAIR_SQL = (
    "SELECT q.id FROM jobs AS q JOIN ("
    "  SELECT tenant, SUM(status = 'running') AS running, COALESCE(MAX(started_at), 0) AS last"
    "  FROM jobs GROUP BY tenant"
    ") AS t ON t.tenant = q.tenant"
    " WHERE q.status = 'queued' ORDER BY t.running, t.last, q.queued_at, q.rowid LIMIT 1"
)


def _bury(conn: sqlite3.Connection, item_id: str, kind: str, tenant: str, when: float) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO tombstones (id, kind, tenant, expired_at) VALUES (?, ?, ?, ?)",
        (item_id, kind, tenant, when),
    )


def _tenant_filter(tenant: str | None, prefix: str = " WHERE") -> tuple[str, tuple[str, ...]]:
    if tenant is None:
        return "", ()
    return f"{prefix} tenant = ?", (tenant,)


def _queued(conn: sqlite3.Connection, tenant: str | None = None) -> int:
    where, params = _tenant_filter(tenant, " AND")
    return _count(conn, f"SELECT COUNT(*) FROM jobs WHERE status = 'queued'{where}", params)


def _count(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> int:
    return int(conn.execute(sql, params).fetchone()[0])


def _check_tenant_room(conn: sqlite3.Connection, needed: int, tenant: str, tenant_limit: int | None) -> None:
    """The tenant's own bound: one department cannot fill the queue for the others."""
    if tenant_limit is not None:
        check_tenant_room(_queued(conn, tenant), needed, tenant, tenant_limit)


def _check_room(conn: sqlite3.Connection, needed: int, queue_limit: int) -> None:
    check_room(_queued(conn), needed, queue_limit)


def check_tenant_room(waiting: int, needed: int, tenant: str, tenant_limit: int) -> None:
    """Raise QueueFullError when the tenant, with `waiting` queued jobs, has no room for `needed`."""
    free = max(0, tenant_limit - waiting)
    if needed <= free:
        return
    raise QueueFullError(
        f"tenant {tenant} has {waiting} jobs waiting (limit {tenant_limit}); "
        + ("" if needed == 1 else f"{needed} jobs need room and {free} places are free; ")
        + "try again later"
    )


def check_room(waiting: int, needed: int, queue_limit: int) -> None:
    """Raise QueueFullError when a queue holding `waiting` jobs has no room for `needed`."""
    free = max(0, queue_limit - waiting)
    if needed <= free:
        return
    if needed == 1:
        raise QueueFullError(f"queue is full ({waiting} jobs waiting); try again later")
    raise QueueFullError(
        f"queue is full: {needed} jobs need room and {free} places are free "
        f"({waiting} jobs waiting, limit {queue_limit}); try again later"
    )


def _optional_path(text: str | None) -> Path | None:
    return Path(text) if text else None


def _path_text(path: Path | None) -> str | None:
    return str(path) if path is not None else None


NEW_JOB_COLUMNS = (
    "id", "tenant", "kind", "batch_id", "item_index", "audio", "video", "options", "output_name",
    "output_prefix", "idempotency_key", "status", "created_at", "queued_at", "uploads", "text",
    "voice",
)  # fmt: skip


def job_insert_sql(placeholder: str) -> str:
    """The INSERT of one new job row, with the driver's parameter placeholder ("?" or "%s")."""
    return _insert_sql("jobs", NEW_JOB_COLUMNS, placeholder)


def new_job_values(
    job_id: str, spec: NewJob, tenant: str, batch_id: str | None, index: int, now: float
) -> tuple[object, ...]:
    """A queued job as the row values NEW_JOB_COLUMNS names, for both stores."""
    return (
        job_id,
        tenant,
        (JobKind.BATCH_ITEM if batch_id else JobKind.SINGLE).value,
        batch_id,
        index if batch_id else None,
        spec.audio,
        spec.video,
        json.dumps(spec.options),
        spec.output_name,
        spec.output_prefix,
        spec.idempotency_key,
        JobStatus.QUEUED.value,
        now,
        now,
        json.dumps(list(spec.uploads)),
        spec.text,
        spec.voice,
    )


def _insert_sql(table: str, columns: tuple[str, ...], placeholder: str) -> str:
    marks = ", ".join([placeholder] * len(columns))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"


def finish_values(outcome: Outcome, job_id: str, token: str) -> tuple[object, ...]:
    """The parameters of both stores' finish UPDATE: the outcome's columns, the finish time, the
    succeeded flag twice (progress 1.0, stage "done"), then the run's id and token."""
    done = outcome.status == JobStatus.SUCCEEDED
    return (
        outcome.status.value,
        outcome.error,
        outcome.engine,
        outcome.frames_without_face,
        outcome.frames,
        outcome.run_seconds,
        str(outcome.output_path) if outcome.output_path else None,
        outcome.output_url,
        outcome.presigned_url,
        time.time(),
        done,
        done,
        job_id,
        token,
    )


AVATAR_COLUMNS = (
    "id", "tenant", "name", "status", "error", "media", "thumbnail", "voice_audio", "voice_text",
    "created_at", "duration_s", "is_image", "track_key",
)  # fmt: skip


def avatar_insert_sql(placeholder: str) -> str:
    """The INSERT of one avatar row, with the driver's parameter placeholder ("?" or "%s")."""
    return _insert_sql("avatars", AVATAR_COLUMNS, placeholder)


def avatar_values(avatar: Avatar) -> tuple[object, ...]:
    """An avatar as the row values AVATAR_COLUMNS names, for both stores."""
    return (
        avatar.id,
        avatar.tenant,
        avatar.name,
        avatar.status,
        avatar.error,
        str(avatar.media),
        _path_text(avatar.thumbnail),
        _path_text(avatar.voice_audio),
        avatar.voice_text,
        avatar.created_at,
        avatar.duration_s,
        int(avatar.is_image),
        avatar.track_key,
    )


class Row(Protocol):
    """A result row read by column name: sqlite3.Row, or psycopg's dict rows."""

    def __getitem__(self, key: str, /) -> Any: ...


def avatar_from_row(row: Row) -> Avatar:
    return Avatar(
        id=row["id"],
        tenant=row["tenant"],
        name=row["name"],
        status=row["status"],
        error=row["error"],
        media=Path(row["media"]),
        thumbnail=_optional_path(row["thumbnail"]),
        voice_audio=_optional_path(row["voice_audio"]),
        voice_text=row["voice_text"],
        created_at=row["created_at"],
        duration_s=row["duration_s"],
        is_image=bool(row["is_image"]),
        track_key=row["track_key"],
    )


def _uploads(text: str | None) -> tuple[str, ...]:
    return tuple(json.loads(text)) if text else ()


# Columns stored in another form than the Job field (every job column is named like its field).
_FROM_COLUMN: dict[str, Callable[[Any], Any]] = {
    "uploads": _uploads,
    "kind": JobKind,
    "options": json.loads,
    "status": JobStatus,
    "cancel_requested": bool,
    "output_path": _optional_path,
}


def job_from_row(row: Row) -> Job:
    values = {}
    for spec in job_fields():
        value = row[spec.name]
        convert = _FROM_COLUMN.get(spec.name)
        values[spec.name] = convert(value) if convert is not None else value
    return Job(**values)


SQLITE_SCHEME = "sqlite://"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_store(settings: Settings) -> JobStore:
    """The store settings.database_url names, not opened yet (the caller calls open()).

    Unset or sqlite:///path: the embedded SQLite file; postgresql://...: the shared PostgreSQL
    store (imported only then, so a single machine never loads the driver).
    """
    if settings.database_url.lower().startswith(POSTGRES_SCHEMES):
        from heygem.jobs.store_pg import PostgresJobStore

        return PostgresJobStore(
            settings.database_url,
            instance_id=settings.resolved_instance_id,
            lease_s=settings.lease_s,
        )
    return SQLiteJobStore(settings.database_path)
