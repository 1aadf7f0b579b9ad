"""HTTP API through FastAPI's TestClient, on a real JobService (SQLite) with the fake pipeline."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import sqlite3
import threading
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from heygem.engine.api import OPTION_NAMES, SyncOptions, option_default, option_specs
from heygem.web.api import INTERNAL_ERROR
from heygem.web.metrics import RECENT_SCAN
from heygem.web.server import create_app
from tests import media
from tests.kit import FakePipeline, Pipelines, wait_until

JOB_TIMEOUT_S = 60.0
MB = 1 << 20


@pytest.fixture
def gate():
    gate = threading.Event()
    yield gate
    gate.set()  # never leave a worker thread blocked


@pytest.fixture
def gated(gate):
    """A pipeline factory whose load() waits for the test to open the gate: a model that is 'loading'."""
    return Pipelines(gate=gate)


@pytest.fixture
def start(start_service):
    """start(settings, factory=FakePipeline, **client_kwargs) -> (service, TestClient); the
    service is stopped at teardown."""

    def start(settings, factory=FakePipeline, **client_kwargs):
        service = start_service(settings, factory)
        return service, TestClient(create_app(settings, service, ui=False), **client_kwargs)

    return start


@pytest.fixture
def client(settings, start):
    _, client = start(settings)
    with client:
        yield client


def wait_job(client: TestClient, job_id: str, headers: dict | None = None) -> dict:
    last: list[dict] = []

    def finished():
        last[:] = [client.get(f"/api/v1/jobs/{job_id}", headers=headers).json()]
        return last[0] if last[0]["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_until(finished, JOB_TIMEOUT_S, message=lambda: f"job {job_id} to finish: {last}")


def wait_batch(client: TestClient, batch_id: str) -> dict:
    last: list[dict] = []

    def finished():
        last[:] = [client.get(f"/api/v1/batches/{batch_id}").json()]
        return last[0] if last[0]["status"] == "finished" else None

    return wait_until(finished, JOB_TIMEOUT_S, message=lambda: f"batch {batch_id} to finish: {last}")


def upload(client: TestClient, audio: Path, video: Path, headers=None, **fields):
    with open(audio, "rb") as a, open(video, "rb") as v:
        return client.post(
            "/api/v1/jobs",
            headers=headers,
            data=fields,
            files={"audio": (audio.name, a, "audio/wav"), "video": (video.name, v, "video/mp4")},
        )


def assert_one_line_error(response, code: int) -> str:
    assert response.status_code == code, response.text
    body = response.json()
    assert set(body) == {"detail"}
    assert body["detail"] and "\n" not in body["detail"] and "Traceback" not in body["detail"]
    return body["detail"]


# --- probes ----------------------------------------------------------------------------------------


def test_health_answers_while_the_model_is_still_loading(settings, gate, start, gated):
    service, client = start(settings, factory=gated)
    with client:
        assert client.get("/health").json() == {"health": "true"}
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["ready"] is False and ready.json()["reason"]
        gate.set()
        wait_until(lambda: client.get("/ready").status_code == 200, JOB_TIMEOUT_S, message="/ready")
        assert client.get("/ready").json() == {"ready": True, "reason": "ready"}


def test_ready_is_503_while_draining(settings, start):
    service, client = start(settings)
    with client:
        client.app.state.heygem.draining.set()
        response = client.get("/ready")
        assert response.status_code == 503 and response.json()["reason"] == "draining"
        assert client.get("/health").status_code == 200


def test_deep_ready_runs_one_inference_and_reports_its_latency(client):
    response = client.get("/ready", params={"deep": 1})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ready"] is True and body["latency_ms"] >= 0 and body["inference_ms"] >= 0


def test_deep_ready_refuses_while_loading(settings, start, gated):
    service, client = start(settings, factory=gated)
    with client:
        response = client.get("/ready", params={"deep": 1})
        assert response.status_code == 503 and response.json()["ready"] is False


class CountingPipeline(FakePipeline):
    """Reports a frame count, as the real engine does (the fake muxes and reports 0)."""

    FRAMES = 1234  # not the file's real count: the gauge must come from the job record

    def run(self, *args, **kwargs):
        return dataclasses.replace(super().run(*args, **kwargs), frames=self.FRAMES)


def test_metrics_expose_jobs_queue_duration_and_fps(settings, speech_wav, face_video, start):
    service, client = start(settings, factory=CountingPipeline)
    with client:
        job = upload(client, speech_wav, face_video).json()
        done = wait_job(client, job["id"])
        assert done["status"] == "succeeded"
        assert done["frames"] == CountingPipeline.FRAMES and done["run_seconds"] > 0
        response = client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        text = response.text
        assert 'heygem_jobs{status="succeeded"} 1.0' in text
        assert "heygem_queue_depth 0.0" in text
        assert 'heygem_job_duration_seconds_count{status="succeeded"} 1.0' in text
        fps = [line for line in text.splitlines() if line.startswith("heygem_frames_per_second ")]
        assert float(fps[0].split()[1]) == pytest.approx(CountingPipeline.FRAMES / done["run_seconds"])
        # A second scrape does not count the same job twice.
        again = client.get("/metrics").text
    assert 'heygem_job_duration_seconds_count{status="succeeded"} 1.0' in again


def test_metrics_count_jobs_with_one_query_not_by_paging(settings, speech_wav, face_video, start):
    service, client = start(settings)
    with client:
        for _ in range(2):
            assert (
                wait_job(client, upload(client, speech_wav, face_video).json()["id"])["status"] == "succeeded"
            )
        pages = []
        real_list_jobs = service.list_jobs

        def list_jobs(limit=20, offset=0, *, principal):
            pages.append((limit, offset))
            return real_list_jobs(limit=limit, offset=offset, principal=principal)

        service.list_jobs = list_jobs
        text = client.get("/metrics").text
    assert 'heygem_jobs{status="succeeded"} 2.0' in text and 'heygem_jobs{status="failed"} 0.0' in text
    assert pages == [(RECENT_SCAN, 0)]  # only the look for newly finished jobs


# --- submit, poll, download ------------------------------------------------------------------------


def test_multipart_submit_poll_and_download(client, speech_wav, face_video, tmp_path):
    response = upload(client, speech_wav, face_video, options=json.dumps({"blend": "rect"}))
    assert response.status_code == 202, response.text
    job = response.json()
    assert len(job["id"]) == 32 and job["status"] in ("queued", "running")
    assert job["result_url"] is None
    done = wait_job(client, job["id"])
    assert done["status"] == "succeeded" and done["error"] is None
    assert done["options"]["blend"] == "rect" and done["engine"] == "fake"
    assert done["result_url"] == f"/api/v1/jobs/{job['id']}/result"
    for key in (
        "progress",
        "stage",
        "attempts",
        "created_at",
        "finished_at",
        "frames_without_face",
        "output_url",
        "presigned_url",
    ):
        assert key in done
    assert "output_path" not in done
    result = client.get(done["result_url"])
    assert result.status_code == 200
    assert result.headers["content-type"] == "video/mp4"
    saved = tmp_path / "result.mp4"
    saved.write_bytes(result.content)
    assert media.stream_types(saved) == ["video", "audio"]


def test_presigned_url_is_signed_again_on_every_read(settings, monkeypatch, speech_wav, face_video, start):
    """A link signed once at the end of the job would expire; each read signs a fresh one."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDPRESIGNTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    settings = settings.replace(s3_endpoint="http://127.0.0.1:9", s3_region="us-east-1", presign_seconds=120)
    stale = "http://127.0.0.1:9/media/out/a.mp4?X-Amz-Expires=1&X-Amz-Signature=old"
    service, client = start(settings)
    with client:
        job = upload(client, speech_wav, face_video).json()
        # Another request's upload is not an input any more: the batch names server files.
        shutil.copy(speech_wav, settings.inputs_dir / "speech.wav")
        shutil.copy(face_video, settings.inputs_dir / "face.mp4")
        batch = client.post(
            "/api/v1/batches", json={"items": [{"audio": "speech.wav", "video": "face.mp4"}]}
        ).json()
        ids = [job["id"], batch["items"][0]["id"]]
        for job_id in ids:
            assert wait_job(client, job_id)["status"] == "succeeded"
        with sqlite3.connect(settings.database_path) as db:  # as if published to object storage
            db.execute("UPDATE jobs SET output_url = 's3://media/out/a.mp4', presigned_url = ?", (stale,))
        views = [
            client.get(f"/api/v1/jobs/{job['id']}").json(),
            client.get("/api/v1/jobs").json()["jobs"][0],
            client.get(f"/api/v1/batches/{batch['id']}").json()["items"][0],
        ]
        for view in views:
            fresh = view["presigned_url"]
            assert fresh.startswith("http://127.0.0.1:9/media/out/a.mp4?"), view
            assert "X-Amz-Expires=120" in fresh and "AKIDPRESIGNTEST" in fresh
        # Presigning impossible (no credentials): the link stored at finish is the fallback.
        monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
        assert client.get(f"/api/v1/jobs/{job['id']}").json()["presigned_url"] == stale


