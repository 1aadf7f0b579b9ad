"""Decoding one still picture (a face photo) to a BGR frame, honouring EXIF rotation."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np

from heygem.engine.api import Frame
from heygem.engine.media.process import FFMPEG, run, stderr_reason
from heygem.errors import UnsupportedMediaError


def decode_image(path: Path) -> Frame:
    """The picture as a contiguous HxWx3 uint8 BGR array; UnsupportedMediaError if none decodes."""
    import cv2

    raw = np.fromfile(path, dtype=np.uint8)
    frame = cv2.imdecode(raw, cv2.IMREAD_COLOR) if raw.size else None
    if frame is None:
        frame = _decode_with_ffmpeg(path)
    # cv2's stubs type every image as MatLike; IMREAD_COLOR always gives 8-bit BGR.
    return cast(Frame, np.ascontiguousarray(frame))


def _decode_with_ffmpeg(path: Path) -> Frame:
    """For pictures OpenCV cannot read: ffmpeg writes one frame as a BGR PNG we can decode."""
    import cv2

    cmd = [
        FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-i", str(path),
        "-frames:v", "1", "-f", "image2pipe", "-vcodec", "png", "-pix_fmt", "bgr24", "-",
    ]  # fmt: skip
    result = run(cmd)
    frame = None
    if result.returncode == 0 and result.stdout:
        frame = cv2.imdecode(np.frombuffer(result.stdout, np.uint8), cv2.IMREAD_COLOR)
    if frame is None:
        raise UnsupportedMediaError(f"cannot decode the picture {path.name}: {stderr_reason(result, path)}")
    return cast(Frame, frame)
