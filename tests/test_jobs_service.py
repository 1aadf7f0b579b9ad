"""JobService in-process: real SQLite, real files, FakePipeline (real ffmpeg output)."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import shutil
import sqlite3
import threading
import time
import zipfile

import pytest

from heygem.errors import (
    ForbiddenPathError,
    HeygemError,
    InputError,
    JobNotFoundError,
    ModelError,
    QueueFullError,
    ShuttingDownError,
)
from heygem.jobs import files as job_files
from heygem.jobs import retention
from heygem.jobs.records import JobStatus, NewJob
from heygem.jobs.service import JobService
from heygem.jobs.store import SQLiteJobStore
from heygem.jobs.tenancy import LOCAL
from tests import media
from tests.jobs_support import place_inputs
from tests.kit import WAIT_S, FakePipeline, Pipelines, running_service, wait_until


@pytest.fixture
def inputs(settings, speech_wav, face_video):
    return place_inputs(settings, speech_wav, face_video)


def wait_running(service, job_id):
    return wait_until(lambda: service.get(job_id, principal=LOCAL).status == JobStatus.RUNNING)


# --- one job -------------------------------------------------------------------------------------
def test_single_job_produces_a_real_mp4_atomically(settings, inputs):
    pipelines = Pipelines()
    with running_service(settings, pipelines) as service:
        job = service.submit(str(inputs.audio), str(inputs.video), principal=LOCAL)
        assert job.status == JobStatus.QUEUED
        done = service.wait(job.id, WAIT_S, principal=LOCAL)
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert done.output_path == settings.outputs_dir / job.id / "result.mp4"
    assert sorted(media.stream_types(done.output_path)) == ["audio", "video"]
    assert (done.progress, done.stage, done.attempts, done.engine) == (1.0, "done", 1, "fake")
    assert done.started_at <= done.finished_at
    # Only the finished file is in the job's output folder; no scratch is left behind.
    assert [p.name for p in done.output_path.parent.iterdir()] == ["result.mp4"]
    assert list(job_files.scratch_root(settings).iterdir()) == []
    # The pipeline wrote to a temporary name in the job's scratch folder, never in outputs.
    assert len(pipelines.runs) == 1


def test_output_name_and_watermark_are_recorded(settings, inputs):
    with running_service(settings, Pipelines()) as service:
        job = service.submit(
            str(inputs.audio),
            str(inputs.video),
            {"blend": "rect"},
            output_name="hello",
            watermark="AI generated",
            principal=LOCAL,
        )
        done = service.wait(job.id, WAIT_S, principal=LOCAL)
    assert done.output_path.name == "hello.mp4"
    assert done.options == {"blend": "rect", "watermark": "AI generated"}
    assert done.to_dict()["status"] == "succeeded"
    json.dumps(done.to_dict())


def test_relative_input_paths_mean_the_inputs_folder(settings, inputs):
    with running_service(settings, Pipelines()) as service:
        job = service.submit("speech.wav", "face.mp4", principal=LOCAL)
        assert job.audio == str(inputs.audio.resolve())
        assert service.wait(job.id, WAIT_S, principal=LOCAL).status == JobStatus.SUCCEEDED


def test_progress_is_stored_while_running(settings, inputs):
    with running_service(settings, Pipelines(delay_s=2.0)) as service:
        job = service.submit(str(inputs.audio), str(inputs.video), principal=LOCAL)
        seen = wait_until(lambda: (j := service.get(job.id, principal=LOCAL)).progress > 0.4 and j)
        assert seen.status == JobStatus.RUNNING
        assert seen.stage == "synthesize"
        assert seen.progress < 1.0
        service.cancel(job.id, principal=LOCAL)


def test_job_log_lines_carry_the_job_id(settings, inputs, caplog):
    caplog.set_level(logging.INFO, logger="heygem.jobs")
    with running_service(settings, Pipelines()) as service:
        job = service.submit(str(inputs.audio), str(inputs.video), principal=LOCAL)
        service.wait(job.id, WAIT_S, principal=LOCAL)
    worker_lines = [
        r.getMessage() for r in caplog.records if r.name == "heygem.jobs.worker" and job.id in r.getMessage()
    ]
    assert any("started (attempt 1)" in line for line in worker_lines)
    assert any("succeeded" in line for line in worker_lines)
    assert all(line.startswith(f"job {job.id}: ") for line in worker_lines)


def test_service_lines_about_a_job_carry_its_id(settings, inputs, caplog):
    caplog.set_level(logging.INFO, logger="heygem.jobs")
    with running_service(settings, Pipelines(delay_s=5.0)) as service:
        job = service.submit(str(inputs.audio), str(inputs.video), principal=LOCAL)
        wait_running(service, job.id)
        service.cancel(job.id, principal=LOCAL)
        service.wait(job.id, WAIT_S, principal=LOCAL)
        service.delete(job.id, principal=LOCAL)
    lines = [r.getMessage() for r in caplog.records if r.name == "heygem.jobs.service"]
    for text in ("queued: audio=", "cancel requested", "deleted"):
        assert any(line.startswith(f"job {job.id}: {text}") for line in lines), (text, lines)


# --- bad submissions -----------------------------------------------------------------------------
def test_submissions_outside_the_roots_or_malformed_are_refused(settings, inputs, tmp_path):
    outside = tmp_path / "outside.wav"
    shutil.copy(inputs.audio, outside)
    with running_service(settings, Pipelines()) as service:
        with pytest.raises(ForbiddenPathError, match="outside the allowed input folders"):
            service.submit("/etc/passwd", str(inputs.video), principal=LOCAL)
        with pytest.raises(ForbiddenPathError, match="outside"):
            service.submit("../../etc/passwd", str(inputs.video), principal=LOCAL)
        with pytest.raises(ForbiddenPathError, match="outside"):
            service.submit(str(outside), str(inputs.video), principal=LOCAL)
        with pytest.raises(ForbiddenPathError, match="plain file name"):
            service.submit(str(inputs.audio), str(inputs.video), output_name="a/b.mp4", principal=LOCAL)
        with pytest.raises(InputError, match="video file not found"):
            service.submit(str(inputs.audio), str(settings.inputs_dir / "missing.mp4"), principal=LOCAL)
        with pytest.raises(InputError, match="unknown option"):
            service.submit(str(inputs.audio), str(inputs.video), {"colour": "red"}, principal=LOCAL)
        with pytest.raises(InputError, match="audio is required"):
            service.submit("", str(inputs.video), principal=LOCAL)
        with pytest.raises(ForbiddenPathError):
            service.submit("file:///etc/passwd", str(inputs.video), principal=LOCAL)
        with pytest.raises(ForbiddenPathError, match="output_prefix"):
            service.submit(str(inputs.audio), str(inputs.video), output_prefix="/etc", principal=LOCAL)
        with pytest.raises(ForbiddenPathError, match="unsupported output prefix ftp://host/x/"):
            service.submit(
                str(inputs.audio), str(inputs.video), output_prefix="ftp://host/x/", principal=LOCAL
            )
        assert service.count_jobs(principal=LOCAL) == 0


@pytest.mark.parametrize(
    "prefix,message",
    [
        ("s3://bad bucket/out/", "invalid bucket name 'bad bucket'"),
        ("obs://", "no bucket in obs://"),
        ("://bucket/out/", "must look like s3://bucket/prefix/"),
    ],
)
def test_output_prefixes_storage_cannot_publish_to_are_refused_at_submit(settings, inputs, prefix, message):
    # The same check runs again at publish time: a prefix accepted here must not fail only after rendering.
    item = {"audio": str(inputs.audio), "video": str(inputs.video)}
    with running_service(settings, Pipelines(gate=threading.Event())) as service:
        with pytest.raises(InputError, match=re.escape(message)):
            service.submit(str(inputs.audio), str(inputs.video), output_prefix=prefix, principal=LOCAL)
        with pytest.raises(InputError, match=re.escape(message)):
            service.submit_batch([item], output_prefix=prefix, principal=LOCAL)
        assert service.count_jobs(principal=LOCAL) == 0


def test_output_prefix_is_stored_normalised(settings, inputs, tmp_path):
    mount = tmp_path / "mount"
    settings = settings.replace(input_roots=(mount,))
    with running_service(settings, Pipelines(gate=threading.Event())) as service:
        local = service.submit(
            str(inputs.audio), str(inputs.video), output_prefix=f"{mount}/a/../published/", principal=LOCAL
        )
        remote = service.submit(
            str(inputs.audio), str(inputs.video), output_prefix="s3://media/out/", principal=LOCAL
        )
        blank = service.submit(str(inputs.audio), str(inputs.video), output_prefix="  ", principal=LOCAL)
    assert local.output_prefix == str(mount.resolve() / "published")
    assert (remote.output_prefix, blank.output_prefix) == ("s3://media/out/", None)


def test_batch_errors_name_the_item_and_add_nothing(settings, inputs):
    good = {"audio": str(inputs.audio), "video": str(inputs.video)}
    with running_service(settings, Pipelines()) as service:
        with pytest.raises(ForbiddenPathError, match="^item 2: .*outside"):
            service.submit_batch(
                [good, {"audio": "../../etc/passwd", "video": str(inputs.video)}], principal=LOCAL
            )
        with pytest.raises(ForbiddenPathError, match="^item 1: output_name"):
            service.submit_batch([{**good, "output_name": "x/y.mp4"}], principal=LOCAL)
        with pytest.raises(InputError, match="^item 2: output_name 'same.mp4' is already used by item 1"):
            service.submit_batch(
                [{**good, "output_name": "same"}, {**good, "output_name": "same.mp4"}], principal=LOCAL
            )
        with pytest.raises(InputError, match="at least one item"):
            service.submit_batch([], principal=LOCAL)
        assert service.count_jobs(principal=LOCAL) == 0


# --- bounded queue -------------------------------------------------------------------------------
def test_overload_is_refused_and_nothing_accepted_is_lost(settings, inputs):
    settings = settings.replace(queue_size=3)
    gate = threading.Event()
    pipelines = Pipelines(gate=gate)
    with running_service(settings, pipelines) as service:
        accepted = [service.submit(str(inputs.audio), str(inputs.video), principal=LOCAL) for _ in range(3)]
        with pytest.raises(QueueFullError, match=r"^queue is full \(3 jobs waiting\); try again later$"):
            service.submit(str(inputs.audio), str(inputs.video), principal=LOCAL)
        with pytest.raises(QueueFullError, match="2 jobs need room and 0 places are free"):
            service.submit_batch(
                [{"audio": str(inputs.audio), "video": str(inputs.video)}] * 2, principal=LOCAL
            )
        assert service.queue_depth() == 3 and service.count_jobs(principal=LOCAL) == 3
        gate.set()
        finished = [service.wait(job.id, WAIT_S, principal=LOCAL) for job in accepted]
    assert [job.status for job in finished] == [JobStatus.SUCCEEDED] * 3
    assert len(pipelines.runs) == 3


def test_a_batch_needs_room_for_every_item(settings, inputs):
    settings = settings.replace(queue_size=3)
    item = {"audio": str(inputs.audio), "video": str(inputs.video)}
    with running_service(settings, Pipelines(gate=threading.Event())) as service:
        service.submit(str(inputs.audio), str(inputs.video), principal=LOCAL)
        with pytest.raises(QueueFullError, match="3 jobs need room and 2 places are free"):
            service.submit_batch([item] * 3, principal=LOCAL)
        batch = service.submit_batch([item] * 2, principal=LOCAL)
        assert len(batch.items) == 2
        assert service.queue_depth() == 3


def test_concurrent_submissions_are_accepted_or_cleanly_refused(settings, inputs):
    settings = settings.replace(queue_size=12)
    gate = threading.Event()
    pipelines = Pipelines(gate=gate)
    accepted, refused, other = [], [], []
    lock = threading.Lock()

    def submit_five(service):
        for _ in range(5):
            try:
                job = service.submit(str(inputs.audio), str(inputs.video), principal=LOCAL)
                outcome = accepted
            except QueueFullError as exc:
                job, outcome = exc, refused
            except Exception as exc:  # noqa: BLE001 - any other error is a failure of the test
                job, outcome = exc, other
            with lock:
                outcome.append(job)

    with running_service(settings, pipelines) as service:
        threads = [threading.Thread(target=submit_five, args=(service,)) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert other == []
        assert (len(accepted), len(refused)) == (12, 38)
        assert all("queue is full" in str(exc) for exc in refused)
        assert len({job.id for job in accepted}) == 12
        assert service.count_jobs(principal=LOCAL) == 12
        gate.set()
        finished = [service.wait(job.id, WAIT_S, principal=LOCAL) for job in accepted]
    assert all(job.status == JobStatus.SUCCEEDED for job in finished)
    assert len(pipelines.runs) == 12  # one run per accepted job, none twice
    assert len({job.output_path for job in finished}) == 12


# --- idempotency, cancel, delete -----------------------------------------------------------------
def test_same_idempotency_key_returns_the_same_job(settings, inputs):
    with running_service(settings, Pipelines()) as service:
        first = service.submit(
            str(inputs.audio), str(inputs.video), idempotency_key="client-42", principal=LOCAL
        )
        again = service.submit(
            str(inputs.audio), str(inputs.video), idempotency_key="client-42", principal=LOCAL
        )
        assert again.id == first.id
        assert service.get_by_key("client-42", principal=LOCAL).id == first.id
        other = service.submit(
            str(inputs.audio), str(inputs.video), idempotency_key="client-43", principal=LOCAL
        )
        assert other.id != first.id
        assert service.count_jobs(principal=LOCAL) == 2
        with pytest.raises(JobNotFoundError):
            service.get_by_key("nope", principal=LOCAL)


def test_cancel_a_queued_job_stops_it_from_running(settings, inputs):
    gate = threading.Event()
    pipelines = Pipelines(gate=gate)
    with running_service(settings, pipelines) as service:
        doomed = service.submit(str(inputs.audio), str(inputs.video), principal=LOCAL)
        kept = service.submit(str(inputs.audio), str(inputs.video), principal=LOCAL)
        cancelled = service.cancel(doomed.id, principal=LOCAL)
        assert cancelled.status == JobStatus.CANCELLED
        assert service.wait(doomed.id, 1, principal=LOCAL).status == JobStatus.CANCELLED
        gate.set()
        assert service.wait(kept.id, WAIT_S, principal=LOCAL).status == JobStatus.SUCCEEDED
    assert len(pipelines.runs) == 1
    assert not job_files.output_dir(settings, doomed.id).exists()


def test_cancel_a_running_job(settings, inputs):
    with running_service(settings, Pipelines(delay_s=5.0)) as service:
        job = service.submit(str(inputs.audio), str(inputs.video), principal=LOCAL)
        wait_running(service, job.id)
        requested = service.cancel(job.id, principal=LOCAL)
        assert requested.status == JobStatus.RUNNING and requested.cancel_requested
        done = service.wait(job.id, WAIT_S, principal=LOCAL)
    assert done.status == JobStatus.CANCELLED
    assert done.error == "cancelled by request"
    assert done.output_path is None
    assert not job_files.output_dir(settings, job.id).exists()
    assert list(job_files.scratch_root(settings).iterdir()) == []


def test_unknown_ids_raise_not_found(settings):
    with running_service(settings, Pipelines()) as service:
        for call in (
            service.get,
            service.cancel,
            service.delete,
            service.get_batch,
            service.retry_failed,
            service.batch_zip,
        ):
            with pytest.raises(JobNotFoundError):
                call("0" * 32, principal=LOCAL)


def test_delete_removes_row_and_outputs_but_not_referenced_files(settings, inputs):
    with running_service(settings, Pipelines()) as service:
        first = service.submit(str(inputs.audio), str(inputs.video), principal=LOCAL)
        second = service.submit(str(inputs.audio), str(inputs.video), principal=LOCAL)
        for job in (first, second):
            service.wait(job.id, WAIT_S, principal=LOCAL)
        service.delete(first.id, principal=LOCAL)
        with pytest.raises(JobNotFoundError):
            service.get(first.id, principal=LOCAL)
        assert not job_files.output_dir(settings, first.id).exists()
        service.delete(second.id, principal=LOCAL)
        # The jobs only referenced these operator files in inputs/: they did not upload them.
        assert inputs.audio.exists() and inputs.video.exists()
        assert service.count_jobs(principal=LOCAL) == 0


def test_delete_removes_the_upload_folder_once_no_job_uses_it(settings, speech_wav, face_video):
    upload = settings.inputs_dir / ("ab" * 16)  # one request's folder, as web/uploads makes them
    library = settings.inputs_dir / "library"  # an input root that happens to lie in inputs/
    for folder in (upload, library):
        folder.mkdir(parents=True)
        shutil.copy(speech_wav, folder / "speech.wav")
        shutil.copy(face_video, folder / "face.mp4")
    settings = settings.replace(input_roots=(library,))
    with running_service(settings, Pipelines()) as service:
        first, second = (
            service.submit(
                str(upload / "speech.wav"), str(upload / "face.mp4"), principal=LOCAL, uploaded=[upload]
            )
            for _ in range(2)
        )
        mounted = service.submit(str(library / "speech.wav"), str(library / "face.mp4"), principal=LOCAL)
        for job in (first, second, mounted):
            service.wait(job.id, WAIT_S, principal=LOCAL)
        service.delete(first.id, principal=LOCAL)
        assert sorted(p.name for p in upload.iterdir()) == ["face.mp4", "speech.wav"]  # still used
        service.delete(second.id, principal=LOCAL)
        assert not upload.exists()
        service.delete(mounted.id, principal=LOCAL)
    assert library.is_dir()  # never removed: it is an input root
    assert settings.inputs_dir.is_dir()


def test_delete_of_a_running_job_cancels_it_first(settings, inputs):
    with running_service(settings, Pipelines(delay_s=5.0)) as service:
        job = service.submit(str(inputs.audio), str(inputs.video), principal=LOCAL)
        wait_running(service, job.id)
        service.delete(job.id, principal=LOCAL)
        with pytest.raises(JobNotFoundError):
            service.get(job.id, principal=LOCAL)


def test_list_count_and_delete_all(settings, inputs):
    with running_service(settings, Pipelines(gate=threading.Event())) as service:
        ids = [service.submit(str(inputs.audio), str(inputs.video), principal=LOCAL).id for _ in range(5)]
        assert service.count_jobs(principal=LOCAL) == 5
        assert [job.id for job in service.list_jobs(limit=2, principal=LOCAL)] == ids[::-1][:2]
        assert [job.id for job in service.list_jobs(limit=2, offset=4, principal=LOCAL)] == ids[:1]
        assert service.count_by_status() == {
            "queued": 5,
            "running": 0,
            "succeeded": 0,
            "failed": 0,
            "cancelled": 0,
        }
        assert service.delete_all(principal=LOCAL) == 5
        assert service.count_jobs(principal=LOCAL) == 0 and service.queue_depth() == 0
        assert set(service.count_by_status().values()) == {0}


# --- batches -------------------------------------------------------------------------------------
def test_batch_isolates_a_failure_zips_and_retries_only_that_item(settings, inputs):
    pipelines = Pipelines()
    items = [
        {"audio": str(inputs.audio), "video": str(inputs.video), "output_name": f"clip{i}"} for i in range(5)
    ]
    items[2]["video"] = str(inputs.corrupt)
    with running_service(settings, pipelines) as service:
        batch = service.submit_batch(items, {"blend": "rect"}, principal=LOCAL)
        assert [item.item_index for item in batch.items] == [0, 1, 2, 3, 4]
        for item in batch.items:
            service.wait(item.id, WAIT_S, principal=LOCAL)
        batch = service.get_batch(batch.id, principal=LOCAL)
        assert batch.status == "finished"
        assert [item.status for item in batch.items] == [
            JobStatus.SUCCEEDED,
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.SUCCEEDED,
            JobStatus.SUCCEEDED,
        ]
        assert "corrupt.mp4: no video stream" in batch.items[2].error

        with zipfile.ZipFile(service.batch_zip(batch.id, principal=LOCAL)) as archive:
            names = sorted(archive.namelist())
            summary = json.loads(archive.read("summary.json"))
            table = list(csv.DictReader(io.StringIO(archive.read("summary.csv").decode())))
        assert names == ["clip0.mp4", "clip1.mp4", "clip3.mp4", "clip4.mp4", "summary.csv", "summary.json"]
        assert [row["status"] for row in summary["items"]] == [
            "succeeded",
            "succeeded",
            "failed",
            "succeeded",
            "succeeded",
        ]
        assert "no video stream" in table[2]["error"] and table[0]["error"] == ""

        before = {item.id: item for item in batch.items}
        runs_before = len(pipelines.runs)
        shutil.copy(inputs.video, inputs.corrupt)  # the user fixes the bad file, then retries
        retried = service.retry_failed(batch.id, principal=LOCAL)
        assert retried.items[2].status == JobStatus.QUEUED
        service.wait(batch.items[2].id, WAIT_S, principal=LOCAL)
        after = service.get_batch(batch.id, principal=LOCAL)
        zip_path = service.batch_zip(batch.id, principal=LOCAL)
    assert len(pipelines.runs) == runs_before + 1
    assert after.items[2].status == JobStatus.SUCCEEDED
    for index in (0, 1, 3, 4):
        assert after.items[index].finished_at == before[after.items[index].id].finished_at
        assert after.items[index].attempts == 1
    with zipfile.ZipFile(zip_path) as archive:
        assert sum(name.endswith(".mp4") for name in archive.namelist()) == 5
    assert zip_path.parent == settings.outputs_dir / batch.id


def test_batch_items_get_distinct_default_names(settings, inputs):
    with running_service(settings, Pipelines(gate=threading.Event())) as service:
        batch = service.submit_batch(
            [{"audio": str(inputs.audio), "video": str(inputs.video)}] * 3, principal=LOCAL
        )
    names = [item.output_name for item in batch.items]
    assert names == ["0001_face_speech.mp4", "0002_face_speech.mp4", "0003_face_speech.mp4"]


# --- life cycle ----------------------------------------------------------------------------------
def test_readiness_follows_loading_and_shutdown(settings, inputs):
    gate = threading.Event()
    service = JobService(settings, pipeline_factory=Pipelines(gate=gate))
    assert service.readiness() == (False, "the job service has not started")
    with pytest.raises(ShuttingDownError):
        service.submit(str(inputs.audio), str(inputs.video), principal=LOCAL)
    service.start()
    try:
        assert service.readiness() == (False, "loading the model")
        assert service.engine_status() is None
        queued = service.submit(
            str(inputs.audio), str(inputs.video), principal=LOCAL
        )  # accepted while loading
        gate.set()
        wait_until(lambda: service.readiness()[0])
        assert service.readiness() == (True, "ready")
        assert service.engine_status().engine == "fake"
        assert service.wait(queued.id, WAIT_S, principal=LOCAL).status == JobStatus.SUCCEEDED
    finally:
        service.stop(drain_seconds=5)
    assert service.readiness() == (False, "shutting down")
    with pytest.raises(ShuttingDownError, match="shutting down"):
        service.submit(str(inputs.audio), str(inputs.video), principal=LOCAL)


def test_engine_load_failure_shows_in_readiness_and_refuses_jobs(settings, inputs):
    class Broken(FakePipeline):
        def load(self):
            raise ModelError("no weights at models/wav2lip_gan.pth")

    service = JobService(settings, pipeline_factory=Broken)
    service.start()
    try:
        wait_until(lambda: service.readiness()[1] != "loading the model")
        reason = "the engine failed to load: no weights at models/wav2lip_gan.pth"
        assert service.readiness() == (False, reason)
        with pytest.raises(ModelError, match=f"^{reason}$"):
            service.submit(str(inputs.audio), str(inputs.video), principal=LOCAL)
    finally:
        service.stop(drain_seconds=1)


def test_wait_times_out_with_a_clear_error(settings, inputs):
    with running_service(settings, Pipelines(gate=threading.Event())) as service:
        job = service.submit(str(inputs.audio), str(inputs.video), principal=LOCAL)
        with pytest.raises(TimeoutError, match="still queued"):
            service.wait(job.id, 0.2, principal=LOCAL)


def test_drain_hands_back_a_job_that_cannot_finish(settings, inputs):
    with running_service(settings, Pipelines(delay_s=10.0)) as service:
        job = service.submit(str(inputs.audio), str(inputs.video), principal=LOCAL)
        wait_running(service, job.id)
        service.stop(drain_seconds=0.3)
        handed_back = service.get(job.id, principal=LOCAL)
    assert handed_back.status == JobStatus.QUEUED
    assert handed_back.attempts == 0  # a planned stop does not use up an attempt
    with running_service(settings, Pipelines()) as again:
        done = again.wait(job.id, WAIT_S, principal=LOCAL)
    assert done.status == JobStatus.SUCCEEDED and done.attempts == 1


def test_drain_lets_a_short_job_finish(settings, inputs):
    with running_service(settings, Pipelines(delay_s=0.5)) as service:
        job = service.submit(str(inputs.audio), str(inputs.video), principal=LOCAL)
        wait_running(service, job.id)
        service.stop(drain_seconds=WAIT_S)
        assert service.get(job.id, principal=LOCAL).status == JobStatus.SUCCEEDED


def test_start_recovers_interrupted_jobs_and_gives_up_after_max_attempts(settings, inputs):
    store = SQLiteJobStore(settings.database_path)
    store.open()
    _, (retried, exhausted) = store.add([NewJob(str(inputs.audio), str(inputs.video))] * 2, queue_limit=10)
    assert store.claim().job.id == retried.id  # claimed by a service that then "crashed"
    assert store.claim().job.id == exhausted.id
    with sqlite3.connect(settings.database_path) as conn:
        conn.execute("UPDATE jobs SET attempts = ? WHERE id = ?", (settings.max_attempts, exhausted.id))
    store.close()

    with running_service(settings, Pipelines()) as service:
        done = service.wait(retried.id, WAIT_S, principal=LOCAL)
        gave_up = service.get(exhausted.id, principal=LOCAL)
    assert done.status == JobStatus.SUCCEEDED and done.attempts == 2
    assert gave_up.status == JobStatus.FAILED
    assert gave_up.error == "interrupted 3 times (the service restarted while it ran); giving up"


def test_start_sweeps_stale_temporary_files(settings):
    stale_scratch = job_files.scratch_root(settings) / ("ab" * 16) / "run"
    stale_scratch.mkdir(parents=True)
    (stale_scratch / "half.mp4").write_bytes(b"half")
    finished = settings.outputs_dir / ("cd" * 16)
    finished.mkdir(parents=True)
    (finished / "result.mp4").write_bytes(b"done")
    (finished / job_files.temp_name(".mp4")).write_bytes(b"half")
    with running_service(settings, Pipelines()):
        assert list(job_files.scratch_root(settings).iterdir()) == []
        assert [p.name for p in finished.iterdir()] == ["result.mp4"]


# --- retention -----------------------------------------------------------------------------------
def test_retention_sweep_removes_old_jobs_files_and_uploads(settings, inputs):
    settings = settings.replace(retention_days=2.0)
    with running_service(settings, Pipelines()) as service:
        batch = service.submit_batch(
            [{"audio": str(inputs.audio), "video": str(inputs.video)}], principal=LOCAL
        )
        job = service.wait(batch.items[0].id, WAIT_S, principal=LOCAL)
        zip_path = service.batch_zip(batch.id, principal=LOCAL)
        assert retention.sweep(service.store, settings).empty  # nothing is old yet
        report = retention.sweep(service.store, settings, now=time.time() + 3 * 86400)
        assert report.jobs == [job.id] and report.batches == [batch.id]
        assert set(report.inputs) == {inputs.audio, inputs.video, inputs.corrupt}
        with pytest.raises(JobNotFoundError):
            service.get(job.id, principal=LOCAL)
        with pytest.raises(JobNotFoundError):
            service.get_batch(batch.id, principal=LOCAL)
    assert not job.output_path.exists() and not zip_path.exists()
    assert list(settings.inputs_dir.iterdir()) == []


def test_retention_keeps_uploads_of_waiting_jobs(settings, inputs):
    settings = settings.replace(retention_days=1.0)
    with running_service(settings, Pipelines(gate=threading.Event())) as service:
        service.submit(str(inputs.audio), str(inputs.video), principal=LOCAL)
        report = retention.sweep(service.store, settings, now=time.time() + 2 * 86400)
    assert report.jobs == [] and report.inputs == [inputs.corrupt]
    assert inputs.audio.exists() and inputs.video.exists()


def test_retention_task_runs_on_its_interval(settings, inputs):
    settings = settings.replace(retention_days=1.0, retention_interval_s=0.1)
    with running_service(settings, Pipelines()) as service:
        job = service.wait(
            service.submit(str(inputs.audio), str(inputs.video), principal=LOCAL).id, WAIT_S, principal=LOCAL
        )
        with sqlite3.connect(settings.database_path) as conn:
            conn.execute("UPDATE jobs SET finished_at = ? WHERE id = ?", (time.time() - 2 * 86400, job.id))
        wait_until(lambda: service.count_jobs(principal=LOCAL) == 0)
    assert not job.output_path.exists()


# --- deep readiness check ------------------------------------------------------------------------
class _CountingWarmup(FakePipeline):
    """Its warm-up records the thread it ran on (settings.warmup is off, so only deep checks call it)."""

    gate = threading.Event()

    def __init__(self, settings):
        super().__init__(settings, delay_s=1.0, gate=_CountingWarmup.gate)
        self.warmups: list[str] = []

    def warmup(self):
        self.warmups.append(threading.current_thread().name)
        return 0.25


def test_deep_check_runs_a_warmup_in_the_worker_between_jobs(settings, inputs):
    built = []

    def factory(s):
        built.append(_CountingWarmup(s))
        return built[-1]

    _CountingWarmup.gate = threading.Event()
    service = JobService(settings, pipeline_factory=factory)
    service.start()
    try:
        with pytest.raises(HeygemError, match="^not ready: loading the model$"):
            service.deep_check(1)
        _CountingWarmup.gate.set()
        wait_until(lambda: service.readiness()[0])
        assert service.deep_check(WAIT_S) == 0.25
        job = service.submit(str(inputs.audio), str(inputs.video), principal=LOCAL)
        wait_running(service, job.id)
        with pytest.raises(TimeoutError, match="did not finish within 0.1 s"):
            service.deep_check(0.1)  # the worker is busy with the job
        assert service.deep_check(WAIT_S) == 0.25
        assert service.get(job.id, principal=LOCAL).status == JobStatus.SUCCEEDED  # it waited for the job
    finally:
        service.stop(drain_seconds=5)
    assert built[0].warmups == ["heygem-worker-0"] * 2  # the abandoned probe never ran
    with pytest.raises(HeygemError, match="^not ready: shutting down$"):
        service.deep_check(1)


def test_deep_check_reports_a_failing_inference(settings):
    class Failing(FakePipeline):
        def warmup(self):
            raise RuntimeError("CUDA error: device lost")

    service = JobService(settings, pipeline_factory=Failing)
    service.start()
    try:
        wait_until(lambda: service.readiness()[0])
        with pytest.raises(ModelError, match="^warm-up inference failed: RuntimeError: CUDA error"):
            service.deep_check(WAIT_S)
        assert service.readiness() == (True, "ready")  # one failed probe does not stop the worker
    finally:
        service.stop(drain_seconds=5)
