"""Avatars: created from a face video or photo, prepared in the background (probe, face track,
thumbnail), named by jobs as "avatar:<id>", renamed, deleted; through the service and the HTTP
API, on a real JobService (SQLite) with the fake pipeline for the jobs."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import cv2
import pytest
from fastapi.testclient import TestClient

from heygem.errors import InputError
from heygem.jobs import retention
from heygem.jobs.avatars import AvatarNotFoundError, check_name
from heygem.jobs.records import JobStatus
from heygem.jobs.service import JobService
from heygem.jobs.tenancy import LOCAL
from heygem.web.server import create_app
from tests.kit import FakePipeline

WAIT_S = 60.0
POLL_S = 0.05


@pytest.fixture
def service(settings):
    svc = JobService(settings, pipeline_factory=FakePipeline)
    svc.start()
    yield svc
    svc.stop(5)


@pytest.fixture
def staged(settings, face_video, speech_wav, face_image):
    """The session's fixtures copied into the inputs folder (the allowed root)."""
    settings.inputs_dir.mkdir(parents=True, exist_ok=True)
    return {
        "video": Path(shutil.copy(face_video, settings.inputs_dir / "face.mp4")),
        "audio": Path(shutil.copy(speech_wav, settings.inputs_dir / "speech.wav")),
        "image": Path(shutil.copy(face_image, settings.inputs_dir / "face.png")),
    }


def wait_prepared(service, avatar_id: str, principal=LOCAL):
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        avatar = service.get_avatar(avatar_id, principal=principal)
        if avatar.status != "preparing":
            return avatar
        time.sleep(POLL_S)
    raise AssertionError(f"avatar {avatar_id} is still preparing")


def test_names_lose_control_characters_and_have_a_length_limit():
    assert check_name("  Anna\x00\x1b[31m  Li\u202e\n ") == "Anna [31m Li"
    with pytest.raises(InputError, match="name"):
        check_name("\x00\t\n")
    with pytest.raises(InputError, match="limit is 80"):
        check_name("x" * 81)


@pytest.mark.slow
def test_an_avatar_is_prepared_once_and_jobs_use_its_media(service, settings, staged):
    avatar = service.create_avatar("Anna", str(staged["video"]), principal=LOCAL)
    assert avatar.status == "preparing" and avatar.media.is_file()
    assert avatar.media.parent == settings.avatars_dir / avatar.id
    assert staged["video"].is_file()  # an operator's input is copied, not moved
    ready = wait_prepared(service, avatar.id)
    assert ready.status == "ready", ready.error
    assert ready.duration_s == pytest.approx(2.0, abs=0.1) and not ready.is_image
    thumb = cv2.imread(str(ready.thumbnail))
    assert thumb is not None and max(thumb.shape[:2]) <= 320
    # The face track was cached under the key the avatar keeps.
    assert (settings.track_cache_dir / f"{ready.track_key}.json").is_file()
    job = service.submit(str(staged["audio"]), ready.ref, principal=LOCAL)
    assert job.video == ready.ref
    done = service.wait(job.id, WAIT_S, principal=LOCAL)
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert service.list_avatars(principal=LOCAL)[0].id == avatar.id


@pytest.mark.slow
def test_a_photo_avatar_is_ready_and_is_an_image(service, staged):
    avatar = wait_prepared(service, service.create_avatar("Still", str(staged["image"]), principal=LOCAL).id)
    assert avatar.status == "ready" and avatar.is_image and avatar.duration_s == 0.0


def test_a_file_without_a_face_or_picture_fails_with_the_reason(service, staged, settings):
    noise = settings.inputs_dir / "noise.mp4"
    noise.write_bytes(b"\x00\x01 not a video" * 100)
    avatar = wait_prepared(service, service.create_avatar("Noise", str(noise), principal=LOCAL).id)
    assert avatar.status == "failed" and avatar.error and "\n" not in avatar.error
    with pytest.raises(InputError, match="could not be prepared"):
        service.submit(str(staged["audio"]), avatar.ref, principal=LOCAL)


def test_a_job_on_a_preparing_avatar_is_refused_in_one_line(service, staged, settings):
    avatar = service.create_avatar("Soon", str(staged["video"]), principal=LOCAL)
    service.store.update_avatar(avatar.id, status="preparing")  # still preparing, whatever the thread did
    with pytest.raises(InputError, match="still being prepared"):
        service.submit(str(staged["audio"]), avatar.ref, principal=LOCAL)
    with pytest.raises(AvatarNotFoundError):
        service.submit(str(staged["audio"]), "avatar:" + "0" * 32, principal=LOCAL)
    with pytest.raises(InputError, match="32 lowercase hex"):
        service.submit(str(staged["audio"]), "avatar:../../etc", principal=LOCAL)


