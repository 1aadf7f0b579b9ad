"""The HeyGem-compatible API (/easy/submit, /easy/query) through FastAPI's TestClient, on a real
JobService (SQLite) with the fast FakePipeline. The real engine is in test_compat_live.py."""

from __future__ import annotations

import json
import shutil
import threading
import urllib.request
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from heygem.errors import ForbiddenPathError
from heygem.jobs import JobService
from heygem.jobs.tenancy import LOCAL
from heygem.storage.paths import resolve_under
from heygem.web.compat import (
    CHAOFEN_NOTE,
    CODE_BAD_REQUEST,
    CODE_BUSY,
    CODE_ERROR,
    CODE_OK,
    CODE_UNKNOWN_TASK,
    INTERNAL_ERROR,
    KEY_PREFIX,
    WATERMARK_LABEL,
    compat_service_settings,
    create_compat_app,
    create_compat_router,
    start_compat_server,
    submit_task,
)
from heygem.web.identity import Identity, IdentityGate
from tests import media
from tests.kit import FakePipeline, Pipelines, free_port, wait_until

JOB_TIMEOUT_S = 60.0


@pytest.fixture
def shared(tmp_path, speech_wav, face_video) -> Path:
    """The client's shared folder (mounted at /code/data for HeyGem): inputs in temp/."""
    root = tmp_path / "heygem_data" / "face2face"
    work = root / "temp"
    work.mkdir(parents=True)
    shutil.copy(speech_wav, work / "speech.wav")
    shutil.copy(face_video, work / "face.mp4")
    (work / "corrupt.mp4").write_bytes(b"\x00\x01not a video" * 512)
    return root


@pytest.fixture
def compat_settings(settings, shared):
    return compat_service_settings(settings.replace(compat_root=shared))


class Harness:
    def __init__(self, settings, pipelines: Pipelines) -> None:
        self.settings = settings
        self.pipelines = pipelines
        self.service = JobService(settings, pipeline_factory=pipelines)
        self.service.start()
        self.client = TestClient(create_compat_app(self.service, settings))

    def submit(self, code: str, audio: str = "speech.wav", video: str = "face.mp4", **flags) -> dict:
        body = {
            "audio_url": audio,
            "video_url": video,
            "code": code,
            "chaofen": 0,
            "watermark_switch": 0,
            "pn": 1,
            **flags,
        }
        response = self.client.post("/easy/submit", json=body)
        assert response.status_code == 200
        return response.json()

    def query(self, code: str) -> dict:
        response = self.client.get("/easy/query", params={"code": code})
        assert response.status_code == 200
        return response.json()

    def poll(self, code: str) -> tuple[dict, list[int]]:
        """Query until status 2 or 3, as the desktop client does; the last reply and progresses."""
        seen: list[int] = []
        replies: list[dict] = []

        def finished() -> dict | None:
            reply = self.query(code)
            assert reply["code"] == CODE_OK, reply
            replies.append(reply)
            seen.append(reply["data"]["progress"])
            if reply["data"]["status"] in (2, 3):
                return reply
            assert reply["data"]["status"] == 1
            return None

        reply = wait_until(finished, JOB_TIMEOUT_S, message=lambda: f"task {code} to finish: {replies[-1:]}")
        return reply, seen

    def close(self) -> None:
        self.pipelines.open_gate()
        self.service.stop(drain_seconds=5)


@pytest.fixture
def harness(compat_settings):
    h = Harness(compat_settings, Pipelines())
    yield h
    h.close()


def test_submit_poll_and_read_the_result_from_the_shared_folder(harness, shared):
    reply = harness.submit("6f1c2d1e-0b4a-4c55-9f0e-1b2c3d4e5f60")
    assert reply == {
        "code": CODE_OK,
        "msg": "task 6f1c2d1e-0b4a-4c55-9f0e-1b2c3d4e5f60 accepted",
        "success": True,
        "data": {},
    }

    done, progresses = harness.poll("6f1c2d1e-0b4a-4c55-9f0e-1b2c3d4e5f60")

    assert done["data"] == {
        "code": "6f1c2d1e-0b4a-4c55-9f0e-1b2c3d4e5f60",
        "status": 2,
        "msg": "任务完成",
        "progress": 100,
        "result": "/6f1c2d1e-0b4a-4c55-9f0e-1b2c3d4e5f60-r.mp4",
    }
    assert all(isinstance(p, int) and 0 <= p <= 100 for p in progresses)
    assert progresses == sorted(progresses)
    # The desktop client joins result to its asset folder, <shared>/temp.
    result = shared / "temp" / done["data"]["result"].lstrip("/")
    assert result.is_file()
    assert sorted(media.stream_types(result)) == ["audio", "video"]
    assert abs(media.duration_of(result) - 2.0) < 0.2  # the 2 s face video, muxed by the fake


