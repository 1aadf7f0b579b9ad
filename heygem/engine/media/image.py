"""Decoding one still picture (a face photo) to a BGR frame, honouring EXIF rotation.

OpenCV allocates the whole picture before it can refuse it, so the picture's size is read first
with ffprobe (which itself refuses to decode past the pixel limit) and checked against the limit.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np

from heygem.engine.api import Frame
from heygem.engine.media.guard import MediaLimits, check_pixels, input_args, refusal
from heygem.engine.media.process import FFMPEG, FFPROBE, run, stderr_reason
from heygem.errors import UnsupportedMediaError


def decode_image(path: Path, limits: MediaLimits | None = None) -> Frame:
    """The picture as a contiguous HxWx3 uint8 BGR array; UnsupportedMediaError if none decodes.

    LimitExceededError, before anything is decoded, when it has more pixels than `limits` allow.
    """
    import cv2

    limits = limits or MediaLimits()
    width, height = picture_size(path, limits)
    check_pixels(path.name, width, height, limits)
    raw = np.fromfile(path, dtype=np.uint8)
    frame = cv2.imdecode(raw, cv2.IMREAD_COLOR) if raw.size else None
    if frame is None:
        frame = _decode_with_ffmpeg(path, limits)
    # cv2's stubs type every image as MatLike; IMREAD_COLOR always gives 8-bit BGR.
    return cast(Frame, np.ascontiguousarray(frame))


def picture_size(path: Path, limits: MediaLimits) -> tuple[int, int]:
    """Width and height of the file's first picture stream, read by ffprobe without a full decode."""
    cmd = [
        FFPROBE, "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=width,height",
        "-of", "csv=p=0:s=x", *input_args(path, limits, ffprobe=True),
    ]  # fmt: skip
    result = run(cmd)
    refused = refusal(result.stderr.decode("utf-8", "replace"), path.name, limits)
    if refused is not None:
        raise refused
    text = result.stdout.decode("utf-8", "replace").strip().splitlines()
    try:
        width, height = (int(part) for part in text[0].split("x")[:2])
    except (IndexError, ValueError):
        raise UnsupportedMediaError(
            f"cannot read the picture {path.name}: {stderr_reason(result, path)}"
        ) from None
    return width, height


def _decode_with_ffmpeg(path: Path, limits: MediaLimits) -> Frame:
    """For pictures OpenCV cannot read: ffmpeg writes one frame as a BGR PNG we can decode."""
    import cv2

    cmd = [
        FFMPEG, "-hide_banner", "-nostdin", "-v", "error", *input_args(path, limits),
        "-frames:v", "1", "-f", "image2pipe", "-vcodec", "png", "-pix_fmt", "bgr24", "-",
    ]  # fmt: skip
    result = run(cmd)
    frame = None
    if result.returncode == 0 and result.stdout:
        frame = cv2.imdecode(np.frombuffer(result.stdout, np.uint8), cv2.IMREAD_COLOR)
    if frame is None:
        raise UnsupportedMediaError(f"cannot decode the picture {path.name}: {stderr_reason(result, path)}")
    return cast(Frame, frame)
