"""What ffmpeg and ffprobe may do with a user's file, and the size and length limits on it.

Every tool call that opens a user's file puts `input_args` before it:

* `-protocol_whitelist file`: the path is read from disk and nothing else (no http, no concat:,
  no subfile, no pipe smuggled in through the name);
* `-format_whitelist`: only demuxers that read the one file they are given. Playlists (HLS), concat
  lists, image sequences and manifests open further files through the allowed `file` protocol,
  which is how an uploaded .m3u8 could show a file from anywhere on the host; they are refused
  before they open anything;
* `-max_pixels`: decoders refuse pictures larger than the limit, so even ffprobe, which decodes a
  PNG to learn its size, never allocates a 12000 x 12000 frame.

`MediaLimits` travels with a probed file (MediaInfo.limits) so every reader of it enforces the same
pixel and duration limits; `refusal` turns ffmpeg's whitelist and pixel messages into one line.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from heygem.errors import HeygemError, LimitExceededError, UnsupportedMediaError
from heygem.settings import Settings

DEFAULT_MAX_PIXELS = 3840 * 2160  # 4K, the Settings default
# Demuxers that read exactly the file they are given. The names are ffmpeg's demuxer names; one
# entry matches a demuxer whose name lists it (mov matches "mov,mp4,m4a,3gp,3g2,mj2").
SINGLE_FILE_DEMUXERS = (
    # video containers and raw video streams
    "mov", "matroska", "webm", "avi", "flv", "mpegts", "mpeg", "ogg", "asf", "gif", "h264", "hevc",
    "m4v",
    # still pictures, recognised by content
    "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe",
    # audio
    "wav", "w64", "mp3", "flac", "aac", "aiff", "caf", "amr", "wv",
)  # fmt: skip
FILE_PROTOCOL = "file"
# image2 picks pictures by file name and reads a whole numbered or globbed sequence when the name
# looks like a pattern. ffprobe (which describes stills) may use it with patterns switched off;
# the ffmpeg command line refuses that switch for other demuxers, so ffmpeg never gets image2.
IMAGE_BY_NAME = "image2"
NO_PATTERN = ["-pattern_type", "none"]
# A little more than the limit is decoded before refusing: frame-rate conversion and encoder
# padding make a file right at the limit decode a few frames long.
DURATION_SLACK_S = 1.0
# What demuxers that name other files are called in messages.
MULTI_FILE_KINDS = {
    "hls": "an HLS playlist",
    "concat": "a concat list",
    "dash": "a DASH manifest",
    "imf": "an IMF composition",
}
_NOT_ON_WHITELIST = "format not on whitelist"
# ffmpeg prefixes the refusal with the demuxer it detected: "[hls @ 0x55...] Format not on whitelist".
_DEMUXER_PREFIX = re.compile(r"\[(?P<name>[\w,]+) @ 0x[0-9a-f]+\]\s*format not on whitelist", re.I)
_TOO_MANY_PIXELS = re.compile(r"picture size (?P<w>\d+)x(?P<h>\d+) exceeds specified max pixel", re.I)


@dataclass(frozen=True)
class MediaLimits:
    """Largest picture (pixels) and longest duration (seconds, None = any) a reader accepts."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_duration_s: float | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> MediaLimits:
        return cls(max_pixels=settings.max_pixels, max_duration_s=settings.max_duration_s)

    def frame_budget(self, rate: str | float) -> int | None:
        """Most frames a reader at `rate` fps yields before the file counts as too long."""
        if self.max_duration_s is None:
            return None
        fps = Fraction(rate) if isinstance(rate, str) else Fraction(rate).limit_denominator()
        return math.ceil((self.max_duration_s + DURATION_SLACK_S) * fps)


def input_args(path: Path, limits: MediaLimits | None = None, *, ffprobe: bool = False) -> list[str]:
    """The argv that opens `path` as an input: `[...whitelists..., "-i", path]`.

    `ffprobe`: the arguments are for ffprobe, which also reads a still through image2, as one file.
    """
    limits = limits or MediaLimits()
    demuxers = [*SINGLE_FILE_DEMUXERS, IMAGE_BY_NAME] if ffprobe else list(SINGLE_FILE_DEMUXERS)
    return [
        "-protocol_whitelist", FILE_PROTOCOL,
        "-format_whitelist", ",".join(demuxers),
        *(NO_PATTERN if ffprobe else []),
        "-max_pixels", str(limits.max_pixels),
        "-i", str(path),
    ]  # fmt: skip


def refusal(stderr: str, name: str, limits: MediaLimits | None = None) -> HeygemError | None:
    """The error for a file ffmpeg refused because of input_args' rules; None for other errors."""
    if _NOT_ON_WHITELIST in stderr.lower():
        match = _DEMUXER_PREFIX.search(stderr)
        demuxer = match.group("name") if match else "unknown"
        return refused_format(name, demuxer)
    pixels = _TOO_MANY_PIXELS.search(stderr)
    if pixels:
        width, height = int(pixels.group("w")), int(pixels.group("h"))
        return too_many_pixels(name, width, height, (limits or MediaLimits()).max_pixels)
    return None


def refused_format(name: str, demuxer: str) -> UnsupportedMediaError:
    kind = MULTI_FILE_KINDS.get(demuxer.split(",")[0])
    if kind is not None:
        return UnsupportedMediaError(
            f"{name} is {kind}, which names other files; give one audio, video or picture file"
        )
    if demuxer == IMAGE_BY_NAME:
        return UnsupportedMediaError(f"{name} is a picture; it cannot be read as audio or video")
    return UnsupportedMediaError(f"{name}: the {demuxer} format is not accepted")


def check_pixels(name: str, width: int, height: int, limits: MediaLimits) -> None:
    """LimitExceededError when a width x height picture is over the limit."""
    if width * height > limits.max_pixels:
        raise too_many_pixels(name, width, height, limits.max_pixels)


def too_many_pixels(name: str, width: int, height: int, max_pixels: int) -> LimitExceededError:
    return LimitExceededError(
        f"{name} is {width}x{height} pixels; the limit is {max_pixels:,} pixels (width x height)"
    )


def too_long(name: str, max_duration_s: float) -> LimitExceededError:
    return LimitExceededError(
        f"{name} is longer than the limit of {max_duration_s:.0f} s (found while decoding it)"
    )