@pytest.mark.slow
def test_rename_and_delete_remove_the_folder_but_keep_finished_videos(service, staged, settings):
    avatar = wait_prepared(service, service.create_avatar("Anna", str(staged["video"]), principal=LOCAL).id)
    assert service.rename_avatar(avatar.id, " Anna  B ", principal=LOCAL).name == "Anna B"
    job = service.wait(
        service.submit(str(staged["audio"]), avatar.ref, principal=LOCAL).id, WAIT_S, principal=LOCAL
    )
    assert job.status == JobStatus.SUCCEEDED
    service.delete_avatar(avatar.id, principal=LOCAL)
    assert not (settings.avatars_dir / avatar.id).exists()
    assert job.output_path is not None and job.output_path.is_file()
    with pytest.raises(AvatarNotFoundError):
        service.get_avatar(avatar.id, principal=LOCAL)


def test_a_queued_job_on_a_deleted_avatar_fails_with_one_line(settings, staged):
    import threading

    from tests.kit import Pipelines, running_service

    gate = threading.Event()
    with running_service(settings, Pipelines(gate=gate)) as service:
        avatar = wait_prepared(
            service, service.create_avatar("Gone", str(staged["video"]), principal=LOCAL).id
        )
        job = service.submit(str(staged["audio"]), avatar.ref, principal=LOCAL)
        service.delete_avatar(avatar.id, principal=LOCAL)
        gate.set()
        done = service.wait(job.id, WAIT_S, principal=LOCAL)
    assert done.status == JobStatus.FAILED and "no longer exists" in (done.error or "")


@pytest.mark.slow
def test_a_voice_sample_needs_its_transcript(service, staged):
    with pytest.raises(InputError, match="voice_text"):
        service.create_avatar("A", str(staged["video"]), principal=LOCAL, voice_audio=str(staged["audio"]))
    with pytest.raises(InputError, match="voice sample"):
        service.create_avatar("A", str(staged["video"]), principal=LOCAL, voice_text="hello")
    avatar = service.create_avatar(
        "A",
        str(staged["video"]),
        principal=LOCAL,
        voice_audio=str(staged["audio"]),
        voice_text="hello there",
    )
    assert avatar.voice_audio is not None and avatar.voice_audio.name == "voice.wav"
    assert wait_prepared(service, avatar.id).status == "ready"


def test_the_avatar_limit_per_tenant(settings, staged):
    service = JobService(settings.replace(max_avatars=1), pipeline_factory=FakePipeline)
    service.start()
    try:
        service.create_avatar("One", str(staged["video"]), principal=LOCAL)
        with pytest.raises(InputError, match="limit"):
            service.create_avatar("Two", str(staged["video"]), principal=LOCAL)
    finally:
        service.stop(5)


@pytest.mark.slow
def test_retention_keeps_avatars_and_their_face_track(service, settings, staged):
    avatar = wait_prepared(service, service.create_avatar("Keep", str(staged["video"]), principal=LOCAL).id)
    entry = settings.track_cache_dir / f"{avatar.track_key}.json"
    other = settings.track_cache_dir / "unused.json"
    other.write_text("{}")
    far_future = time.time() + 365 * 86400
    report = retention.sweep(service.store, settings, now=far_future)
    assert entry.is_file() and avatar.media.is_file() and not other.exists()
    assert other in report.tracks


@pytest.mark.slow
def test_an_interrupted_preparation_runs_again_at_start(settings, staged):
    first = JobService(settings, pipeline_factory=FakePipeline)
    first.start()
    avatar = first.create_avatar("Again", str(staged["video"]), principal=LOCAL)
    first.stop(5)
    first.store.open()
    first.store.update_avatar(avatar.id, status="preparing", thumbnail=None)
    first.store.close()
    second = JobService(settings, pipeline_factory=FakePipeline)
    second.start()
    try:
        assert wait_prepared(second, avatar.id).status == "ready"
    finally:
        second.stop(5)


# --------------------------------------------------------------------------------------------------
# HTTP


@pytest.fixture
def client(settings, service):
    with TestClient(create_app(settings, service, ui=False)) as test_client:
        yield test_client


def create(client: TestClient, media: Path, name: str = "Anna", **extra) -> dict:
    files = {"media": (media.name, media.read_bytes(), "video/mp4")}
    answer = client.post("/api/v1/avatars", data={"name": name, **extra}, files=files)
    assert answer.status_code == 201, answer.text
    return answer.json()


def http_ready(client: TestClient, avatar_id: str) -> dict:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        body = client.get(f"/api/v1/avatars/{avatar_id}").json()
        if body["status"] != "preparing":
            return body
        time.sleep(POLL_S)
    raise AssertionError(f"avatar {avatar_id} is still preparing")