def test_running_task_reports_its_stage_and_progress(compat_settings):
    h = Harness(compat_settings, Pipelines(delay_s=1.5))
    try:
        h.submit("slow")
        data = wait_until(
            lambda: (d := h.query("slow")["data"])["msg"] == "running: synthesize" and d,
            JOB_TIMEOUT_S,
            message="the task to run",
        )
        assert data["status"] == 1
        assert data["msg"] == "running: synthesize"
        assert 0 < data["progress"] < 100
        assert data["result"] == ""
    finally:
        h.close()


def test_reusing_a_code_while_its_task_is_waiting_starts_nothing_new(compat_settings):
    h = Harness(compat_settings, Pipelines(gate=threading.Event()))  # the engine stays loading
    try:
        first = h.submit("dup-1")
        again = h.submit("dup-1", audio="missing.wav")  # the waiting task answers; no checks
        assert first["code"] == again["code"] == CODE_OK
        assert again["msg"] == "task dup-1 is already queued; nothing new was started"
        assert h.service.count_jobs(principal=LOCAL) == 1
    finally:
        h.close()


def test_reusing_a_finished_code_starts_a_new_run_and_query_reports_it(harness, shared):
    # The original forgets a task once it has reported it: a script with a fixed code gets a
    # new video each time, not its first one again for a week.
    assert harness.submit("dup-1")["code"] == CODE_OK
    first, _ = harness.poll("dup-1")
    assert harness.submit("dup-1", audio="missing.wav")["code"] == CODE_BAD_REQUEST  # checked anew
    second = harness.submit("dup-1")
    assert second == {"code": CODE_OK, "msg": "task dup-1 accepted", "success": True, "data": {}}
    done, _ = harness.poll("dup-1")
    assert done["data"]["status"] == 2 and done["data"]["code"] == "dup-1"
    jobs = harness.service.list_jobs(principal=LOCAL)
    assert len(jobs) == 2 and len(harness.pipelines.runs) == 2
    assert {job.idempotency_key for job in jobs} == {KEY_PREFIX + "dup-1", KEY_PREFIX + "dup-1:2"}
    # Each run's video is in the shared folder; the query names the latest.
    for reply in (first, done):
        assert (shared / "temp" / reply["data"]["result"].lstrip("/")).is_file()
    latest = harness.service.get_by_key(KEY_PREFIX + "dup-1:2", principal=LOCAL)
    assert done["data"]["result"] == "/" + Path(latest.output_url).name


def test_concurrent_duplicate_submits_make_one_job(harness):
    root = harness.settings.resolved_compat_root
    body = {"audio_url": "speech.wav", "video_url": "face.mp4", "code": "race"}
    replies: list[dict] = []
    threads = [
        threading.Thread(target=lambda: replies.append(submit_task(harness.service, root, body, LOCAL)))
        for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [reply["code"] for reply in replies] == [CODE_OK] * 6
    assert harness.poll("race")[0]["data"]["status"] == 2
    assert harness.service.count_jobs(principal=LOCAL) == 1
    assert len(harness.pipelines.runs) == 1


def test_an_unknown_code_answers_10004_with_success_as_the_original(harness):
    # Health probes query a dummy code and read success; a missing code is still a bad request.
    reply = harness.query("never-submitted")
    assert reply == {
        "code": CODE_UNKNOWN_TASK,
        "msg": "no task with code 'never-submitted'",
        "success": True,
        "data": {"code": "never-submitted"},
    }
    missing = harness.client.get("/easy/query").json()
    assert missing["code"] == CODE_BAD_REQUEST
    assert missing["msg"].startswith("code is required")


@pytest.mark.parametrize(
    "path",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "/code/data/../../etc/passwd",
        "..\\..\\etc\\passwd",
        "/code/data/../x.wav",
    ],
)
def test_paths_escaping_the_shared_folder_are_refused(harness, path):
    reply = harness.submit("escape", audio=path)
    assert reply["code"] == CODE_BAD_REQUEST
    assert reply["msg"] == f"audio_url {path!r} is outside the shared folder"
    assert harness.service.count_jobs(principal=LOCAL) == 0