def test_result_is_served_when_only_publishing_failed(settings, tmp_path, speech_wav, face_video, start):
    """The mp4 was made and kept; the job says failed (the upload error) and still links it."""
    mount = tmp_path / "obs-mount"
    mount.mkdir()
    (mount / "blocked").write_bytes(b"a file where the result folder should be")
    settings = settings.replace(input_roots=(mount,))
    settings.inputs_dir.mkdir(parents=True)
    shutil.copy(speech_wav, settings.inputs_dir / "speech.wav")
    shutil.copy(face_video, settings.inputs_dir / "face.mp4")
    (settings.inputs_dir / "broken.mp4").write_bytes(b"not a video" * 100)
    service, client = start(settings, factory=CountingPipeline)
    with client:
        unpublished = client.post(
            "/api/v1/jobs",
            json={
                "audio": "speech.wav",
                "video": "face.mp4",
                "output_name": "kept.mp4",
                "output_prefix": str(mount / "blocked" / "out"),
            },
        ).json()
        broken = client.post("/api/v1/jobs", json={"audio": "speech.wav", "video": "broken.mp4"}).json()
        done = wait_job(client, unpublished["id"])
        assert done["status"] == "failed"
        assert done["error"].startswith("cannot copy kept.mp4 to ") and done["output_url"] is None
        assert done["frames"] == CountingPipeline.FRAMES  # the run itself completed
        assert done["result_url"] == f"/api/v1/jobs/{done['id']}/result"
        result = client.get(done["result_url"])
        assert result.status_code == 200 and result.headers["content-type"] == "video/mp4"
        assert 'filename="kept.mp4"' in result.headers["content-disposition"]
        saved = tmp_path / "kept.mp4"
        saved.write_bytes(result.content)
        assert sorted(media.stream_types(saved)) == ["audio", "video"]
        # A job that failed before its video existed still has nothing to serve.
        failed = wait_job(client, broken["id"])
        assert failed["status"] == "failed" and failed["result_url"] is None
        assert "is failed" in assert_one_line_error(client.get(f"/api/v1/jobs/{broken['id']}/result"), 409)
        # Tampered paths are still refused: only files inside the outputs folder are served.
        with sqlite3.connect(settings.database_path) as db:
            db.execute(
                "UPDATE jobs SET output_path = ? WHERE id = ?", (str(settings.database_path), done["id"])
            )
        assert_one_line_error(client.get(done["result_url"]), 403)


