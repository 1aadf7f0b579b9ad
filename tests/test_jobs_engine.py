"""One end-to-end run of the job layer with the real engine and a random-initialised checkpoint."""

from __future__ import annotations

import pytest

from heygem.jobs.records import JobStatus
from heygem.jobs.service import JobService
from heygem.jobs.tenancy import LOCAL
from tests import media
from tests.jobs_support import place_inputs
from tests.kit import wait_until

ENGINE_WAIT_S = 300.0  # model load, warm-up and a 1 s clip on 2 busy CPU cores
POLL_S = 0.1
CLIP_S = 1.0


@pytest.mark.slow
def test_job_service_runs_the_real_engine(settings_with_weights, speech_wav, face_video):
    settings = settings_with_weights.replace(warmup=True, batch_size=16)
    inputs = place_inputs(settings, speech_wav, face_video)
    # One second of sound keeps the CPU run short; the engine's own tests cover real speech.
    audio = media.make_tone(settings.inputs_dir / "tone.wav", seconds=CLIP_S)
    service = JobService(settings)  # the default factory: the real LipSyncPipeline
    service.start()
    try:
        wait_until(
            lambda: service.readiness()[1] != "loading the model",
            ENGINE_WAIT_S,
            interval=POLL_S,
            message="the model to load",
        )
        assert service.readiness() == (True, "ready")  # loaded and warmed up
        job = service.submit(str(audio), str(inputs.video), output_name="talking", principal=LOCAL)
        done = service.wait(job.id, ENGINE_WAIT_S, principal=LOCAL)
        status = service.engine_status()
    finally:
        service.stop(drain_seconds=5)
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert done.engine == status.engine == "wav2lip"
    assert done.output_path.name == "talking.mp4"
    assert sorted(media.stream_types(done.output_path)) == ["audio", "video"]
    # The result lasts as long as the sound (within one 25 fps frame plus encoder padding).
    assert abs(media.duration_of(done.output_path) - CLIP_S) < 0.1
