"""What only the PostgreSQL store has: leased claims, migrations shared by many instances, the
database URL setting and its secrecy. The behaviour it shares with SQLite is in
tests/test_jobs_store_contract.py. Every test runs against a real server (tests/pg.py)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from heygem.errors import HeygemError
from heygem.jobs.records import JobStatus, NewJob, Outcome
from heygem.jobs.store import RunState, SQLiteJobStore, open_store
from heygem.jobs.store_pg import SCHEMA_VERSION, PostgresJobStore
from heygem.settings import Settings
from tests.pg import free_port

SHORT_LEASE_S = 0.3
LONG_LEASE_S = 60.0
RACE_JOBS = 500
RACE_PROCESSES = 4
RACE_TIMEOUT_S = 120


@pytest.fixture
def stores(postgres_url):
    """Two instances, "a" and "b", sharing one database; their leases last SHORT_LEASE_S."""
    opened = [PostgresJobStore(postgres_url, instance_id=name, lease_s=SHORT_LEASE_S) for name in "ab"]
    for store in opened:
        store.open()
    yield opened
    for store in opened:
        store.close()


def add(store, count=1):
    _, jobs = store.add([NewJob("a.wav", "v.mp4")] * count, queue_limit=10_000)
    return jobs


def lease_of(url, job_id):
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT instance_id, lease_until, EXTRACT(EPOCH FROM clock_timestamp()) FROM jobs WHERE id = %s",
            (job_id,),
        ).fetchone()
    return row[0], row[1], float(row[2])


# --- leases ------------------------------------------------------------------------------------


def test_a_claim_records_the_instance_and_a_lease(postgres_url):
    store = PostgresJobStore(postgres_url, instance_id="gpu-7", lease_s=LONG_LEASE_S)
    store.open()
    try:
        (job,) = add(store)
        store.claim()
        instance, until, now = lease_of(postgres_url, job.id)
        assert instance == "gpu-7"
        assert LONG_LEASE_S - 5 < until - now <= LONG_LEASE_S
    finally:
        store.close()


def test_an_expired_lease_goes_back_to_the_queue_and_the_old_run_cannot_write(stores, postgres_url):
    a, b = stores
    (job,) = add(a)
    lost = a.claim()
    assert b.requeue_expired(max_attempts=3) == ([], [])  # the lease still holds
    time.sleep(SHORT_LEASE_S + 0.2)  # instance a is "killed": no progress, no heartbeat
    requeued, failed = b.requeue_expired(max_attempts=3)
    assert [j.id for j in requeued] == [job.id] and failed == []
    assert (requeued[0].status, requeued[0].attempts) == (JobStatus.QUEUED, 1)
    assert lease_of(postgres_url, job.id)[:2] == (None, None)
    again = b.claim()
    assert (again.job.id, again.job.attempts) == (job.id, 2)
    # Instance a wakes up: its run lost the job, whatever it tries.
    assert a.report_progress(job.id, lost.token, 0.9, "blend") == RunState.GONE
    assert a.heartbeat(job.id, lost.token) == RunState.GONE
    assert not a.finish(job.id, lost.token, Outcome(JobStatus.SUCCEEDED))
    assert not a.release(job.id, lost.token, count_attempt=False)
    assert b.finish(job.id, again.token, Outcome(JobStatus.SUCCEEDED, engine="b"))
    assert a.get(job.id).engine == "b"


def test_progress_and_heartbeats_renew_the_lease(stores, postgres_url):
    a, b = stores
    (job,) = add(a)
    claim = a.claim()
    renew = (
        lambda: a.report_progress(job.id, claim.token, 0.5, "detect"),
        lambda: a.heartbeat(job.id, claim.token),
    )
    for step in range(4):  # 4 x 0.15 s: twice the lease, never 0.3 s without a sign of life
        time.sleep(SHORT_LEASE_S / 2)
        before = lease_of(postgres_url, job.id)[1]
        assert renew[step % 2]() == RunState.ACTIVE
        assert lease_of(postgres_url, job.id)[1] > before
        assert b.requeue_expired(max_attempts=3) == ([], [])
    assert a.finish(job.id, claim.token, Outcome(JobStatus.SUCCEEDED))


def test_a_job_that_keeps_losing_its_lease_fails_after_max_attempts(stores):
    a, b = stores
    (job,) = add(a)
    assert a.claim().job.attempts == 1
    time.sleep(SHORT_LEASE_S + 0.1)
    assert [j.id for j in b.requeue_expired(max_attempts=2)[0]] == [job.id]
    assert a.claim().job.attempts == 2
    time.sleep(SHORT_LEASE_S + 0.1)
    requeued, failed = b.requeue_expired(max_attempts=2)
    assert requeued == [] and [j.id for j in failed] == [job.id]
    assert failed[0].error == "interrupted 2 times (its instance stopped or lost its lease); giving up"
    assert b.claim() is None


def test_start_up_recovery_leaves_other_instances_runs_alone(postgres_url):
    live = PostgresJobStore(postgres_url, instance_id="live", lease_s=LONG_LEASE_S)
    live.open()
    mine = PostgresJobStore(postgres_url, instance_id="restarting", lease_s=LONG_LEASE_S)
    mine.open()
    try:
        theirs, ours = add(live, 2)
        live_claim = live.claim()
        mine.claim()
        mine.close()  # "restarting" stops with a live lease, then starts again under its name
        mine = PostgresJobStore(postgres_url, instance_id="restarting", lease_s=LONG_LEASE_S)
        mine.open()
        requeued, failed = mine.recover(max_attempts=3)
        assert [j.id for j in requeued] == [ours.id] and failed == []
        assert live.report_progress(theirs.id, live_claim.token, 0.5, "x") == RunState.ACTIVE
        assert live.get(theirs.id).status == JobStatus.RUNNING
    finally:
        live.close()
        mine.close()


def test_a_cancel_reaches_a_run_on_another_instance(stores):
    a, b = stores
    (job,) = add(a)
    claim = a.claim()
    assert b.cancel(job.id).cancel_requested
    assert a.heartbeat(job.id, claim.token) == RunState.CANCEL


def test_sqlite_has_no_leases(tmp_path):
    store = SQLiteJobStore(tmp_path / "jobs.db")
    store.open()
    try:
        (job,) = add(store)
        claim = store.claim()
        assert store.heartbeat(job.id, claim.token) == RunState.ACTIVE
        assert store.requeue_expired(max_attempts=1) == ([], [])
        assert store.get(job.id).status == JobStatus.RUNNING
    finally:
        store.close()


# --- migrations --------------------------------------------------------------------------------


def schema_rows(url):
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT version, applied_by FROM heygem_schema ORDER BY version").fetchall()


def test_instances_starting_together_migrate_exactly_once(postgres_url):
    count = 8
    barrier = threading.Barrier(count)
    stores = [PostgresJobStore(postgres_url, instance_id=f"i{n}", lease_s=LONG_LEASE_S) for n in range(count)]
    errors: list[BaseException] = []

    def start(store):
        barrier.wait()
        try:
            store.open()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        rows = schema_rows(postgres_url)
        assert [version for version, _ in rows] == list(range(1, SCHEMA_VERSION + 1))
        (job,) = add(stores[0])
        assert all(store.get(job.id) is not None for store in stores)
    finally:
        for store in stores:
            store.close()


def test_a_database_from_a_newer_version_is_refused(postgres_url):
    store = PostgresJobStore(postgres_url, instance_id="old", lease_s=LONG_LEASE_S)
    store.open()
    store.close()
    with psycopg.connect(postgres_url) as conn:
        conn.execute("INSERT INTO heygem_schema VALUES (99, 0, 'future')")
    with pytest.raises(HeygemError, match="newer heygem"):
        PostgresJobStore(postgres_url, instance_id="old", lease_s=LONG_LEASE_S).open()


# --- the setting and its secrecy ---------------------------------------------------------------


def test_open_store_follows_database_url(tmp_path, postgres_url):
    default = open_store(Settings(data_dir=tmp_path))
    assert isinstance(default, SQLiteJobStore) and default.path == tmp_path / "heygem.db"
    named = open_store(Settings(data_dir=tmp_path, database_url=f"sqlite://{tmp_path}/q/jobs.db"))
    assert isinstance(named, SQLiteJobStore) and named.path == tmp_path / "q" / "jobs.db"
    shared = open_store(Settings(data_dir=tmp_path, database_url=postgres_url, instance_id="n1", lease_s=9))
    assert isinstance(shared, PostgresJobStore)
    assert (shared.instance_id, shared.lease_s) == ("n1", 9)
    unnamed = open_store(Settings(data_dir=tmp_path, database_url=postgres_url))
    assert isinstance(unnamed, PostgresJobStore) and unnamed.instance_id  # one made per process


def test_the_password_is_masked_wherever_settings_are_shown(postgres_server, caplog):
    secret = postgres_server.password
    settings = Settings.load(
        {"HEYGEM_DATABASE_URL": postgres_server.url("jobs"), "HEYGEM_SHARED_DATA_DIR": "true"}
    )
    shown = settings.describe()["database_url"]
    assert secret not in shown and shown == f"postgresql://***@127.0.0.1:{postgres_server.port}/jobs"
    with caplog.at_level(logging.INFO, logger="heygem.settings"):
        settings.log_summary()
    assert "database_url=postgresql://***@" in caplog.text and secret not in caplog.text
    assert secret not in repr(open_store(settings))


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://root:s3cr3t-pw@db/jobs", "must be sqlite:///path or postgresql://"),
        ("postgresql://root:s3cr3t-pw@db:port/jobs", "the port must be a number"),
        ("postgresql://root:s3cr3t-pw@db", "must name a host and a database"),
        ("sqlite://relative.db", "must name a file"),
        ("root:s3cr3t-pw@db://jobs", "got an unreadable scheme"),
        ("root:s3cr3t-pw@db/jobs", "got no scheme"),
    ],
)
def test_a_bad_url_is_one_line_naming_the_setting_without_the_password(url, message):
    with pytest.raises(ValueError) as caught:
        Settings.load({"HEYGEM_DATABASE_URL": url})
    text = str(caught.value)
    assert "database_url" in text and message in text
    assert "s3cr3t-pw" not in text and "\n" not in text


def test_a_wrong_password_or_server_is_one_line_without_the_password(postgres_server):
    wrong = postgres_server.url(password="Wr0ng-Pa55")
    nobody_listens = f"postgresql://heygem:Wr0ng-Pa55@127.0.0.1:{free_port()}/jobs"
    for url, reason in ((wrong, "password authentication failed"), (nobody_listens, "")):
        with pytest.raises(HeygemError) as caught:
            PostgresJobStore(url, instance_id="x", lease_s=LONG_LEASE_S).open()
        text = str(caught.value)
        assert text.startswith("database_url postgresql://***@127.0.0.1:") and reason in text
        assert "Wr0ng-Pa55" not in text and "\n" not in text


# --- the race ----------------------------------------------------------------------------------


def claim_all(url: str, name: str, ready, go, results) -> None:
    """One instance in its own process: open the store (migrating with the others), then claim
    until the queue is empty; report what it claimed and when it started and ended."""
    store = PostgresJobStore(url, instance_id=name, lease_s=LONG_LEASE_S)
    store.open()
    ready.put(name)
    go.wait(RACE_TIMEOUT_S)
    claimed = []
    started = time.time()
    while (claim := store.claim()) is not None:
        claimed.append(claim.job.id)
    results.put((name, claimed, started, time.time()))
    store.close()


@pytest.mark.slow
def test_four_processes_race_for_500_jobs(postgres_url):
    context = multiprocessing.get_context("spawn")  # no fork of pytest's threads and sockets
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    processes = [
        context.Process(target=claim_all, args=(postgres_url, f"p{n}", ready, go, results))
        for n in range(RACE_PROCESSES)
    ]
    for process in processes:
        process.start()
    store = PostgresJobStore(postgres_url, instance_id="submitter", lease_s=LONG_LEASE_S)
    try:
        for _ in processes:  # every process opened the fresh database at about the same time
            ready.get(timeout=RACE_TIMEOUT_S)
        store.open()
        ids = {job.id for job in add(store, RACE_JOBS)}
        go.set()
        reports = sorted(results.get(timeout=RACE_TIMEOUT_S) for _ in processes)
        claimed = [job_id for _, jobs, _, _ in reports for job_id in jobs]
        assert len(claimed) == len(set(claimed)) == RACE_JOBS  # none twice
        assert set(claimed) == ids  # none lost
        assert store.count_by_status() == {"running": RACE_JOBS}
        assert {job.attempts for job in store.list_jobs(RACE_JOBS, 0)} == {1}
        assert all(len(jobs) > 0 for _, jobs, _, _ in reports)  # every process took part
        assert len(schema_rows(postgres_url)) == SCHEMA_VERSION  # four openings, one migration
    finally:
        store.close()
        for process in processes:
            process.join(RACE_TIMEOUT_S)
    started = min(report[2] for report in reports)
    ended = max(report[3] for report in reports)
    shares = ", ".join(f"{name}={len(jobs)}" for name, jobs, _, _ in reports)
    print(
        f"\nclaim race: {RACE_JOBS} jobs, {RACE_PROCESSES} processes, {ended - started:.2f} s, "
        f"{RACE_JOBS / (ended - started):.0f} claims/s ({shares})"
    )


def test_path_of_a_sqlite_url_is_absolute(tmp_path):
    assert Settings(database_url=f"sqlite://{tmp_path}/a.db").database_path == Path(tmp_path) / "a.db"


# --- fleet files -------------------------------------------------------------------------------


def test_fleet_mode_without_shared_files_refuses_to_start_naming_both_settings(postgres_server):
    url = postgres_server.url("jobs")
    with pytest.raises(ValueError) as caught:
        Settings.load({"HEYGEM_DATABASE_URL": url})
    text = str(caught.value)
    assert "HEYGEM_STORAGE_URL" in text and "HEYGEM_SHARED_DATA_DIR" in text and "\n" not in text
    assert postgres_server.password not in text
    assert Settings.load(
        {"HEYGEM_DATABASE_URL": url, "HEYGEM_STORAGE_URL": "obs://b/heygem/"}
    ).uses_object_store
    assert Settings.load({"HEYGEM_DATABASE_URL": url}, ["--shared-data-dir", "true"]).shared_data_dir
    done = subprocess.run(
        [sys.executable, "app.py", "--port", "0"],
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "HEYGEM_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "HEYGEM_STORAGE_URL" in done.stderr


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("https://bucket/prefix/", "must be s3://bucket/prefix/ or obs://bucket/prefix/; got https"),
        ("s3:///prefix/", "must name a bucket"),
        ("s3://key:secret@bucket/", "must name a bucket"),
        ("/mnt/shared", "got no scheme"),
    ],
)
def test_a_bad_storage_url_is_one_line_naming_the_setting(value, message):
    with pytest.raises(ValueError) as caught:
        Settings.load({"HEYGEM_STORAGE_URL": value})
    assert "storage_url (HEYGEM_STORAGE_URL, --storage-url)" in str(caught.value)
    assert message in str(caught.value) and "secret" not in str(caught.value)
