"""Extend a short face video to the audio's length: loop or pingpong, in bounded memory.

`frame_index_schedule` says which source frame each output frame shows; `scheduled_frames`
produces those frames, decoding again at each wrap (loop) or replaying a scratch spool (pingpong).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO

import numpy as np

from heygem.engine.api import DURATION_POLICIES, DurationPolicy, Frame
from heygem.engine.media.decode import read_frames
from heygem.engine.media.probe import MediaInfo
from heygem.engine.media.process import read_exactly
from heygem.errors import MediaProcessError

log = logging.getLogger("heygem.engine.media.schedule")

# (source frame index, frame); a generator so that closing it stops the decoder and drops the spool.
ScheduledFrames = Generator[tuple[int, Frame], None, None]


def frame_index_schedule(n_out: int, n_src: int, policy: DurationPolicy = "loop") -> Iterator[int]:
    """Source frame index for each of `n_out` output frames.

    loop: 0, 1, ..., n-1, 0, 1, ... (the reference's wrap-around).
    pingpong: 0, 1, ..., n-1, n-2, ..., 1, 0, 1, ... (no jump cut at the wrap).
    """
    if n_src < 1:
        raise ValueError("n_src must be at least 1")
    _check_policy(policy)
    for i in range(n_out):
        yield i % n_src if policy == "loop" else pingpong_index(i, n_src)


def pingpong_index(i: int, n_src: int) -> int:
    if n_src == 1:
        return 0
    period = 2 * n_src - 2
    r = i % period
    return r if r < n_src else period - r


def scheduled_frames(
    path: Path | str,
    info: MediaInfo,
    n_out: int,
    policy: DurationPolicy,
    scratch_dir: Path,
    fps: float | str | None = None,
    n_src: int | None = None,
) -> ScheduledFrames:
    """Yield (source index, frame) for `n_out` output frames following `frame_index_schedule`.

    Memory stays at a frame or two whatever the lengths:
    * a still: its one frame every time (the same read-only array);
    * loop: the video is decoded again from the start at each wrap;
    * pingpong: the backward passes need frames in reverse, which a decoder cannot give cheaply,
      so the first forward pass also spools the raw frames to a file in `scratch_dir` (width x
      height x 3 bytes per source frame); later passes read it by offset. The file is deleted when
      the iterator finishes or is closed. No spool is written when `n_src` says none is needed.
    A still's frame is shared and read-only; every other frame is the consumer's to draw on.
    """
    _check_policy(policy)
    if info.is_image:
        return _repeat_still(path, info, n_out)
    if policy == "loop":
        return _loop(path, info, n_out, fps)
    return _pingpong(path, info, n_out, Path(scratch_dir), fps, n_src)


def _check_policy(policy: str) -> None:
    if policy not in DURATION_POLICIES:
        raise ValueError(f"unknown duration policy {policy!r}; use loop or pingpong")


def _repeat_still(path: Path | str, info: MediaInfo, n_out: int) -> ScheduledFrames:
    frame = next(read_frames(path, info))
    frame.flags.writeable = False
    for _ in range(n_out):
        yield 0, frame


def _loop(path: Path | str, info: MediaInfo, n_out: int, fps: float | str | None) -> ScheduledFrames:
    produced = 0
    while produced < n_out:
        frames = read_frames(path, info, fps=fps)
        try:
            for index, frame in enumerate(frames):
                if produced == n_out:
                    break
                yield index, frame
                produced += 1
        finally:
            frames.close()


def _pingpong(
    path: Path | str,
    info: MediaInfo,
    n_out: int,
    scratch_dir: Path,
    fps: float | str | None,
    n_src: int | None,
    start: int = 0,
) -> ScheduledFrames:
    need_spool = n_src is None or n_out > n_src
    spool_path = scratch_dir / f"pingpong-{uuid.uuid4().hex}.bgr"
    frames = read_frames(path, info, fps=fps)
    count = 0
    try:
        with _Spool(spool_path, need_spool) as spool:
            for frame in frames:
                if count == n_out:
                    return
                # Spooled before it is handed on: the consumer may draw on it.
                if spool is not None:
                    _spool_write(spool, frame, spool_path)
                if count >= start:
                    yield count, frame
                count += 1
            if count < n_out:
                if spool is None:  # n_src promised more frames than the video has
                    log.warning(
                        "%s has %d frames, not %s; spooling it for pingpong",
                        info.path.name, count, n_src,
                    )  # fmt: skip
                    yield from _pingpong(path, info, n_out, scratch_dir, fps, None, start=count)
                    return
                spool.flush()
                yield from _replay(spool, count, n_out, frame.shape)
    finally:
        frames.close()
        spool_path.unlink(missing_ok=True)


class _Spool:
    """Opens the scratch spool for read+write only when it is needed."""

    def __init__(self, path: Path, needed: bool) -> None:
        self.path, self.needed = path, needed
        self.file: IO[bytes] | None = None

    def __enter__(self) -> IO[bytes] | None:
        if self.needed:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "w+b")
        return self.file

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.file is not None:
            self.file.close()


def _spool_write(spool: IO[bytes], frame: Frame, spool_path: Path) -> None:
    try:
        spool.write(frame.data)
    except OSError as exc:
        raise MediaProcessError(
            f"cannot write scratch file {spool_path.name} for pingpong: {exc.strerror}"
        ) from None


def _replay(spool: IO[bytes], n_src: int, n_out: int, shape: tuple[int, ...]) -> ScheduledFrames:
    frame_bytes = int(np.prod(shape))
    for i in range(n_src, n_out):
        index = pingpong_index(i, n_src)
        spool.seek(index * frame_bytes)
        buffer = bytearray(frame_bytes)
        if read_exactly(spool, buffer) != frame_bytes:
            raise MediaProcessError("the pingpong scratch file was truncated while the job ran")
        yield index, np.frombuffer(buffer, dtype=np.uint8).reshape(shape)
