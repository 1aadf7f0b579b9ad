"""The studio parts of the web page without a browser (issue 16): the ETA arithmetic, the speech
check, back-end messages as the page says them, the preview-engine banner and named downloads.
The browser side is tests/test_ui_studio_browser.py."""

from __future__ import annotations

import dataclasses
import subprocess
import wave
from pathlib import Path

import pytest

from heygem.engine.api import PREVIEW, EngineStatus
from heygem.web import eta, i18n, media
from tests.jobs_support import place_inputs
from tests.kit import FakePipeline


def _request(language: str = "en"):
    import gradio as gr

    return gr.Request(username="default:admin", headers={"accept-language": language})


@pytest.fixture
def finished(settings, start_service, speech_wav, face_video):
    """A real job run on the fake engine, and the service that ran it."""
    from heygem.web.identity import principal_of

    service = start_service(settings)
    inputs = place_inputs(settings, speech_wav, face_video)
    who = principal_of(_request())
    job = service.submit(str(inputs.audio), str(inputs.video), principal=who)
    return service, service.wait(job.id, 60, principal=who)


def test_the_eta_comes_from_the_speech_length_and_the_recent_speed(finished, speech_wav):
    _, job = finished
    assert eta.recent_fps([job]) is None  # the fake engine reports no frames: no made-up speed
    timed = dataclasses.replace(job, frames=250, run_seconds=5.0)  # 50 frames per second
    slower = dataclasses.replace(job, frames=100, run_seconds=5.0)
    assert eta.recent_fps([timed, slower]) == pytest.approx(35.0)
    speech_s = eta.speech_seconds(job)
    assert speech_s == pytest.approx(media.speech_level(speech_wav, 600.0)[0], abs=0.05)
    queued = dataclasses.replace(job, progress=0.0, options={})
    # 25 fps (the default output rate) x speech length, at 50 fps of rendering
    assert eta.render_seconds(queued, speech_s, 50.0) == pytest.approx(speech_s * 25 / 50)
    halfway = dataclasses.replace(queued, progress=0.5)
    assert eta.render_seconds(halfway, speech_s, 50.0) == pytest.approx(speech_s * 25 / 100)
    assert eta.render_seconds(queued, None, 50.0) is None and eta.render_seconds(queued, 3.0, None) is None
    assert eta.speech_seconds(dataclasses.replace(job, audio="", text="Hi")) is None


def _wav(path: Path, samples: bytes, rate: int = 16_000) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples)
    return path


def test_the_speech_check_warns_about_silent_and_short_speech(settings, tmp_path, speech_wav, face_video):
    from heygem.web.ui import Handlers

    handlers = Handlers(settings, None, lambda count: [])  # type: ignore[arg-type]
    silent = _wav(tmp_path / "silent.wav", bytes(2 * 16_000 * 2))  # 2 s of zeros
    short = _wav(tmp_path / "short.wav", (b"\x00\x40\x00\xc0") * 4000)  # 0.5 s, loud
    assert "silent" in handlers.check_speech(str(silent), _request())
    assert "0.5 s" in handlers.check_speech(str(short), _request())
    fine = handlers.check_speech(str(speech_wav), _request())
    assert "heygem-error" not in fine and "Speech:" in fine
    assert "静音" in handlers.check_speech(str(silent), _request("zh-CN"))
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"nope" * 100)
    assert "heygem-error" in handlers.check_speech(str(broken), _request())


def test_a_video_can_be_the_speech(settings, start_service, speech_wav, face_video, tmp_path):
    """The Single tab's speech video: its sound track is checked and spoken, like an audio file."""
    from heygem.web.identity import principal_of
    from heygem.web.ui import Handlers, build_options

    talking = tmp_path / "talk.mp4"
    argv = ["ffmpeg", "-y", "-loglevel", "error", "-i", str(face_video), "-i", str(speech_wav)]
    subprocess.run([*argv, "-c:v", "copy", "-c:a", "aac", str(talking)], check=True)
    service = start_service(settings)
    handlers = Handlers(settings, service, lambda count: [])
    assert "Speech:" in handlers.check_speech(str(talking), _request())
    fields = build_options({})
    both = handlers.submit_single(
        str(speech_wav), str(face_video), fields, _request(), speech_video=str(talking)
    )
    assert both[0] == "" and "not both" in both[-1]
    job_id, note = handlers.submit_single(
        None, str(face_video), fields, _request(), speech_video=str(talking)
    )
    assert job_id and "heygem-error" not in note
    job = service.wait(job_id, 60, principal=principal_of(_request()))
    assert str(job.status) == "succeeded" and job.audio.endswith("talk.mp4")


def test_backend_messages_name_the_ui_control_and_speak_chinese():
    engine_text = "no face found in a.mp4 (checked 50 frames); try a clearer frontal video or give --box"
    english = i18n.backend_message(engine_text)
    assert "--box" not in english and "face point" in english and "a.mp4" in english
    assert "人脸" in i18n.backend_message("item 2: " + engine_text, i18n.CHINESE)
    assert i18n.backend_message("item 2: " + engine_text).startswith("item 2: ")
    assert i18n.backend_message("video file not found: x.mp4", i18n.CHINESE) == "找不到视频文件：x.mp4"
    assert i18n.backend_message("something new") == "something new"  # unknown: unchanged


class PreviewPipeline(FakePipeline):
    def status(self) -> EngineStatus:
        return dataclasses.replace(super().status(), engine=PREVIEW)


def test_the_preview_engine_shows_banners_and_labels_its_results(
    settings, start_service, speech_wav, face_video
):
    from heygem.web.ui import Handlers

    service = start_service(settings, PreviewPipeline)
    handlers = Handlers(settings, service, lambda count: [])
    from tests.kit import wait_until

    wait_until(lambda: service.readiness()[0], 30, message="the engine to load")
    loading, timer, single, batch = handlers.banner(_request())
    assert single["visible"] is True and batch["visible"] is True and timer.active is False
    inputs = place_inputs(settings, speech_wav, face_video)
    from heygem.web.identity import principal_of

    who = principal_of(_request())
    job = service.wait(
        service.submit(str(inputs.audio), str(inputs.video), principal=who).id, 60, principal=who
    )
    labelled = handlers._done_summary(dataclasses.replace(job, engine=PREVIEW), "en")
    assert "preview engine" in labelled
    assert "preview engine" not in handlers._done_summary(job, "en")  # the fake engine ran it


def test_downloads_are_named_after_the_inputs(finished, settings):
    from heygem.web.ui import download_name, named_download

    _, job = finished
    assert download_name(job) == "face_speech.mp4"
    named = Path(named_download(job, settings) or "")
    assert named.name == "face_speech.mp4" and named.read_bytes() == job.output_path.read_bytes()
    assert download_name(dataclasses.replace(job, output_name="clip.mp4")) == "clip.mp4"
