"""Fleet mode end to end: a real PostgreSQL queue, the real local S3 server and three app processes
(tests/web_server.py: the real app on FakePipeline), each with its own data folder, so nothing is
shared but the database and the object store.

Each instance's fake engine appends the job id of every finished run to one shared run log, which
counts the runs across processes (a duplicate run shows up as a repeated line).
"""

from __future__ import annotations

import io
import shutil
import time
import uuid
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from heygem.jobs.records import JobStatus
from heygem.jobs.tenancy import LOCAL
from tests.kit import RUN_LOG_ENV, FakePipeline, ServerProcess, running_service, wait_until
from tests.s3server import BUCKET

pytest_plugins = ["tests.s3server"]  # the s3_server and aws_env fixtures

pytestmark = pytest.mark.slow

START_S = 90.0  # three servers starting together on a loaded 2-core machine
JOB_S = 90.0
HTTP_S = 30.0
POLL_S = 0.2
ROUND_ROBIN_JOBS = 30
KILL_LEASE_S = 4.0
CANCEL_WITHIN_S = 5.0  # "within a few seconds"
RECOVER_SLACK_S = 30.0  # the bound: lease + 30 s
FAULT_JOBS = 12
EARLY_PROGRESS = 0.55  # the fake's synthesize steps below this leave >= 1.8 s of a 3 s run


@dataclass
class Fleet:
    instances: list[ServerProcess]
    run_log: Path
    prefix: str  # the fleet's key prefix in BUCKET
    s3: object  # a boto3 client on the test server

    def url(self, index: int) -> str:
        return self.instances[index % len(self.instances)].url

    def runs(self) -> Counter[str]:
        if not self.run_log.exists():
            return Counter()
        return Counter(self.run_log.read_text().split())

    def instance(self, name: str) -> ServerProcess:
        return self.instances[int(name.removeprefix("i"))]

    def put_inputs(self, speech: Path, face: Path) -> tuple[str, str]:
        """The media as objects of the test's own (not in the fleet's area); their URLs."""
        folder = f"refs-{uuid.uuid4().hex[:8]}"
        for path in (speech, face):
            self.s3.upload_file(str(path), BUCKET, f"{folder}/{path.name}")
        return f"s3://{BUCKET}/{folder}/{speech.name}", f"s3://{BUCKET}/{folder}/{face.name}"

    def keys(self, area: str) -> list[str]:
        listed = self.s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{self.prefix}{area}/")
        return [item["Key"] for item in listed.get("Contents", [])]


@pytest.fixture
def start_fleet(servers, postgres_url, s3_server, aws_env, tmp_path):
    def start(count: int, **extra: str) -> Fleet:
        prefix = f"fleet-{uuid.uuid4().hex[:8]}/"
        run_log = tmp_path / "runs.log"
        env = {
            "HEYGEM_DATABASE_URL": postgres_url,
            "HEYGEM_STORAGE_URL": f"s3://{BUCKET}/{prefix}",
            "HEYGEM_S3_ENDPOINT": s3_server.endpoint,
            "HEYGEM_S3_REGION": "us-east-1",
            "HEYGEM_RETENTION_DAYS": "0",
            "HEYGEM_WARMUP": "false",
            RUN_LOG_ENV: str(run_log),
            **s3_server.env(),
            **extra,
        }
        instances = [
            servers(tmp_path / f"i{n}", env={**env, "HEYGEM_INSTANCE_ID": f"i{n}"}) for n in range(count)
        ]
        for instance in instances:
            instance.wait_for("/ready", 200, START_S)
        return Fleet(instances, run_log, prefix, s3_server.client())

    return start


def submit(url: str, speech: bytes, face: bytes) -> str:
    files = {"audio": ("speech.wav", speech, "audio/wav"), "video": ("face.mp4", face, "video/mp4")}
    answer = httpx.post(f"{url}/api/v1/jobs", files=files, timeout=HTTP_S)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def job(url: str, job_id: str) -> dict:
    answer = httpx.get(f"{url}/api/v1/jobs/{job_id}", timeout=HTTP_S)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def wait_status(url: str, job_id: str, statuses: set[str], timeout: float = JOB_S) -> dict:
    return wait_until(
        lambda: (found := job(url, job_id))["status"] in statuses and found,
        timeout,
        interval=POLL_S,
        message=lambda: f"job {job_id} to become {statuses}: {job(url, job_id)}",
    )


def fleet_view(url: str) -> dict[str, dict]:
    answer = httpx.get(f"{url}/api/v1/fleet", timeout=HTTP_S)
    assert answer.status_code == 200, answer.text
    return {item["id"]: item for item in answer.json()["instances"]}


def early_run(fleet: Fleet, names: tuple[str, ...]) -> tuple[str, str]:
    """(instance, job) for a job one of `names` runs, once it is early in the engine's stage (at
    least 1.8 s of the fake's run left): a cancel, a kill or a drain then surely cuts it short."""

    def early() -> tuple[str, str] | None:
        view = fleet_view(fleet.url(0))
        progress = {
            item["id"]: item
            for item in httpx.get(f"{fleet.url(0)}/api/v1/jobs?limit=100", timeout=HTTP_S).json()["jobs"]
        }
        for name in names:
            for job_id in view.get(name, {}).get("current_jobs", []):
                found = progress.get(job_id)
                if found and found["stage"] == "synthesize" and found["progress"] < EARLY_PROGRESS:
                    return name, job_id
        return None

    return wait_until(early, JOB_S, interval=0.05, message=f"a job early in its run on {names}")


