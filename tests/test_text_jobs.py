"""Text jobs: "text" (+ "voice") instead of "audio" in a job, a batch item and a manifest line;
speech is synthesised in a "speech" stage (real espeak-ng) before the engine runs; a provider
failure fails the job with one line and never hangs."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from heygem.errors import InputError, LimitExceededError
from heygem.jobs.manifest import parse_manifest
from heygem.jobs.records import JobStatus
from heygem.jobs.runner import run_manifest
from heygem.jobs.service import JobService
from heygem.jobs.tenancy import LOCAL
from tests import media
from tests.kit import FakePipeline, Pipelines, running_service

WAIT_S = 60.0


@pytest.fixture
def video(settings, face_video) -> Path:
    settings.inputs_dir.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(face_video, settings.inputs_dir / "face.mp4"))


def test_a_text_job_speaks_before_the_engine_and_reports_the_speech_stage(settings, video):
    pipelines = Pipelines()
    stages: list[str] = []
    with running_service(settings, pipelines) as service:
        original = service.store.report_progress

        def spy(job_id, token, progress, stage):
            stages.append(stage)
            return original(job_id, token, progress, stage)

        service.store.report_progress = spy  # type: ignore[method-assign]
        job = service.submit(None, str(video), text="Hello there. How are you?", voice="en", principal=LOCAL)
        assert (job.audio, job.text, job.voice) == ("", "Hello there. How are you?", "en")
        done = service.wait(job.id, WAIT_S, principal=LOCAL)
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert "speech" in stages and stages.index("speech") < stages.index("synthesize")
    ((audio, face),) = pipelines.runs
    assert face == video and audio.name == "speech.wav"
    assert 0.8 < media.duration_of(done.output_path) < 4.0  # the spoken text, not a fixture
    assert done.to_dict()["text"] == "Hello there. How are you?"


def test_exactly_one_of_audio_and_text_and_the_speech_limits(settings, video, speech_wav):
    with running_service(settings.replace(tts_max_chars=20), Pipelines()) as service:
        with pytest.raises(InputError, match="not both"):
            service.submit(str(speech_wav), str(video), text="hi", principal=LOCAL)
        with pytest.raises(InputError, match="audio is required"):
            service.submit(None, str(video), principal=LOCAL)
        with pytest.raises(LimitExceededError, match="limit is 20"):
            service.submit(None, str(video), text="x" * 21, principal=LOCAL)
        with pytest.raises(InputError, match="empty"):
            service.submit(None, str(video), text=" \n ", principal=LOCAL)
        with pytest.raises(InputError, match="not a valid voice"):
            service.submit(None, str(video), text="hi", voice="en; rm -rf /", principal=LOCAL)
        with pytest.raises(InputError, match="voice goes with text"):
            service.submit(str(video), str(video), voice="en", principal=LOCAL)
        assert service.count_jobs(principal=LOCAL) == 0


def test_a_speech_provider_failure_fails_the_job_in_one_line_within_the_timeout(settings, video):
    # A server that accepts the connection and never answers: the provider's timeout ends it.
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    broken = settings.replace(tts_provider="openai", tts_url=f"http://127.0.0.1:{port}", tts_timeout_s=1.0)
    try:
        with running_service(broken, Pipelines()) as service:
            started = time.monotonic()
            job = service.submit(None, str(video), text="Hello.", principal=LOCAL)
            done = service.wait(job.id, WAIT_S, principal=LOCAL)
            elapsed = time.monotonic() - started
    finally:
        listener.close()
    assert done.status == JobStatus.FAILED and done.error and "\n" not in done.error
    assert "within 1 s" in done.error and "speech server" in done.error, done.error
    assert elapsed < 20


@pytest.mark.slow
def test_batch_items_mix_text_and_audio(settings, video, speech_wav):
    audio = shutil.copy(speech_wav, settings.inputs_dir / "speech.wav")
    with running_service(settings, Pipelines()) as service:
        batch = service.submit_batch(
            [
                {"text": "One.", "video": str(video)},
                {"audio": str(audio), "video": str(video)},
                {"text": "Two.", "voice": "en", "video": str(video)},
            ],
            principal=LOCAL,
        )
        assert [item.text for item in batch.items] == ["One.", None, "Two."]
        assert batch.items[0].output_name.startswith("0001_face_text")
        with pytest.raises(InputError, match="item 2: give either audio or text"):
            service.submit_batch(
                [{"text": "a", "video": str(video)}, {"text": "b", "audio": str(audio), "video": str(video)}],
                principal=LOCAL,
            )
        deadline = time.monotonic() + WAIT_S
        while not service.get_batch(batch.id, principal=LOCAL).finished and time.monotonic() < deadline:
            time.sleep(0.1)
        final = service.get_batch(batch.id, principal=LOCAL)
    assert [item.status for item in final.items] == [JobStatus.SUCCEEDED] * 3


def test_manifest_lines_may_carry_text(tmp_path, settings, face_video):
    shutil.copy(face_video, tmp_path / "face.mp4")
    manifest = tmp_path / "lines.jsonl"
    manifest.write_text(
        "\n".join(
            json.dumps(line)
            for line in (
                {"text": "First line.", "video": "face.mp4"},
                {"text": "Second line.", "voice": "en", "video": "face.mp4", "output_name": "two.mp4"},
            )
        )
    )
    items = parse_manifest(manifest, [tmp_path])
    assert items[0].as_item() == {
        "text": "First line.",
        "video": str(tmp_path / "face.mp4"),
        "output_name": items[0].output_name,
    }
    assert items[1].voice == "en"
    summary = run_manifest(settings, manifest, tmp_path / "out", pipeline=FakePipeline(settings))
    assert summary.ok and len(summary.succeeded) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "x", "audio": "a.wav", "video": "face.mp4"}))
    with pytest.raises(InputError, match="line 1: give either 'audio' or 'text'"):
        parse_manifest(bad, [tmp_path])


def test_speak_returns_a_wav_and_cleans_up_old_ones(settings):
    service = JobService(settings, pipeline_factory=FakePipeline)
    service.start()
    try:
        first = service.speak("Hear it.", principal=LOCAL)
        assert first.read_bytes()[:4] == b"RIFF" and first.parent == settings.data_dir / "speech"
        old = time.time() - 7200
        import os

        os.utime(first, (old, old))
        second = service.speak("Again.", principal=LOCAL, voice="en")
        assert second.is_file() and not first.exists()
    finally:
        service.stop(5)


def test_a_cancelled_text_job_stops_between_pieces(settings, video):
    gate = threading.Event()
    with running_service(settings, Pipelines(gate=gate)) as service:
        job = service.submit(None, str(video), text="One. Two. Three.", principal=LOCAL)
        service.cancel(job.id, principal=LOCAL)
        gate.set()
        assert service.wait(job.id, WAIT_S, principal=LOCAL).status == JobStatus.CANCELLED
