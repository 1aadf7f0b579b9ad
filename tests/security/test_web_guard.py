"""Issue 12, the web layer: each observed attack replayed against a live server, now refused.

Findings 9 (UI uploads fill the disk), 10 (chunked multipart text fields), 11 (cross-site
requests, DNS rebinding), 12 (credentials in URL settings), 13 (paths in errors), 16 (no security
headers), 17 (a refusal costs a full upload), 18 (keep-alive), 20 (full disk), 22 (expired jobs).
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from heygem.errors import DiskFullError
from heygem.jobs import JobService
from heygem.jobs.tenancy import LOCAL
from heygem.settings import Settings, mask_url
from heygem.web.guard import (
    MultipartInspector,
    PartLimits,
    Refusal,
    UploadQuota,
    host_allowed,
    origin_allowed,
)
from heygem.web.http import strip_paths
from heygem.web.server import create_app
from tests.kit import REAL_LAUNCHER, FakePipeline, ServerProcess, wait_until
from tests.security import rawhttp

READY_TIMEOUT_S = 120.0
MB = 1 << 20
KB = 1 << 10
SECRET_URL = "https://user:pass@weights.example/x.pth?sig=abc"
S3_SECRET = "https://ak:sk@obs.example"
FOREIGN = "http://evil.example"
JSON = {"Content-Type": "application/json"}


def _boundary() -> str:
    return "b" + uuid.uuid4().hex


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# --------------------------------------------------------------------------------------------------
# live servers


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """The real app (preview engine, no weights) with hosts pinned and small UI upload quotas."""
    data = tmp_path_factory.mktemp("guard") / "data"
    env = {
        "HEYGEM_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "HEYGEM_CHECKPOINT_URL": SECRET_URL,
        "HEYGEM_S3_ENDPOINT": S3_SECRET,
        "HEYGEM_URL_ALLOWLIST": "https://media.example/x?token=zzz",
        "HEYGEM_UI_UPLOADS_PER_MINUTE": "5",
        "HEYGEM_UI_UPLOAD_MB_PER_HOUR": "3",
        "HEYGEM_UI_UPLOAD_FILES_PER_REQUEST": "4",
        "HEYGEM_ENGINE": "preview",
    }
    live = ServerProcess(data, argv=(str(REAL_LAUNCHER),), env=env)
    try:
        live.wait_for("/ready", 200, READY_TIMEOUT_S)
        live.wait_for("/", 200, READY_TIMEOUT_S)
        yield live
    finally:
        live.stop_cleanly()


@pytest.fixture(scope="module")
def full_queue(tmp_path_factory, speech_wav, face_video):
    """A fake-engine server whose one-place queue is full: one job running, one waiting."""
    data = tmp_path_factory.mktemp("full") / "data"
    env = {"HEYGEM_QUEUE_SIZE": "1", "HEYGEM_FAKE_DELAY_S": "20", "HEYGEM_DRAIN_SECONDS": "1"}
    live = ServerProcess(data, env=env)
    try:
        live.wait_for("/ready", 200, READY_TIMEOUT_S)
        inputs = data / "inputs"
        inputs.mkdir(exist_ok=True)
        audio, video = shutil.copy(speech_wav, inputs), shutil.copy(face_video, inputs)
        body = json.dumps({"audio": str(audio), "video": str(video)}).encode()
        for _ in range(2):
            answer = _post(live, "/api/v1/jobs", body, JSON)
            assert answer.status == 202, answer
            _wait_until_running(live, json.loads(answer.body)["id"])
        yield live
    finally:
        live.stop()


def _wait_until_running(live: ServerProcess, job_id: str, timeout: float = 30.0) -> None:
    """Returns once the job runs, or at once when it stays queued behind a running one."""

    def started() -> bool:
        status = json.loads(_get(live, f"/api/v1/jobs/{job_id}").body)["status"]
        return status == "running" or (status == "queued" and _running_count(live) > 0)

    wait_until(started, timeout, interval=0.1, message=f"job {job_id} to start")


def _running_count(live: ServerProcess) -> int:
    jobs = json.loads(_get(live, "/api/v1/jobs").body)["jobs"]
    return sum(job["status"] == "running" for job in jobs)


def _get(live: ServerProcess, path: str, headers: dict[str, str] | None = None) -> rawhttp.Answer:
    return rawhttp.request(live.port, "GET", path, headers or {})


def _post(
    live: ServerProcess, path: str, body: bytes, headers: dict[str, str], source_ip: str = "127.0.0.1"
) -> rawhttp.Answer:
    headers = dict(headers, **{"Content-Length": str(len(body))})
    return rawhttp.request(live.port, "POST", path, headers, [body], source_ip=source_ip)


# --------------------------------------------------------------------------------------------------
# finding 10: multipart text fields


@pytest.mark.slow
def test_chunked_multipart_with_huge_text_fields_is_refused_early(guarded):
    boundary = _boundary()
    fields = (("note", None, b"x" * (960 * KB)) for _ in range(400))
    before = _rss_kb(guarded.process.pid)
    answer = rawhttp.request(
        guarded.port,
        "POST",
        "/api/v1/jobs",
        {"Content-Type": f"multipart/form-data; boundary={boundary}"},
        rawhttp.multipart(boundary, fields),
        chunked=True,
    )
    assert answer.status == 413, answer
    assert "larger than 64 KB" in json.loads(answer.body)["detail"]
    assert answer.sent < 8 * MB  # of 375 MB offered
    assert _rss_kb(guarded.process.pid) - before < 50 * 1024


@pytest.mark.slow
@pytest.mark.parametrize(
    "count,size,message",
    [
        (40, 10, "too many form fields"),  # many small fields
        (20, 60 * KB, "together are larger than 1024 KB"),  # each under the cap, too much in total
    ],
)
def test_chunked_multipart_field_count_and_total_are_capped(guarded, count, size, message):
    boundary = _boundary()
    fields = ((f"f{i}", None, b"y" * size) for i in range(count))
    answer = rawhttp.request(
        guarded.port,
        "POST",
        "/api/v1/jobs",
        {"Content-Type": f"multipart/form-data; boundary={boundary}"},
        rawhttp.multipart(boundary, fields),
        chunked=True,
    )
    assert answer.status == 413 and message in json.loads(answer.body)["detail"], answer


@pytest.mark.slow
def test_gradio_routes_get_the_same_text_field_caps(guarded):
    boundary = _boundary()
    fields = (("data", None, b"z" * (960 * KB)) for _ in range(50))
    answer = rawhttp.request(
        guarded.port,
        "POST",
        "/gradio_api/component_server",
        {"Content-Type": f"multipart/form-data; boundary={boundary}"},
        rawhttp.multipart(boundary, fields),
        chunked=True,
    )
    assert answer.status == 413, answer
    assert answer.sent < 8 * MB


# --------------------------------------------------------------------------------------------------
# finding 11: cross-site requests and DNS rebinding


@pytest.mark.slow
def test_text_plain_json_submission_is_refused(guarded):
    body = json.dumps({"audio": "a.wav", "video": "b.mp4"}).encode()
    answer = _post(guarded, "/api/v1/jobs", body, {"Content-Type": "text/plain"})
    assert answer.status == 415 and "application/json" in json.loads(answer.body)["detail"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "path", ["/api/v1/jobs", "/easy/submit", "/gradio_api/queue/join", "/gradio_api/upload", "/login"]
)
def test_foreign_origin_is_refused_on_every_door(guarded, path):
    answer = _post(guarded, path, b"{}", dict(JSON, Origin=FOREIGN))
    assert answer.status == 403, answer
    assert "cross-origin" in json.loads(answer.body)["detail"]
    null_origin = _post(guarded, path, b"{}", dict(JSON, Origin="null"))
    assert null_origin.status == 403


@pytest.mark.slow
def test_own_origin_and_no_origin_pass(guarded):
    own = f"http://127.0.0.1:{guarded.port}"
    for headers in (dict(JSON, Origin=own), JSON):
        answer = _post(guarded, "/api/v1/jobs", b"{}", headers)
        assert answer.status == 400, answer  # reached the route: "give both 'audio' and 'video'"


@pytest.mark.slow
def test_foreign_host_is_refused(guarded):
    assert _get(guarded, "/health").status == 200
    conn = http.client.HTTPConnection("127.0.0.1", guarded.port, timeout=10)
    try:
        conn.request("GET", "/api/v1/jobs", headers={"Host": "evil.example"})
        response = conn.getresponse()
        assert response.status == 400
        assert json.loads(response.read())["detail"] == "invalid Host header"
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------------
# finding 16: security headers


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/health", "/", "/api/v1/jobs", "/no/such/page", "/config"])
def test_security_headers_on_every_response(guarded, path):
    headers = _get(guarded, path).headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "same-origin"
    assert headers["content-security-policy"] == "frame-ancestors 'self'"
    assert headers["x-frame-options"] == "SAMEORIGIN"


# --------------------------------------------------------------------------------------------------
# finding 9: web UI uploads


def _upload(live: ServerProcess, files: int, size: int, source_ip: str) -> rawhttp.Answer:
    boundary = _boundary()
    parts = [("files", f"f{i}.wav", b"\0" * size) for i in range(files)]
    body = b"".join(rawhttp.multipart(boundary, parts))
    return _post(
        live,
        "/gradio_api/upload",
        body,
        {"Content-Type": f"multipart/form-data; boundary={boundary}"},
        source_ip,
    )


@pytest.mark.slow
def test_upload_burst_is_refused_per_client(guarded):
    answers = [_upload(guarded, 1, 100 * KB, "127.0.0.2") for _ in range(12)]
    statuses = [a.status for a in answers]
    assert statuses[:5] == [200] * 5 and set(statuses[5:]) == {429}, statuses
    assert int(answers[-1].headers["retry-after"]) >= 1
    assert _upload(guarded, 1, 100 * KB, "127.0.0.3").status == 200  # another client is not affected


@pytest.mark.slow
def test_upload_bytes_per_hour_are_capped_while_streaming(guarded):
    assert _upload(guarded, 1, 2 * MB, "127.0.0.4").status == 200
    boundary = _boundary()
    parts = [("files", "big.wav", b"\0" * (64 * MB))]
    answer = rawhttp.request(  # chunked: no Content-Length to refuse up front
        guarded.port,
        "POST",
        "/gradio_api/upload",
        {"Content-Type": f"multipart/form-data; boundary={boundary}"},
        rawhttp.in_pieces(rawhttp.multipart(boundary, parts), 64 * KB),
        chunked=True,
        source_ip="127.0.0.4",
    )
    assert answer.status == 429, answer
    assert answer.sent < 24 * MB  # 1 MB of allowance left, plus what socket buffers hold


@pytest.mark.slow
def test_too_many_files_in_one_upload_is_refused(guarded):
    answer = _upload(guarded, 1000, 10, "127.0.0.5")
    assert answer.status == 413 and "too many files" in json.loads(answer.body)["detail"]


# --------------------------------------------------------------------------------------------------
# finding 12: credentials in URL settings


@pytest.mark.slow
def test_url_credentials_are_masked_in_the_log_and_the_settings_panel(guarded):
    config = _get(guarded, "/config").body.decode()
    log_text = guarded.log_path.read_text()
    for shown in (config, log_text):
        assert "pass" not in shown and "sig=abc" not in shown and "ak:sk" not in shown
        assert "token=zzz" not in shown
    assert "https://***@weights.example/x.pth?***" in log_text
    assert "https://***@weights.example/x.pth?***" in config
    assert "https://***@obs.example" in config


def test_mask_url_hides_user_info_and_queries():
    assert mask_url(SECRET_URL) == "https://***@weights.example/x.pth?***"
    assert mask_url("https://host/plain") == "https://host/plain"
    assert mask_url("s3://k:s@bucket/key#frag") == "s3://***@bucket/key#***"
    assert mask_url("not a url") == "not a url"


def test_describe_masks_every_url_setting(caplog):
    settings = Settings.load(
        {
            "HEYGEM_CHECKPOINT_URL": SECRET_URL,
            "HEYGEM_DETECTOR_URL": "https://u:p@d.example/s3fd",
            "HEYGEM_S3_ENDPOINT": S3_SECRET,
            "HEYGEM_URL_ALLOWLIST": "https://a.example/?k=1,https://b.example/",
            "HEYGEM_TTS_URL": "http://x:y@tts.example:18180/v1?key=2",
            "HEYGEM_TTS_PROVIDER": "openai",
        }
    )
    shown = settings.describe()
    assert shown["checkpoint_url"] == "https://***@weights.example/x.pth?***"
    assert shown["detector_url"] == "https://***@d.example/s3fd"
    assert shown["url_allowlist"] == "https://a.example/?***,https://b.example/"
    assert shown["tts_url"] == "http://***@tts.example:18180/v1?***"
    caplog.set_level("INFO", logger="heygem.settings")
    settings.log_summary()
    assert "pass" not in caplog.text and "key=2" not in caplog.text and "ak:sk" not in caplog.text


# --------------------------------------------------------------------------------------------------
# finding 17: refusals before the body is read


@pytest.mark.slow
@pytest.mark.parametrize("chunked", [False, True])
def test_queue_full_submission_is_refused_before_its_upload_is_read(full_queue, chunked):
    boundary = _boundary()
    declared = 400 * MB
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    if not chunked:
        headers["Content-Length"] = str(declared)
    pieces = (b"\0" * (256 * KB) for _ in range(declared // (256 * KB)))
    started = time.monotonic()
    answer = rawhttp.request(full_queue.port, "POST", "/api/v1/jobs", headers, pieces, chunked=chunked)
    assert answer.status == 429, answer
    assert "queue is full" in json.loads(answer.body)["detail"]
    assert answer.headers["retry-after"] == "5"
    assert answer.sent < 16 * MB  # socket buffers only, of 400 MB
    assert time.monotonic() - started < 5


# --------------------------------------------------------------------------------------------------
# finding 18: keep-alive longer than Retry-After


@pytest.mark.slow
def test_connections_outlive_the_retry_after_pause(full_queue):
    conn = http.client.HTTPConnection("127.0.0.1", full_queue.port, timeout=10)
    try:
        conn.request("GET", "/health")
        first = conn.getresponse()
        first.read()
        retry_after = 5
        time.sleep(retry_after + 1.5)  # uvicorn's default keep-alive (5 s) closed it here
        conn.request("GET", "/health")
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def test_keep_alive_setting_is_validated():
    assert Settings.load({}).keep_alive_s == 75.0
    with pytest.raises(ValueError, match="keep_alive_s"):
        Settings.load({"HEYGEM_KEEP_ALIVE_S": "0"})


# --------------------------------------------------------------------------------------------------
# findings 13, 20 and 22: errors


@pytest.fixture
def api(settings):
    service = JobService(settings, pipeline_factory=FakePipeline)
    service.start()
    with TestClient(create_app(settings, service, ui=False)) as client:
        yield client, service
    service.stop(0)


def test_full_disk_answers_507_without_a_path_and_recovers(api, settings, monkeypatch):
    client, service = api
    real_submit = service.submit

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(settings.inputs_dir / "x" / "a.wav"))

    monkeypatch.setattr(service, "submit", disk_full)
    body = {"audio": "a.wav", "video": "b.mp4"}
    answer = client.post("/api/v1/jobs", json=body)
    assert answer.status_code == 507
    assert answer.json() == {"detail": "the server's disk is full; try again later"}
    assert "Retry-After" in answer.headers
    monkeypatch.setattr(service, "submit", lambda *a, **k: (_ for _ in ()).throw(DiskFullError("full")))
    assert client.post("/api/v1/jobs", json=body).status_code == 507
    monkeypatch.setattr(service, "submit", real_submit)  # space is back
    assert client.post("/api/v1/jobs", json=body).status_code == 400  # the request itself is wrong


def test_expired_job_answers_410_with_its_date(api, settings, speech_wav, face_video):
    client, service = api
    clips = settings.inputs_dir / "clips"  # operator media, not an upload folder
    clips.mkdir(parents=True, exist_ok=True)
    audio, video = shutil.copy(speech_wav, clips), shutil.copy(face_video, clips)
    job_id = client.post("/api/v1/jobs", json={"audio": str(audio), "video": str(video)}).json()["id"]
    service.wait(job_id, READY_TIMEOUT_S, principal=LOCAL)
    service.store.expire([job_id], 1_700_000_000)  # what the retention sweep does
    answer = client.get(f"/api/v1/jobs/{job_id}")
    assert answer.status_code == 410
    assert "2023-11-14" in answer.json()["detail"]
    assert client.get("/api/v1/jobs/" + "b" * 32).status_code == 404  # never existed


def test_error_details_carry_no_absolute_paths(api, settings):
    client, _ = api
    answer = client.post("/api/v1/jobs", json={"audio": "/etc/passwd", "video": "/srv/secret/v.mp4"})
    assert answer.status_code in (400, 403)
    assert "/etc/" not in answer.text and "/srv/" not in answer.text
    missing = settings.inputs_dir / "gone" / "a.wav"
    answer = client.post("/api/v1/jobs", json={"audio": str(missing), "video": str(missing)})
    assert str(settings.data_dir) not in answer.text, answer.text


def test_strip_paths_keeps_urls_and_relative_names():
    data = Path("/srv/heygem")
    assert strip_paths("cannot read /srv/heygem/inputs/ab/x.wav", data) == "cannot read inputs/ab/x.wav"
    assert strip_paths("open '/etc/other/secret.ts' failed") == "open 'secret.ts' failed"
    assert (
        strip_paths("see https://h.example/a/b and s3://b/k/z") == "see https://h.example/a/b and s3://b/k/z"
    )


# --------------------------------------------------------------------------------------------------
# full disk on a real (tiny) volume


@pytest.fixture
def tiny_volume(tmp_path):
    mount = tmp_path / "volume"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_full_volume_answers_507_and_recovers(tiny_volume, speech_wav, face_video):
    live = ServerProcess(
        tiny_volume / "data", env={"HEYGEM_LOG_LEVEL": "WARNING"}, log_path=tiny_volume.parent / "server.log"
    )  # keep the log off the full volume
    try:
        live.wait_for("/ready", 200, READY_TIMEOUT_S)
        boundary = _boundary()
        parts = [("audio", "a.wav", b"\0" * (20 * MB)), ("video", "v.mp4", b"\0" * 10)]
        answer = rawhttp.request(
            live.port,
            "POST",
            "/api/v1/jobs",
            {"Content-Type": f"multipart/form-data; boundary={boundary}"},
            rawhttp.in_pieces(rawhttp.multipart(boundary, parts), 256 * KB),
            chunked=True,
        )
        assert answer.status == 507, answer
        detail = json.loads(answer.body)["detail"]
        assert detail == "the server's disk is full; try again later"
        boundary = _boundary()
        parts = [("audio", "a.wav", speech_wav.read_bytes()), ("video", "v.mp4", face_video.read_bytes())]
        body = b"".join(rawhttp.multipart(boundary, parts))
        ok = _post(live, "/api/v1/jobs", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert ok.status == 202, ok  # the failed upload was removed: space is back
    finally:
        live.stop()


# --------------------------------------------------------------------------------------------------
# the pieces, fast


def test_origin_rules():
    assert origin_allowed("http://127.0.0.1:7860", "127.0.0.1:7860", "http", ())
    assert origin_allowed("https://studio.example", "studio.example", "http", ())  # TLS gateway
    assert not origin_allowed("http://127.0.0.1:9999", "127.0.0.1:7860", "http", ())
    assert not origin_allowed("null", "127.0.0.1:7860", "http", ())
    assert origin_allowed("https://portal.example", "h:1", "http", ("https://portal.example",))


def test_host_rules():
    assert host_allowed("anything", ())
    assert host_allowed("LOCALHOST:7860", ("localhost",))
    assert host_allowed("a.studio.example", ("*.studio.example",))
    assert not host_allowed("evil.example", ("localhost", "*.studio.example"))
    assert host_allowed("[::1]:80", ("::1",))


def test_inspector_counts_files_and_text():
    boundary = "xyz"
    inspector = MultipartInspector(boundary.encode(), PartLimits(max_files=2))
    body = b"".join(
        rawhttp.multipart(boundary, [("a", "1.wav", b"1"), ("b", "2.wav", b"2"), ("c", "3.wav", b"3")])
    )
    with pytest.raises(Refusal, match="too many files"):
        for i in range(0, len(body), 7):  # split anywhere, headers included
            inspector.feed(body[i : i + 7])


def test_upload_quota_windows():
    now = [0.0]
    quota = UploadQuota(uploads_per_minute=2, mb_per_hour=1, clock=lambda: now[0])
    quota.start("c", None)
    quota.start("c", None)
    with pytest.raises(Refusal) as refused:
        quota.start("c", None)
    assert refused.value.status == 429 and refused.value.retry_after == 60
    now[0] = 61.0
    quota.start("c", MB // 2)
    quota.charge("c", MB // 2)
    with pytest.raises(Refusal, match="allowance"):
        quota.charge("c", MB)
    now[0] = 61.0 + 3600
    quota.start("c", MB // 2)  # an hour later the bytes are forgotten
