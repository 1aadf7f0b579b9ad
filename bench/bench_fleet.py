"""Fleet benchmark: claims per second on PostgreSQL, and status-route latency over 3 instances.

    python bench/bench_fleet.py [--jobs 2000] [--claimers 4] [--pollers 100] [--poll-s 20]
                                [--database-url postgresql://...]

1. claims: --jobs queued jobs in a fresh PostgreSQL database; --claimers processes, each a
   PostgresJobStore of its own, claim and finish jobs until the queue is empty (the worker's two
   store calls per job, without the engine). Prints claims per second and each process's share,
   and checks that no job was claimed twice.
2. status: three app.py instances (preview engine, one shared data folder, the same database) on
   free 127.0.0.1 ports; --pollers threads, spread round-robin over the instances, each GET
   /api/v1/jobs/<id> of finished jobs on one kept-alive connection for --poll-s seconds. Prints
   p50/p95/max latency, requests per second and errors.

Without --database-url a throwaway PostgreSQL server is started with tests/pg.py (Debian's
postgresql package). Everything is bounded and local; the servers are stopped at the end. On a
shared 2-core machine the pollers, the servers and PostgreSQL compete for the same CPUs, so the
numbers are a floor, not a capacity.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from heygem.jobs.records import JobStatus, NewJob, Outcome  # noqa: E402
from heygem.jobs.store_pg import PostgresJobStore  # noqa: E402

HOST = "127.0.0.1"
INSTANCES = 3
LEASE_S = 60.0
START_TIMEOUT_S = 180.0
HTTP_TIMEOUT_S = 30.0
STATUS_JOBS = 200  # finished jobs the pollers read
ADD_CHUNK = 500  # jobs per insert transaction


def claim_until_empty(url: str, name: str, go, results) -> None:
    """One instance's worker loop without the engine: claim, finish, repeat until none is left."""
    store = PostgresJobStore(url, instance_id=name, lease_s=LEASE_S)
    store.open()
    go.wait()
    claimed = []
    started = time.perf_counter()
    while (claim := store.claim()) is not None:
        store.finish(claim.job.id, claim.token, Outcome(JobStatus.SUCCEEDED))
        claimed.append(claim.job.id)
    results.put((name, claimed, time.perf_counter() - started))
    store.close()


def fill(store: PostgresJobStore, count: int) -> None:
    for start in range(0, count, ADD_CHUNK):
        size = min(ADD_CHUNK, count - start)
        store.add([NewJob("a.wav", "v.mp4")] * size, queue_limit=count + 1)


def bench_claims(url: str, jobs: int, claimers: int) -> None:
    store = PostgresJobStore(url, instance_id="bench-submitter", lease_s=LEASE_S)
    store.open()
    try:
        fill(store, jobs)
        context = multiprocessing.get_context("spawn")
        go, results = context.Event(), context.Queue()
        processes = [
            context.Process(target=claim_until_empty, args=(url, f"c{n}", go, results))
            for n in range(claimers)
        ]
        for process in processes:
            process.start()
        time.sleep(2.0)  # every claimer has opened its pool
        started = time.perf_counter()
        go.set()
        reports = [results.get(timeout=600) for _ in processes]
        wall = time.perf_counter() - started
        for process in processes:
            process.join(60)
        claimed = [job_id for _, ids, _ in reports for job_id in ids]
        twice = len(claimed) - len(set(claimed))
        shares = ", ".join(f"{name}={len(ids)}" for name, ids, _ in sorted(reports))
        print(f"claims: {len(claimed)} of {jobs} jobs by {claimers} processes in {wall:.2f} s")
        print(f"claims: {len(claimed) / wall:.0f} claim+finish per second ({shares}); claimed twice: {twice}")
        print(f"claims: status counts after the race: {store.count_by_status()}")
    finally:
        store.close()


