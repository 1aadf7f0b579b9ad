"""Stream the frames of a face video or photo out of ffmpeg, one at a time, in bounded memory."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Generator
from pathlib import Path
from typing import cast

import numpy as np

from heygem.engine.api import Frame
from heygem.engine.media.guard import input_args, refusal, too_long
from heygem.engine.media.image import decode_image
from heygem.engine.media.probe import MediaInfo, rate_text
from heygem.engine.media.process import (
    BGR_CHANNELS,
    FFMPEG,
    StderrTail,
    kill,
    read_exactly,
    strip_path,
)
from heygem.errors import MediaProcessError, UnsupportedMediaError

log = logging.getLogger("heygem.engine.media.decode")

# More than the frames a job holds at once (two batches, the encoder's queue): beyond it, new ones.
KEPT_FRAME_BUFFERS = 64
# sys.getrefcount of a pooled buffer nobody else holds: the pool's list, the loop variable and the
# call's own argument.
_UNUSED_REFERENCES = 3

# A generator, not just an Iterator: callers stop ffmpeg early with `.close()`.
FrameStream = Generator[Frame, None, None]


def scaled_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """The size a frame is read at: unchanged when it fits `max_side`, else shrunk to even sides."""
    if not max_side or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def read_frames(
    path: Path | str, info: MediaInfo, fps: float | str | None = None, max_side: int | None = None
) -> FrameStream:
    """Yield the frames of `path` as writable HxWx3 uint8 BGR arrays, one at a time.

    Rotation metadata is applied (frames have the displayed size `info.size`, or `scaled_size(...,
    max_side)` when `max_side` is given). Video is converted to a constant rate: `fps` (a number or
    an ffmpeg rational), by default the source's average rate, so variable-rate input gives one frame
    per 1/fps second. A still yields exactly one frame; the caller repeats it.

    ffmpeg is killed when the iterator is closed early (`.close()`, or garbage collection), so
    stopping after a few frames is cheap. Raise UnsupportedMediaError when no frame decodes and
    MediaProcessError when ffmpeg fails part-way. The limits `info` was probed under hold here
    too: frames are counted, and a file that turns out longer than the duration limit (a stream
    whose header declares no duration) raises LimitExceededError once decoding passes it.
    """
    path = Path(path)
    width, height = scaled_size(info.width, info.height, max_side)
    if info.is_image:
        return _read_image(path, info, width, height)
    return _read_video(path, info, rate_text(fps, info.fps_text), width, height)


def _read_image(path: Path, info: MediaInfo, width: int, height: int) -> FrameStream:
    import cv2

    frame = decode_image(path, info.limits)
    if frame.shape[:2] != (height, width):
        # cv2's stubs type every image as MatLike; resizing keeps the uint8 dtype.
        frame = cast(Frame, cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA))
    yield frame


def _read_video(path: Path, info: MediaInfo, rate: str, width: int, height: int) -> FrameStream:
    filters = [f"fps={rate}"]
    if (width, height) != info.size:
        filters.append(f"scale={width}:{height}:flags=area")
    cmd = [
        FFMPEG, "-hide_banner", "-nostdin", "-v", "error", *input_args(path, info.limits),
        "-map", f"0:{info.video_stream}", "-vf", ",".join(filters),
        "-f", "rawvideo", "-pix_fmt", "bgr24", "pipe:1",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Both pipes exist: they were requested just above.
    assert proc.stdout is not None and proc.stderr is not None
    stdout = proc.stdout
    tail = StderrTail(proc.stderr)
    buffers = FrameBuffers(width * height * BGR_CHANNELS)
    budget = info.limits.frame_budget(rate)
    count = 0
    try:
        while True:
            buffer = buffers.take()
            got = read_exactly(stdout, buffer)
            if got < len(buffer):
                if got:
                    log.warning(
                        "dropping a partial last frame of %s (%d of %d bytes)",
                        path.name, got, len(buffer),
                    )  # fmt: skip
                break
            count += 1
            if budget is not None and count > budget:
                raise too_long(path.name, info.limits.max_duration_s or 0.0)
            yield np.frombuffer(buffer, dtype=np.uint8).reshape(height, width, BGR_CHANNELS)
        code = proc.wait()
        tail.join()
        _check_read_result(path, code, count, tail, info)
    finally:
        kill(proc)
        stdout.close()
        tail.join()


class FrameBuffers:
    """Frame-sized buffers for one decoder, each reused once nothing refers to it any more.

    The processes tune glibc to mmap large blocks (engine.runtime), so a new frame buffer costs
    page faults for every 4 KiB of it: about 2.7 CPU-ms per 720p frame. Frames are handed out as
    numpy arrays over these buffers; an array and every view of it hold a reference to its buffer,
    so a buffer whose only references are this pool's own is free (CPython reference counts).
    """

    def __init__(self, frame_bytes: int, keep: int = KEPT_FRAME_BUFFERS) -> None:
        self.frame_bytes, self.keep = frame_bytes, keep
        self._buffers: list[bytearray] = []

    def take(self) -> bytearray:
        for buffer in self._buffers:
            if sys.getrefcount(buffer) <= _UNUSED_REFERENCES:
                return buffer
        buffer = bytearray(self.frame_bytes)
        if len(self._buffers) < self.keep:
            self._buffers.append(buffer)
        return buffer


def _check_read_result(path: Path, code: int, count: int, tail: StderrTail, info: MediaInfo) -> None:
    refused = refusal(tail.text(), path.name, info.limits)
    if refused is not None:
        raise refused
    if count == 0:
        raise UnsupportedMediaError(
            f"cannot decode any frame of {path.name}: {strip_path(tail.last_line(), path)}"
        )
    if code != 0:
        reason = strip_path(tail.text(), path)
        raise MediaProcessError(f"ffmpeg failed reading {path.name} (exit {code}): {reason}")
