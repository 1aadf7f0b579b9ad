"""Jobs naming objects in a real S3 server (SeaweedFS): fetch, generate (FakePipeline), publish."""

from __future__ import annotations

import shutil
import urllib.request
import uuid

import pytest
from fastapi.testclient import TestClient

from heygem.errors import ForbiddenPathError, StorageError
from heygem.jobs import fleetfiles
from heygem.jobs.records import JobStatus
from heygem.jobs.tenancy import LOCAL
from heygem.web.server import create_app
from tests import media
from tests.kit import free_port, wait_until
from tests.s3server import BUCKET, OTHER_BUCKET, use_identity

pytest_plugins = ["tests.s3server"]  # the s3_server and aws_env fixtures

JOB_TIMEOUT_S = 120.0
POLL_S = 0.1


@pytest.fixture
def s3_settings(settings, s3_server, aws_env):
    return settings.replace(s3_endpoint=s3_server.endpoint, s3_region="us-east-1", retention_days=0.0)


@pytest.fixture
def objects(s3_server, speech_wav, face_video):
    """The fixture audio and video uploaded under a prefix of this test's own."""
    prefix = f"jobs/{uuid.uuid4().hex[:8]}"
    client = s3_server.client()
    client.upload_file(str(speech_wav), BUCKET, f"{prefix}/speech.wav")
    client.upload_file(str(face_video), BUCKET, f"{prefix}/face.mp4")
    return prefix


def _download(s3_server, url: str, dest):
    bucket, key = url.split("://", 1)[1].split("/", 1)
    s3_server.client().download_file(bucket, key, str(dest))
    return dest


def test_job_with_object_inputs_publishes_an_mp4_with_audio(
    s3_server, s3_settings, start_service, objects, tmp_path
):
    service = start_service(s3_settings)
    job = service.submit(
        f"s3://{BUCKET}/{objects}/speech.wav",
        f"obs://{BUCKET}/{objects}/face.mp4",
        output_name="talk.mp4",
        output_prefix=f"s3://{BUCKET}/{objects}/out/",
        principal=LOCAL,
    )
    job = service.wait(job.id, JOB_TIMEOUT_S, principal=LOCAL)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.output_url == f"s3://{BUCKET}/{objects}/out/talk.mp4"
    assert job.presigned_url and job.presigned_url.startswith(s3_server.endpoint)
    result = _download(s3_server, job.output_url, tmp_path / "downloaded.mp4")
    assert sorted(media.stream_types(result)) == ["audio", "video"]
    assert media.duration_of(result) > 1.0
    assert result.read_bytes() == job.output_path.read_bytes()  # the local copy stays too

    # A fleet instance that did not run the job (its own data folder) plays and downloads it in
    # the UI from the published object, fetched once into its own outputs folder.
    assert fleetfiles.local_result(job, s3_settings) == job.output_path  # the instance that ran it
    other = s3_settings.replace(data_dir=tmp_path / "other-instance")
    copy = fleetfiles.local_result(job, other)
    assert copy is not None and copy.is_relative_to(other.outputs_dir)
    assert copy.read_bytes() == job.output_path.read_bytes()
    s3_server.client().delete_object(Bucket=BUCKET, Key=f"{objects}/out/talk.mp4")
    assert fleetfiles.local_result(job, other) == copy  # kept: not fetched again
    with pytest.raises(StorageError, match="object not found"):
        fleetfiles.local_result(job, s3_settings.replace(data_dir=tmp_path / "third-instance"))


def test_batch_item_with_missing_key_or_bucket_fails_alone(s3_server, s3_settings, start_service, objects):
    service = start_service(s3_settings)
    good = {"audio": f"s3://{BUCKET}/{objects}/speech.wav", "video": f"s3://{BUCKET}/{objects}/face.mp4"}
    batch = service.submit_batch(
        [
            {**good, "audio": f"s3://{BUCKET}/{objects}/missing.wav", "output_name": "a.mp4"},
            {**good, "video": "obs://no-such-bucket/face.mp4", "output_name": "b.mp4"},
            {**good, "output_name": "c.mp4"},
        ],
        output_prefix=f"s3://{BUCKET}/{objects}/batch-out/",
        principal=LOCAL,
    )
    missing_key, missing_bucket, ok = (
        service.wait(item.id, JOB_TIMEOUT_S, principal=LOCAL) for item in batch.items
    )
    assert missing_key.status == JobStatus.FAILED
    assert missing_key.error == f"object not found: s3://{BUCKET}/{objects}/missing.wav"
    assert missing_bucket.status == JobStatus.FAILED
    assert missing_bucket.error == "bucket does not exist: no-such-bucket"
    assert ok.status == JobStatus.SUCCEEDED, ok.error
    assert ok.output_url == f"s3://{BUCKET}/{objects}/batch-out/c.mp4"
    listed = s3_server.client().list_objects_v2(Bucket=BUCKET, Prefix=f"{objects}/batch-out/")
    assert [entry["Key"] for entry in listed.get("Contents", [])] == [f"{objects}/batch-out/c.mp4"]


