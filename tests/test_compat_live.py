"""A HeyGem client's part, over HTTP, against a live server on 127.0.0.1 running the real engine
(LipSyncPipeline with a random-initialised checkpoint in the official format).

The server is app.py itself with HEYGEM_COMPAT_PORT set: the client talks to the second port, as
a HeyGem desktop client pointed at port 8383 would.
"""

from __future__ import annotations

import shutil

import httpx
import numpy as np
import pytest

from heygem.engine.media.label import draw_label
from heygem.web.compat import WATERMARK_LABEL
from tests import media
from tests.kit import REAL_LAUNCHER, ServerProcess, free_port, http_status, wait_until

pytestmark = pytest.mark.slow  # a live server subprocess on the real engine

READY_TIMEOUT_S = 120.0  # import torch and start serving on a busy 2-core machine
JOB_TIMEOUT_S = 300.0  # load the generator, then a ~1 s clip on 2 busy CPU cores
POLL_S = 0.5  # the desktop client polls every 2 s; faster keeps the test short
SHORT_SPEECH = "<speak>Hello from heygem.</speak>"


@pytest.fixture(scope="module")
def live(tmp_path_factory, checkpoint_file, face_video):
    base = tmp_path_factory.mktemp("compat-live")
    models = base / "data" / "models"
    models.mkdir(parents=True)
    media.install_checkpoint(checkpoint_file, models)
    shared = base / "heygem_data" / "face2face"  # what HeyGem mounts at /code/data
    (shared / "temp").mkdir(parents=True)
    media.make_speech(shared / "temp" / "hello.wav", SHORT_SPEECH)
    shutil.copy(face_video, shared / "temp" / "anchor.mp4")
    compat_port = free_port()
    server = ServerProcess(
        base / "data",
        argv=(str(REAL_LAUNCHER),),
        env={
            "HEYGEM_MODELS_DIR": str(models),
            "HEYGEM_COMPAT_ROOT": str(shared),
            "HEYGEM_COMPAT_PORT": str(compat_port),
            "HEYGEM_WARMUP": "false",
            "HEYGEM_BATCH_SIZE": "16",
        },
    )
    compat_url = f"http://127.0.0.1:{compat_port}"
    try:
        server.wait_for("/health", 200, READY_TIMEOUT_S)
        wait_until(
            lambda: http_status(compat_url + "/easy/query?code=probe") == 200,
            READY_TIMEOUT_S,
            interval=POLL_S,
            message=lambda: f"the compat port\n{server.log_tail()}",
        )
        yield server, compat_url, shared
    finally:
        server.stop_cleanly()


def test_client_submits_polls_and_reads_the_result_from_the_shared_folder(live):
    server, compat_url, shared = live
    code = "0d7e4b8a-3f2c-4e1b-9a6d-5c4b3a2f1e0d"
    with httpx.Client(base_url=compat_url, timeout=30.0) as client:
        unknown = client.get("/easy/query", params={"code": code}).json()
        # As the original: 10004 for a code it does not know, with success true.
        assert unknown["code"] == 10004 and unknown["success"] is True

        # As the desktop client sends it (bare names in its asset folder) and as scripts do
        # (container paths under /code/data).
        submitted = client.post(
            "/easy/submit",
            json={
                "audio_url": "/code/data/temp/hello.wav",
                "video_url": "anchor.mp4",
                "code": code,
                "chaofen": 0,
                "watermark_switch": 1,
                "pn": 1,
            },
        ).json()
        assert submitted["code"] == 10000, submitted

        replies = []

        def finished() -> bool:
            reply = client.get("/easy/query", params={"code": code}).json()
            assert reply["code"] == 10000, reply
            replies.append(reply["data"])
            return reply["data"]["status"] != 1

        wait_until(
            finished,
            JOB_TIMEOUT_S,
            interval=POLL_S,
            message=lambda: f"the task to end: {replies[-1:]}\n{server.log_tail()}",
        )

    final = replies[-1]
    assert final["status"] == 2, f"{final}\n{server.log()}"
    assert final["code"] == code and final["msg"] == "任务完成"
    assert final["progress"] == 100
    assert final["result"] == f"/{code}-r.mp4"
    progress = [data["progress"] for data in replies]
    assert progress == sorted(progress) and all(0 <= p <= 100 for p in progress)
    assert any(data["msg"].startswith(("queued", "running: ")) for data in replies[:-1])

    # The client reads the video through the shared folder: <asset folder> + result.
    result = shared / "temp" / final["result"].lstrip("/")
    assert sorted(media.stream_types(result)) == ["audio", "video"]
    speech = shared / "temp" / "hello.wav"
    assert abs(media.duration_of(result) - media.duration_of(speech)) < 0.2
    frames = media.read_frames(result)
    assert frames.shape[1:] == (256, 256, 3)
    assert "(engine wav2lip)" in server.log()  # the real engine, not the preview fallback
    _assert_labelled(frames[0], media.read_frames(shared / "temp" / "anchor.mp4")[0])


def _assert_labelled(frame: np.ndarray, source: np.ndarray) -> None:
    """watermark_switch=1: the bottom strip (away from the face) matches the source with the
    label drawn far better than the source without it."""
    labelled = source.copy()
    draw_label(labelled, WATERMARK_LABEL)
    strip = slice(-24, None)
    error_labelled = np.abs(frame[strip].astype(int) - labelled[strip]).mean()
    error_plain = np.abs(frame[strip].astype(int) - source[strip]).mean()
    assert error_labelled < error_plain / 2, (error_labelled, error_plain)