@pytest.mark.slow
def test_http_avatar_life_cycle(client, face_video, speech_wav, settings):
    created = create(client, face_video)
    assert created["status"] == "preparing" and created["ref"] == f"avatar:{created['id']}"
    assert not created["media"].startswith("/")  # relative to the data folder
    body = http_ready(client, created["id"])
    assert body["status"] == "ready" and body["thumbnail_url"].endswith("/thumbnail")
    thumb = client.get(body["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert thumb.content[:2] == b"\xff\xd8"
    # The upload folder under inputs/ is gone: the media was moved into the avatar's folder.
    assert not [p for p in settings.inputs_dir.iterdir() if p.is_dir()]
    listed = client.get("/api/v1/avatars").json()["avatars"]
    assert [a["id"] for a in listed] == [created["id"]]
    renamed = client.patch(f"/api/v1/avatars/{created['id']}", json={"name": "Anna Li"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "Anna Li"
    with open(speech_wav, "rb") as audio:
        job = client.post(
            "/api/v1/jobs", data={"video": body["ref"]}, files={"audio": ("s.wav", audio, "audio/wav")}
        )
    assert job.status_code == 202, job.text
    assert job.json()["video"] == body["ref"]
    deleted = client.delete(f"/api/v1/avatars/{created['id']}")
    assert deleted.status_code == 200 and deleted.json() == {"deleted": True, "id": created["id"]}
    assert client.get(f"/api/v1/avatars/{created['id']}").status_code == 404


def test_http_avatar_with_a_voice_sample(client, face_video, speech_wav):
    files = {
        "media": ("face.mp4", face_video.read_bytes(), "video/mp4"),
        "voice": ("me.wav", speech_wav.read_bytes(), "audio/wav"),
    }
    answer = client.post("/api/v1/avatars", data={"name": "V", "voice_text": "hello"}, files=files)
    assert answer.status_code == 201, answer.text
    assert answer.json()["has_voice"] is True and answer.json()["voice_text"] == "hello"


def test_http_avatar_bad_requests_are_one_line_400s(client, face_video):
    assert client.post("/api/v1/avatars", json={"name": "x"}).status_code == 415
    no_media = client.post("/api/v1/avatars", data={"name": "x"}, files={"other": ("a", b"1")})
    assert no_media.status_code == 400 and "media" in no_media.json()["detail"]
    files = {"media": ("face.mp4", face_video.read_bytes(), "video/mp4")}
    unnamed = client.post("/api/v1/avatars", data={"name": "\x00 \t"}, files=files)
    assert unnamed.status_code == 400 and "name" in unnamed.json()["detail"]
    assert client.get("/api/v1/avatars/not-an-id").status_code == 400
    assert client.patch(f"/api/v1/avatars/{'a' * 32}", json={"name": "x"}).status_code == 404
    assert client.patch(f"/api/v1/avatars/{'a' * 32}", json={"nom": "x"}).status_code == 400


def test_http_speech_returns_a_wav(client):
    answer = client.post("/api/v1/speech", json={"text": "Hello there."})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "audio/wav" and answer.content[:4] == b"RIFF"
    empty = client.post("/api/v1/speech", json={"text": "  "})
    assert empty.status_code == 400 and "empty" in empty.json()["detail"]
    missing = client.post("/api/v1/speech", json={"text": "hi", "avatar": "b" * 32})
    assert missing.status_code == 404


def test_http_speech_provider_failure_is_502(settings, face_video):
    # Nothing listens on port 9 (discard): the provider fails at once, in one line.
    broken = settings.replace(tts_provider="openai", tts_url="http://127.0.0.1:9", tts_timeout_s=2.0)
    svc = JobService(broken, pipeline_factory=FakePipeline)
    svc.start()
    try:
        with TestClient(create_app(broken, svc, ui=False)) as client:
            answer = client.post("/api/v1/speech", json={"text": "Hello."})
    finally:
        svc.stop(5)
    assert answer.status_code == 502 and "\n" not in json.dumps(answer.json())


@pytest.mark.slow
def test_cli_avatars_add_list_generate_with_text_and_rm(tmp_path, face_video, capsys, monkeypatch):
    from heygem import cli
    from tests import media

    for name in [n for n in os.environ if n.startswith("HEYGEM_")]:
        monkeypatch.delenv(name)
    flags = ["--data-dir", str(tmp_path / "data"), "--engine", "preview", "--warmup", "false"]
    assert cli.main(["avatars", "add", "Anna\x07", str(face_video), *flags]) == 0
    added = capsys.readouterr().out
    avatar_id = added.strip().splitlines()[-1].split()[0]  # logs go to stdout too
    assert "ready: Anna" in added and len(avatar_id) == 32
    assert cli.main(["avatars", "list", *flags]) == 0
    assert f"{avatar_id}  ready" in capsys.readouterr().out
    output = tmp_path / "out.mp4"
    assert (
        cli.main(
            [
                "generate",
                "--text",
                "Hello from the CLI.",
                "--video",
                f"avatar:{avatar_id}",
                "--output",
                str(output),
                *flags,
            ]
        )
        == 0
    )
    assert sorted(media.stream_types(output)) == ["audio", "video"]
    assert cli.main(["avatars", "rm", avatar_id, *flags]) == 0
    assert cli.main(["avatars", "rm", avatar_id, *flags]) == 1
    assert "no avatar with id" in capsys.readouterr().err