def test_a_symlink_out_of_the_shared_folder_is_refused(harness, shared, tmp_path):
    outside = tmp_path / "secret.wav"
    shutil.copy(shared / "temp" / "speech.wav", outside)
    (shared / "temp" / "link.wav").symlink_to(outside)
    reply = harness.submit("link", audio="link.wav")
    assert reply["code"] == CODE_BAD_REQUEST
    assert "outside the shared folder" in reply["msg"]


def test_missing_file_is_named(harness):
    reply = harness.submit("missing", video="nobody.mp4")
    assert reply["code"] == CODE_BAD_REQUEST
    assert reply["msg"] == "video_url file not found in the shared folder: nobody.mp4"


def test_container_paths_and_absolute_paths_map_into_the_shared_folder(harness, shared):
    (shared / "avatars").mkdir()
    shutil.copy(shared / "temp" / "face.mp4", shared / "avatars" / "anchor.mp4")
    reply = harness.submit(
        "mapped", audio="/code/data/temp/speech.wav", video=str(shared / "avatars" / "anchor.mp4")
    )
    assert reply["code"] == CODE_OK, reply
    job = harness.service.get_by_key(KEY_PREFIX + "mapped", principal=LOCAL)
    assert Path(job.audio) == (shared / "temp" / "speech.wav").resolve()
    assert Path(job.video) == (shared / "avatars" / "anchor.mp4").resolve()
    assert harness.poll("mapped")[0]["data"]["status"] == 2


def test_relative_paths_fall_back_from_temp_to_the_shared_folder(harness, shared):
    (shared / "voice").mkdir()
    shutil.copy(shared / "temp" / "speech.wav", shared / "voice" / "line.wav")
    reply = harness.submit("fallback", audio="voice/line.wav")
    assert reply["code"] == CODE_OK, reply
    job = harness.service.get_by_key(KEY_PREFIX + "fallback", principal=LOCAL)
    assert Path(job.audio) == (shared / "voice" / "line.wav").resolve()


def test_corrupt_video_ends_in_status_3_with_a_readable_message(harness):
    assert harness.submit("broken", video="corrupt.mp4")["code"] == CODE_OK
    done, _ = harness.poll("broken")
    assert done["data"]["status"] == 3
    assert done["data"]["result"] == ""
    assert done["data"]["msg"] == "corrupt.mp4: no video stream that ffmpeg can read"


def test_full_queue_answers_busy_with_a_message(settings, shared):
    # The gate holds the engine 'loading', so the first task stays queued and fills the queue.
    narrow = compat_service_settings(settings.replace(compat_root=shared, queue_size=1))
    h = Harness(narrow, Pipelines(gate=threading.Event()))
    try:
        assert h.submit("first")["code"] == CODE_OK
        busy = h.submit("second")
        assert busy["code"] == CODE_BUSY
        assert busy["success"] is False
        assert busy["msg"].startswith("queue is full")
        assert busy["code"] == 10001  # the original's busy code
        assert h.query("second")["code"] == CODE_UNKNOWN_TASK  # refused, so never known
        h.pipelines.gate.set()
        assert h.poll("first")[0]["data"]["status"] == 2
        assert h.submit("second")["code"] == CODE_OK  # room again
    finally:
        h.close()


def test_shutting_down_answers_busy(harness):
    harness.service.stop(drain_seconds=1)
    reply = harness.submit("late")
    assert reply["code"] == CODE_BUSY
    assert "shutting down" in reply["msg"]


def test_chaofen_is_accepted_with_a_clear_message(harness):
    reply = harness.submit("hd", chaofen=1)
    assert reply["code"] == CODE_OK
    assert reply["msg"] == f"task hd accepted; {CHAOFEN_NOTE}"
    assert harness.poll("hd")[0]["data"]["status"] == 2


def test_watermark_switch_adds_the_ai_generated_label(harness):
    harness.submit("marked", watermark_switch=1)
    harness.submit("plain", watermark_switch=0)
    marked = harness.service.get_by_key(KEY_PREFIX + "marked", principal=LOCAL)
    plain = harness.service.get_by_key(KEY_PREFIX + "plain", principal=LOCAL)
    assert marked.options["watermark"] == WATERMARK_LABEL == "AI generated"
    assert plain.options.get("watermark", "") == ""


