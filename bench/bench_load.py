"""Load benchmark: 100 clients and a retry storm against a full queue, on a real local server.

    python bench/bench_load.py [--clients 100] [--storm-s 40] [--queue-size 4] [--work-dir DIR]

Starts `app.py` (preview engine, no weights) on a free 127.0.0.1 port with its own data folder,
then:

1. quiet: renders a few jobs one after another and takes their render time (started -> finished);
2. refusals: fills the queue and measures the CPU the server's event-loop thread spends per
   refused submission (with a full upload body) next to its CPU per /health request;
3. storm: N clients submit the same upload for --storm-s seconds; a refused client waits the
   Retry-After it was given (with jitter) and tries again; an accepted one polls its job every
   second until it ends. One more client calls /health every 0.2 s throughout.

It prints submit, poll and /health latencies (p50/p95/max), refusal counts, connection errors, the
refusal CPU cost and the render time under the storm against the quiet one (target: under 1.5x).
Everything is bounded: a fixed number of clients, a deadline per phase and one for the whole run;
only 127.0.0.1 is contacted and the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

HOST = "127.0.0.1"  # the only address this benchmark talks to
START_TIMEOUT_S = 180.0
JOB_TIMEOUT_S = 120.0
RUN_TIMEOUT_S = 900.0  # the whole benchmark; the server is killed past it
QUIET_JOBS = 3
REFUSALS = 200
POLL_S = 1.0
HEALTH_EVERY_S = 0.2
JITTER = (1.0, 1.5)  # a refused client waits Retry-After times this
IO_TIMEOUT_S = 60.0
TARGET_RATIO = 1.5
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Latencies:
    samples: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, seconds: float) -> None:
        with self.lock:
            self.samples.append(seconds)

    def summary(self) -> str:
        if not self.samples:
            return "no samples"
        ordered = sorted(self.samples)
        p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
        return (
            f"n={len(ordered)} p50={statistics.median(ordered) * 1000:.0f} ms "
            f"p95={p95 * 1000:.0f} ms max={ordered[-1] * 1000:.0f} ms"
        )


@dataclass
class Counters:
    accepted: int = 0
    refused: int = 0
    errors: int = 0
    other: dict[int, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, status: int) -> None:
        with self.lock:
            if status == 202:
                self.accepted += 1
            elif status in (429, 503):
                self.refused += 1
            elif status == 0:
                self.errors += 1
            else:
                self.other[status] = self.other.get(status, 0) + 1


# --------------------------------------------------------------------------------------------------
# server and inputs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def start_server(data_dir: Path, port: int, queue_size: int) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        HEYGEM_DATA_DIR=str(data_dir),
        HEYGEM_HOST=HOST,
        HEYGEM_PORT=str(port),
        HEYGEM_ENGINE="preview",
        HEYGEM_QUEUE_SIZE=str(queue_size),
        HEYGEM_LOG_LEVEL="WARNING",
        HEYGEM_DRAIN_SECONDS="5",
    )
    log = open(data_dir / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
    return subprocess.Popen(
        [sys.executable, str(PROJECT / "app.py")], cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT
    )


def wait_for(port: int, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, _, _ = call(port, "GET", path)
        if status == 200:
            return
        time.sleep(0.5)
    raise SystemExit(f"the server did not answer {path} within {timeout:g} s")


def make_inputs(folder: Path) -> tuple[bytes, bytes]:
    from tests import (
        media,  # the test fixtures' generators: a face video and espeak-ng speech
    )

    video = media.make_face_video(folder / "face.mp4", seconds=2.0)
    audio = media.make_speech(folder / "speech.wav")
    return audio.read_bytes(), video.read_bytes()


def form_body(audio: bytes, video: bytes) -> tuple[str, bytes]:
    boundary = "bench" + uuid.uuid4().hex
    parts = []
    for name, filename, content in (("audio", "speech.wav", audio), ("video", "face.mp4", video)):
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        )
        parts.append(head.encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(parts)


# --------------------------------------------------------------------------------------------------
# HTTP


def call(
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    conn: http.client.HTTPConnection | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request (on `conn` when given: keep-alive); status 0 on a connection error."""
    own = conn is None
    connection = conn or http.client.HTTPConnection(HOST, port, timeout=IO_TIMEOUT_S)
    try:
        connection.request(method, path, body=body or None, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    except (OSError, http.client.HTTPException):
        connection.close()
        return 0, {}, b""
    finally:
        if own:
            connection.close()


def submit(
    port: int, form: tuple[str, bytes], conn: http.client.HTTPConnection | None = None
) -> tuple[int, dict[str, str], bytes]:
    content_type, body = form
    return call(port, "POST", "/api/v1/jobs", body, {"Content-Type": content_type}, conn)


def wait_job(
    port: int, job_id: str, polls: Latencies | None = None, conn: http.client.HTTPConnection | None = None
) -> dict[str, object]:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        started = time.monotonic()
        status, _, data = call(port, "GET", f"/api/v1/jobs/{job_id}", conn=conn)
        if polls is not None and status:
            polls.add(time.monotonic() - started)
        if status == 200:
            job: dict[str, object] = json.loads(data)
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
        time.sleep(POLL_S)
    raise SystemExit(f"job {job_id} did not finish within {JOB_TIMEOUT_S:g} s")


def render_seconds(job: dict[str, object]) -> float:
    started, finished = job.get("started_at"), job.get("finished_at")
    assert isinstance(started, float | int) and isinstance(finished, float | int), job
    return float(finished) - float(started)


def main_thread_cpu_s(pid: int) -> float:
    """CPU seconds of the server's main thread (the event loop), not its workers or ffmpeg."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


# --------------------------------------------------------------------------------------------------
# phases


def quiet_renders(port: int, form: tuple[str, bytes]) -> list[float]:
    times = []
    for _ in range(QUIET_JOBS):
        status, _, data = submit(port, form)
        if status != 202:
            raise SystemExit(f"a quiet submission answered {status}: {data[:200]!r}")
        job = wait_job(port, json.loads(data)["id"])
        if job["status"] != "succeeded":
            raise SystemExit(f"a quiet job ended {job['status']}: {job.get('error')}")
        times.append(render_seconds(job))
    return times


def fill_queue(port: int, form: tuple[str, bytes], queue_size: int) -> list[str]:
    ids = []
    for _ in range(queue_size + 1):
        status, _, data = submit(port, form)
        if status == 202:
            ids.append(json.loads(data)["id"])
    return ids


def cpu_per_request(pid: int, count: int, request: Callable[[], int]) -> tuple[float, dict[int, int]]:
    statuses: dict[int, int] = {}
    before = main_thread_cpu_s(pid)
    for _ in range(count):
        status = request()
        statuses[status] = statuses.get(status, 0) + 1
    return (main_thread_cpu_s(pid) - before) / count, statuses


def storm(port: int, form: tuple[str, bytes], clients: int, storm_s: float) -> dict[str, object]:
    submits, polls, health = Latencies(), Latencies(), Latencies()
    counters = Counters()
    renders: list[float] = []
    deadline = time.monotonic() + storm_s
    stop = threading.Event()

    def client() -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=IO_TIMEOUT_S)  # reused: keep-alive
        try:
            while time.monotonic() < deadline:
                started = time.monotonic()
                status, headers, data = submit(port, form, conn)
                submits.add(time.monotonic() - started)
                counters.count(status)
                if status == 202:
                    job = wait_job(port, json.loads(data)["id"], polls, conn)
                    if job["status"] == "succeeded":
                        renders.append(render_seconds(job))
                    return
                wait = float(headers.get("retry-after", "1")) * random.uniform(*JITTER)
                time.sleep(max(0.0, min(wait, deadline - time.monotonic())))
        finally:
            conn.close()

    def prober() -> None:
        while not stop.is_set():
            started = time.monotonic()
            if call(port, "GET", "/health")[0] == 200:
                health.add(time.monotonic() - started)
            stop.wait(HEALTH_EVERY_S)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    probe = threading.Thread(target=prober, daemon=True)
    probe.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(storm_s + JOB_TIMEOUT_S)
    stop.set()
    probe.join(IO_TIMEOUT_S)
    return {"submit": submits, "poll": polls, "health": health, "counters": counters, "renders": renders}


# --------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, work: Path) -> int:
    port = free_port()
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    form = form_body(*make_inputs(work))
    server = start_server(data, port, args.queue_size)
    watchdog = threading.Timer(RUN_TIMEOUT_S, server.kill)
    watchdog.daemon = True
    watchdog.start()
    try:
        wait_for(port, "/ready", START_TIMEOUT_S)
        wait_for(port, "/", START_TIMEOUT_S)  # the web UI is built: its start-up CPU is over
        print(f"server on http://{HOST}:{port} (preview engine), queue_size={args.queue_size}")
        quiet = quiet_renders(port, form)
        print(
            f"quiet render: {', '.join(f'{t:.2f}' for t in quiet)} s "
            f"(median {statistics.median(quiet):.2f} s)"
        )

        fill_queue(port, form, args.queue_size)
        refusal_cpu, refusal_statuses = cpu_per_request(server.pid, REFUSALS, lambda: submit(port, form)[0])
        health_cpu, _ = cpu_per_request(server.pid, REFUSALS, lambda: call(port, "GET", "/health")[0])
        print(
            f"refused submission ({len(form[1]) // 1024} KB body): {refusal_cpu * 1000:.2f} ms CPU "
            f"of the event loop each (statuses {refusal_statuses}); /health: {health_cpu * 1000:.2f} ms"
        )

        result = storm(port, form, args.clients, args.storm_s)
        counters = result["counters"]
        assert isinstance(counters, Counters)
        print(f"storm: {args.clients} clients for {args.storm_s:g} s, honouring Retry-After")
        for name in ("submit", "poll", "health"):
            latencies = result[name]
            assert isinstance(latencies, Latencies)
            print(f"  {name:7s} {latencies.summary()}")
        print(
            f"  submits: {counters.accepted} accepted, {counters.refused} refused, "
            f"{counters.errors} connection errors, other {counters.other}"
        )
        renders = result["renders"]
        assert isinstance(renders, list)
        if renders:
            ratio = statistics.median(renders) / statistics.median(quiet)
            verdict = "ok" if ratio < TARGET_RATIO else "OVER TARGET"
            print(
                f"  render under storm: median {statistics.median(renders):.2f} s, "
                f"max {max(renders):.2f} s over {len(renders)} jobs; "
                f"{ratio:.2f}x quiet (target < {TARGET_RATIO}x: {verdict})"
            )
        else:
            print("  no job rendered during the storm")
        return 0
    finally:
        watchdog.cancel()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--storm-s", type=float, default=40.0)
    parser.add_argument("--queue-size", type=int, default=4)
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        return run(args, args.work_dir)
    with tempfile.TemporaryDirectory(prefix="heygem-load-") as work:
        return run(args, Path(work))


if __name__ == "__main__":
    raise SystemExit(main())