def test_json_submit_with_server_paths_and_output_name(client, settings, speech_wav, face_video):
    folder = settings.inputs_dir / "clips"
    folder.mkdir(parents=True)
    shutil.copy(speech_wav, folder / "speech.wav")
    shutil.copy(face_video, folder / "face.mp4")
    response = client.post(
        "/api/v1/jobs",
        json={
            "audio": str(folder / "speech.wav"),
            "video": "clips/face.mp4",
            "options": {"duration_policy": "pingpong"},
            "output_name": "hello",
        },
    )
    assert response.status_code == 202, response.text
    done = wait_job(client, response.json()["id"])
    assert done["status"] == "succeeded" and done["output_name"] == "hello.mp4"
    result = client.get(done["result_url"])
    assert 'filename="hello.mp4"' in result.headers["content-disposition"]


def test_list_jobs_newest_first_with_paging(client, settings, speech_wav, face_video):
    ids = [upload(client, speech_wav, face_video).json()["id"] for _ in range(3)]
    listing = client.get("/api/v1/jobs", params={"limit": 2}).json()
    assert listing["total"] == 3 and listing["limit"] == 2
    assert [job["id"] for job in listing["jobs"]] == ids[::-1][:2]
    rest = client.get("/api/v1/jobs", params={"limit": 2, "offset": 2}).json()
    assert [job["id"] for job in rest["jobs"]] == ids[:1]
    assert_one_line_error(client.get("/api/v1/jobs", params={"limit": 0}), 400)