@pytest.mark.parametrize(
    "body, message",
    [
        ({"audio_url": "speech.wav", "video_url": "face.mp4"}, "code is required"),
        ({"audio_url": "speech.wav", "video_url": "face.mp4", "code": "../x"}, "code '../x' must be"),
        ({"audio_url": "speech.wav", "video_url": "face.mp4", "code": "a..b"}, "code 'a..b' must be"),
        ({"audio_url": "speech.wav", "video_url": "face.mp4", "code": "x" * 129}, "must be 1-128"),
        ({"audio_url": "speech.wav", "video_url": "face.mp4", "code": "ok\n"}, "code 'ok\\n' must be"),
        (
            {"audio_url": "speech.wav", "video_url": "face.mp4", "code": "c", "chaofen": 2},
            "chaofen must be 0 or 1, got 2",
        ),
        ({"video_url": "face.mp4", "code": "c"}, "audio_url is required"),
        ({"audio_url": "speech.wav", "video_url": 7, "code": "c"}, "video_url is required"),
        (["not", "an", "object"], "the body must be a JSON object"),
    ],
)
def test_bad_parameters_are_refused_with_a_message(harness, body, message):
    reply = harness.client.post("/easy/submit", json=body).json()
    assert reply["code"] == CODE_BAD_REQUEST
    assert message in reply["msg"]
    assert harness.service.count_jobs(principal=LOCAL) == 0


def test_non_json_and_oversized_bodies_are_refused(harness):
    json_type = {"Content-Type": "application/json"}
    form = harness.client.post("/easy/submit", content=b"audio_url=x&code=1").json()
    assert form["code"] == CODE_BAD_REQUEST and "Content-Type: application/json" in form["msg"]
    garbage = harness.client.post("/easy/submit", content=b"audio_url=x&code=1", headers=json_type).json()
    assert garbage == {"code": CODE_BAD_REQUEST, "msg": "the body must be JSON", "success": False, "data": {}}
    huge = harness.client.post("/easy/submit", content=b" " * (65 * 1024), headers=json_type).json()
    assert huge["code"] == CODE_BAD_REQUEST and "larger than 64 KB" in huge["msg"]


def test_numeric_codes_and_string_flags_are_accepted(harness):
    reply = harness.submit(20250101, chaofen="0", watermark_switch="1")
    assert reply["code"] == CODE_OK, reply
    assert harness.query("20250101")["data"]["status"] in (1, 2)


def test_result_removed_from_the_shared_folder_is_reported_as_failed(harness, shared):
    harness.submit("gone")
    done, _ = harness.poll("gone")
    (shared / "temp" / "gone-r.mp4").unlink()
    data = harness.query("gone")["data"]
    assert data["status"] == 3
    assert data["msg"] == "the finished video gone-r.mp4 is no longer in the shared folder"


class _Broken:
    settings = None

    def get_by_key(self, key):
        raise RuntimeError("database exploded")


def test_unexpected_errors_answer_9999_without_details(settings, shared):
    client = TestClient(create_compat_app(_Broken(), settings.replace(compat_root=shared)))
    for reply in (
        client.get("/easy/query", params={"code": "x"}).json(),
        client.post(
            "/easy/submit", json={"code": "x", "audio_url": "speech.wav", "video_url": "face.mp4"}
        ).json(),
    ):
        assert reply == {"code": CODE_ERROR, "msg": INTERNAL_ERROR, "success": False, "data": {}}


def test_both_compat_doors_need_a_key_when_one_is_set(compat_settings):
    guarded = compat_settings.replace(api_token="s3cret", compat_token="heygem-client")
    pipelines = Pipelines()
    service = JobService(guarded, pipeline_factory=pipelines)
    service.start()
    try:
        main_door = FastAPI()
        main_door.include_router(create_compat_router(service, guarded))
        main_door.add_middleware(IdentityGate, identity=Identity(guarded))
        for app in (main_door, create_compat_app(service, guarded)):
            client = TestClient(app)
            denied = client.get("/easy/query", params={"code": "x"})
            assert denied.status_code == 401
            assert denied.json()["code"] == CODE_BAD_REQUEST
            for key in ("s3cret", "heygem-client"):
                allowed = client.get(
                    "/easy/query", params={"code": "x"}, headers={"Authorization": f"Bearer {key}"}
                )
                assert allowed.status_code == 200 and allowed.json()["msg"] == "no task with code 'x'"
        # No credential configured anywhere: the compat port stays open for stock HeyGem clients.
        open_app = TestClient(create_compat_app(service, compat_settings))
        assert open_app.get("/easy/query", params={"code": "x"}).status_code == 200
    finally:
        service.stop(drain_seconds=1)


