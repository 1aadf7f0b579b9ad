"""Issue 12, observed item 7 (no tenants) and "What it must do" 2: each attack against the job
layer, proved refused. Real SQLite, real files, FakePipeline (real ffmpeg output)."""

from __future__ import annotations

import threading
import time

import pytest

from heygem.errors import (
    ForbiddenPathError,
    InputError,
    JobExpiredError,
    JobNotFoundError,
    QueueFullError,
)
from heygem.jobs import retention
from heygem.jobs.records import JobStatus
from heygem.jobs.tenancy import LOCAL, Principal
from heygem.settings import Settings
from tests.jobs_support import place_inputs
from tests.kit import WAIT_S, Pipelines, running_service

ALICE = Principal("team-a")  # role "user"
BOB = Principal("team-b")
ADMIN = Principal("ops", "admin")


@pytest.fixture
def inputs(settings, speech_wav, face_video):
    return place_inputs(settings, speech_wav, face_video)


def gated():
    """A service whose worker never starts: jobs stay queued, so tests control the queue."""
    return Pipelines(gate=threading.Event())


def submit(service, inputs, principal, **kwargs):
    return service.submit(str(inputs.audio), str(inputs.video), principal=principal, **kwargs)


def test_another_tenants_job_is_answered_like_an_unknown_id(settings, inputs):
    with running_service(settings, Pipelines()) as service:
        job = submit(service, inputs, ALICE)
        service.wait(job.id, WAIT_S, principal=ALICE)
        batch = service.submit_batch(
            [{"audio": str(inputs.audio), "video": str(inputs.corrupt)}],
            principal=ALICE,
        )
        service.wait(batch.items[0].id, WAIT_S, principal=ALICE)
        job_calls = (
            lambda: service.get(job.id, principal=BOB),
            lambda: service.wait(job.id, 1, principal=BOB),
            lambda: service.cancel(job.id, principal=BOB),
            lambda: service.delete(job.id, principal=BOB),
        )
        batch_calls = (
            lambda: service.get_batch(batch.id, principal=BOB),
            lambda: service.batch_zip(batch.id, principal=BOB),
            lambda: service.retry_failed(batch.id, principal=BOB),
        )
        for calls, wanted in (
            (job_calls, f"no job with id {job.id!r}"),
            (batch_calls, f"no batch with id {batch.id!r}"),
        ):
            for call in calls:
                with pytest.raises(JobNotFoundError) as refused:
                    call()
                assert not isinstance(refused.value, JobExpiredError)
                # Word for word what an id that never existed gets: nothing tells them apart.
                assert str(refused.value) == wanted
        assert service.get(job.id, principal=ALICE).status == JobStatus.SUCCEEDED  # untouched
        assert service.get_batch(batch.id, principal=ALICE).items[0].status == JobStatus.FAILED
        assert service.get(job.id, principal=ADMIN).id == job.id  # admins see everything


def test_lists_and_counts_show_only_the_callers_jobs(settings, inputs):
    with running_service(settings, gated()) as service:
        mine = {submit(service, inputs, ALICE).id for _ in range(2)}
        theirs = submit(service, inputs, BOB).id
        assert {job.id for job in service.list_jobs(principal=ALICE)} == mine
        assert [job.id for job in service.list_jobs(principal=BOB)] == [theirs]
        assert service.count_jobs(principal=ALICE) == 2
        assert service.count_jobs(principal=Principal("nobody")) == 0
        assert service.count_jobs(principal=ADMIN) == 3
        assert {job.id for job in service.list_jobs(principal=ADMIN)} == mine | {theirs}


def test_delete_all_deletes_only_the_callers_tenant(settings, inputs):
    with running_service(settings, gated()) as service:
        kept = submit(service, inputs, ALICE)
        submit(service, inputs, BOB)
        submit(service, inputs, BOB)
        assert service.delete_all(principal=BOB) == 2
        assert service.get(kept.id, principal=ALICE).status == JobStatus.QUEUED
        assert inputs.audio.exists()
        assert service.delete_all(principal=ADMIN) == 1  # an admin's delete-all is everything
        assert service.count_jobs(principal=ADMIN) == 0


