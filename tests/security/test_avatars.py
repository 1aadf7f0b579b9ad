"""Avatars behind the tenant doors, and hostile avatar uploads.

Another department's avatar id answers 404 on every avatar route and as "avatar:<id>" in a job
or batch item; a playlist that names a file outside the folders, or a PNG claiming a huge
picture, ends as a "failed" avatar with a one-line reason (nothing read, nothing crashed); a
name full of control characters is cleaned.
"""

from __future__ import annotations

import hashlib
import struct
import time
import zlib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from heygem.jobs.service import JobService
from heygem.settings import Settings
from heygem.web.server import create_app
from tests.kit import FakePipeline

KEYS = {"sales": "sales-key-0123456789", "legal": "legal-key-0123456789"}
WAIT_S = 60.0


def bearer(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


@pytest.fixture
def doors(tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text(
        "".join(f"{tenant} user {hashlib.sha256(key.encode()).hexdigest()}\n" for tenant, key in KEYS.items())
    )
    settings = Settings(data_dir=tmp_path / "data", api_keys_file=keys, warmup=False)
    service = JobService(settings, pipeline_factory=FakePipeline)
    service.start()
    try:
        with TestClient(create_app(settings, service, ui=False)) as client:
            yield client, settings
    finally:
        service.stop(0)


def create(client: TestClient, tenant: str, path: Path, name: str = "Anna") -> dict:
    files = {"media": (path.name, path.read_bytes(), "application/octet-stream")}
    answer = client.post("/api/v1/avatars", data={"name": name}, files=files, headers=bearer(tenant))
    assert answer.status_code == 201, answer.text
    return answer.json()


def prepared(client: TestClient, tenant: str, avatar_id: str) -> dict:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        body = client.get(f"/api/v1/avatars/{avatar_id}", headers=bearer(tenant)).json()
        if body["status"] != "preparing":
            return body
        time.sleep(0.05)
    raise AssertionError("still preparing")


@pytest.mark.slow
def test_another_departments_avatar_is_404_everywhere(doors, face_video, speech_wav):
    client, settings = doors
    avatar = prepared(client, "sales", create(client, "sales", face_video)["id"])
    assert avatar["status"] == "ready"
    avatar_id = avatar["id"]
    for method, path, body in (
        ("GET", f"/api/v1/avatars/{avatar_id}", None),
        ("GET", f"/api/v1/avatars/{avatar_id}/thumbnail", None),
        ("PATCH", f"/api/v1/avatars/{avatar_id}", {"name": "mine now"}),
        ("DELETE", f"/api/v1/avatars/{avatar_id}", None),
        ("POST", "/api/v1/speech", {"text": "hello", "avatar": avatar_id}),
    ):
        answer = client.request(method, path, json=body, headers=bearer("legal"))
        assert answer.status_code == 404, (method, path, answer.text)
    assert client.get("/api/v1/avatars", headers=bearer("legal")).json()["avatars"] == []
    with open(speech_wav, "rb") as audio:
        job = client.post(
            "/api/v1/jobs",
            data={"video": f"avatar:{avatar_id}"},
            files={"audio": ("s.wav", audio, "audio/wav")},
            headers=bearer("legal"),
        )
    assert job.status_code == 404, job.text
    text_job = client.post(
        "/api/v1/jobs", json={"video": f"avatar:{avatar_id}", "text": "hi"}, headers=bearer("legal")
    )
    assert text_job.status_code == 404
    batch = client.post(
        "/api/v1/batches",
        json={"items": [{"video": f"avatar:{avatar_id}", "text": "hi"}]},
        headers=bearer("legal"),
    )
    assert batch.status_code == 404 and batch.json()["detail"].startswith("item 1:")
    # Still the owner's, unchanged and usable.
    mine = client.get(f"/api/v1/avatars/{avatar_id}", headers=bearer("sales")).json()
    assert mine["name"] == "Anna" and (settings.avatars_dir / avatar_id).is_dir()
    ok = client.post(
        "/api/v1/jobs", json={"video": f"avatar:{avatar_id}", "text": "hi"}, headers=bearer("sales")
    )
    assert ok.status_code == 202, ok.text


def test_a_playlist_naming_a_secret_file_makes_a_failed_avatar(doors, tmp_path):
    client, settings = doors
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"top secret")
    playlist = tmp_path / "face.mp4"  # disguised as a video
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\nfile://{secret}\n#EXT-X-ENDLIST\n")
    avatar = prepared(client, "sales", create(client, "sales", playlist)["id"])
    assert avatar["status"] == "failed" and avatar["error"] and "\n" not in avatar["error"]
    assert str(tmp_path) not in avatar["error"]
    assert avatar["thumbnail_url"] is None


def _huge_png(path: Path, width: int, height: int) -> Path:
    """A tiny file whose header claims a huge picture (a decompression bomb's first step)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )
    return path


@pytest.mark.parametrize("side", [20000, 60000], ids=["over-the-limit", "over-ffmpegs-limit"])
def test_a_png_claiming_a_huge_picture_is_refused_before_decoding(doors, tmp_path, side):
    # 60000 px: ffprobe reports 0x0 and OpenCV died on an assertion (an "internal error");
    # now the size is refused by name.
    client, _ = doors
    bomb = _huge_png(tmp_path / "bomb.png", side, side)
    avatar = prepared(client, "sales", create(client, "sales", bomb)["id"])
    assert avatar["status"] == "failed" and "internal error" not in avatar["error"]
    assert "pixels" in avatar["error"] or "too large" in avatar["error"], avatar["error"]


def test_control_characters_and_overlong_names_never_reach_the_record(doors, face_video):
    client, _ = doors
    avatar = create(client, "sales", face_video, name="Eve\x1b[2J\x00\u202e\r\nAdmin")
    assert avatar["name"] == "Eve [2J Admin"
    files = {"media": ("f.mp4", face_video.read_bytes(), "video/mp4")}
    long_name = client.post("/api/v1/avatars", data={"name": "n" * 500}, files=files, headers=bearer("sales"))
    assert long_name.status_code == 400 and "limit" in long_name.json()["detail"]
    renamed = client.patch(f"/api/v1/avatars/{avatar['id']}", json={"name": "\x07"}, headers=bearer("sales"))
    assert renamed.status_code == 400


def test_an_avatar_reference_cannot_walk_out_of_the_avatars_folder(doors):
    client, _ = doors
    for ref in ("avatar:../../heygem.db", "avatar:" + "A" * 32, "AVATAR:x"):
        answer = client.post("/api/v1/jobs", json={"video": ref, "text": "hi"}, headers=bearer("sales"))
        assert answer.status_code == 400, (ref, answer.text)
        assert "32 lowercase hex" in answer.json()["detail"]
