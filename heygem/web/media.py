"""Small media helpers for the web layer: a duration check at upload time, and thumbnails."""

from __future__ import annotations

import functools
import logging
import subprocess
import uuid
from pathlib import Path

import numpy as np

from heygem.engine.media import probe as video
from heygem.engine.media.guard import input_args
from heygem.errors import HeygemError, LimitExceededError, MediaProcessError

log = logging.getLogger("heygem.web.media")

THUMB_TIMEOUT_S = 30.0
THUMB_WIDTH = 320
THUMB_AT_S = 0.5  # a frame a little in, past any fade-in
STDERR_TAIL = 300
CLIP_CACHE = 512  # History pages seen recently


def check_duration(path: Path, max_duration_s: float, label: str, *, require_video: bool) -> float:
    """Refuse a file longer than the configured limit before any job is created."""
    seconds = video.probe(path, require_video=require_video, verify=False).duration_s
    if seconds > max_duration_s:
        raise LimitExceededError(f"{label} is {seconds:.1f} s long; the limit is {max_duration_s:g} s")
    return seconds


def clip_seconds(clip: Path) -> float | None:
    """A finished clip's length, for History tiles; None when it cannot be read. Cached per
    file version, since the History list asks again every few seconds while jobs run."""
    try:
        return _clip_seconds(str(clip), clip.stat().st_mtime_ns)
    except (OSError, HeygemError) as exc:
        log.debug("no length for %s: %s", clip.name, exc)
        return None


@functools.lru_cache(maxsize=CLIP_CACHE)
def _clip_seconds(clip: str, version: int) -> float:
    return video.probe(Path(clip), require_video=True, verify=False).duration_s


def thumbnail_path(clip: Path) -> Path:
    """Thumbnails live next to the output they show, so deleting a job's folder removes them."""
    return clip.with_name(clip.stem + ".thumb.jpg")


def make_thumbnail(clip: Path) -> Path:
    """Extract one frame of `clip` as a small JPEG beside it (cached); MediaProcessError on failure."""
    target = thumbnail_path(clip)
    if target.exists() and target.stat().st_mtime >= clip.stat().st_mtime:
        return target
    # A unique scratch name: two browser tabs may ask for the same thumbnail at once.
    partial = target.with_name(f"{target.stem}.{uuid.uuid4().hex[:8]}.partial.jpg")
    argv = [
        "ffmpeg",
        "-y",
        "-loglevel",
        "error",
        "-ss",
        str(THUMB_AT_S),
        *input_args(clip),
        "-frames:v",
        "1",
        "-vf",
        f"scale={THUMB_WIDTH}:-2",
        str(partial),
    ]
    result = _ffmpeg(argv, clip)
    if result.returncode != 0 or not partial.exists():
        # Videos shorter than THUMB_AT_S: take the first frame instead.
        argv[argv.index("-ss") + 1] = "0"
        result = _ffmpeg(argv, clip)
    if result.returncode != 0 or not partial.exists():
        raise MediaProcessError(f"thumbnail of {clip.name} failed: {result.stderr[-STDERR_TAIL:]}")
    partial.replace(target)
    return target


def _ffmpeg(argv: list[str], clip: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=THUMB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise MediaProcessError(f"thumbnail of {clip.name} took longer than {THUMB_TIMEOUT_S:g} s") from None


SPEECH_RATE = 16_000  # Hz: enough to judge loudness, and the engine's own rate
SPEECH_SAMPLE_BYTES = 2
PAST_LIMIT_S = 1.0  # decoded beyond the duration limit: enough to tell "too long" from "at the limit"


def speech_level(path: Path, max_duration_s: float) -> tuple[float, float]:
    """(seconds, RMS level in [0, 1]) of a speech file (or a video's audio track), decoded by
    ffmpeg under the media guard to 16 kHz mono; MediaProcessError when it has no audio.

    At most just past `max_duration_s` is decoded, whatever the header says, so a long upload
    costs no more memory than the longest accepted one; a longer one is refused (one line).
    """
    argv = [
        "ffmpeg", "-loglevel", "error", *input_args(path),
        "-vn", "-ac", "1", "-ar", str(SPEECH_RATE), "-t", f"{max_duration_s + PAST_LIMIT_S:g}",
        "-f", "s16le", "-",
    ]  # fmt: skip
    try:
        result = subprocess.run(argv, capture_output=True, timeout=THUMB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise MediaProcessError(f"reading the speech in {path.name} took too long") from None
    if result.returncode != 0 or not result.stdout:
        raise MediaProcessError(f"{path.name} has no readable audio")
    count = len(result.stdout) // SPEECH_SAMPLE_BYTES
    if count / SPEECH_RATE > max_duration_s:
        raise LimitExceededError(f"the speech is longer than the limit of {max_duration_s:g} s")
    samples = (
        np.frombuffer(result.stdout[: count * SPEECH_SAMPLE_BYTES], dtype="<i2").astype(np.float32) / 32768.0
    )
    return count / SPEECH_RATE, float(np.sqrt(np.mean(np.square(samples)))) if count else 0.0