def test_delete_cancels_a_queued_job_and_deletes_a_finished_one(
    settings, gate, speech_wav, face_video, start, gated
):
    service, client = start(settings, factory=gated)
    with client:
        queued = upload(client, speech_wav, face_video).json()
        cancelled = client.delete(f"/api/v1/jobs/{queued['id']}").json()
        assert cancelled["deleted"] is False and cancelled["job"]["status"] == "cancelled"
        gate.set()
        finished = upload(client, speech_wav, face_video).json()
        assert wait_job(client, finished["id"])["status"] == "succeeded"
        shown = Path(finished["audio"])
        assert not shown.is_absolute()  # job JSON names paths relative to the data folder
        upload_folder = settings.data_dir / shown.parent
        assert upload_folder.parent == settings.inputs_dir
        assert client.delete(f"/api/v1/jobs/{finished['id']}").json() == {
            "deleted": True,
            "id": finished["id"],
        }
        assert_one_line_error(client.get(f"/api/v1/jobs/{finished['id']}"), 404)
        assert not upload_folder.exists()  # no empty inputs/<uuid>/ left behind


# --- batches ---------------------------------------------------------------------------------------


def test_json_batch_status_zip_and_retry(client, settings, speech_wav, face_video):
    folder = settings.inputs_dir
    shutil.copy(speech_wav, folder / "speech.wav")
    shutil.copy(face_video, folder / "face.mp4")
    (folder / "broken.mp4").write_bytes(b"not a video")
    items = [
        {"audio": "speech.wav", "video": "face.mp4", "output_name": "one.mp4"},
        {"audio": "speech.wav", "video": "face.mp4", "output_name": "two.mp4"},
        {"audio": "speech.wav", "video": "broken.mp4", "output_name": "bad.mp4"},
    ]
    response = client.post("/api/v1/batches", json={"items": items, "options": {"smooth": False}})
    assert response.status_code == 202, response.text
    batch = wait_batch(client, response.json()["id"])
    assert batch["counts"]["succeeded"] == 2 and batch["counts"]["failed"] == 1
    bad = next(item for item in batch["items"] if item["output_name"] == "bad.mp4")
    assert bad["error"] and "\n" not in bad["error"]
    archive = client.get(batch["zip_url"])
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(archive.content)).namelist()
    assert {"one.mp4", "two.mp4"} <= {Path(n).name for n in names}
    retried = client.post(f"/api/v1/batches/{batch['id']}/retry")
    assert retried.status_code == 202
    statuses = {i["output_name"]: i["status"] for i in retried.json()["items"]}
    assert statuses["one.mp4"] == "succeeded" and statuses["bad.mp4"] in ("queued", "running")
    again = wait_batch(client, batch["id"])
    assert again["counts"] == batch["counts"]


