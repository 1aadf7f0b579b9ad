"""Avatars end to end on the real preview engine (no weights: Haar detector, preview renderer)
and the real espeak-ng provider: one avatar, 3 text jobs and 2 audio jobs; detection runs once,
when the avatar is prepared, and every result is a valid mp4."""

from __future__ import annotations

import shutil
import threading
import time

import pytest

from heygem.engine.faces.detect import HaarDetector
from heygem.engine.pipeline import LipSyncPipeline
from heygem.jobs.records import JobStatus
from heygem.jobs.service import JobService
from heygem.jobs.tenancy import LOCAL
from tests import media

WAIT_S = 240.0
TEXTS = ("Hello, this is the first clip.", "你好，这是第二段。", "And a third one, short.")


class DetectorCalls:
    """Counts every Haar detector call, whichever thread (preparation or worker) makes it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self._lock = threading.Lock()
        original = HaarDetector.detect

        def counted(detector, frames):
            with self._lock:
                self.count += 1
            return original(detector, frames)

        monkeypatch.setattr(HaarDetector, "detect", counted)


@pytest.mark.slow
def test_one_avatar_three_text_jobs_and_two_audio_jobs_detect_once(
    settings, face_video, speech_wav, monkeypatch
):
    calls = DetectorCalls(monkeypatch)
    settings = settings.replace(engine="preview")
    settings.inputs_dir.mkdir(parents=True, exist_ok=True)
    video = shutil.copy(face_video, settings.inputs_dir / "face.mp4")
    audio = shutil.copy(speech_wav, settings.inputs_dir / "speech.wav")
    # An engine factory of our own: the worker runs it in this process, where the count is.
    service = JobService(settings, pipeline_factory=LipSyncPipeline)
    service.start()
    try:
        avatar = service.create_avatar("Astronaut", str(video), principal=LOCAL)
        deadline = time.monotonic() + WAIT_S
        while avatar.status == "preparing" and time.monotonic() < deadline:
            time.sleep(0.1)
            avatar = service.get_avatar(avatar.id, principal=LOCAL)
        assert avatar.status == "ready", avatar.error
        after_preparation = calls.count
        assert after_preparation > 0
        jobs = [service.submit(None, avatar.ref, text=text, principal=LOCAL) for text in TEXTS]
        jobs += [service.submit(str(audio), avatar.ref, principal=LOCAL) for _ in range(2)]
        done = [service.wait(job.id, WAIT_S, principal=LOCAL) for job in jobs]
    finally:
        service.stop(5)
    assert [job.status for job in done] == [JobStatus.SUCCEEDED] * 5, [job.error for job in done]
    assert calls.count == after_preparation, "a job ran the face detector again"
    assert [job.engine for job in done] == ["preview"] * 5
    for job in done:
        assert job.output_path is not None
        assert sorted(media.stream_types(job.output_path)) == ["audio", "video"]
        assert media.duration_of(job.output_path) > 0.5
    # The text jobs spoke their own text: each result lasts as long as its speech, not the
    # 4 s fixture's.
    assert media.duration_of(done[3].output_path) == pytest.approx(media.duration_of(speech_wav), abs=0.2)
    assert len({round(media.duration_of(job.output_path), 1) for job in done[:3]}) == 3
