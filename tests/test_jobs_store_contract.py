"""The JobStore contract for tenancy, run against every store implementation.

Today only SQLite; a PostgreSQL store joins by adding a parameter to STORES (and a branch in
make_store) and must pass the same tests unchanged.
"""

from __future__ import annotations

import pytest

from heygem.errors import QueueFullError
from heygem.jobs.records import JobStatus, NewJob, Outcome
from heygem.jobs.store import TOMBSTONE_BATCH, TOMBSTONE_JOB, JobStore, SQLiteJobStore

STORES = ("sqlite",)
LIMIT = 10_000


def make_store(kind: str, tmp_path) -> JobStore:
    if kind == "sqlite":
        return SQLiteJobStore(tmp_path / "jobs.db")
    raise AssertionError(f"unknown store {kind}")


@pytest.fixture(params=STORES)
def store(request, tmp_path):
    job_store = make_store(request.param, tmp_path)
    job_store.open()
    yield job_store
    job_store.close()


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