def test_multipart_batch_one_audio_many_videos(client, speech_wav, face_video, face_image):
    with open(speech_wav, "rb") as a, open(face_video, "rb") as v, open(face_image, "rb") as p:
        response = client.post(
            "/api/v1/batches",
            files=[
                ("audio", ("speech.wav", a, "audio/wav")),
                ("video", ("face.mp4", v, "video/mp4")),
                ("video", ("photo.png", p, "image/png")),
            ],
        )
    assert response.status_code == 202, response.text
    batch = response.json()
    assert len(batch["items"]) == 2
    assert [Path(i["video"]).name for i in batch["items"]] == ["face.mp4", "photo.png"]
    assert Path(batch["items"][0]["audio"]) == Path(batch["items"][1]["audio"])


def test_multipart_batch_manifest_names_its_uploads(client, speech_wav, face_video):
    manifest = "\n".join(
        json.dumps(line)
        for line in [
            {"audio": "speech.wav", "video": "face.mp4", "output_name": "first"},
            {"audio": "speech.wav", "video": "face.mp4", "output_name": "second"},
        ]
    ).encode()
    with open(speech_wav, "rb") as a, open(face_video, "rb") as v:
        response = client.post(
            "/api/v1/batches",
            files=[
                ("manifest", ("batch.jsonl", io.BytesIO(manifest), "application/jsonl")),
                ("audio", ("speech.wav", a, "audio/wav")),
                ("video", ("face.mp4", v, "video/mp4")),
            ],
        )
    assert response.status_code == 202, response.text
    batch = wait_batch(client, response.json()["id"])
    assert [i["output_name"] for i in batch["items"]] == ["first.mp4", "second.mp4"]
    assert batch["counts"]["succeeded"] == 2


def test_multipart_batch_refuses_mismatched_counts(client, speech_wav, face_video):
    with open(speech_wav, "rb") as a, open(face_video, "rb") as v:
        data = a.read(), v.read()
    response = client.post(
        "/api/v1/batches",
        files=[
            ("audio", ("a1.wav", data[0], "audio/wav")),
            ("audio", ("a2.wav", data[0], "audio/wav")),
            ("video", ("v1.mp4", data[1], "video/mp4")),
            ("video", ("v2.mp4", data[1], "video/mp4")),
            ("video", ("v3.mp4", data[1], "video/mp4")),
        ],
    )
    assert "2 audio files for 3 videos" in assert_one_line_error(response, 400)


# --- limits and errors -----------------------------------------------------------------------------


def test_queue_full_is_429(settings, speech_wav, face_video, start, gated):
    service, client = start(settings.replace(queue_size=2), factory=gated)
    with client:
        for _ in range(2):
            assert upload(client, speech_wav, face_video).status_code == 202
        response = upload(client, speech_wav, face_video)
        assert "queue" in assert_one_line_error(response, 429).lower()
        assert response.headers["retry-after"]


def test_upload_over_the_size_limit_is_413_and_leaves_nothing(settings, speech_wav, start):
    service, client = start(settings.replace(max_upload_mb=1))
    big = bytes(3 * MB)
    with client:
        # Declared length over the bound: refused before reading the body.
        response = client.post(
            "/api/v1/jobs", files={"audio": ("a.wav", big, "audio/wav"), "video": ("v.mp4", big, "video/mp4")}
        )
        assert "limit" in assert_one_line_error(response, 413)
        # Within the declared bound but one file over the per-file limit: refused while streaming.
        response = client.post(
            "/api/v1/jobs",
            files={
                "audio": ("a.wav", speech_wav.read_bytes(), "audio/wav"),
                "video": ("v.mp4", bytes(int(1.5 * MB)), "video/mp4"),
            },
        )
        assert "v.mp4" in assert_one_line_error(response, 413)
    assert not any(p.is_file() for p in settings.inputs_dir.rglob("*"))


