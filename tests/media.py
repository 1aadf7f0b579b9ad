"""Build test fixtures at test time: a real face video, real speech, official-format checkpoints."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np

FIXTURE_FPS = 25
FIXTURE_SIDE = 256
# Speech with two clear pauses, so tests can tell speech frames from silence.
SPEECH_SSML = (
    '<speak>Hello, this is heygem speaking.<break time="800ms"/>'
    'The lips should follow every word.<break time="800ms"/>Thank you.</speak>'
)


def astronaut_bgr(side: int = FIXTURE_SIDE) -> np.ndarray:
    import cv2
    import skimage.data

    rgb = skimage.data.astronaut()
    return cv2.resize(rgb[:, :, ::-1], (side, side), interpolation=cv2.INTER_AREA).copy()


def moving_frames(count: int, side: int = FIXTURE_SIDE):
    """The astronaut with a small drift and zoom, like a presenter who moves a little."""
    import cv2

    base = astronaut_bgr(side)
    for i in range(count):
        phase = 2 * np.pi * i / 50
        dx, dy = 3 * np.sin(phase), 2 * np.cos(phase)
        scale = 1.0 + 0.02 * np.sin(phase / 2)
        matrix = cv2.getRotationMatrix2D((side / 2, side / 2), 0.0, scale)
        matrix[:, 2] += (dx, dy)
        yield cv2.warpAffine(base, matrix, (side, side), borderMode=cv2.BORDER_REFLECT)


def write_video(
    path: Path,
    frames,
    fps: float | str = FIXTURE_FPS,
    side: int = FIXTURE_SIDE,
    *,
    size: tuple[int, int] | None = None,
    pix_fmt: str = "yuv420p",
    crf: int = 18,
    output_args: Sequence[str] = (),
) -> Path:
    """Encode BGR frames (side x side, or size=(width, height)) to H.264 mp4 with real ffmpeg;
    `output_args` go before the codec (e.g. a filter)."""
    width, height = size or (side, side)
    cmd = [
        "ffmpeg",
        "-y",
        "-nostdin",
        "-loglevel",
        "error",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "bgr24",
        "-s",
        f"{width}x{height}",
        "-r",
        str(fps),
        "-i",
        "-",
        *output_args,
        "-c:v",
        "libx264",
        "-pix_fmt",
        pix_fmt,
        "-crf",
        str(crf),
        str(path),
    ]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    for frame in frames:
        proc.stdin.write(np.ascontiguousarray(frame).tobytes())
    proc.stdin.close()
    if proc.wait() != 0:
        raise RuntimeError(f"ffmpeg failed writing {path}")
    return path


def make_face_video(path: Path, seconds: float = 2.0, fps: float = FIXTURE_FPS) -> Path:
    return write_video(path, moving_frames(int(round(seconds * fps))), fps=fps)


def make_speech(path: Path, ssml: str = SPEECH_SSML) -> Path:
    """Real speech from espeak-ng (22.05 kHz mono wav)."""
    subprocess.run(["espeak-ng", "-m", "-w", str(path), ssml], check=True)
    return path


def make_tone(path: Path, seconds: float, rate: int = 44100, channels: int = 2) -> Path:
    """A sine tone through ffmpeg: handy for exact durations and odd formats."""
    subprocess.run(
        [
            "ffmpeg",
            "-y",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            f"sine=frequency=440:sample_rate={rate}:duration={seconds}",
            "-ac",
            str(channels),
            str(path),
        ],
        check=True,
    )
    return path


def probe(path: Path) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", "-show_format", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def duration_of(path: Path) -> float:
    return float(probe(path)["format"]["duration"])


def stream_types(path: Path) -> list[str]:
    return [s["codec_type"] for s in probe(path)["streams"]]


def read_frames(path: Path) -> np.ndarray:
    """Decode a whole (small) video to an (N, H, W, 3) BGR array for assertions."""
    info = next(s for s in probe(path)["streams"] if s["codec_type"] == "video")
    w, h = int(info["width"]), int(info["height"])
    raw = subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "bgr24", "-"],
        check=True,
        capture_output=True,
    ).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)


def save_random_checkpoint(path: Path, seed: int = 0, prefix: str = "module.") -> Path:
    """A random-initialised generator saved exactly like the public files (dict + state_dict)."""
    import torch

    from heygem.engine.model import Wav2Lip

    torch.manual_seed(seed)
    model = Wav2Lip()
    state = {prefix + name: tensor for name, tensor in model.state_dict().items()}
    torch.save({"state_dict": state, "optimizer": None, "global_step": 0, "global_epoch": 0}, path)
    return path


def install_checkpoint(checkpoint: Path, models: Path) -> Path:
    """Copy a checkpoint into a models folder whose backend cache is the one next to `checkpoint`.

    The converted OpenVINO model is keyed by the file's contents, so every test that installs the
    session's random checkpoint reuses one conversion (10 s) instead of paying it again.
    """
    from heygem.settings import BACKEND_CACHE_FOLDER

    models.mkdir(parents=True, exist_ok=True)
    installed = models / checkpoint.name
    shutil.copy(checkpoint, installed)
    shared = checkpoint.parent / BACKEND_CACHE_FOLDER
    shared.mkdir(exist_ok=True)
    (models / BACKEND_CACHE_FOLDER).symlink_to(shared, target_is_directory=True)
    return installed
