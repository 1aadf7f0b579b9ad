"""The JobStore contract, run against every store implementation: SQLite and PostgreSQL.

Each test runs once per store (a real SQLite file, a real PostgreSQL server from tests/pg.py), so
the two can never drift apart. What only one store has (SQLite's file format, PostgreSQL's leases)
is tested in that store's own module.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from heygem.errors import QueueFullError
from heygem.jobs.avatars import Avatar
from heygem.jobs.records import Instance, JobStatus, NewJob, Outcome
from heygem.jobs.store import TOMBSTONE_BATCH, TOMBSTONE_JOB, JobStore, RunState, SQLiteJobStore
from heygem.jobs.store_pg import PostgresJobStore

STORES = ("sqlite", "postgres")
LIMIT = 10_000
INSTANCE = "contract-1"
LEASE_S = 60.0


@pytest.fixture(params=STORES)
def make_store(request, tmp_path):
    """A factory of stores on one database: each call is another process opening it."""
    opened: list[JobStore] = []
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None

    def make() -> JobStore:
        if url is None:
            job_store: JobStore = SQLiteJobStore(tmp_path / "jobs.db")
        else:
            job_store = PostgresJobStore(url, instance_id=INSTANCE, lease_s=LEASE_S)
        job_store.open()
        opened.append(job_store)
        return job_store

    yield make
    for job_store in opened:
        job_store.close()


@pytest.fixture
def store(make_store):
    return make_store()


def add(store, tenant, count=1, *, key=None, limit=LIMIT, tenant_limit=None, batch=False):
    specs = [NewJob(f"{tenant}.wav", f"{tenant}.mp4", idempotency_key=key)] * count
    made_batch, jobs = store.add(
        specs,
        queue_limit=limit,
        tenant=tenant,
        tenant_limit=tenant_limit,
        as_batch=batch,
    )
    return made_batch if batch else jobs


def finish(store, claim):
    assert store.finish(claim.job.id, claim.token, Outcome(JobStatus.SUCCEEDED))


def test_jobs_and_batches_carry_their_tenant(store):
    (job,) = add(store, "alpha")
    batch = add(store, "beta", 2, batch=True)
    assert store.get(job.id).tenant == "alpha"
    assert batch.tenant == "beta" and {item.tenant for item in batch.items} == {"beta"}
    assert store.get_batch(batch.id).tenant == "beta"


def test_lists_and_counts_are_filtered_by_tenant(store):
    add(store, "alpha", 3)
    add(store, "beta", 2)
    assert {job.tenant for job in store.list_jobs(50, 0, "alpha")} == {"alpha"}
    assert len(store.list_jobs(50, 0, "beta")) == 2
    assert len(store.list_jobs(50, 0, None)) == 5  # None: every tenant (an admin's view)
    assert (store.count_jobs("alpha"), store.count_jobs("beta"), store.count_jobs()) == (3, 2, 5)
    assert (store.count_queued("alpha"), store.count_queued()) == (3, 5)
    assert len(store.all_job_ids("beta")) == 2 and len(store.all_job_ids()) == 5
    assert store.list_jobs(50, 0, "nobody") == []


def test_idempotency_keys_are_per_tenant(store):
    (first,) = add(store, "alpha", key="k-1")
    (again,) = add(store, "alpha", key="k-1")
    (other,) = add(store, "beta", key="k-1")
    assert again.id == first.id
    assert other.id != first.id and other.tenant == "beta" and other.audio == "beta.wav"
    assert store.get_by_key("k-1", "alpha").id == first.id
    assert store.get_by_key("k-1", "beta").id == other.id
    assert store.get_by_key("k-1", "gamma") is None


def test_the_tenant_bound_refuses_only_that_tenant(store):
    add(store, "alpha", 3, tenant_limit=3)
    with pytest.raises(QueueFullError, match="tenant alpha has 3 jobs waiting"):
        add(store, "alpha", tenant_limit=3)
    with pytest.raises(QueueFullError, match="tenant alpha"):
        add(store, "alpha", 2, tenant_limit=4, batch=True)  # all or nothing
    add(store, "beta", 3, tenant_limit=3)
    assert store.count_queued("alpha") == 3 and store.count_queued("beta") == 3
    with pytest.raises(QueueFullError, match="queue is full"):  # the global bound still holds
        add(store, "gamma", limit=6)


def test_retry_respects_the_tenant_bound(store):
    batch = add(store, "alpha", 2, batch=True)
    for item in batch.items:
        store.cancel(item.id)
    add(store, "alpha", 1)
    with pytest.raises(QueueFullError, match="tenant alpha"):
        store.retry(batch.id, queue_limit=LIMIT, tenant_limit=2)
    assert len(store.retry(batch.id, queue_limit=LIMIT, tenant_limit=3)) == 2


def test_a_big_batch_does_not_starve_another_tenants_single_job(store):
    batch = add(store, "alpha", 500, batch=True)
    (single,) = add(store, "beta")
    first = store.claim()
    assert first.job.id == batch.items[0].id  # nobody runs: the oldest job
    second = store.claim()  # alpha has one running, beta none
    assert second.job.id == single.id


def test_one_worker_alternates_between_tenants(store):
    batch = add(store, "alpha", 500, batch=True)
    add(store, "beta", 2)
    order = []
    for _ in range(5):
        claim = store.claim()
        order.append(claim.job.tenant)
        finish(store, claim)
    # beta's first job runs right after alpha's first one, not after 500 of them.
    assert order == ["alpha", "beta", "alpha", "beta", "alpha"]
    assert store.count_queued("alpha") == len(batch.items) - 3


def test_within_a_tenant_the_oldest_job_goes_first(store):
    jobs = add(store, "alpha", 3)
    claimed = []
    for _ in jobs:
        claim = store.claim()
        claimed.append(claim.job.id)
        finish(store, claim)
    assert claimed == [job.id for job in jobs]
    assert store.claim() is None


def test_uploads_are_stored_with_the_job(store):
    _, (job,) = store.add(
        [NewJob("/in/u1/a.wav", "/in/u1/v.mp4", uploads=("/in/u1",))],
        queue_limit=LIMIT,
        tenant="alpha",
    )
    assert store.get(job.id).uploads == ("/in/u1",)


def test_expiry_leaves_tombstones_and_plain_deletes_do_not(store):
    expired, deleted = add(store, "alpha", 2)
    batch = add(store, "beta", 1, batch=True)
    for job in (expired, deleted, *batch.items):
        store.cancel(job.id)
    assert [job.id for job in store.expire([expired.id, batch.items[0].id], 1000.0)] == [
        expired.id,
        batch.items[0].id,
    ]
    store.delete([deleted.id])
    assert store.delete_empty_batches(expired_at=1000.0) == [batch.id]
    tomb = store.tombstone(expired.id)
    assert (tomb.kind, tomb.tenant, tomb.expired_at) == (TOMBSTONE_JOB, "alpha", 1000.0)
    assert store.tombstone(batch.id).kind == TOMBSTONE_BATCH
    assert store.tombstone(batch.id).tenant == "beta"
    assert store.tombstone(deleted.id) is None  # deleted on request: simply gone
    assert store.prune_tombstones(before=1000.5) == 3
    assert store.tombstone(expired.id) is None


def test_expire_skips_running_jobs(store):
    (job,) = add(store, "alpha")
    store.claim()
    assert store.expire([job.id], 5.0) == []
    assert store.get(job.id).status == JobStatus.RUNNING
    assert store.tombstone(job.id) is None


# --- claims, run tokens, progress ------------------------------------------------------------


def test_claim_takes_the_oldest_first_and_counts_the_attempt(store):
    first, _second = add(store, "alpha", 2)
    claim = store.claim()
    assert claim.job.id == first.id
    assert (claim.job.status, claim.job.attempts, claim.job.stage) == (JobStatus.RUNNING, 1, "starting")
    assert store.get(first.id).started_at is not None


def test_a_run_handed_back_cannot_write_any_more(store):
    (job,) = add(store, "alpha")
    old = store.claim()
    assert store.release(job.id, old.token, count_attempt=False)
    assert store.get(job.id).attempts == 0 and store.get(job.id).status == JobStatus.QUEUED
    new = store.claim()
    assert store.report_progress(job.id, old.token, 0.5, "detect") == RunState.GONE
    assert store.heartbeat(job.id, old.token) == RunState.GONE
    assert not store.finish(job.id, old.token, Outcome(JobStatus.FAILED, error="stale"))
    assert store.report_progress(job.id, new.token, 0.5, "detect") == RunState.ACTIVE
    assert store.heartbeat(job.id, new.token) == RunState.ACTIVE
    assert (store.get(job.id).progress, store.get(job.id).stage) == (0.5, "detect")
    assert store.finish(job.id, new.token, Outcome(JobStatus.SUCCEEDED, engine="fake", frames=7))
    done = store.get(job.id)
    assert (done.status, done.error, done.progress, done.stage) == (JobStatus.SUCCEEDED, None, 1.0, "done")
    assert (done.engine, done.frames) == ("fake", 7)
    assert not store.finish(job.id, new.token, Outcome(JobStatus.FAILED, error="twice"))


def test_a_failed_run_keeps_its_progress_and_records_the_outcome(store):
    (job,) = add(store, "alpha")
    claim = store.claim()
    store.report_progress(job.id, claim.token, 0.25, "detect")
    outcome = Outcome(
        JobStatus.FAILED,
        error="upload failed",
        output_path=Path("/data/outputs/x/result.mp4"),
        output_url="s3://b/x.mp4",
        run_seconds=1.5,
        frames_without_face=3,
    )
    assert store.finish(job.id, claim.token, outcome)
    done = store.get(job.id)
    assert (done.status, done.progress, done.stage, done.error) == (
        JobStatus.FAILED,
        0.25,
        "detect",
        "upload failed",
    )
    assert (done.output_path, done.output_url, done.run_seconds) == (outcome.output_path, "s3://b/x.mp4", 1.5)
    assert done.frames_without_face == 3 and done.has_result and done.finished_at is not None


def test_release_counting_the_attempt_keeps_it(store):
    (job,) = add(store, "alpha")
    claim = store.claim()
    assert store.release(job.id, claim.token, count_attempt=True)
    assert store.get(job.id).attempts == 1
    assert not store.release(job.id, claim.token, count_attempt=True)  # the token is spent


def test_cancel_of_running_job_reaches_the_worker(store):
    (job,) = add(store, "alpha")
    claim = store.claim()
    assert store.cancel(job.id).cancel_requested
    assert store.report_progress(job.id, claim.token, 0.1, "detect") == RunState.CANCEL
    assert store.heartbeat(job.id, claim.token) == RunState.CANCEL
    assert store.release(job.id, claim.token, count_attempt=False)  # handed back: cancelled now
    assert store.get(job.id).status == JobStatus.CANCELLED


def test_cancel_of_queued_and_finished_jobs(store):
    done, queued = add(store, "alpha", 2)
    claim = store.claim()
    assert claim.job.id == done.id
    store.finish(done.id, claim.token, Outcome(JobStatus.SUCCEEDED))
    cancelled = store.cancel(queued.id)
    assert (cancelled.status, cancelled.error, cancelled.stage) == (
        JobStatus.CANCELLED,
        "cancelled by request",
        "cancelled",
    )
    assert store.cancel(done.id).status == JobStatus.SUCCEEDED
    assert store.cancel("missing") is None
    assert store.claim() is None


def test_queue_bound_counts_only_waiting_jobs(store):
    add(store, "alpha", 2, limit=2)
    store.claim()
    add(store, "alpha", limit=2)  # the running one frees a place
    with pytest.raises(QueueFullError, match=r"queue is full \(2 jobs waiting\)"):
        add(store, "alpha", limit=2)
    with pytest.raises(QueueFullError, match="2 jobs need room and 0 places are free"):
        add(store, "alpha", 2, limit=2, batch=True)


def test_jobs_keep_every_submitted_field(store):
    spec = NewJob(
        "",
        "avatar:abc",
        options={"pads": [0, 10, 0, 0], "fps": 25},
        output_name="clip.mp4",
        output_prefix="s3://bucket/out/",
        idempotency_key="k-9",
        uploads=("/in/u1", "/in/u2"),
        text="Hello there.",
        voice="en-us",
    )
    _, (job,) = store.add([spec], queue_limit=LIMIT, tenant="alpha")
    got = store.get(job.id)
    assert (got.audio, got.video, got.text, got.voice) == ("", "avatar:abc", "Hello there.", "en-us")
    assert got.options == {"pads": [0, 10, 0, 0], "fps": 25} and got.uploads == ("/in/u1", "/in/u2")
    assert (got.output_name, got.output_prefix, got.idempotency_key) == (
        "clip.mp4",
        "s3://bucket/out/",
        "k-9",
    )
    assert got.is_text and not got.cancel_requested and got.queued_at == got.created_at
    assert store.get("missing") is None


def test_lists_are_newest_first_and_paged(store):
    jobs = add(store, "alpha", 5)
    listed = store.list_jobs(2, 1, "alpha")
    assert [job.id for job in listed] == [jobs[3].id, jobs[2].id]  # same second: last inserted first
    assert [job.id for job in store.list_jobs(10, 0)] == [job.id for job in reversed(jobs)]


# --- recovery ----------------------------------------------------------------------------------


def test_a_restart_takes_back_its_interrupted_runs(make_store):
    store = make_store()
    fresh, tired = add(store, "alpha", 2)
    store.claim()
    claim = store.claim()
    for _ in range(2):  # start `tired` twice more: three starts, none finished
        store.release(tired.id, claim.token, count_attempt=True)
        claim = store.claim()
    assert (claim.job.id, claim.job.attempts) == (tired.id, 3)
    store.close()
    restarted = make_store()  # the same instance starting again
    requeued, failed = restarted.recover(max_attempts=3)
    assert [job.id for job in requeued] == [fresh.id] and requeued[0].attempts == 1
    assert requeued[0].status == JobStatus.QUEUED and requeued[0].progress == 0
    assert [job.id for job in failed] == [tired.id]
    assert failed[0].error.startswith("interrupted 3 times (") and failed[0].error.endswith("giving up")
    assert restarted.report_progress(fresh.id, "old-token", 0.5, "x") == RunState.GONE


def test_a_cancel_asked_before_a_crash_or_drain_still_counts(store):
    crashed, drained = add(store, "alpha", 2)
    store.claim()
    drained_claim = store.claim()
    store.cancel(crashed.id)
    store.cancel(drained.id)
    assert store.release(drained.id, drained_claim.token, count_attempt=False)
    requeued, failed = store.recover(max_attempts=3)
    assert requeued == [] and failed == []
    assert [store.get(j.id).status for j in (crashed, drained)] == [JobStatus.CANCELLED] * 2
    assert store.claim() is None


def test_nothing_is_taken_back_while_leases_hold(store):
    add(store, "alpha")
    claim = store.claim()
    assert store.requeue_expired(max_attempts=3) == ([], [])
    assert store.report_progress(claim.job.id, claim.token, 0.5, "x") == RunState.ACTIVE


# --- batches, retention queries ----------------------------------------------------------------


def test_retry_resets_only_failed_and_cancelled_items(store):
    batch, items = store.add(
        [NewJob("a", "v", output_name=f"{i}.mp4") for i in range(3)], queue_limit=10, as_batch=True
    )
    assert [item.item_index for item in items] == [0, 1, 2]
    for status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.SUCCEEDED):
        claim = store.claim()
        error = "bad" if status == JobStatus.FAILED else None
        store.finish(claim.job.id, claim.token, Outcome(status, error=error, frames=9, run_seconds=2.0))
    store.cancel(items[2].id)  # finished: stays succeeded
    retried = store.retry(batch.id, queue_limit=10)
    assert [job.id for job in retried] == [items[1].id]
    assert (retried[0].status, retried[0].attempts, retried[0].error) == (JobStatus.QUEUED, 0, None)
    assert (retried[0].frames, retried[0].run_seconds) == (None, None)
    assert [item.status for item in store.get_batch(batch.id).items] == [
        JobStatus.SUCCEEDED,
        JobStatus.QUEUED,
        JobStatus.SUCCEEDED,
    ]
    assert store.retry(batch.id, queue_limit=10) == [] and store.get_batch("missing") is None


def test_batches_keep_their_options_and_prefix(store):
    batch, _ = store.add(
        [NewJob("a", "v")] * 2,
        queue_limit=LIMIT,
        tenant="alpha",
        batch_options={"fps": 25},
        batch_prefix="s3://b/p/",
        as_batch=True,
    )
    got = store.get_batch(batch.id)
    assert (got.options, got.output_prefix, len(got.items)) == ({"fps": 25}, "s3://b/p/", 2)
    assert [item.batch_id for item in got.items] == [batch.id] * 2


def test_delete_skips_running_jobs_and_empty_batches_go(store):
    batch, (one, two) = store.add([NewJob("a", "v")] * 2, queue_limit=10, as_batch=True)
    claim = store.claim()
    assert [job.id for job in store.delete([one.id, two.id])] == [two.id]
    assert store.delete([]) == [] and store.expire([], 1.0) == []
    assert store.delete_empty_batches() == []
    store.finish(one.id, claim.token, Outcome(JobStatus.FAILED, error="x"))
    store.delete([one.id])
    assert store.delete_empty_batches() == [batch.id]
    assert store.tombstone(batch.id) is None


def test_retention_queries(store):
    _, (old, running, queued) = store.add(
        [NewJob("/in/a.wav", "/in/v.mp4"), NewJob("/in/b.wav", "/in/w.mp4"), NewJob("c.wav", "x.mp4")],
        queue_limit=LIMIT,
    )
    claim = store.claim()
    store.finish(claim.job.id, claim.token, Outcome(JobStatus.SUCCEEDED))
    store.claim()
    finished_at = store.get(old.id).finished_at
    assert [job.id for job in store.finished_before(finished_at + 1)] == [old.id]
    assert store.finished_before(finished_at) == []
    assert store.references(active_only=True) == {"/in/b.wav", "/in/w.mp4", "c.wav", "x.mp4"}
    assert store.references(active_only=False) >= {"/in/a.wav", "/in/v.mp4"}
    assert store.all_job_ids() == {old.id, running.id, queued.id}


def test_count_by_status_groups_every_row(store):
    assert store.count_by_status() == {}
    jobs = add(store, "alpha", 5)
    running = store.claim()
    failed = store.claim()
    store.finish(failed.job.id, failed.token, Outcome(JobStatus.FAILED, error="x"))
    store.cancel(jobs[4].id)
    assert store.count_by_status() == {"queued": 2, "running": 1, "failed": 1, "cancelled": 1}
    assert running.job.id == jobs[0].id


# --- avatars -----------------------------------------------------------------------------------


def avatar(avatar_id, tenant, created_at, **fields):
    values = {
        "name": avatar_id,
        "status": "ready",
        "error": None,
        "media": Path(f"/data/avatars/{avatar_id}/media.mp4"),
        "thumbnail": None,
        "voice_audio": None,
        "voice_text": None,
        "duration_s": None,
        "is_image": False,
    }
    values.update(fields)
    return Avatar(id=avatar_id, tenant=tenant, created_at=created_at, **values)


def test_avatars_are_tenant_owned_and_newest_first(store):
    store.add_avatar(avatar("a1", "alpha", 1.0, track_key="t1", thumbnail=Path("/d/a1.jpg")))
    store.add_avatar(avatar("a2", "alpha", 2.0, voice_audio=Path("/d/v.wav"), voice_text="hi"))
    store.add_avatar(avatar("b1", "beta", 1.5, is_image=True, duration_s=3.5))
    assert [a.id for a in store.list_avatars("alpha")] == ["a2", "a1"]
    assert [a.id for a in store.list_avatars()] == ["a2", "b1", "a1"]
    assert (store.count_avatars("alpha"), store.count_avatars()) == (2, 3)
    assert store.get_avatar("a1") == avatar("a1", "alpha", 1.0, track_key="t1", thumbnail=Path("/d/a1.jpg"))
    b1 = store.get_avatar("b1")
    assert (b1.is_image, b1.duration_s, b1.thumbnail) == (True, 3.5, None)
    assert store.get_avatar("a2").voice_audio == Path("/d/v.wav")
    assert store.avatar_track_keys() == {"t1"}


def test_avatar_updates_and_deletes(store):
    store.add_avatar(avatar("a1", "alpha", 1.0, status="preparing"))
    updated = store.update_avatar(
        "a1", status="ready", is_image=True, track_key="k", thumbnail=Path("/t.jpg")
    )
    assert (updated.status, updated.is_image, updated.track_key, updated.thumbnail) == (
        "ready",
        True,
        "k",
        Path("/t.jpg"),
    )
    assert store.update_avatar("a1") == updated
    with pytest.raises(ValueError, match="cannot change: tenant"):
        store.update_avatar("a1", tenant="beta")
    assert store.update_avatar("missing", name="x") is None
    assert store.delete_avatar("a1") == updated
    assert store.delete_avatar("a1") is None and store.get_avatar("a1") is None


# --- the fleet's signals -----------------------------------------------------------------------


def test_the_oldest_queued_job_is_the_one_waiting_longest(store):
    assert store.oldest_queued_at() is None
    first, second = add(store, "alpha", 2)
    assert store.oldest_queued_at() == pytest.approx(min(first.queued_at, second.queued_at))
    claim = store.claim()
    left = second if claim.job.id == first.id else first
    assert store.oldest_queued_at() == pytest.approx(left.queued_at)
    store.claim()
    assert store.oldest_queued_at() is None  # running jobs do not wait


def test_an_instance_heartbeat_row_is_written_updated_and_forgotten(store):
    before = time.time()
    store.record_instance(Instance("n1", "", (), 1, started_at=before, heartbeat_at=0.0))
    store.record_instance(Instance("n1", "cpu", ("j1",), 1, started_at=before, heartbeat_at=0.0))
    (row,) = store.list_instances()
    assert (row.id, row.device, row.jobs, row.workers) == ("n1", "cpu", ("j1",), 1)
    assert before - 1 <= row.heartbeat_at <= time.time() + 1  # the store's clock, not ours
    assert store.forget_instances(silent_for_s=3600) == 0  # it is fresh
    assert store.forget_instances(instance_id="n1") == 1
    assert store.list_instances() == []


def test_an_exclusive_block_runs_in_one_store_at_a_time(make_store):
    first, second = make_store(), make_store()
    with first.exclusive("retention") as mine:
        assert mine
        with second.exclusive("retention") as theirs:
            assert not theirs
        with second.exclusive("another") as other:
            assert other  # names are independent
    with second.exclusive("retention") as theirs:
        assert theirs  # released at the end of the block