def test_an_idempotency_key_reused_by_another_tenant_never_returns_the_first_job(settings, inputs):
    with running_service(settings, gated()) as service:
        first = submit(service, inputs, ALICE, idempotency_key="order-42", output_name="alice")
        replay = submit(service, inputs, ALICE, idempotency_key="order-42")
        other = service.submit(
            str(inputs.video),
            str(inputs.video),
            principal=BOB,
            idempotency_key="order-42",
        )
        assert replay.id == first.id
        assert other.id != first.id and other.tenant == "team-b"
        assert other.output_name is None and other.audio == str(inputs.video.resolve())
        assert service.get_by_key("order-42", principal=BOB).id == other.id
        assert service.get_by_key("order-42", principal=ALICE).id == first.id
        with pytest.raises(JobNotFoundError):
            service.get_by_key("order-42", principal=Principal("team-c"))


def test_reserved_key_prefixes_are_refused_on_normal_submits(settings, inputs):
    with running_service(settings, gated()) as service:
        for key in ("heygem-compat:abc", "HEYGEM-COMPAT:abc"):
            with pytest.raises(InputError, match="reserved for heygem"):
                submit(service, inputs, ALICE, idempotency_key=key)
            with pytest.raises(InputError, match="reserved for heygem"):
                submit(service, inputs, LOCAL, idempotency_key=key)
        assert service.count_jobs(principal=ADMIN) == 0
        # The HeyGem-compatible layer passes internal=True for its own task codes.
        job = submit(service, inputs, LOCAL, idempotency_key="heygem-compat:abc", internal=True)
        assert service.get_by_key("heygem-compat:abc", principal=LOCAL).id == job.id


def test_a_tenant_over_its_quota_is_refused_and_others_are_not(settings, inputs):
    settings = settings.replace(queue_size=10, tenant_queue_size=2)
    item = {"audio": str(inputs.audio), "video": str(inputs.video)}
    with running_service(settings, gated()) as service:
        submit(service, inputs, ALICE)
        submit(service, inputs, ALICE)
        with pytest.raises(QueueFullError, match="tenant team-a has 2 jobs waiting"):
            submit(service, inputs, ALICE)
        with pytest.raises(QueueFullError, match="tenant team-a"):
            service.submit_batch([item], principal=ALICE)
        submit(service, inputs, BOB)
        service.submit_batch([item], principal=BOB)
        assert service.count_jobs(principal=ADMIN) == 4


def test_the_tenant_quota_defaults_to_the_queue_size(settings):
    assert settings.replace(queue_size=7).resolved_tenant_queue_size == 7
    with pytest.raises(ValueError, match="tenant_queue_size"):
        settings.replace(tenant_queue_size=-1)


@pytest.mark.slow
def test_a_500_item_batch_does_not_starve_another_tenants_job(settings, inputs):
    settings = settings.replace(queue_size=600, tenant_queue_size=600)
    pipelines = gated()
    items = [
        {"audio": str(inputs.audio), "video": str(inputs.video), "output_name": f"n{i}"} for i in range(500)
    ]
    with running_service(settings, pipelines) as service:
        batch = service.submit_batch(items, principal=ALICE)
        single = submit(service, inputs, BOB)
        pipelines.gate.set()  # the worker loads and starts claiming
        done = service.wait(single.id, 4 * WAIT_S, principal=BOB)
        assert done.status == JobStatus.SUCCEEDED
        started_before = [
            item
            for item in service.get_batch(batch.id, principal=ALICE).items
            if item.started_at is not None and item.started_at < done.started_at
        ]
        # One worker: Bob's job runs right after the batch's first item.
        assert len(started_before) == 1
        service.delete_all(principal=ADMIN)


