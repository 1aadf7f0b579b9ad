"""The JobStore contract on a PostgreSQL server shared by every instance of a fleet.

psycopg 3 with a connection pool; every method is one transaction on a pooled connection. The
rules are SQLite's (heygem.jobs.store), with what sharing one queue between hosts adds:

- Claims are leases: a claim locks the next fair job with FOR UPDATE SKIP LOCKED, so concurrent
  claimers never wait on each other nor take the same job, and records the claiming instance and
  a lease expiry. Progress and heartbeats renew the lease; requeue_expired() (any instance) puts a
  run whose lease ran out back in the queue. The run token still guards every later write, so a
  run that lost its lease cannot overwrite what happened to the job since.
- Start-up recovery takes back only expired leases and this instance's own earlier claims: other
  instances' running jobs are alive.
- Admission (queue bounds, idempotency keys) is serialised by an advisory lock, as SQLite's
  BEGIN IMMEDIATE serialises it.
- Schema migrations are versioned in heygem_schema and run under an advisory lock, so instances
  starting together migrate exactly once.

Lease times use the database's clock, so instances whose clocks disagree still agree on expiry.
Works on PostgreSQL 13 and later.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.parse
import uuid
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

from heygem.errors import HeygemError
from heygem.jobs.avatars import Avatar
from heygem.jobs.records import DEFAULT_TENANT, Batch, Instance, Job, NewJob, Outcome
from heygem.jobs.store import (
    AVATAR_UPDATES,
    RETRYABLE_SQL,
    TERMINAL_SQL,
    TOMBSTONE_BATCH,
    TOMBSTONE_JOB,
    Claim,
    RunState,
    Tombstone,
    avatar_from_row,
    avatar_insert_sql,
    avatar_values,
    check_room,
    check_tenant_room,
    finish_values,
    job_from_row,
    job_insert_sql,
    new_job_values,
)
from heygem.settings import MASK, mask_url

log = logging.getLogger("heygem.jobs.store_pg")

SCHEMA_VERSION = 2
DEFAULT_POOL_SIZE = 10  # workers plus web threads of one instance
CONNECT_TIMEOUT_S = 10  # how long open() waits for the server before giving up
POOL_TIMEOUT_S = 30.0  # how long a call waits for a free pooled connection
# Advisory lock keys (any 64-bit numbers, fixed so every instance takes the same lock).
MIGRATION_LOCK = 0x6865_7967_656D_0001
ADMISSION_LOCK = 0x6865_7967_656D_0002
# exclusive(name) locks: the high 32 bits mark heygem's, the low 32 bits are a hash of the name.
NAMED_LOCK_BASE = 0x6865_7967_0000_0000
# The database clock in unix seconds; leases are compared against it, never a host's clock.
_NOW = "EXTRACT(EPOCH FROM clock_timestamp())::double precision"

# Version 1: the SQLite store's schema at its version 4, plus the lease of a running job
# (instance_id, lease_until) and `seq`, the insertion order SQLite's rowid gives for free.
_SCHEMA_V1 = """
CREATE TABLE batches (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL DEFAULT 'default',
    created_at DOUBLE PRECISION NOT NULL,
    options TEXT NOT NULL DEFAULT '{}',
    output_prefix TEXT
);
CREATE TABLE jobs (
    seq BIGSERIAL UNIQUE,
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL DEFAULT 'default',
    kind TEXT NOT NULL,
    batch_id TEXT REFERENCES batches(id),
    item_index INTEGER,
    audio TEXT NOT NULL,
    video TEXT NOT NULL,
    text TEXT,
    voice TEXT,
    options TEXT NOT NULL DEFAULT '{}',
    output_name TEXT,
    output_prefix TEXT,
    idempotency_key TEXT,
    status TEXT NOT NULL,
    progress DOUBLE PRECISION NOT NULL DEFAULT 0,
    stage TEXT NOT NULL DEFAULT '',
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    run_token TEXT,
    instance_id TEXT,
    lease_until DOUBLE PRECISION,
    engine TEXT,
    frames_without_face INTEGER,
    frames INTEGER,
    run_seconds DOUBLE PRECISION,
    created_at DOUBLE PRECISION NOT NULL,
    queued_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    output_path TEXT,
    output_url TEXT,
    presigned_url TEXT,
    uploads TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX jobs_queue ON jobs(status, queued_at);
CREATE INDEX jobs_batch ON jobs(batch_id, item_index);
CREATE INDEX jobs_created ON jobs(created_at);
CREATE INDEX jobs_tenant_created ON jobs(tenant, created_at);
CREATE INDEX jobs_tenant_started ON jobs(tenant, started_at);
CREATE INDEX jobs_lease ON jobs(lease_until) WHERE status = 'running';
CREATE UNIQUE INDEX jobs_tenant_key ON jobs(tenant, idempotency_key);
CREATE TABLE tombstones (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    tenant TEXT NOT NULL,
    expired_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE avatars (
    seq BIGSERIAL UNIQUE,
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    media TEXT NOT NULL,
    thumbnail TEXT,
    voice_audio TEXT,
    voice_text TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    duration_s DOUBLE PRECISION,
    is_image INTEGER NOT NULL DEFAULT 0,
    track_key TEXT
);
CREATE INDEX avatars_tenant_created ON avatars(tenant, created_at);
"""
# Version 2: the instances of the fleet, one row per process, written by its heartbeat.
_SCHEMA_V2 = """
CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    device TEXT NOT NULL DEFAULT '',
    jobs TEXT NOT NULL DEFAULT '[]',
    workers INTEGER NOT NULL DEFAULT 0,
    started_at DOUBLE PRECISION NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL
);
"""
# version -> script that brings version-1 to it; released scripts are never edited
MIGRATIONS = {1: _SCHEMA_V1, 2: _SCHEMA_V2}
_SCHEMA_TABLE = """
CREATE TABLE IF NOT EXISTS heygem_schema (
    version INTEGER PRIMARY KEY,
    applied_at DOUBLE PRECISION NOT NULL,
    applied_by TEXT NOT NULL
)
"""

# The next job to claim, by SQLite's fairness rule (see SQLiteJobStore.claim): per tenant, its
# running jobs and its latest start, then that tenant's oldest queued job. SKIP LOCKED passes
# over a row another claimer holds, so N claimers take N different jobs without waiting.
_NEXT_FAIR_SQL = (
    "SELECT q.id FROM jobs AS q JOIN ("
    "  SELECT tenant, COUNT(*) FILTER (WHERE status = 'running') AS running,"
    "  COALESCE(MAX(started_at), 0) AS last FROM jobs GROUP BY tenant"
    ") AS t ON t.tenant = q.tenant"
    " WHERE q.status = 'queued' ORDER BY t.running, t.last, q.queued_at, q.seq"
    " LIMIT 1 FOR UPDATE OF q SKIP LOCKED"
)
# A running job whose owner is presumed gone: its lease ran out.
_EXPIRED = f"COALESCE(lease_until, 0) < {_NOW}"

Cursor = psycopg.Cursor[DictRow]


class PostgresJobStore:
    """JobStore on a PostgreSQL database; safe to share between threads, processes and hosts."""

    def __init__(
        self,
        url: str,
        *,
        instance_id: str,
        lease_s: float,
        pool_size: int = DEFAULT_POOL_SIZE,
    ) -> None:
        self._url = url
        self.instance_id = instance_id
        self.lease_s = lease_s
        self._pool_size = pool_size
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None

    def __repr__(self) -> str:  # the URL may carry a password
        return f"PostgresJobStore({mask_url(self._url)!r}, instance_id={self.instance_id!r})"

    # --- connections ---------------------------------------------------------------------------
    def open(self) -> None:
        """Connect (one clear error when the server or the credentials are wrong), migrate, then
        start the pool."""
        try:
            with psycopg.connect(self._url, connect_timeout=CONNECT_TIMEOUT_S) as conn:
                self._migrate(conn)
        except psycopg.Error as exc:
            raise HeygemError(self._describe_error(exc)) from None
        pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            self._url,
            min_size=1,
            max_size=self._pool_size,
            timeout=POOL_TIMEOUT_S,
            kwargs={"connect_timeout": CONNECT_TIMEOUT_S},
            # A pooled connection may have died with a server restart or failover: check it when
            # it is handed out, so one broken socket does not fail a claim or a request.
            check=ConnectionPool.check_connection,
            name="heygem-jobs",
            open=False,
        )
        try:
            pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error as exc:
            pool.close()
            raise HeygemError(self._describe_error(exc)) from None
        self._pool = pool

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def _describe_error(self, exc: psycopg.Error) -> str:
        """One line naming the setting and the server, never the password."""
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        for secret in _passwords(self._url):
            detail = detail.replace(secret, MASK)
        return f"database_url {mask_url(self._url)}: cannot open the job database: {detail}"

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        """Bring the schema to SCHEMA_VERSION in one transaction, under an advisory lock: the
        instances starting together wait for the first, then find nothing left to do."""
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute(_SCHEMA_TABLE)
            row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM heygem_schema").fetchone()
            version = int(row[0]) if row is not None else 0
            if version > SCHEMA_VERSION:
                raise HeygemError(
                    f"the job database was written by a newer heygem (schema {version}, "
                    f"this one knows {SCHEMA_VERSION})"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                log.info("job database: migrating schema to version %d", target)
                conn.execute(MIGRATIONS[target])
                conn.execute(
                    "INSERT INTO heygem_schema (version, applied_at, applied_by) VALUES (%s, %s, %s)",
                    (target, time.time(), self.instance_id),
                )

    @contextmanager
    def _tx(self) -> Iterator[Cursor]:
        """One transaction on a pooled connection: committed when the block ends, rolled back
        when it raises."""
        if self._pool is None:
            raise HeygemError("the job store is not open")
        with self._pool.connection() as conn, conn.transaction():
            yield conn.cursor(row_factory=dict_row)

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Job]:
        with self._tx() as cur:
            return [job_from_row(row) for row in cur.execute(sql, params).fetchall()]

    def _one(self, sql: str, params: Sequence[Any] = ()) -> DictRow | None:
        with self._tx() as cur:
            return cur.execute(sql, params).fetchone()

    def _count(self, sql: str, params: Sequence[Any] = ()) -> int:
        row = self._one(sql, params)
        return int(row["n"]) if row is not None else 0

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
        bound and the tenant's own bound; a reused idempotency key returns the existing job."""
        now = time.time()
        batch_id = uuid.uuid4().hex if as_batch else None
        ids: list[str] = []
        with self._tx() as cur:
            _admit(cur)
            if not as_batch and len(jobs) == 1 and jobs[0].idempotency_key:
                row = cur.execute(
                    "SELECT * FROM jobs WHERE tenant = %s AND idempotency_key = %s",
                    (tenant, jobs[0].idempotency_key),
                ).fetchone()
                if row is not None:
                    return None, [job_from_row(row)]
            _check_bounds(cur, len(jobs), queue_limit, tenant, tenant_limit)
            if batch_id:
                cur.execute(
                    "INSERT INTO batches (id, tenant, created_at, options, output_prefix)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    (batch_id, tenant, now, json.dumps(batch_options or {}), batch_prefix),
                )
            for index, spec in enumerate(jobs):
                ids.append(_insert_job(cur, spec, tenant, batch_id, index, now))
        added = [self.get(job_id) for job_id in ids]
        batch = self.get_batch(batch_id) if batch_id else None
        return batch, [job for job in added if job is not None]

    # --- reading -------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        found = self._rows("SELECT * FROM jobs WHERE id = %s", (job_id,))
        return found[0] if found else None

    def get_by_key(self, idempotency_key: str, tenant: str = DEFAULT_TENANT) -> Job | None:
        found = self._rows(
            "SELECT * FROM jobs WHERE tenant = %s AND idempotency_key = %s", (tenant, idempotency_key)
        )
        return found[0] if found else None

    def list_jobs(self, limit: int, offset: int, tenant: str | None = None) -> list[Job]:
        where, params = _tenant_filter(tenant)
        return self._rows(
            f"SELECT * FROM jobs{where} ORDER BY created_at DESC, seq DESC LIMIT %s OFFSET %s",
            (*params, limit, offset),
        )

    def count_jobs(self, tenant: str | None = None) -> int:
        where, params = _tenant_filter(tenant)
        return self._count(f"SELECT COUNT(*) AS n FROM jobs{where}", params)

    def count_queued(self, tenant: str | None = None) -> int:
        with self._tx() as cur:
            return _queued(cur, tenant)

    def count_by_status(self) -> dict[str, int]:
        with self._tx() as cur:
            rows = cur.execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
        return {row["status"]: int(row["n"]) for row in rows}

    def get_batch(self, batch_id: str) -> Batch | None:
        with self._tx() as cur:
            row = cur.execute("SELECT * FROM batches WHERE id = %s", (batch_id,)).fetchone()
            if row is None:
                return None
            items = cur.execute(
                "SELECT * FROM jobs WHERE batch_id = %s ORDER BY item_index", (batch_id,)
            ).fetchall()
        return Batch(
            id=row["id"],
            created_at=row["created_at"],
            options=json.loads(row["options"]),
            output_prefix=row["output_prefix"],
            items=tuple(job_from_row(item) for item in items),
            tenant=row["tenant"],
        )

    def finished_before(self, cutoff: float) -> list[Job]:
        return self._rows(
            f"SELECT * FROM jobs WHERE status IN ({TERMINAL_SQL}) AND finished_at < %s", (cutoff,)
        )

    def references(self, *, active_only: bool) -> set[str]:
        where = " WHERE status IN ('queued', 'running')" if active_only else ""
        with self._tx() as cur:
            rows = cur.execute("SELECT audio, video FROM jobs" + where).fetchall()
        return {ref for row in rows for ref in (row["audio"], row["video"])}

    def all_job_ids(self, tenant: str | None = None) -> set[str]:
        where, params = _tenant_filter(tenant)
        with self._tx() as cur:
            rows = cur.execute(f"SELECT id FROM jobs{where}", params).fetchall()
        return {row["id"] for row in rows}

    def tombstone(self, item_id: str) -> Tombstone | None:
        row = self._one("SELECT * FROM tombstones WHERE id = %s", (item_id,))
        if row is None:
            return None
        return Tombstone(row["id"], row["kind"], row["tenant"], row["expired_at"])

    # --- running -------------------------------------------------------------------------------
    def claim(self) -> Claim | None:
        """Lease the next queued job, fairly between tenants; None when none is free."""
        token = uuid.uuid4().hex
        with self._tx() as cur:
            row = cur.execute(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, run_token = %s,"
                f" instance_id = %s, lease_until = {_NOW} + %s,"
                " started_at = %s, finished_at = NULL, progress = 0, stage = 'starting', error = NULL"
                " WHERE id = (" + _NEXT_FAIR_SQL + ") AND status = 'queued' RETURNING *",
                (token, self.instance_id, self.lease_s, time.time()),
            ).fetchone()
        return Claim(job_from_row(row), token) if row is not None else None

    def report_progress(self, job_id: str, token: str, progress: float, stage: str) -> RunState:
        """Record progress and renew the lease, while the run is still this worker's."""
        return self._renew(job_id, token, "progress = %s, stage = %s,", (progress, stage))

    def heartbeat(self, job_id: str, token: str) -> RunState:
        """Renew the lease while a long stage runs without progress to report."""
        return self._renew(job_id, token, "", ())

    def _renew(self, job_id: str, token: str, sets: str, params: Sequence[Any]) -> RunState:
        row = self._one(
            f"UPDATE jobs SET {sets} lease_until = {_NOW} + %s"
            " WHERE id = %s AND run_token = %s AND status = 'running' RETURNING cancel_requested",
            (*params, self.lease_s, job_id, token),
        )
        if row is None:
            return RunState.GONE
        return RunState.CANCEL if row["cancel_requested"] else RunState.ACTIVE

    def finish(self, job_id: str, token: str, outcome: Outcome) -> bool:
        """Record the end of a run; False when the run was no longer this worker's."""
        row = self._one(
            "UPDATE jobs SET status = %s, error = %s, engine = COALESCE(%s, engine),"
            " frames_without_face = %s, frames = %s, run_seconds = %s,"
            " output_path = %s, output_url = %s, presigned_url = %s,"
            " finished_at = %s, progress = CASE WHEN %s THEN 1.0 ELSE progress END,"
            " stage = CASE WHEN %s THEN 'done' ELSE stage END, run_token = NULL, lease_until = NULL"
            " WHERE id = %s AND run_token = %s AND status = 'running' RETURNING id",
            finish_values(outcome, job_id, token),
        )
        return row is not None

    def release(self, job_id: str, token: str, *, count_attempt: bool) -> bool:
        """Put a running job back in the queue at its old place (drain); cancel it if asked to."""
        row = self._one(
            "UPDATE jobs SET run_token = NULL, instance_id = NULL, lease_until = NULL,"
            " progress = 0, started_at = NULL, attempts = attempts - %s,"
            " status = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'queued' END,"
            " stage = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'queued' END,"
            " error = CASE WHEN cancel_requested = 1 THEN 'cancelled by request' ELSE NULL END,"
            " finished_at = CASE WHEN cancel_requested = 1 THEN %s ELSE NULL END"
            " WHERE id = %s AND run_token = %s AND status = 'running' RETURNING id",
            (0 if count_attempt else 1, time.time(), job_id, token),
        )
        return row is not None

    def cancel(self, job_id: str) -> Job | None:
        """Queued -> cancelled now; running -> cancel requested; finished jobs are left alone."""
        with self._tx() as cur:
            cur.execute(
                "UPDATE jobs SET status = 'cancelled', error = 'cancelled by request',"
                " finished_at = %s, stage = 'cancelled' WHERE id = %s AND status = 'queued'",
                (time.time(), job_id),
            )
            cur.execute(
                "UPDATE jobs SET cancel_requested = 1 WHERE id = %s AND status = 'running'", (job_id,)
            )
        return self.get(job_id)

    def recover(self, max_attempts: int) -> tuple[list[Job], list[Job]]:
        """At start-up: take back the runs whose lease expired and this instance's own earlier
        claims (a restart under the same instance_id); other instances' runs are left alone."""
        return self._take_back(max_attempts, f"({_EXPIRED} OR instance_id = %s)", (self.instance_id,))

    def requeue_expired(self, max_attempts: int) -> tuple[list[Job], list[Job]]:
        """Runs whose lease expired (a killed process, a lost node, a scale-in) go back to the
        queue, their attempt counted; once out of attempts they fail."""
        return self._take_back(max_attempts, _EXPIRED, ())

    def _take_back(self, max_attempts: int, which: str, params: Sequence[Any]) -> tuple[list[Job], list[Job]]:
        now = time.time()
        taken = f"status = 'running' AND {which}"
        cleared = "run_token = NULL, instance_id = NULL, lease_until = NULL"
        with self._tx() as cur:
            # A cancel asked for before the run was lost still counts.
            cur.execute(
                f"UPDATE jobs SET status = 'cancelled', {cleared}, finished_at = %s,"
                f" stage = 'cancelled', error = 'cancelled by request'"
                f" WHERE {taken} AND cancel_requested = 1",
                (now, *params),
            )
            failed = cur.execute(
                f"UPDATE jobs SET status = 'failed', {cleared}, finished_at = %s,"
                " error = 'interrupted ' || attempts || ' times (its instance stopped or lost its"
                f" lease); giving up' WHERE {taken} AND attempts >= %s RETURNING *",
                (now, *params, max_attempts),
            ).fetchall()
            requeued = cur.execute(
                f"UPDATE jobs SET status = 'queued', {cleared}, progress = 0, stage = 'queued',"
                f" started_at = NULL WHERE {taken} RETURNING *",
                params,
            ).fetchall()
        return [job_from_row(row) for row in requeued], [job_from_row(row) for row in failed]

    # --- batches -------------------------------------------------------------------------------
    def retry(self, batch_id: str, *, queue_limit: int, tenant_limit: int | None = None) -> list[Job]:
        """Queue a batch's failed and cancelled items again (fresh attempts), all-or-nothing,
        within the queue bound and the batch's tenant's bound."""
        with self._tx() as cur:
            _admit(cur)
            rows = cur.execute(
                f"SELECT id, tenant FROM jobs WHERE batch_id = %s AND status IN ({RETRYABLE_SQL})"
                " ORDER BY item_index",
                (batch_id,),
            ).fetchall()
            if not rows:
                return []
            ids = [row["id"] for row in rows]
            _check_bounds(cur, len(ids), queue_limit, rows[0]["tenant"], tenant_limit)
            updated = cur.execute(
                "UPDATE jobs SET status = 'queued', error = NULL, progress = 0, stage = 'queued',"
                " attempts = 0, cancel_requested = 0, started_at = NULL, finished_at = NULL,"
                " output_path = NULL, output_url = NULL, presigned_url = NULL, engine = NULL,"
                " frames_without_face = NULL, frames = NULL, run_seconds = NULL,"
                " queued_at = %s WHERE id = ANY(%s) RETURNING *",
                (time.time(), ids),
            ).fetchall()
        by_id = {row["id"]: job_from_row(row) for row in updated}
        return [by_id[job_id] for job_id in ids if job_id in by_id]

    # --- deleting ------------------------------------------------------------------------------
    def delete(self, job_ids: Sequence[str]) -> list[Job]:
        """Delete the given rows unless running; return what was deleted."""
        return self._delete(job_ids, expired_at=None)

    def expire(self, job_ids: Sequence[str], expired_at: float) -> list[Job]:
        """Retention: delete the given rows unless running, leaving a tombstone for each."""
        return self._delete(job_ids, expired_at=expired_at)

    def _delete(self, job_ids: Sequence[str], *, expired_at: float | None) -> list[Job]:
        if not job_ids:
            return []
        with self._tx() as cur:
            rows = cur.execute(
                "DELETE FROM jobs WHERE id = ANY(%s) AND status != 'running' RETURNING *",
                (list(job_ids),),
            ).fetchall()
            if expired_at is not None:
                for row in rows:
                    _bury(cur, row["id"], TOMBSTONE_JOB, row["tenant"], expired_at)
        by_id = {row["id"]: job_from_row(row) for row in rows}
        return [by_id[job_id] for job_id in dict.fromkeys(job_ids) if job_id in by_id]

    def delete_empty_batches(self, expired_at: float | None = None) -> list[str]:
        """Delete batches without items; with expired_at (retention), leave tombstones."""
        with self._tx() as cur:
            rows = cur.execute(
                "DELETE FROM batches WHERE NOT EXISTS"
                " (SELECT 1 FROM jobs WHERE jobs.batch_id = batches.id) RETURNING id, tenant"
            ).fetchall()
            if expired_at is not None:
                for row in rows:
                    _bury(cur, row["id"], TOMBSTONE_BATCH, row["tenant"], expired_at)
        return [row["id"] for row in rows]

    def prune_tombstones(self, before: float) -> int:
        with self._tx() as cur:
            return cur.execute("DELETE FROM tombstones WHERE expired_at < %s", (before,)).rowcount

    # --- avatars -------------------------------------------------------------------------------
    def add_avatar(self, avatar: Avatar) -> None:
        with self._tx() as cur:
            cur.execute(avatar_insert_sql("%s"), avatar_values(avatar))

    def get_avatar(self, avatar_id: str) -> Avatar | None:
        row = self._one("SELECT * FROM avatars WHERE id = %s", (avatar_id,))
        return avatar_from_row(row) if row is not None else None

    def list_avatars(self, tenant: str | None = None) -> list[Avatar]:
        where, params = _tenant_filter(tenant)
        with self._tx() as cur:
            rows = cur.execute(
                f"SELECT * FROM avatars{where} ORDER BY created_at DESC, seq DESC", params
            ).fetchall()
        return [avatar_from_row(row) for row in rows]

    def count_avatars(self, tenant: str | None = None) -> int:
        where, params = _tenant_filter(tenant)
        return self._count(f"SELECT COUNT(*) AS n FROM avatars{where}", params)

    def update_avatar(self, avatar_id: str, **changes: Any) -> Avatar | None:
        unknown = sorted(set(changes) - set(AVATAR_UPDATES))
        if unknown:
            raise ValueError(f"avatar fields that cannot change: {', '.join(unknown)}")
        if not changes:
            return self.get_avatar(avatar_id)
        # Column names come from AVATAR_UPDATES only (checked above), never from the caller.
        columns = ", ".join(f"{name} = %s" for name in changes)
        values = [AVATAR_UPDATES[name](value) for name, value in changes.items()]
        row = self._one(f"UPDATE avatars SET {columns} WHERE id = %s RETURNING *", (*values, avatar_id))
        return avatar_from_row(row) if row is not None else None

    def delete_avatar(self, avatar_id: str) -> Avatar | None:
        row = self._one("DELETE FROM avatars WHERE id = %s RETURNING *", (avatar_id,))
        return avatar_from_row(row) if row is not None else None

    def avatar_track_keys(self) -> set[str]:
        with self._tx() as cur:
            rows = cur.execute("SELECT track_key FROM avatars WHERE track_key IS NOT NULL").fetchall()
        return {row["track_key"] for row in rows}

    # --- the fleet -----------------------------------------------------------------------------
    def oldest_queued_at(self) -> float | None:
        row = self._one("SELECT MIN(queued_at) AS oldest FROM jobs WHERE status = 'queued'")
        return float(row["oldest"]) if row is not None and row["oldest"] is not None else None

    def record_instance(self, instance: Instance) -> None:
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO instances (id, device, jobs, workers, started_at, heartbeat_at)"
                f" VALUES (%s, %s, %s, %s, %s, {_NOW}) ON CONFLICT (id) DO UPDATE SET"
                " device = EXCLUDED.device, jobs = EXCLUDED.jobs, workers = EXCLUDED.workers,"
                " heartbeat_at = EXCLUDED.heartbeat_at",
                (instance.id, instance.device, json.dumps(list(instance.jobs)), instance.workers,
                 instance.started_at),
            )  # fmt: skip

    def list_instances(self) -> list[Instance]:
        with self._tx() as cur:
            rows = cur.execute("SELECT * FROM instances ORDER BY heartbeat_at DESC, id").fetchall()
        return [
            Instance(
                id=row["id"],
                device=row["device"],
                jobs=tuple(json.loads(row["jobs"])),
                workers=int(row["workers"]),
                started_at=float(row["started_at"]),
                heartbeat_at=float(row["heartbeat_at"]),
            )
            for row in rows
        ]

    def forget_instances(self, *, instance_id: str | None = None, silent_for_s: float | None = None) -> int:
        with self._tx() as cur:
            return cur.execute(
                f"DELETE FROM instances WHERE id = %s OR heartbeat_at < {_NOW} - %s",
                (instance_id, silent_for_s if silent_for_s is not None else float("inf")),
            ).rowcount

    @contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """A session advisory lock on one pooled connection for the block: instances that try
        while it is held get False at once instead of waiting."""
        if self._pool is None:
            raise HeygemError("the job store is not open")
        key = NAMED_LOCK_BASE + zlib.crc32(name.encode())
        with self._pool.connection() as conn:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            conn.commit()
            got = bool(row and row[0])
            try:
                yield got
            finally:
                if got:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
                    conn.commit()