def finished_jobs(url: str, count: int) -> list[str]:
    store = PostgresJobStore(url, instance_id="bench-setup", lease_s=LEASE_S)
    store.open()
    try:
        _, added = store.add([NewJob("a.wav", "v.mp4")] * count, queue_limit=count + 1)
        ids = {job.id for job in added}
        while (claim := store.claim()) is not None:
            store.finish(claim.job.id, claim.token, Outcome(JobStatus.SUCCEEDED))
        return sorted(ids)
    finally:
        store.close()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def instances(url: str, data_dir: Path, count: int) -> Iterator[list[int]]:
    ports = [free_port() for _ in range(count)]
    env = {
        **os.environ,
        "HEYGEM_DATABASE_URL": url,
        "HEYGEM_SHARED_DATA_DIR": "true",
        "HEYGEM_DATA_DIR": str(data_dir),
        "HEYGEM_ENGINE": "preview",
        "HEYGEM_WARMUP": "false",
        "HEYGEM_RETENTION_DAYS": "0",
        "HEYGEM_LOG_LEVEL": "WARNING",
        "HEYGEM_HOST": HOST,
    }
    processes = [
        subprocess.Popen(
            [sys.executable, str(PROJECT / "app.py"), "--port", str(port), "--instance-id", f"b{n}"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(data_dir / f"b{n}.log", "wb"),  # noqa: SIM115 - closed with the process
        )
        for n, port in enumerate(ports)
    ]
    try:
        for port in ports:
            wait_ready(port)
        yield ports
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def wait_ready(port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", "/ready")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"instance on port {port} did not become ready within {START_TIMEOUT_S:g} s")


def poll(port: int, job_ids: list[str], until: float, latencies: list[float], errors: list[str]) -> None:
    conn = http.client.HTTPConnection(HOST, port, timeout=HTTP_TIMEOUT_S)
    index = 0
    while time.monotonic() < until:
        job_id = job_ids[index % len(job_ids)]
        index += 1
        started = time.perf_counter()
        try:
            conn.request("GET", f"/api/v1/jobs/{job_id}")
            answer = conn.getresponse()
            answer.read()
        except OSError as exc:
            errors.append(type(exc).__name__)
            conn.close()
            conn = http.client.HTTPConnection(HOST, port, timeout=HTTP_TIMEOUT_S)
            continue
        latencies.append(time.perf_counter() - started)
        if answer.status != 200:
            errors.append(str(answer.status))
    conn.close()


def bench_status(url: str, pollers: int, seconds: float) -> None:
    job_ids = finished_jobs(url, STATUS_JOBS)
    with (
        tempfile.TemporaryDirectory(prefix="heygem-bench-fleet-") as folder,
        instances(url, Path(folder), INSTANCES) as ports,
    ):
        latencies: list[float] = []
        errors: list[str] = []
        until = time.monotonic() + seconds
        threads = [
            threading.Thread(target=poll, args=(ports[n % len(ports)], job_ids, until, latencies, errors))
            for n in range(pollers)
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.monotonic() - started
    ordered = sorted(latencies)
    p50 = statistics.median(ordered) * 1000
    p95 = ordered[int(len(ordered) * 0.95) - 1] * 1000
    print(
        f"status: {pollers} pollers over {INSTANCES} instances for {wall:.1f} s: {len(ordered)} requests,"
        f" {len(ordered) / wall:.0f} per second, {len(errors)} errors"
    )
    print(f"status: latency p50 {p50:.1f} ms, p95 {p95:.1f} ms, max {ordered[-1] * 1000:.1f} ms")


@contextlib.contextmanager
def database(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from tests.pg import running_postgres

    with running_postgres() as server:
        yield server.new_database()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--claimers", type=int, default=4)
    parser.add_argument("--pollers", type=int, default=100)
    parser.add_argument("--poll-s", type=float, default=20.0)
    parser.add_argument("--database-url", default=None, help="an empty database; default: a throwaway server")
    args = parser.parse_args()
    with database(args.database_url) as url:
        print(f"fleet benchmark {uuid.uuid4().hex[:6]}: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
        bench_claims(url, args.jobs, args.claimers)
        bench_status(url, args.pollers, args.poll_s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
