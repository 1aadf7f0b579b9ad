"""Video in and out through ffmpeg pipes, in bounded memory.

* `probe` checks a face file before any model work and describes it (`MediaInfo`).
* `read_frames` streams BGR frames out of ffmpeg's stdout, one at a time, at a constant frame rate.
* `FrameWriter` streams BGR frames into ONE ffmpeg that encodes H.264 and muxes the audio.
* `frame_index_schedule` / `scheduled_frames` extend a short video to the audio's length.

Every ffmpeg call is an argv list; a failing ffmpeg raises with the tail of its stderr.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import subprocess
import threading
import uuid
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Iterator, Literal

import numpy as np

from heygem.errors import MediaProcessError, UnsupportedMediaError

log = logging.getLogger("heygem.engine.media")

FFMPEG = "ffmpeg"
FFPROBE = "ffprobe"
PROBE_TIMEOUT_S = 60.0
STDERR_TAIL_LINES = 20
# ffmpeg ends many failures with these lines, which hide the real reason printed just before.
GENERIC_TRAILERS = (
    "Error marking filters as finished",
    "Cannot determine format of input stream",
    "Conversion failed!",
    "Nothing was written into output file",
)
_LOG_PREFIX = re.compile(r"^\[[^\]]+ @ 0x[0-9a-fA-F]+\]\s*")

# A still is recognised by what ffprobe finds inside the file, or by one of these extensions when
# the content is a single picture of an image codec; never by splitting the name on dots.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
IMAGE_FORMATS = frozenset({"image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe"})
IMAGE_CODECS = frozenset({"png", "mjpeg", "webp", "bmp"})
FALLBACK_FPS = Fraction(25)  # only when a video declares no usable frame rate at all
MAX_FPS_DENOMINATOR = 1_001_000  # keeps 30000/1001-style NTSC rates exact

BGR_CHANNELS = 3
WRITER_QUEUE_FRAMES = 8  # frames buffered between compute and the encoder thread
DEFAULT_CRF = 20
X264_PRESET = "medium"
AUDIO_CODEC = "aac"
AUDIO_BITRATE = "128k"

# Watermark label: Hershey font scaled to the frame, white on a dark outline, bottom-right.
LABEL_HEIGHT_FRACTION = 0.035  # text height relative to the frame height
LABEL_MIN_SCALE = 0.35
LABEL_MARGIN_FRACTION = 0.02

SchedulePolicy = Literal["loop", "pingpong"]


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

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


# --------------------------------------------------------------------------------------------------
# subprocess helpers


class _StderrTail:
    """Drains a process's stderr in a thread (so ffmpeg never blocks on it) and keeps the tail."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._lines: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._thread = threading.Thread(target=self._drain, args=(stream,), daemon=True)
        self._thread.start()

    def _drain(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").strip()
            if line:
                self._lines.append(line)
        stream.close()

    def join(self) -> None:
        self._thread.join(timeout=5)

    def last_line(self) -> str:
        return _last_line("\n".join(self._lines))

    def text(self) -> str:
        return " | ".join(self._lines) or "no error output"


def _last_line(text: str) -> str:
    """The most telling stderr line: the last one that is not a generic ffmpeg trailer."""
    lines = [_LOG_PREFIX.sub("", line.strip()) for line in text.strip().splitlines() if line.strip()]
    telling = [line for line in lines if not line.startswith(GENERIC_TRAILERS)]
    return (telling or lines or ["no error output"])[-1]


def _run(cmd: list[str], timeout: float = PROBE_TIMEOUT_S) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise MediaProcessError(f"{cmd[0]} is not installed or not on PATH") from None
    except subprocess.TimeoutExpired:
        raise MediaProcessError(f"{cmd[0]} did not finish within {timeout:.0f} s") from None


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


# --------------------------------------------------------------------------------------------------
# probe


def probe(path: Path | str, require_video: bool = True, verify: bool = True) -> MediaInfo:
    """Describe a face video or photo; raise UnsupportedMediaError with a one-line reason.

    With `require_video` a file without a picture stream (e.g. audio given as the face) is refused.
    With `verify` the first frame is decoded too, so a corrupt file fails here and not mid-job.
    """
    path = Path(path)
    if not path.is_file():
        raise UnsupportedMediaError(f"file not found: {path.name}")
    data = _ffprobe_json(path)
    streams = data.get("streams", [])
    fmt = data.get("format", {})
    video = _pick_video_stream(streams)
    has_audio = any(s.get("codec_type") == "audio" for s in streams)
    if video is None:
        if require_video:
            kind = "audio only" if has_audio else "no picture"
            raise UnsupportedMediaError(
                f"{path.name} has no video stream ({kind}); give a face video or photo"
            )
        return _audio_only_info(path, fmt, has_audio)
    if _looks_like_image(path, fmt, video):
        return _probe_image(path, video, has_audio)
    info = _video_info(path, fmt, video, has_audio)
    if verify:
        _verify_first_frame(info)
    return info


def _ffprobe_json(path: Path) -> dict:
    cmd = [FFPROBE, "-v", "error", "-print_format", "json", "-show_streams", "-show_format", str(path)]
    result = _run(cmd)
    if result.returncode != 0:
        reason = _last_line(result.stderr.decode("utf-8", "replace"))
        reason = _strip_path(reason, path)
        raise UnsupportedMediaError(f"cannot read {path.name} as audio or video: {reason}")
    try:
        return json.loads(result.stdout or b"{}")
    except json.JSONDecodeError:
        raise UnsupportedMediaError(f"cannot read {path.name}: ffprobe gave unreadable output") from None


def _strip_path(message: str, path: Path) -> str:
    """ffmpeg prefixes errors with the path; the message names the file already."""
    for prefix in (f"{path}: ", f"{path.name}: "):
        message = message.removeprefix(prefix)
    return message.replace(str(path), path.name)


def _pick_video_stream(streams: list[dict]) -> dict | None:
    for stream in streams:
        # Cover art inside audio files shows up as a one-picture video stream; it is not a face video.
        if stream.get("codec_type") == "video" and not stream.get("disposition", {}).get("attached_pic"):
            return stream
    return None


def _looks_like_image(path: Path, fmt: dict, video: dict) -> bool:
    format_names = set(str(fmt.get("format_name", "")).split(","))
    if format_names & IMAGE_FORMATS:
        return True
    single = str(video.get("nb_frames", "1")) in ("0", "1", "N/A")
    return path.suffix.lower() in IMAGE_EXTENSIONS and video.get("codec_name") in IMAGE_CODECS and single


def _probe_image(path: Path, video: dict, has_audio: bool) -> MediaInfo:
    frame = _decode_image(path)  # decoding is the only reliable check, and it honours EXIF rotation
    height, width = frame.shape[:2]
    return MediaInfo(
        path=path, width=width, height=height, fps=0.0, fps_text="", frame_count=1, duration_s=0.0,
        rotation=0, has_video=True, has_audio=has_audio, is_image=True,
        codec=str(video.get("codec_name", "")), video_stream=int(video.get("index", 0)),
    )


def _audio_only_info(path: Path, fmt: dict, has_audio: bool) -> MediaInfo:
    return MediaInfo(
        path=path, width=0, height=0, fps=0.0, fps_text="", frame_count=0,
        duration_s=_float(fmt.get("duration")), rotation=0, has_video=False, has_audio=has_audio,
        is_image=False, codec="",
    )


def _video_info(path: Path, fmt: dict, video: dict, has_audio: bool) -> MediaInfo:
    coded_w, coded_h = int(video.get("width") or 0), int(video.get("height") or 0)
    if coded_w <= 0 or coded_h <= 0:
        raise UnsupportedMediaError(f"cannot read {path.name}: the video stream has no picture size")
    rotation = _rotation(video)
    width, height = (coded_h, coded_w) if rotation % 180 == 90 else (coded_w, coded_h)
    rate = _frame_rate(video)
    duration = _float(video.get("duration")) or _float(fmt.get("duration"))
    nb_frames = int(video.get("nb_frames") or 0) if str(video.get("nb_frames", "")).isdigit() else 0
    count = nb_frames or max(1, round(duration * float(rate)))
    return MediaInfo(
        path=path, width=width, height=height, fps=float(rate), fps_text=_rational(rate),
        frame_count=count, duration_s=duration, rotation=rotation, has_video=True, has_audio=has_audio,
        is_image=False, codec=str(video.get("codec_name", "")), video_stream=int(video.get("index", 0)),
    )


def _rotation(video: dict) -> int:
    for side in video.get("side_data_list", []) or []:
        if "rotation" in side:
            return int(round(float(side["rotation"]))) % 360
    tag = (video.get("tags") or {}).get("rotate")
    return int(round(float(tag))) % 360 if tag not in (None, "") else 0


def _frame_rate(video: dict) -> Fraction:
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


def _rational(rate: Fraction) -> str:
    return f"{rate.numerator}/{rate.denominator}"


def _float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


def _verify_first_frame(info: MediaInfo) -> None:
    cmd = [
        FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-i", str(info.path),
        "-map", f"0:{info.video_stream}", "-frames:v", "1", "-f", "null", "-",
    ]
    result = _run(cmd)
    if result.returncode != 0:
        reason = _strip_path(_last_line(result.stderr.decode("utf-8", "replace")), info.path)
        raise UnsupportedMediaError(f"cannot decode {info.path.name}, the file looks corrupt: {reason}")


def _decode_image(path: Path) -> np.ndarray:
    import cv2

    raw = np.fromfile(path, dtype=np.uint8)
    frame = cv2.imdecode(raw, cv2.IMREAD_COLOR) if raw.size else None
    if frame is None:
        frame = _decode_image_with_ffmpeg(path)
    return np.ascontiguousarray(frame)


def _decode_image_with_ffmpeg(path: Path) -> np.ndarray:
    """For pictures OpenCV cannot read: ffmpeg writes one frame as a BGR PNG we can decode."""
    import cv2

    cmd = [
        FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-i", str(path),
        "-frames:v", "1", "-f", "image2pipe", "-vcodec", "png", "-pix_fmt", "bgr24", "-",
    ]
    result = _run(cmd)
    frame = None
    if result.returncode == 0 and result.stdout:
        frame = cv2.imdecode(np.frombuffer(result.stdout, np.uint8), cv2.IMREAD_COLOR)
    if frame is None:
        reason = _strip_path(_last_line(result.stderr.decode("utf-8", "replace")), path)
        raise UnsupportedMediaError(f"cannot decode the picture {path.name}: {reason}")
    return frame


# --------------------------------------------------------------------------------------------------
# reading frames


def scaled_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """The size a frame is read at: unchanged when it fits `max_side`, else shrunk to even sides."""
    if not max_side or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def read_frames(
    path: Path | str, info: MediaInfo, fps: float | str | None = None, max_side: int | None = None
) -> Iterator[np.ndarray]:
    """Yield the frames of `path` as writable HxWx3 uint8 BGR arrays, one at a time.

    Rotation metadata is applied (frames have the displayed size `info.size`, or `scaled_size(...,
    max_side)` when `max_side` is given). Video is converted to a constant rate: `fps` (a number or
    an ffmpeg rational), by default the source's average rate, so variable-rate input gives one frame
    per 1/fps second. A still yields exactly one frame; the caller repeats it.

    ffmpeg is killed when the iterator is closed early (`.close()`, or garbage collection), so
    stopping after a few frames is cheap. Raise UnsupportedMediaError when no frame decodes and
    MediaProcessError when ffmpeg fails part-way.
    """
    path = Path(path)
    width, height = scaled_size(info.width, info.height, max_side)
    if info.is_image:
        return _read_image(path, width, height)
    return _read_video(path, info, _rate_text(fps, info.fps_text), width, height)


def _rate_text(fps: float | str | None, default: str = "") -> str:
    if fps is None:
        return default or _rational(FALLBACK_FPS)
    if isinstance(fps, str):
        return fps
    return _rational(Fraction(fps).limit_denominator(MAX_FPS_DENOMINATOR))


def _read_image(path: Path, width: int, height: int) -> Iterator[np.ndarray]:
    import cv2

    frame = _decode_image(path)
    if frame.shape[:2] != (height, width):
        frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
    yield frame


def _read_video(path: Path, info: MediaInfo, rate: str, width: int, height: int) -> Iterator[np.ndarray]:
    filters = [f"fps={rate}"]
    if (width, height) != info.size:
        filters.append(f"scale={width}:{height}:flags=area")
    cmd = [
        FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-i", str(path),
        "-map", f"0:{info.video_stream}", "-vf", ",".join(filters),
        "-f", "rawvideo", "-pix_fmt", "bgr24", "pipe:1",
    ]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    tail = _StderrTail(proc.stderr)
    frame_bytes = width * height * BGR_CHANNELS
    count = 0
    try:
        while True:
            buffer = bytearray(frame_bytes)
            got = _read_exactly(proc.stdout, buffer)
            if got < frame_bytes:
                if got:
                    log.warning(
                        "dropping a partial last frame of %s (%d of %d bytes)",
                        path.name, got, frame_bytes,
                    )
                break
            count += 1
            yield np.frombuffer(buffer, dtype=np.uint8).reshape(height, width, BGR_CHANNELS)
        code = proc.wait()
        tail.join()
        _check_read_result(path, code, count, tail)
    finally:
        _kill(proc)
        proc.stdout.close()
        tail.join()


def _read_exactly(stream: IO[bytes], buffer: bytearray) -> int:
    view = memoryview(buffer)
    got = 0
    while got < len(buffer):
        n = stream.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got


def _check_read_result(path: Path, code: int, count: int, tail: _StderrTail) -> None:
    if count == 0:
        raise UnsupportedMediaError(
            f"cannot decode any frame of {path.name}: {_strip_path(tail.last_line(), path)}"
        )
    if code != 0:
        reason = _strip_path(tail.text(), path)
        raise MediaProcessError(f"ffmpeg failed reading {path.name} (exit {code}): {reason}")


# --------------------------------------------------------------------------------------------------
# extending a short video to the audio's length


def frame_index_schedule(n_out: int, n_src: int, policy: SchedulePolicy = "loop") -> Iterator[int]:
    """Source frame index for each of `n_out` output frames.

    loop: 0, 1, ..., n-1, 0, 1, ... (the reference's wrap-around).
    pingpong: 0, 1, ..., n-1, n-2, ..., 1, 0, 1, ... (no jump cut at the wrap).
    """
    if n_src < 1:
        raise ValueError("n_src must be at least 1")
    if policy not in ("loop", "pingpong"):
        raise ValueError(f"unknown duration policy {policy!r}; use loop or pingpong")
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
    policy: SchedulePolicy,
    scratch_dir: Path,
    fps: float | str | None = None,
    n_src: int | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (source index, frame) for `n_out` output frames following `frame_index_schedule`.

    Memory stays at a frame or two whatever the lengths:
    * a still: its one frame every time (the same read-only array);
    * loop: the video is decoded again from the start at each wrap;
    * pingpong: the backward passes need frames in reverse, which a decoder cannot give cheaply,
      so the first forward pass also spools the raw frames to a file in `scratch_dir` (width x
      height x 3 bytes per source frame); later passes read it by offset. The file is deleted when
      the iterator finishes or is closed. No spool is written when `n_src` says none is needed.
    Treat the frames as read-only: with a still they are shared.
    """
    if policy not in ("loop", "pingpong"):
        raise ValueError(f"unknown duration policy {policy!r}; use loop or pingpong")
    if info.is_image:
        return _repeat_still(path, info, n_out)
    if policy == "loop":
        return _loop(path, info, n_out, fps)
    return _pingpong(path, info, n_out, Path(scratch_dir), fps, n_src)


def _repeat_still(path: Path | str, info: MediaInfo, n_out: int) -> Iterator[tuple[int, np.ndarray]]:
    frame = next(read_frames(path, info))
    frame.flags.writeable = False
    for _ in range(n_out):
        yield 0, frame


def _loop(
    path: Path | str, info: MediaInfo, n_out: int, fps: float | str | None
) -> Iterator[tuple[int, np.ndarray]]:
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
) -> Iterator[tuple[int, np.ndarray]]:
    need_spool = n_src is None or n_out > n_src
    spool_path = scratch_dir / f"pingpong-{uuid.uuid4().hex}.bgr"
    frames = read_frames(path, info, fps=fps)
    count = 0
    try:
        with _Spool(spool_path, need_spool) as spool:
            for frame in frames:
                if count == n_out:
                    return
                if count >= start:
                    yield count, frame
                if spool is not None:
                    _spool_write(spool, frame, spool_path)
                count += 1
            if count < n_out:
                if spool is None:  # n_src promised more frames than the video has
                    log.warning(
                        "%s has %d frames, not %s; spooling it for pingpong",
                        info.path.name, count, n_src,
                    )
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
        self.path, self.needed, self.file = path, needed, None

    def __enter__(self):
        if self.needed:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "w+b")
        return self.file

    def __exit__(self, *exc: object) -> None:
        if self.file is not None:
            self.file.close()


def _spool_write(spool: IO[bytes], frame: np.ndarray, spool_path: Path) -> None:
    try:
        spool.write(frame.data)
    except OSError as exc:
        raise MediaProcessError(
            f"cannot write scratch file {spool_path.name} for pingpong: {exc.strerror}"
        ) from None


def _replay(
    spool: IO[bytes], n_src: int, n_out: int, shape: tuple[int, ...]
) -> Iterator[tuple[int, np.ndarray]]:
    frame_bytes = int(np.prod(shape))
    for i in range(n_src, n_out):
        index = pingpong_index(i, n_src)
        spool.seek(index * frame_bytes)
        buffer = bytearray(frame_bytes)
        if _read_exactly(spool, buffer) != frame_bytes:
            raise MediaProcessError("the pingpong scratch file was truncated while the job ran")
        yield index, np.frombuffer(buffer, dtype=np.uint8).reshape(shape)


# --------------------------------------------------------------------------------------------------
# writing


class FrameWriter:
    """Encode BGR frames to an H.264 (yuv420p) + AAC mp4 through one ffmpeg process.

        with FrameWriter(out, width, height, fps, audio_path, label="AI generated") as writer:
            for frame in frames:
                writer.write(frame)

    Frames go through a bounded queue to a writer thread, so encoding overlaps the caller's work.
    Odd sizes are made even by repeating the last row/column. The output ends with the shorter of
    audio and frames. ffmpeg writes to a hidden temporary name next to `output_path`, renamed into
    place only when the block exits without an exception; otherwise the partial file is deleted.
    The caller must not modify a frame after passing it to `write`.
    """

    def __init__(
        self,
        output_path: Path | str,
        width: int,
        height: int,
        fps: float | str,
        audio_path: Path | str | None = None,
        crf: int = DEFAULT_CRF,
        label: str = "",
        preset: str = X264_PRESET,
    ) -> None:
        if width < 1 or height < 1:
            raise ValueError(f"bad frame size {width}x{height}")
        self.output_path = Path(output_path)
        self.width, self.height = width, height
        self.out_width, self.out_height = width + width % 2, height + height % 2
        self.rate = _rate_text(fps)
        self.audio_path = Path(audio_path) if audio_path is not None else None
        self.crf, self.preset, self.label = crf, preset, _ascii_label(label)
        unique = uuid.uuid4().hex[:12]
        self.temp_path = self.output_path.with_name(f".{self.output_path.name}.{unique}.part")
        self.frames_written = 0
        self._queue: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=WRITER_QUEUE_FRAMES)
        self._proc: subprocess.Popen | None = None
        self._tail: _StderrTail | None = None
        self._thread: threading.Thread | None = None
        self._pipe_error: OSError | None = None
        self._finished = False

    # -- lifecycle --------------------------------------------------------------------------------
    def __enter__(self) -> FrameWriter:
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def start(self) -> None:
        self.output_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._proc = subprocess.Popen(
                self._command(), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
        except FileNotFoundError:
            raise MediaProcessError(f"{FFMPEG} is not installed or not on PATH") from None
        self._tail = _StderrTail(self._proc.stderr)
        self._thread = threading.Thread(target=self._feed, name="heygem-frame-writer", daemon=True)
        self._thread.start()

    def write(self, frame: np.ndarray) -> None:
        """Queue one HxWx3 uint8 BGR frame (blocks while the queue is full)."""
        if self._proc is None or self._finished:
            raise RuntimeError("FrameWriter is not open")
        if frame.shape != (self.height, self.width, BGR_CHANNELS) or frame.dtype != np.uint8:
            raise ValueError(
                f"frame must be {self.height}x{self.width}x3 uint8, got {frame.shape} {frame.dtype}"
            )
        if self._pipe_error is not None and self._proc.poll() not in (None, 0):
            raise self._failure("ffmpeg stopped while encoding")
        self._queue.put(frame)

    def close(self) -> Path:
        """Finish encoding and move the file into place; raise MediaProcessError if ffmpeg failed."""
        if self._finished:
            return self.output_path
        self._finished = True
        try:
            self._stop_thread()
            code = self._proc.wait()
            self._tail.join()
            if code != 0:
                raise self._failure(f"ffmpeg exit {code}")
            if self.frames_written == 0:
                raise MediaProcessError(f"no frames were written to {self.output_path.name}")
            os.replace(self.temp_path, self.output_path)
        except BaseException:
            self._discard()
            raise
        log.info("wrote %s (%d frames)", self.output_path.name, self.frames_written)
        return self.output_path

    def abort(self) -> None:
        """Stop ffmpeg and delete the partial file (used when the caller fails mid-way)."""
        if self._finished:
            return
        self._finished = True
        self._discard()

    # -- internals --------------------------------------------------------------------------------
    def _command(self) -> list[str]:
        cmd = [
            FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{self.out_width}x{self.out_height}",
            "-framerate", self.rate, "-i", "pipe:0",
        ]
        if self.audio_path is not None:
            cmd += ["-i", str(self.audio_path), "-map", "0:v:0", "-map", "1:a:0"]
        cmd += ["-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf), "-pix_fmt", "yuv420p"]
        if self.audio_path is not None:
            cmd += ["-c:a", AUDIO_CODEC, "-b:a", AUDIO_BITRATE, "-shortest"]
            # -shortest alone overshoots by the encoder's look-ahead (~1.7 s with x264) when the
            # audio is the shorter stream; capping at the audio's length makes the end exact.
            audio_s = _audio_duration(self.audio_path)
            if audio_s > 0:
                cmd += ["-t", f"{audio_s:.6f}"]
        return cmd + ["-movflags", "+faststart", "-f", "mp4", str(self.temp_path)]

    def _feed(self) -> None:
        stdin = self._proc.stdin
        while True:
            frame = self._queue.get()
            if frame is None:
                break
            if self._pipe_error is not None:
                continue  # keep draining so the producer never blocks on a dead encoder
            try:
                stdin.write(self._prepare(frame).data)
                self.frames_written += 1
            except OSError as exc:
                # With -shortest ffmpeg may stop reading once the audio ends: not an error by itself;
                # the exit code decides.
                self._pipe_error = exc
        try:
            stdin.close()
        except OSError as exc:
            self._pipe_error = self._pipe_error or exc

    def _prepare(self, frame: np.ndarray) -> np.ndarray:
        import cv2

        if (self.out_width, self.out_height) != (self.width, self.height):
            extra_h, extra_w = self.out_height - self.height, self.out_width - self.width
            frame = cv2.copyMakeBorder(frame, 0, extra_h, 0, extra_w, cv2.BORDER_REPLICATE)
        elif self.label:
            frame = frame.copy()  # never draw on the caller's array
        if self.label:
            draw_label(frame, self.label)
        return np.ascontiguousarray(frame)

    def _stop_thread(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()

    def _discard(self) -> None:
        if self._proc is not None:
            _kill(self._proc)
        self._drain_queue()
        self._stop_thread()
        if self._tail is not None:
            self._tail.join()
        self.temp_path.unlink(missing_ok=True)

    def _drain_queue(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def _failure(self, what: str) -> MediaProcessError:
        tail = self._tail.text() if self._tail is not None else ""
        return MediaProcessError(f"encoding {self.output_path.name} failed ({what}): {tail}")


def _audio_duration(path: Path) -> float:
    cmd = [FFPROBE, "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)]
    result = _run(cmd)
    return _float(result.stdout.decode().strip()) if result.returncode == 0 else 0.0


def _ascii_label(label: str) -> str:
    # OpenCV's built-in Hershey fonts only have ASCII glyphs.
    return "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in label.strip())


def draw_label(frame: np.ndarray, label: str) -> None:
    """Burn `label` into the bottom-right corner of `frame` in place (white text, dark outline)."""
    import cv2

    height, width = frame.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    (_, base_h), _ = cv2.getTextSize("X", font, 1.0, 1)
    scale = max(LABEL_MIN_SCALE, height * LABEL_HEIGHT_FRACTION / base_h)
    thickness = max(1, round(scale))
    (text_w, text_h), baseline = cv2.getTextSize(label, font, scale, thickness)
    margin = max(2, round(min(width, height) * LABEL_MARGIN_FRACTION))
    origin = (max(0, width - text_w - margin), max(text_h, height - margin - baseline))
    cv2.putText(frame, label, origin, font, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
    cv2.putText(frame, label, origin, font, scale, (255, 255, 255), thickness, cv2.LINE_AA)


__all__ = [
    "MediaInfo",
    "probe",
    "read_frames",
    "scaled_size",
    "frame_index_schedule",
    "pingpong_index",
    "scheduled_frames",
    "FrameWriter",
    "draw_label",
    "IMAGE_EXTENSIONS",
]
