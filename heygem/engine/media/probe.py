"""Describe a face video or photo before any model work: `probe` -> `MediaInfo`.

A still is recognised by what ffprobe finds inside the file, or by one of IMAGE_EXTENSIONS when
the content is a single picture of an image codec; never by splitting the name on dots.
Probing reads only the given file (guard.input_args) and refuses a picture over the pixel limit
before anything decodes it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from heygem.engine.media.guard import MediaLimits, check_pixels, input_args, refusal
from heygem.engine.media.image import decode_image
from heygem.engine.media.process import FFMPEG, FFPROBE, run, stderr_reason
from heygem.errors import LimitExceededError, UnsupportedMediaError

log = logging.getLogger("heygem.engine.media.probe")

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
IMAGE_FORMATS = frozenset({"image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe"})
IMAGE_CODECS = frozenset({"png", "mjpeg", "webp", "bmp"})
FALLBACK_FPS = Fraction(25)  # only when a video declares no usable frame rate at all
MAX_FPS_DENOMINATOR = 1_001_000  # keeps 30000/1001-style NTSC rates exact

# ffprobe's JSON: free-form objects whose keys depend on the container and codec.
ProbeJson = dict[str, Any]


@dataclass(frozen=True)
class MediaInfo:
    """What `probe` found. Sizes are the displayed size, after any rotation metadata."""

    path: Path
    width: int
    height: int
    fps: float  # frames per second (average rate for variable-rate video); 0.0 for a still
    fps_text: str  # the same rate as an exact ffmpeg rational, e.g. "30000/1001"; "" for a still
    frame_count: int  # estimate for video (container count, else duration x fps); 1 for a still
    duration_s: float  # 0.0 for a still
    rotation: int  # display rotation from the metadata, degrees in [0, 360); already applied to size
    has_video: bool
    has_audio: bool
    is_image: bool
    codec: str  # video codec name as ffprobe reports it (h264, png, mjpeg...)
    video_stream: int = -1  # absolute index of the chosen video stream; -1 when there is none
    # The limits the file was probed under; every reader of this file enforces them again.
    limits: MediaLimits = MediaLimits()

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


def probe(
    path: Path | str,
    require_video: bool = True,
    verify: bool = True,
    limits: MediaLimits | None = None,
) -> MediaInfo:
    """Describe a face video or photo; raise UnsupportedMediaError with a one-line reason.

    With `require_video` a file without a picture stream (e.g. audio given as the face) is refused.
    With `verify` the first frame is decoded too, so a corrupt file fails here and not mid-job.
    `limits` (default: 4K, any duration) raise LimitExceededError for a picture that is too large,
    before any frame is decoded, and for a declared duration that is too long.
    """
    path = Path(path)
    limits = limits or MediaLimits()
    if not path.is_file():
        raise UnsupportedMediaError(f"file not found: {path.name}")
    data = _ffprobe_json(path, limits)
    streams: list[ProbeJson] = data.get("streams", [])
    fmt: ProbeJson = data.get("format", {})
    video = _pick_video_stream(streams)
    has_audio = any(s.get("codec_type") == "audio" for s in streams)
    if video is None:
        if require_video:
            kind = "audio only" if has_audio else "no picture"
            raise UnsupportedMediaError(
                f"{path.name} has no video stream ({kind}); give a face video or photo"
            )
        return _audio_only_info(path, fmt, has_audio)
    check_pixels(path.name, int(video.get("width") or 0), int(video.get("height") or 0), limits)
    if _looks_like_image(path, fmt, video):
        return _probe_image(path, video, has_audio, limits)
    info = _video_info(path, fmt, video, has_audio, limits)
    _check_declared_duration(info, limits)
    if verify:
        _verify_first_frame(info)
    return info


def audio_duration(path: Path) -> float:
    """The container's duration in seconds, or 0.0 when ffprobe cannot tell."""
    cmd = [
        FFPROBE, "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
        *input_args(path, ffprobe=True),
    ]  # fmt: skip
    result = run(cmd)
    return to_float(result.stdout.decode().strip()) if result.returncode == 0 else 0.0


def rational(rate: Fraction) -> str:
    return f"{rate.numerator}/{rate.denominator}"


def rate_text(fps: float | str | None, default: str = "") -> str:
    """A frame rate as ffmpeg reads it: a rational string is kept, a number made an exact rational."""
    if fps is None:
        return default or rational(FALLBACK_FPS)
    if isinstance(fps, str):
        return fps
    return rational(Fraction(fps).limit_denominator(MAX_FPS_DENOMINATOR))


def to_float(value: object) -> float:
    """ffprobe's numbers arrive as text (or are absent); anything unreadable counts as 0.0."""
    if not isinstance(value, (str, int, float)):
        return 0.0
    try:
        return float(value)
    except ValueError:
        return 0.0


def _ffprobe_json(path: Path, limits: MediaLimits) -> ProbeJson:
    cmd = [
        FFPROBE, "-v", "error", "-print_format", "json", "-show_streams", "-show_format",
        *input_args(path, limits, ffprobe=True),
    ]  # fmt: skip
    result = run(cmd)
    # A picture over the pixel limit is reported on stderr while ffprobe itself succeeds.
    refused = refusal(result.stderr.decode("utf-8", "replace"), path.name, limits)
    if refused is not None:
        raise refused
    if result.returncode != 0:
        raise UnsupportedMediaError(
            f"cannot read {path.name} as audio or video: {stderr_reason(result, path)}"
        )
    try:
        data: ProbeJson = json.loads(result.stdout or b"{}")
    except json.JSONDecodeError:
        raise UnsupportedMediaError(f"cannot read {path.name}: ffprobe gave unreadable output") from None
    return data


