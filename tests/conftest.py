"""Shared fixtures. Everything is generated at test time: no downloads, no committed media."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from heygem.settings import Settings
from tests import media

# The kit's fixtures (start_service, servers), a real PostgreSQL (tests.pg) and a headless
# Chromium (tests.browser) for every module.
SPEC_DIR = Path(__file__).parent / "spec"

pytest_plugins = ["tests.kit", "tests.pg", "tests.browser"]

# Torch and OpenCV each want every core; two test processes on 2 cores must not oversubscribe.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """A test that runs the CLI in-process installs the CLI's stdout handler on the root logger;
    put the root logger back, so later tests neither lose their log capture nor write to a
    captured stream pytest has closed."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def fixture_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fixtures")


@pytest.fixture(scope="session")
def speech_wav(fixture_dir) -> Path:
    """About 4 s of espeak-ng speech with two 0.8 s pauses."""
    return media.make_speech(fixture_dir / "speech.wav")


@pytest.fixture(scope="session")
def face_video(fixture_dir) -> Path:
    """2 s, 25 fps, 256x256 H.264 video of the astronaut's face moving slightly."""
    return media.make_face_video(fixture_dir / "face.mp4")


@pytest.fixture(scope="session")
def face_image(fixture_dir) -> Path:
    import cv2

    path = fixture_dir / "face.PNG"
    cv2.imwrite(str(path.with_suffix(".png")), media.astronaut_bgr())
    path.with_suffix(".png").rename(path)
    return path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that need the full-size random checkpoint (checkpoint_file, settings_with_weights) are
    marked slow: building, writing and loading ~140 MB of weights is the real engine's path, and
    the fast loop (-m "not slow") never pays for it."""
    for item in items:
        if "checkpoint_file" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def checkpoint_file(fixture_dir) -> Path:
    """Random-initialised Wav2Lip generator in the official format, keys prefixed `module.`."""
    return media.save_random_checkpoint(fixture_dir / "wav2lip_gan.pth")


@pytest.fixture(scope="session")
def random_s3fd(tmp_path_factory) -> Path:
    """S3FD with random weights of the exact architecture, saved as a plain state dict like the
    public s3fd.pth (the layer names and shapes are checked against tests/spec/s3fd.tsv)."""
    import torch
    from face_alignment.detection.sfd.net_s3fd import s3fd

    torch.manual_seed(0)
    state = s3fd().state_dict()
    manifest = [line.split("\t") for line in (SPEC_DIR / "s3fd.tsv").read_text().splitlines() if line]
    assert [(name, "x".join(map(str, t.shape)) or "scalar") for name, t in state.items()] == [
        (name, shape) for name, shape in manifest
    ]
    path = tmp_path_factory.mktemp("s3fd") / "s3fd.pth"
    torch.save(state, path)
    return path


@pytest.fixture
def conversions(monkeypatch) -> list[int]:
    """Counts OpenVINO conversions: appends one entry per call of the real converter."""
    from heygem.engine.model import backends

    calls: list[int] = []
    real = backends._convert

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(backends, "_convert", counted)
    return calls


@pytest.fixture
def data_dir(tmp_path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def settings(data_dir) -> Settings:
    """Settings for one test: its own data folder and an empty models folder (no weights)."""
    models = data_dir / "models"
    models.mkdir()
    return Settings(data_dir=data_dir, models_dir=models, warmup=False)


@pytest.fixture
def settings_with_weights(settings, checkpoint_file) -> Settings:
    """Like `settings`, with the random checkpoint installed as models/wav2lip_gan.pth."""
    media.install_checkpoint(checkpoint_file, settings.models_dir)
    return settings