def test_compat_service_settings_adds_the_shared_folder_once(settings, shared):
    added = compat_service_settings(settings.replace(compat_root=shared))
    assert added.input_roots == (shared,)
    assert compat_service_settings(added) is added
    inside = settings.replace(compat_root=shared / "temp", input_roots=(shared,))
    assert compat_service_settings(inside) is inside
    port_only = compat_service_settings(settings.replace(compat_port=8383))
    assert port_only.input_roots == (settings.data_dir / "compat",)  # never data_dir itself
    assert (settings.data_dir / "compat").is_dir()
    assert compat_service_settings(settings) is settings  # compat API off: no folder opened


def test_with_the_compat_api_off_its_default_folder_is_no_input_root(settings):
    service_settings = compat_service_settings(settings)
    hidden = settings.data_dir / "compat" / "temp" / "a.wav"
    with pytest.raises(ForbiddenPathError):
        resolve_under(hidden, service_settings.allowed_input_roots)


def test_compat_server_serves_its_own_port_and_stops(harness):
    port = free_port()
    settings = harness.settings.replace(compat_port=port)
    assert start_compat_server(harness.service, settings.replace(compat_port=0)) is None
    server = start_compat_server(harness.service, settings)
    try:
        url = f"http://127.0.0.1:{port}/easy/query?code=x"
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
            assert json.load(response)["msg"] == "no task with code 'x'"
        with pytest.raises(OSError, match=f"port {port}"):
            start_compat_server(harness.service, settings)  # the port is taken
    finally:
        server.stop()
    assert not server.thread.is_alive()


@pytest.mark.parametrize(("pn", "policy"), [(1, "pingpong"), (0, "loop"), ("1", "pingpong"), ("0", "loop")])
def test_pn_selects_the_duration_policy_as_the_original(harness, pn, policy):
    assert harness.submit(f"pn-{pn}", pn=pn)["code"] == CODE_OK
    job = harness.service.get_by_key(KEY_PREFIX + f"pn-{pn}", principal=LOCAL)
    assert job.options["duration_policy"] == policy


def test_pn_defaults_to_pingpong_and_refuses_other_values(harness):
    body = {"audio_url": "speech.wav", "video_url": "face.mp4", "code": "no-pn"}
    assert harness.client.post("/easy/submit", json=body).json()["code"] == CODE_OK
    job = harness.service.get_by_key(KEY_PREFIX + "no-pn", principal=LOCAL)
    assert job.options["duration_policy"] == "pingpong"
    bad = harness.submit("bad-pn", pn=7)
    assert bad["code"] == CODE_BAD_REQUEST and "pn must be 0" in bad["msg"]


def test_every_query_reply_carries_data_code(compat_settings):
    # touge/Duix.Heygem.Proxy reads data.code from every reply and fails without it.
    h = Harness(compat_settings, Pipelines(gate=threading.Event()))
    try:
        h.submit("proxy-1")
        queued = h.query("proxy-1")
        assert queued["data"]["code"] == "proxy-1" and queued["data"]["status"] == 1
        h.pipelines.gate.set()
        done, _ = h.poll("proxy-1")
        assert done["data"]["code"] == "proxy-1" and done["data"]["msg"] == "任务完成"
    finally:
        h.close()


def test_with_the_compat_api_off_the_main_port_has_no_easy_routes(settings):
    from heygem.web.server import create_app

    service = JobService(settings, pipeline_factory=FakePipeline)
    with TestClient(create_app(settings, service, ui=False)) as client:
        assert client.get("/easy/query", params={"code": "x"}).status_code == 404
        assert client.post("/easy/submit", json={"code": "x"}).status_code == 404
    on = settings.replace(compat_root=settings.data_dir / "shared")
    with TestClient(create_app(on, JobService(on, pipeline_factory=FakePipeline), ui=False)) as client:
        assert client.get("/easy/query", params={"code": "x"}).status_code == 200