def test_audio_over_the_duration_limit_is_413(settings, speech_wav, face_video, start):
    service, client = start(settings.replace(max_duration_s=1.0))
    with client:
        detail = assert_one_line_error(upload(client, speech_wav, face_video), 413)
        assert "speech.wav" in detail and "the limit is 1 s" in detail


def test_bad_requests_are_400_with_the_problem_named(client, speech_wav, face_video):
    assert "options" in assert_one_line_error(
        upload(client, speech_wav, face_video, options="{not json"), 400
    )
    assert "unknown option" in assert_one_line_error(
        upload(client, speech_wav, face_video, options='{"colour": "red"}'), 400
    )
    assert "JSON" in assert_one_line_error(
        client.post("/api/v1/jobs", content=b"{", headers={"content-type": "application/json"}), 400
    )
    assert "audio" in assert_one_line_error(client.post("/api/v1/jobs", json={"video": "x.mp4"}), 400)
    with open(face_video, "rb") as v:
        missing = client.post("/api/v1/jobs", files={"video": ("v.mp4", v, "video/mp4")})
    assert "audio" in assert_one_line_error(missing, 400)
    assert assert_one_line_error(client.post("/api/v1/batches", json={"items": []}), 400)


def test_bearer_token_guards_the_api_but_not_the_probes(settings, speech_wav, face_video, start):
    service, client = start(settings.replace(api_token="s3cret"))
    with client:
        for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = client.get("/api/v1/jobs", headers=headers)
            assert_one_line_error(response, 401)
            assert response.headers["www-authenticate"] == "Bearer"
        assert_one_line_error(upload(client, speech_wav, face_video), 401)
        good = {"Authorization": "Bearer s3cret"}
        job = upload(client, speech_wav, face_video, headers=good)
        assert job.status_code == 202
        assert wait_job(client, job.json()["id"], headers=good)["status"] == "succeeded"
        for path in ("/health", "/ready", "/metrics"):
            assert client.get(path).status_code in (200, 503)
            assert client.get(path).status_code != 401


def test_unknown_ids_are_404(client):
    unknown = "0123456789abcdef0123456789abcdef"
    for path in (
        f"/api/v1/jobs/{unknown}",
        f"/api/v1/jobs/{unknown}/result",
        f"/api/v1/batches/{unknown}",
        f"/api/v1/batches/{unknown}/zip",
    ):
        assert unknown in assert_one_line_error(client.get(path), 404)
    assert_one_line_error(client.delete(f"/api/v1/jobs/{unknown}"), 404)