@pytest.mark.parametrize(
    "prefix,allowed",
    [
        ("s3://bucket-a/", True),
        ("s3://bucket-a/deep/er/", True),
        ("obs://shared/team-a/out/", True),
        ("obs://shared/team-a", True),
        ("s3://bucket-b/", False),
        ("s3://bucket-a-evil/", False),  # a longer bucket name is another bucket
        ("obs://shared/team-ab/", False),  # whole key segments only
        ("obs://shared/team-a/../team-b/", False),
        ("obs://shared/", False),
    ],
)
def test_tenant_output_prefixes_are_enforced(settings, inputs, prefix, allowed):
    settings = settings.replace(
        tenant_output_prefixes="team-a=s3://bucket-a/,obs://shared/team-a/; team-b=s3://bucket-b/",
    )
    with running_service(settings, gated()) as service:
        if allowed:
            assert submit(service, inputs, ALICE, output_prefix=prefix).output_prefix == prefix
        else:
            with pytest.raises(ForbiddenPathError):
                submit(service, inputs, ALICE, output_prefix=prefix)
            with pytest.raises(ForbiddenPathError):
                service.submit_batch(
                    [{"audio": str(inputs.audio), "video": str(inputs.video)}],
                    principal=ALICE,
                    output_prefix=prefix,
                )


def test_unlisted_tenants_get_no_output_prefix_and_admins_keep_the_defaults(settings, inputs):
    settings = settings.replace(tenant_output_prefixes="team-a=s3://bucket-a/")
    with running_service(settings, gated()) as service:
        with pytest.raises(ForbiddenPathError, match="team-c's output locations"):
            submit(service, inputs, Principal("team-c"), output_prefix="s3://bucket-a/")
        assert submit(service, inputs, Principal("team-c")).output_prefix is None
        assert submit(service, inputs, ADMIN, output_prefix="s3://any/").output_prefix == "s3://any/"


def test_without_a_prefix_list_every_tenant_keeps_the_default_rules(settings, inputs):
    with running_service(settings, gated()) as service:
        assert submit(service, inputs, BOB, output_prefix="s3://any/x/").output_prefix == "s3://any/x/"


@pytest.mark.parametrize(
    "text,message",
    [
        ("team-a", "must look like tenant="),
        ("bad name=s3://b/", "must look like tenant="),
        ("a=s3://b/;a=s3://c/", "listed twice"),
        ("a=https://example.com/", "not s3://, obs://"),
        ("a=relative/folder", "not s3://, obs://"),
        ("a=", "has no prefix"),
    ],
)
def test_bad_tenant_output_prefixes_are_refused_at_start(text, message):
    with pytest.raises(ValueError, match=message):
        Settings.load({"HEYGEM_TENANT_OUTPUT_PREFIXES": text})


def test_principals_are_validated():
    for bad in ("", "a b", "../x", "x" * 65, "-lead"):
        with pytest.raises(ValueError, match="invalid tenant name"):
            Principal(bad)
    with pytest.raises(ValueError, match="role"):
        Principal("team", "root")  # type: ignore[arg-type]
    assert LOCAL.is_admin and LOCAL.tenant == "default"


def test_an_expired_job_says_when_and_only_to_its_tenant(settings, inputs):
    settings = settings.replace(retention_days=1.0, retention_interval_s=0)
    with running_service(settings, Pipelines()) as service:
        job = service.wait(submit(service, inputs, ALICE).id, WAIT_S, principal=ALICE)
        batch = service.submit_batch(
            [{"audio": str(inputs.audio), "video": str(inputs.video)}], principal=ALICE
        )
        service.wait(batch.items[0].id, WAIT_S, principal=ALICE)
        later = time.time() + 2 * 86400
        report = retention.sweep(service.store, settings, now=later)
        assert set(report.jobs) == {job.id, batch.items[0].id}
        with pytest.raises(JobExpiredError, match=r"job .* expired on \d{4}-\d\d-\d\d") as expired:
            service.get(job.id, principal=ALICE)
        assert expired.value.expired_at == pytest.approx(later)
        with pytest.raises(JobExpiredError):
            service.get_batch(batch.id, principal=ALICE)
        with pytest.raises(JobExpiredError):
            service.get(job.id, principal=ADMIN)
        # Another tenant learns nothing: to them it never existed.
        with pytest.raises(JobNotFoundError) as other:
            service.get(job.id, principal=BOB)
        assert not isinstance(other.value, JobExpiredError)
        with pytest.raises(JobNotFoundError) as unknown:
            service.get("f" * 32, principal=ALICE)
        assert not isinstance(unknown.value, JobExpiredError)
