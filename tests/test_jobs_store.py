"""SQLiteJobStore on its own: schema, migrations, concurrency on one file. The behaviour every store
shares (claims, run tokens, cancel, recovery, retry, queue bounds) is in test_jobs_store_contract.py."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from heygem.errors import HeygemError
from heygem.jobs import store as store_module
from heygem.jobs.records import JobStatus, NewJob, Outcome
from heygem.jobs.store import SCHEMA_VERSION, SQLiteJobStore


@pytest.fixture
def store(tmp_path):
    job_store = SQLiteJobStore(tmp_path / "jobs.db")
    job_store.open()
    yield job_store
    job_store.close()


def add(store, count=1, **fields):
    _, jobs = store.add([NewJob("a.wav", "v.mp4", **fields)] * count, queue_limit=1000)
    return jobs


def test_fresh_database_is_wal_and_versioned(store, tmp_path):
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_reopening_keeps_jobs(store, tmp_path):
    (job,) = add(store)
    store.close()
    again = SQLiteJobStore(tmp_path / "jobs.db")
    again.open()
    assert again.get(job.id).status == JobStatus.QUEUED
    again.close()


def test_database_from_a_newer_version_is_refused(tmp_path):
    with sqlite3.connect(tmp_path / "new.db") as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(HeygemError, match="newer heygem"):
        SQLiteJobStore(tmp_path / "new.db").open()


def test_claims_are_atomic_across_threads(store):
    ids = {job.id for job in add(store, 30)}
    claimed: list[str] = []
    lock = threading.Lock()

    def drain_queue():
        while (claim := store.claim()) is not None:
            with lock:
                claimed.append(claim.job.id)

    threads = [threading.Thread(target=drain_queue) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(ids)  # every job once, none twice
    assert store.count_queued() == 0


def test_cancel_leaves_finished_jobs_alone(store):
    (job,) = add(store)
    claim = store.claim()
    store.finish(job.id, claim.token, Outcome(JobStatus.SUCCEEDED))
    assert store.cancel(job.id).status == JobStatus.SUCCEEDED
    assert store.cancel("missing") is None


def test_idempotency_key_is_unique_and_returns_the_first_job(store):
    (first,) = add(store, idempotency_key="k1")
    (again,) = add(store, idempotency_key="k1")
    assert again.id == first.id and store.count_jobs() == 1


def test_recover_requeues_running_jobs_and_fails_exhausted_ones(store):
    fresh, tired = add(store, 2)
    store.claim()
    claim = store.claim()
    for _ in range(2):  # start `tired` twice more: three starts, none finished
        store.release(tired.id, claim.token, count_attempt=True)
        claim = store.claim()
    assert (claim.job.id, claim.job.attempts) == (tired.id, 3)
    requeued, failed = store.recover(max_attempts=3)
    assert [job.id for job in requeued] == [fresh.id] and requeued[0].attempts == 1
    assert [job.id for job in failed] == [tired.id]
    assert failed[0].error == "interrupted 3 times (the service restarted while it ran); giving up"


def test_a_run_records_its_frames_and_engine_seconds_until_retried(store):
    batch, (job,) = store.add([NewJob("a", "v")], queue_limit=10, as_batch=True)
    claim = store.claim()
    assert store.finish(
        job.id, claim.token, Outcome(JobStatus.FAILED, error="upload failed", frames=120, run_seconds=4.5)
    )
    done = store.get(job.id)
    assert (done.frames, done.run_seconds) == (120, 4.5)
    assert done.to_dict()["frames"] == 120 and done.to_dict()["run_seconds"] == 4.5
    (retried,) = store.retry(batch.id, queue_limit=10)
    assert (retried.frames, retried.run_seconds) == (None, None)


def _columns(path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}


def test_a_version_1_database_is_migrated_and_keeps_its_jobs(tmp_path):
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as conn:  # as the first release left it
        conn.executescript(store_module._MIGRATIONS[1])
        conn.execute("PRAGMA user_version = 1")
        conn.execute(
            "INSERT INTO jobs (id, kind, audio, video, status, created_at, queued_at, started_at,"
            " finished_at, engine, output_path) VALUES ('old', 'single', 'a.wav', 'v.mp4',"
            " 'succeeded', 1.0, 1.0, 2.0, 5.0, 'wav2lip', '/data/outputs/old/result.mp4')"
        )
    assert not {"frames", "run_seconds"} & _columns(path)
    migrated = SQLiteJobStore(path)
    migrated.open()
    try:
        old = migrated.get("old")
        assert (old.status, old.engine, old.seconds) == (JobStatus.SUCCEEDED, "wav2lip", 3.0)
        assert (old.frames, old.run_seconds) == (None, None)
        (job,) = add(migrated)
        claim = migrated.claim()
        migrated.finish(job.id, claim.token, Outcome(JobStatus.SUCCEEDED, frames=50, run_seconds=2.0))
        assert (migrated.get(job.id).frames, migrated.get(job.id).run_seconds) == (50, 2.0)
    finally:
        migrated.close()
    assert {"frames", "run_seconds"} <= _columns(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    again = SQLiteJobStore(path)  # opening a migrated database changes nothing
    again.open()
    assert again.count_jobs() == 2
    again.close()


def test_a_version_2_database_gets_tenants_and_per_tenant_keys(tmp_path):
    path = tmp_path / "v2.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(store_module._MIGRATIONS[1] + store_module._MIGRATIONS[2])
        conn.execute("PRAGMA user_version = 2")
        for number, key in enumerate(("shared", None)):
            conn.execute(
                "INSERT INTO jobs (id, kind, audio, video, status, created_at, queued_at,"
                " idempotency_key) VALUES (?, 'single', 'a.wav', 'v.mp4', 'queued', ?, ?, ?)",
                (f"old{number}", float(number), float(number), key),
            )
    migrated = SQLiteJobStore(path)
    migrated.open()
    try:
        assert [job.id for job in migrated.list_jobs(10, 0)] == ["old1", "old0"]  # order kept
        assert migrated.get_by_key("shared").id == "old0"  # the default tenant's key
        assert migrated.get("old0").tenant == "default"
        _, (theirs,) = migrated.add(
            [NewJob("b.wav", "w.mp4", idempotency_key="shared")],
            queue_limit=10,
            tenant="team-b",
        )
        assert theirs.id != "old0" and theirs.tenant == "team-b"
        assert migrated.claim().job.id == "old0"  # the queue order survived the rebuild
    finally:
        migrated.close()