def submit_refs(url: str, audio: str, video: str) -> str:
    answer = httpx.post(f"{url}/api/v1/jobs", json={"audio": audio, "video": video}, timeout=HTTP_S)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def metric(url: str, line_start: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=HTTP_S).text
    (line,) = [line for line in text.splitlines() if line.startswith(line_start + " ")]
    return float(line.split()[-1])


def test_thirty_jobs_over_three_instances_run_once_each_and_are_served_everywhere(
    start_fleet, speech_wav, face_video
):
    fleet = start_fleet(3)
    speech, face = speech_wav.read_bytes(), face_video.read_bytes()
    started = time.monotonic()
    ids = [submit(fleet.url(n), speech, face) for n in range(ROUND_ROBIN_JOBS)]
    submitted = time.monotonic()

    # Each job is polled on another instance than the one that took it.
    done = [wait_status(fleet.url(n + 1), job_id, {"succeeded", "failed"}) for n, job_id in enumerate(ids)]
    took = time.monotonic() - started
    print(f"\n{ROUND_ROBIN_JOBS} jobs: submitted in {submitted - started:.1f} s, all done after {took:.1f} s")
    assert [item["status"] for item in done] == ["succeeded"] * ROUND_ROBIN_JOBS, done
    assert {item["attempts"] for item in done} == {1}
    assert fleet.runs() == Counter(ids)  # every job ran exactly once, fleet-wide

    results = fleet.keys("outputs")
    assert sorted(key.split("/")[-2] for key in results) == sorted(ids)  # one object per job
    for n, job_id in enumerate(ids):
        served = httpx.get(f"{fleet.url(n + 2)}/api/v1/jobs/{job_id}/result", timeout=HTTP_S)
        assert served.status_code == 200, served.text
        (key,) = [key for key in results if f"/{job_id}/" in key]
        assert served.content == fleet.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert served.content[4:8] == b"ftyp"  # an mp4

    # The work was spread, and uploads went to the store, not to one instance's disk.
    workers = [i for i in fleet.instances if any((i.data_dir / "outputs").glob("*/*.mp4"))]
    assert len(workers) >= 2
    assert not any(path.is_file() for i in fleet.instances for path in (i.data_dir / "inputs").rglob("*"))
    assert len(fleet.keys("inputs")) == 2 * ROUND_ROBIN_JOBS

    # Fleet-wide signals from any instance; this instance's own worker state.
    view = fleet_view(fleet.url(1))
    assert sorted(view) == ["i0", "i1", "i2"] and all(item["alive"] for item in view.values())
    assert metric(fleet.url(2), 'heygem_jobs{status="succeeded"}') == ROUND_ROBIN_JOBS
    assert metric(fleet.url(0), "heygem_queue_depth") == 0
    assert metric(fleet.url(0), "heygem_oldest_queued_age_seconds") == 0
    assert metric(fleet.url(0), 'heygem_instance_workers{state="idle"}') == 1

    # Deleting through any instance removes the result from the store too.
    gone = httpx.delete(f"{fleet.url(1)}/api/v1/jobs/{ids[0]}", timeout=HTTP_S)
    assert gone.status_code == 200 and gone.json()["deleted"] is True
    assert not any(f"/{ids[0]}/" in key for key in fleet.keys("outputs"))  # deleted fleet-wide
    for instance in fleet.instances:
        instance.stop_cleanly()


def test_a_batch_zip_collects_results_made_on_other_instances(start_fleet, speech_wav, face_video):
    fleet = start_fleet(2, HEYGEM_FAKE_DELAY_S="0.3")
    files = [
        ("audio", ("speech.wav", speech_wav.read_bytes(), "audio/wav")),
        *[("video", (f"face{n}.mp4", face_video.read_bytes(), "video/mp4")) for n in range(4)],
    ]
    answer = httpx.post(f"{fleet.url(0)}/api/v1/batches", files=files, timeout=HTTP_S)
    assert answer.status_code == 202, answer.text
    batch_id = answer.json()["id"]

    def finished() -> dict | None:
        batch = httpx.get(f"{fleet.url(1)}/api/v1/batches/{batch_id}", timeout=HTTP_S).json()
        return batch if all(item["status"] == "succeeded" for item in batch["items"]) else None

    batch = wait_until(finished, JOB_S, interval=POLL_S, message="the batch")
    for index in range(2):
        archive = httpx.get(f"{fleet.url(index)}/api/v1/batches/{batch_id}/zip", timeout=HTTP_S)
        assert archive.status_code == 200, archive.text
        names = zipfile.ZipFile(io.BytesIO(archive.content)).namelist()
        assert sorted(n for n in names if n.endswith(".mp4")) == sorted(
            i["output_name"] for i in batch["items"]
        )