TRAVERSALS = [
    "/api/v1/jobs/../../heygem.db",
    "/api/v1/jobs/..%2f..%2fheygem.db/result",
    "/api/v1/jobs/%2e%2e%2f%2e%2e%2fheygem.db/result",
    "/api/v1/jobs/%2e%2e/result",
    "/api/v1/jobs/..%5c..%5cheygem.db/result",
    "/api/v1/jobs/%2fetc%2fpasswd/result",
    "/api/v1/batches/%2e%2e%2f%2e%2e/zip",
    "/api/v1/jobs/0123456789ABCDEF0123456789ABCDEF/result",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_path_traversal_in_urls_is_refused(client, path):
    response = client.get(path)
    assert response.status_code in (400, 404), (path, response.status_code)
    assert b"SQLite format" not in response.content and b"root:" not in response.content


@pytest.mark.parametrize(
    "field,value,code",
    [
        ("audio", "../../heygem.db", 403),
        ("audio", "/etc/passwd", 403),
        ("video", "%2e%2e/%2e%2e/etc/passwd", 400),
        ("output_name", "../escape.mp4", 403),
        ("output_name", "/tmp/escape.mp4", 403),
    ],
)
def test_path_traversal_in_json_bodies_is_refused(
    client, settings, speech_wav, face_video, field, value, code
):
    shutil.copy(speech_wav, settings.inputs_dir / "speech.wav")
    shutil.copy(face_video, settings.inputs_dir / "face.mp4")
    body = {"audio": "speech.wav", "video": "face.mp4", field: value}
    assert_one_line_error(client.post("/api/v1/jobs", json=body), code)


def test_result_outside_the_outputs_folder_is_never_served(client, settings, speech_wav, face_video):
    job = upload(client, speech_wav, face_video).json()
    assert wait_job(client, job["id"])["status"] == "succeeded"
    # Tamper with the store as an attacker with database access would.
    with sqlite3.connect(settings.database_path) as db:
        db.execute("UPDATE jobs SET output_path = ? WHERE id = ?", (str(settings.database_path), job["id"]))
    response = client.get(f"/api/v1/jobs/{job['id']}/result")
    assert_one_line_error(response, 403)
    assert b"SQLite format" not in response.content


def test_unexpected_errors_are_a_generic_500_without_traceback(settings, caplog, start):
    service, client = start(settings, raise_server_exceptions=False)

    def broken(*args, **kwargs):
        raise RuntimeError("secret internal state /srv/private")

    service.list_jobs = broken
    with client:
        response = client.get("/api/v1/jobs")
    assert assert_one_line_error(response, 500) == INTERNAL_ERROR
    assert "secret" not in response.text
    assert "secret internal state" in caplog.text  # the details stay in the server log


def test_openapi_docs_list_the_routes(client):
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/health",
        "/ready",
        "/metrics",
        "/api/v1/jobs",
        "/api/v1/jobs/{job_id}",
        "/api/v1/jobs/{job_id}/result",
        "/api/v1/batches",
        "/api/v1/batches/{batch_id}",
        "/api/v1/batches/{batch_id}/zip",
        "/api/v1/batches/{batch_id}/retry",
    ):
        assert path in paths
    assert "multipart/form-data" in paths["/api/v1/jobs"]["post"]["requestBody"]["content"]


@pytest.mark.parametrize("path", ["/api/v1/jobs", "/api/v1/batches"])
def test_openapi_documents_every_option_from_the_schema(client, path):
    body = client.get("/openapi.json").json()["paths"][path]["post"]["requestBody"]["content"]
    options = body["application/json"]["schema"]["properties"]["options"]
    assert list(options["properties"]) == list(OPTION_NAMES)
    defaults = SyncOptions().to_dict()
    for name, spec in option_specs().items():
        documented = options["properties"][name]
        assert documented["description"].startswith(spec.help), name
        if option_default(name) is None:  # FastAPI drops null defaults: the description says so
            assert "default" not in documented and "(default: none)" in documented["description"]
            value_schema = documented["anyOf"][0]
        else:
            assert documented["default"] == defaults[name], name
            value_schema = documented
        if spec.choices:
            assert value_schema["enum"] == list(spec.choices), name
    assert options["properties"]["pads"]["default"] == [0, 10, 0, 0]
    assert options["properties"]["pads"]["items"] == {"type": "integer", "minimum": 0}
    assert options["properties"]["fps"]["type"] == "number"
    assert options["properties"]["smooth_window"]["type"] == "integer"
    assert options["properties"]["precision"]["anyOf"][1] == {"type": "null"}
    assert options["properties"]["watermark"]["maxLength"] > 0


def test_an_options_object_built_from_the_documented_defaults_is_accepted(
    client, settings, speech_wav, face_video
):
    """The documented defaults are values the API really accepts (and the job runs with them)."""
    properties = client.get("/openapi.json").json()["paths"]["/api/v1/jobs"]["post"]["requestBody"][
        "content"
    ]["application/json"]["schema"]["properties"]["options"]["properties"]
    documented = {name: schema.get("default") for name, schema in properties.items()}
    shutil.copy(speech_wav, settings.inputs_dir / "speech.wav")
    shutil.copy(face_video, settings.inputs_dir / "face.mp4")
    response = client.post(
        "/api/v1/jobs", json={"audio": "speech.wav", "video": "face.mp4", "options": documented}
    )
    assert response.status_code == 202, response.text
    assert wait_job(client, response.json()["id"])["status"] == "succeeded"
