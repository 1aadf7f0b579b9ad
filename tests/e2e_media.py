"""Helpers for the end-to-end tests (test_pipeline, test_cli, test_memory) and bench/.

Inputs are built with real ffmpeg at test time; comparisons work on decoded frames.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np

from tests import media

FFMPEG_QUIET = ["ffmpeg", "-y", "-nostdin", "-loglevel", "error"]
FACE_BOX_256 = (32, 96, 84, 140)  # --box TOP BOTTOM LEFT RIGHT around the 256 px astronaut's face
PCM = ["-c:a", "pcm_s16le"]
FAST_H264 = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p"]


def ffmpeg(*args: str) -> None:
    subprocess.run([*FFMPEG_QUIET, *args], check=True)


def cut_audio(source: Path, target: Path, seconds: float, start: float = 0.0) -> Path:
    """`seconds` of `source` from `start`, as 16-bit PCM wav."""
    ffmpeg("-ss", f"{start:.3f}", "-t", f"{seconds:.3f}", "-i", str(source), *PCM, str(target))
    return target


def loop_audio(source: Path, target: Path, seconds: float) -> Path:
    """`source` repeated until it lasts exactly `seconds` (wav)."""
    ffmpeg("-stream_loop", "-1", "-i", str(source), "-t", f"{seconds:.3f}", *PCM, str(target))
    return target


def loop_video(source: Path, target: Path, seconds: float, extra_filters: str = "") -> Path:
    """`source` repeated until it lasts `seconds`, re-encoded to H.264 (fast preset, no audio)."""
    args = ["-stream_loop", "-1", "-i", str(source), "-t", f"{seconds:.3f}", "-an"]
    if extra_filters:
        args += ["-vf", extra_filters]
    ffmpeg(*args, *FAST_H264, str(target))
    return target


def write_frames(
    path: Path,
    frames: Iterable[np.ndarray],
    width: int,
    height: int,
    fps: float | str,
    pix_fmt: str = "yuv420p",
) -> Path:
    """Encode BGR frames of any size to H.264 (yuv444p allows odd sizes)."""
    return media.write_video(path, frames, fps, size=(width, height), pix_fmt=pix_fmt, crf=16)


def video_stream(path: Path) -> dict:
    return next(s for s in media.probe(path)["streams"] if s["codec_type"] == "video")


def frame_rate(path: Path) -> Fraction:
    return Fraction(video_stream(path)["avg_frame_rate"])


def reencode(frames: np.ndarray, target: Path, fps: float) -> np.ndarray:
    """The frames through heygem's own encoder, unchanged: the codec-noise baseline."""
    from heygem.engine.media.encode import FrameWriter

    height, width = frames.shape[1:3]
    with FrameWriter(target, width, height, fps) as writer:
        for frame in frames:
            writer.write(frame)
    return media.read_frames(target)


def box_mask(height: int, width: int, box_tblr: tuple[int, int, int, int], margin: int = 0) -> np.ndarray:
    """True inside the box (grown by `margin` px on every side)."""
    top, bottom, left, right = box_tblr
    mask = np.zeros((height, width), bool)
    mask[max(0, top - margin) : bottom + margin, max(0, left - margin) : right + margin] = True
    return mask


def mean_abs_diff(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    """Mean absolute difference of two frame stacks (N, H, W, 3), optionally over a (H, W) mask."""
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    if where is not None:
        diff = diff[:, where]
    return float(diff.mean())


def no_face_frames(count: int, side: int = media.FIXTURE_SIDE, seed: int = 0) -> list[np.ndarray]:
    """Smooth coloured noise: texture for the codec, nothing a face detector takes for a face."""
    import cv2

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        coarse = rng.integers(40, 216, (8, 8, 3), dtype=np.uint8)
        frames.append(cv2.resize(coarse, (side, side), interpolation=cv2.INTER_CUBIC))
    return frames
