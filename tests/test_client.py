"""gradio_client against a live `python app.py` on 127.0.0.1: one job end to end on the real engine
(LipSyncPipeline with a random-initialised checkpoint in the official format)."""

from __future__ import annotations

import http.client
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file

from tests import media
from tests.kit import GENERATE_DEFAULTS, REAL_LAUNCHER, ServerProcess

pytestmark = pytest.mark.slow  # a live server subprocess

READY_TIMEOUT_S = 240.0  # import torch + gradio, load the generator, warm up: a busy 2-core machine
JOB_TIMEOUT_S = 300.0


@pytest.fixture(scope="module")
def real_server(tmp_path_factory, checkpoint_file):
    data = tmp_path_factory.mktemp("client") / "data"
    models = data / "models"
    models.mkdir(parents=True)
    media.install_checkpoint(checkpoint_file, models)
    live = ServerProcess(data, argv=(str(REAL_LAUNCHER),), env={"HEYGEM_MODELS_DIR": str(models)})
    try:
        live.wait_for("/ready", 200, READY_TIMEOUT_S)
        live.wait_for("/", 200, READY_TIMEOUT_S)
        yield live
    finally:
        live.stop_cleanly()


def test_gradio_client_runs_one_job_on_the_real_engine(real_server, speech_wav, face_video, tmp_path):
    client = Client(real_server.url + "/", download_files=str(tmp_path), verbose=False)
    job = client.submit(
        handle_file(str(speech_wav)),
        handle_file(str(face_video)),
        *{**GENERATE_DEFAULTS, "engine": "wav2lip"}.values(),
        api_name="/generate",
    )
    video, download, summary = job.result(timeout=JOB_TIMEOUT_S)
    result = video["video"] if isinstance(video, dict) else video
    assert media.stream_types(result) == ["video", "audio"]
    assert abs(media.duration_of(result) - media.duration_of(speech_wav)) < 0.2
    assert "wav2lip" in summary
    frames = media.read_frames(result)
    assert frames.shape[1:] == (256, 256, 3)


def test_check_face_shows_the_detected_box(real_server, face_video, tmp_path):
    client = Client(real_server.url + "/", download_files=str(tmp_path), verbose=False)
    image, message = client.predict(handle_file(str(face_video)), api_name="/check_face")
    assert message.startswith("Face found:")
    assert Path(image).is_file()


def test_deep_readiness_runs_a_real_inference(real_server):
    response = httpx.get(real_server.url + "/ready", params={"deep": 1}, timeout=READY_TIMEOUT_S)
    assert response.status_code == 200, response.text
    assert response.json()["inference_ms"] > 0


def test_the_api_names_the_generate_endpoint(real_server):
    info = Client(real_server.url + "/", verbose=False).view_api(print_info=False, return_format="dict")
    assert "/generate" in info["named_endpoints"]
    assert "/check_face" in info["named_endpoints"]
    # Callers written before avatars and typed text existed must not have to pass them.
    parameters = info["named_endpoints"]["/generate"]["parameters"]
    added = {p["parameter_name"]: p["parameter_has_default"] for p in parameters[-3:]}
    assert added == {"avatar": True, "text": True, "voice": True}


@pytest.mark.parametrize(
    "raw_path",
    [
        "/api/v1/jobs/../../heygem.db",
        "/api/v1/jobs/%2e%2e/%2e%2e/heygem.db",
        "/../heygem.db",
        "/gradio_api/file=../heygem.db",
        "/gradio_api/file=%2e%2e/heygem.db",
    ],
)
def test_raw_traversal_requests_never_serve_the_database(real_server, raw_path):
    # http.client sends the path as written (no client-side dot-segment clean-up).
    connection = http.client.HTTPConnection("127.0.0.1", real_server.port, timeout=30)
    connection.request("GET", raw_path)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    assert response.status in (400, 403, 404), (raw_path, response.status)
    assert b"SQLite format" not in body