def test_batch_item_the_credentials_may_not_read_fails_alone(
    s3_server, s3_settings, aws_env, start_service, objects, speech_wav, face_video
):
    client = s3_server.client()
    client.upload_file(str(speech_wav), OTHER_BUCKET, f"{objects}/speech.wav")
    client.upload_file(str(face_video), OTHER_BUCKET, f"{objects}/face.mp4")
    use_identity(aws_env, s3_server.restricted)  # may read OTHER_BUCKET only
    service = start_service(s3_settings)
    batch = service.submit_batch(
        [
            {"audio": f"s3://{BUCKET}/{objects}/speech.wav", "video": f"s3://{BUCKET}/{objects}/face.mp4"},
            {
                "audio": f"s3://{OTHER_BUCKET}/{objects}/speech.wav",
                "video": f"s3://{OTHER_BUCKET}/{objects}/face.mp4",
            },
        ],
        principal=LOCAL,
    )
    denied, allowed = (service.wait(item.id, JOB_TIMEOUT_S, principal=LOCAL) for item in batch.items)
    assert denied.status == JobStatus.FAILED
    # The face is fetched first (a text job has no audio to fetch), so its refusal is the reason.
    assert denied.error == f"access denied to s3://{BUCKET}/{objects}/face.mp4 (check the credentials)"
    assert s3_server.restricted.secret_key not in denied.error
    assert allowed.status == JobStatus.SUCCEEDED, allowed.error
    assert sorted(media.stream_types(allowed.output_path)) == ["audio", "video"]


def test_failed_upload_fails_the_job_and_keeps_the_local_result(
    s3_settings, start_service, speech_wav, face_video
):
    """Storage unreachable at publish time (nothing listens): retried, then the job fails."""
    dead = f"http://127.0.0.1:{free_port()}"
    settings = s3_settings.replace(s3_endpoint=dead)
    settings.inputs_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(speech_wav, settings.inputs_dir / "speech.wav")
    shutil.copy(face_video, settings.inputs_dir / "face.mp4")
    service = start_service(settings)
    job = service.submit("speech.wav", "face.mp4", output_prefix=f"s3://{BUCKET}/never/", principal=LOCAL)
    job = service.wait(job.id, JOB_TIMEOUT_S, principal=LOCAL)
    assert job.status == JobStatus.FAILED
    assert job.error == f"cannot reach object storage at {dead}"
    assert job.output_url is None
    assert job.output_path is not None and job.output_path.is_file()
    assert job.has_result  # the API serves it although the job failed
    assert sorted(media.stream_types(job.output_path)) == ["audio", "video"]


def test_result_copied_once_into_a_mounted_folder(s3_settings, start_service, objects, tmp_path):
    mount = tmp_path / "obs-mount"
    mount.mkdir()
    settings = s3_settings.replace(input_roots=(mount,))
    service = start_service(settings)
    job = service.submit(
        f"s3://{BUCKET}/{objects}/speech.wav",
        f"s3://{BUCKET}/{objects}/face.mp4",
        output_name="mounted.mp4",
        output_prefix=str(mount / "results"),
        principal=LOCAL,
    )
    job = service.wait(job.id, JOB_TIMEOUT_S, principal=LOCAL)
    assert job.status == JobStatus.SUCCEEDED, job.error
    copied = mount / "results" / "mounted.mp4"
    assert job.output_url == str(copied.resolve())
    assert job.presigned_url is None
    assert copied.read_bytes() == job.output_path.read_bytes()
    assert [p.name for p in (mount / "results").iterdir()] == ["mounted.mp4"]


def test_url_off_the_allow_list_is_refused_at_submit(s3_settings, start_service, objects):
    service = start_service(s3_settings.replace(url_allowlist=("https://media.example.com/",)))
    with pytest.raises(ForbiddenPathError, match="URL not on the allow-list: https://evil.example.net/a.wav"):
        service.submit("https://evil.example.net/a.wav", f"s3://{BUCKET}/{objects}/face.mp4", principal=LOCAL)
    assert service.count_jobs(principal=LOCAL) == 0


def test_api_call_sequence_from_the_docs(s3_server, s3_settings, start_service, objects, tmp_path):
    """docs/storage.md section 5: submit with object paths, poll, read the result location."""
    settings = s3_settings.replace(api_token="docs-token")
    client = TestClient(create_app(settings, start_service(settings), ui=False))
    auth = {"Authorization": "Bearer docs-token"}
    submitted = client.post(
        "/api/v1/jobs",
        headers=auth,
        json={
            "audio": f"obs://{BUCKET}/{objects}/speech.wav",
            "video": f"obs://{BUCKET}/{objects}/face.mp4",
            "output_prefix": f"obs://{BUCKET}/{objects}/api-out/",
            "output_name": "a-v.mp4",
        },
    )
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    body = wait_until(
        lambda: (
            (b := client.get(f"/api/v1/jobs/{job_id}", headers=auth).json())["status"]
            not in ("queued", "running")
            and b
        ),
        JOB_TIMEOUT_S,
        interval=POLL_S,
        message=f"job {job_id} to finish",
    )
    assert body["status"] == "succeeded", body
    assert body["output_url"] == f"obs://{BUCKET}/{objects}/api-out/a-v.mp4"
    downloaded = tmp_path / "a-v.mp4"
    with urllib.request.urlopen(body["presigned_url"], timeout=10) as response:
        downloaded.write_bytes(response.read())
    assert sorted(media.stream_types(downloaded)) == ["audio", "video"]
    listing = client.get("/api/v1/jobs", headers=auth).text
    assert s3_server.admin.secret_key not in listing + submitted.text