def _pick_video_stream(streams: list[ProbeJson]) -> ProbeJson | None:
    for stream in streams:
        # Cover art inside audio files shows up as a one-picture video stream; it is not a face video.
        if stream.get("codec_type") == "video" and not stream.get("disposition", {}).get("attached_pic"):
            return stream
    return None


def _looks_like_image(path: Path, fmt: ProbeJson, video: ProbeJson) -> bool:
    format_names = set(str(fmt.get("format_name", "")).split(","))
    if format_names & IMAGE_FORMATS:
        return True
    single = str(video.get("nb_frames", "1")) in ("0", "1", "N/A")
    return path.suffix.lower() in IMAGE_EXTENSIONS and video.get("codec_name") in IMAGE_CODECS and single


def _probe_image(path: Path, video: ProbeJson, has_audio: bool, limits: MediaLimits) -> MediaInfo:
    # Decoding is the only reliable check, and it honours EXIF rotation.
    frame = decode_image(path, limits)
    height, width = frame.shape[:2]
    return MediaInfo(
        path=path, width=width, height=height, fps=0.0, fps_text="", frame_count=1, duration_s=0.0,
        rotation=0, has_video=True, has_audio=has_audio, is_image=True,
        codec=str(video.get("codec_name", "")), video_stream=int(video.get("index", 0)), limits=limits,
    )  # fmt: skip


def _audio_only_info(path: Path, fmt: ProbeJson, has_audio: bool) -> MediaInfo:
    return MediaInfo(
        path=path, width=0, height=0, fps=0.0, fps_text="", frame_count=0,
        duration_s=to_float(fmt.get("duration")), rotation=0, has_video=False, has_audio=has_audio,
        is_image=False, codec="",
    )  # fmt: skip


def _video_info(
    path: Path, fmt: ProbeJson, video: ProbeJson, has_audio: bool, limits: MediaLimits
) -> MediaInfo:
    coded_w, coded_h = int(video.get("width") or 0), int(video.get("height") or 0)
    if coded_w <= 0 or coded_h <= 0:
        raise UnsupportedMediaError(f"cannot read {path.name}: the video stream has no picture size")
    rotation = _rotation(video)
    width, height = (coded_h, coded_w) if rotation % 180 == 90 else (coded_w, coded_h)
    rate = _frame_rate(video)
    duration = to_float(video.get("duration")) or to_float(fmt.get("duration"))
    nb_frames = int(video.get("nb_frames") or 0) if str(video.get("nb_frames", "")).isdigit() else 0
    count = nb_frames or max(1, round(duration * float(rate)))
    return MediaInfo(
        path=path, width=width, height=height, fps=float(rate), fps_text=rational(rate),
        frame_count=count, duration_s=duration, rotation=rotation, has_video=True, has_audio=has_audio,
        is_image=False, codec=str(video.get("codec_name", "")), video_stream=int(video.get("index", 0)),
        limits=limits,
    )  # fmt: skip


def _check_declared_duration(info: MediaInfo, limits: MediaLimits) -> None:
    # The header's word is checked here; a file that declares none (a stream) is counted while
    # decoding (decode.read_frames).
    if limits.max_duration_s is not None and info.duration_s > limits.max_duration_s:
        raise LimitExceededError(
            f"{info.path.name} is {info.duration_s:.0f} s long; the limit is {limits.max_duration_s:.0f} s"
        )


def _rotation(video: ProbeJson) -> int:
    for side in video.get("side_data_list", []) or []:
        if "rotation" in side:
            return int(round(float(side["rotation"]))) % 360
    tag = (video.get("tags") or {}).get("rotate")
    return int(round(float(tag))) % 360 if tag not in (None, "") else 0


def _frame_rate(video: ProbeJson) -> Fraction:
    # avg_frame_rate is the true mean rate of variable-rate video; r_frame_rate is only a guess.
    for key in ("avg_frame_rate", "r_frame_rate"):
        rate = _parse_rate(video.get(key))
        if rate is not None:
            return rate
    log.warning("video declares no frame rate; assuming %s fps", FALLBACK_FPS)
    return FALLBACK_FPS


def _parse_rate(text: object) -> Fraction | None:
    try:
        rate = Fraction(str(text))
    except (ValueError, ZeroDivisionError):
        return None
    return rate if rate > 0 else None


def _verify_first_frame(info: MediaInfo) -> None:
    cmd = [
        FFMPEG, "-hide_banner", "-nostdin", "-v", "error", *input_args(info.path, info.limits),
        "-map", f"0:{info.video_stream}", "-frames:v", "1", "-f", "null", "-",
    ]  # fmt: skip
    result = run(cmd)
    refused = refusal(result.stderr.decode("utf-8", "replace"), info.path.name, info.limits)
    if refused is not None:
        raise refused
    if result.returncode != 0:
        raise UnsupportedMediaError(
            f"cannot decode {info.path.name}, the file looks corrupt: {stderr_reason(result, info.path)}"
        )