def test_cancel_sigterm_and_kill_lose_nothing_and_run_nothing_twice(start_fleet, speech_wav, face_video):
    fleet = start_fleet(
        3,
        HEYGEM_FAKE_DELAY_S="3",
        HEYGEM_LEASE_S=str(KILL_LEASE_S),
        HEYGEM_DRAIN_SECONDS="0.5",
    )
    # Inputs named by reference (outside the fleet's own area): submitting is quick, so the
    # queue is full while instances are stopped.
    refs = fleet.put_inputs(speech_wav, face_video)
    ids = [submit_refs(fleet.url(n), *refs) for n in range(FAULT_JOBS)]

    # A cancel received by one instance stops the run on another within a few seconds.
    runner, cancelled = early_run(fleet, ("i0", "i1", "i2"))
    other = next(n for n in range(3) if f"i{n}" != runner)
    asked = time.monotonic()
    answer = httpx.delete(f"{fleet.url(other)}/api/v1/jobs/{cancelled}", timeout=HTTP_S)
    assert answer.status_code == 200 and answer.json()["deleted"] is False
    wait_status(fleet.url(0), cancelled, {"cancelled"}, CANCEL_WITHIN_S)
    print(f"\ncross-instance cancel ({runner} ran it, i{other} got it) took {time.monotonic() - asked:.2f} s")

    # SIGTERM i1 or i2 while jobs wait, early in a run that outlasts the drain window: it hands
    # the run back and leaves the fleet list; the others take the queue.
    stopped, handed_back = early_run(fleet, ("i1", "i2"))
    assert fleet.instance(stopped).terminate() == 0
    assert stopped not in fleet_view(fleet.url(0))
    assert f"job {handed_back}: not finished within the drain window" in fleet.instance(stopped).log()

    # kill -9 the other one early in a run: its job finishes on i0 within lease + 30 s.
    doomed = "i2" if stopped == "i1" else "i1"
    _, lost = early_run(fleet, (doomed,))
    fleet.instance(doomed).kill()
    killed = time.monotonic()
    recovered = wait_status(fleet.url(0), lost, {"succeeded", "failed"}, KILL_LEASE_S + RECOVER_SLACK_S)
    assert recovered["status"] == "succeeded" and recovered["attempts"] == 2
    print(f"the killed instance's job finished on i0 {time.monotonic() - killed:.2f} s after the kill")
    assert fleet_view(fleet.url(0))[doomed]["alive"] is False

    rest = [job_id for job_id in ids if job_id != cancelled]
    finished = [wait_status(fleet.url(0), job_id, {"succeeded", "failed"}) for job_id in rest]
    assert [item["status"] for item in finished] == ["succeeded"] * len(rest), finished
    # A planned stop is not the job's fault; the kill is, when the handed-back job was the one the
    # killed instance happened to take next.
    assert job(fleet.url(0), handed_back)["attempts"] == (2 if handed_back == lost else 1)
    assert fleet.runs() == Counter(rest)  # none twice, none lost; the cancelled one never finished
    assert sorted(key.split("/")[-2] for key in fleet.keys("outputs")) == sorted(rest)
    fleet.instances[0].stop_cleanly()


def test_an_avatar_prepared_on_one_instance_runs_on_another_without_detecting_again(
    settings, postgres_url, s3_server, aws_env, speech_wav, face_video, tmp_path
):
    prefix = f"fleet-{uuid.uuid4().hex[:8]}/"
    shared = dict(
        database_url=postgres_url,
        storage_url=f"s3://{BUCKET}/{prefix}",
        s3_endpoint=s3_server.endpoint,
        s3_region="us-east-1",
        retention_days=0.0,
    )
    first = settings.replace(data_dir=tmp_path / "a", instance_id="a", **shared)
    second = settings.replace(data_dir=tmp_path / "b", instance_id="b", **shared)
    first.inputs_dir.mkdir(parents=True)
    with running_service(first, FakePipeline) as service:
        made = service.create_avatar("Anna", shutil.copy(face_video, first.inputs_dir), principal=LOCAL)
        ready = wait_until(
            lambda: (found := service.get_avatar(made.id, principal=LOCAL)).status != "preparing" and found,
            JOB_S,
            message="the avatar",
        )
        assert ready.status == "ready", ready.error
    assert not second.avatars_dir.exists() and not second.track_cache_dir.exists()

    s3 = s3_server.client()
    s3.upload_file(str(speech_wav), BUCKET, f"refs-{prefix}speech.wav")
    with running_service(second, FakePipeline) as service:
        job = service.submit(f"s3://{BUCKET}/refs-{prefix}speech.wav", ready.ref, principal=LOCAL)
        done = service.wait(job.id, JOB_S, principal=LOCAL)
    assert done.status == JobStatus.SUCCEEDED, done.error
    # b fetched a's avatar and a's face track: the engine there finds the detections cached.
    assert (second.avatars_dir / ready.id / ready.media.name).read_bytes() == ready.media.read_bytes()
    assert (second.track_cache_dir / f"{ready.track_key}.json").is_file()