def _admit(cur: Cursor) -> None:
    """Serialise admissions (bounds, idempotency keys) across instances until the commit."""
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (ADMISSION_LOCK,))


def _insert_job(cur: Cursor, spec: NewJob, tenant: str, batch_id: str | None, index: int, now: float) -> str:
    job_id = uuid.uuid4().hex
    cur.execute(job_insert_sql("%s"), new_job_values(job_id, spec, tenant, batch_id, index, now))
    return job_id


def _check_bounds(cur: Cursor, needed: int, queue_limit: int, tenant: str, tenant_limit: int | None) -> None:
    check_room(_queued(cur), needed, queue_limit)
    if tenant_limit is not None:
        check_tenant_room(_queued(cur, tenant), needed, tenant, tenant_limit)


def _queued(cur: Cursor, tenant: str | None = None) -> int:
    where, params = _tenant_filter(tenant, " AND")
    row = cur.execute(f"SELECT COUNT(*) AS n FROM jobs WHERE status = 'queued'{where}", params).fetchone()
    return int(row["n"]) if row is not None else 0


def _tenant_filter(tenant: str | None, prefix: str = " WHERE") -> tuple[str, tuple[str, ...]]:
    if tenant is None:
        return "", ()
    return f"{prefix} tenant = %s", (tenant,)


def _bury(cur: Cursor, item_id: str, kind: str, tenant: str, when: float) -> None:
    cur.execute(
        "INSERT INTO tombstones (id, kind, tenant, expired_at) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (id) DO UPDATE SET kind = EXCLUDED.kind, tenant = EXCLUDED.tenant,"
        " expired_at = EXCLUDED.expired_at",
        (item_id, kind, tenant, when),
    )


def _passwords(url: str) -> set[str]:
    """The URL's password as written and decoded (an error may quote either), if it has one."""
    try:
        password = urllib.parse.urlsplit(url).password
    except ValueError:
        password = None
    if not password:
        return set()
    return {password, urllib.parse.unquote(password)}
