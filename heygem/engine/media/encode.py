"""Encode BGR frames to an H.264 + AAC mp4 through one ffmpeg process, muxing the job's audio.

with FrameWriter(out, width, height, fps, audio_path, label="AI generated") as writer:
    for frame in frames:
        writer.write(frame)

`choose_encoder` picks the H.264 encoder once per process: NVENC on a GPU host whose ffmpeg has it
and can open it, libx264 otherwise (and whenever NVENC fails to open).
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import subprocess
import threading
import uuid
from pathlib import Path
from types import TracebackType
from typing import IO, cast

import numpy as np

from heygem.engine.api import Frame
from heygem.engine.media.guard import input_args
from heygem.engine.media.label import ascii_label, draw_label
from heygem.engine.media.probe import audio_duration, rate_text
from heygem.engine.media.process import BGR_CHANNELS, FFMPEG, StderrTail, kill
from heygem.errors import MediaProcessError

log = logging.getLogger("heygem.engine.media.encode")

WRITER_QUEUE_FRAMES = 8  # frames buffered between compute and the encoder thread
DEFAULT_CRF = 20
LIBX264 = "libx264"
NVENC = "h264_nvenc"
# veryfast costs half of medium's CPU per frame at 720p (docs/benchmarks.md) for a slightly larger
# file at the same CRF; on a CPU host every encoder cycle is one the generator does not get.
X264_PRESET = "veryfast"
# libx264's lookahead in a thread of its own decides frame types and quantizers from the frames that
# have arrived when it runs, so a job fed in bursts (one generator batch at a time, cores busy in
# between) came out as a different file on every run. Run inside the frame threads, it gives the
# stream it gives when frames arrive fast, every time, at the same CPU cost (docs/backends.md).
X264_REPEATABLE = ["-x264-params", "sync-lookahead=0"]
NVENC_PRESET = "p4"  # NVENC's middle speed/quality preset (p1 fastest .. p7 best)
# One black frame is encoded to see whether an encoder opens; NVENC refuses tiny frames.
PROBE_SIDE = 256
PROBE_TIMEOUT_S = 30.0
PROBLEM_MAX_CHARS = 300  # keeps the fallback warning one readable line
AUDIO_CODEC = "aac"
AUDIO_BITRATE = "128k"


class FrameWriter:
    """Encode BGR frames to an H.264 (yuv420p) + AAC mp4 through one ffmpeg process.

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
        encoder: str = LIBX264,
    ) -> None:
        if width < 1 or height < 1:
            raise ValueError(f"bad frame size {width}x{height}")
        self.output_path = Path(output_path)
        self.width, self.height = width, height
        self.out_width, self.out_height = width + width % 2, height + height % 2
        self.rate = rate_text(fps)
        self.audio_path = Path(audio_path) if audio_path is not None else None
        self.crf, self.preset, self.label = crf, preset, ascii_label(label)
        self.encoder = encoder
        unique = uuid.uuid4().hex[:12]
        self.temp_path = self.output_path.with_name(f".{self.output_path.name}.{unique}.part")
        self.frames_written = 0
        self._queue: queue.Queue[Frame | None] = queue.Queue(maxsize=WRITER_QUEUE_FRAMES)
        self._proc: subprocess.Popen[bytes] | None = None
        self._tail: StderrTail | None = None
        self._thread: threading.Thread | None = None
        self._pipe_error: OSError | None = None
        self._finished = False

    # -- lifecycle --------------------------------------------------------------------------------
    def __enter__(self) -> FrameWriter:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def start(self) -> None:
        self.output_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            proc = subprocess.Popen(
                self._command(), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
        except FileNotFoundError:
            raise MediaProcessError(f"{FFMPEG} is not installed or not on PATH") from None
        self._proc = proc
        # Both pipes exist: they were requested just above.
        assert proc.stdin is not None and proc.stderr is not None
        self._tail = StderrTail(proc.stderr)
        self._thread = threading.Thread(
            target=self._feed, args=(proc.stdin,), name="heygem-frame-writer", daemon=True
        )
        self._thread.start()

    def write(self, frame: Frame) -> None:
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
        if self._proc is None or self._tail is None:
            raise RuntimeError("FrameWriter is not open")
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
            "-framerate", self.rate, "-protocol_whitelist", "pipe", "-i", "pipe:0",
        ]  # fmt: skip
        if self.audio_path is not None:
            # The user's audio file: read under the same rules as every other user file.
            cmd += [*input_args(self.audio_path), "-map", "0:v:0", "-map", "1:a:0"]
        cmd += [*video_codec_args(self.encoder, self.preset, self.crf), "-pix_fmt", "yuv420p"]
        if self.audio_path is not None:
            cmd += ["-c:a", AUDIO_CODEC, "-b:a", AUDIO_BITRATE, "-shortest"]
            # -shortest alone overshoots by the encoder's look-ahead (~1.7 s with x264) when the
            # audio is the shorter stream; capping at the audio's length makes the end exact.
            audio_s = audio_duration(self.audio_path)
            if audio_s > 0:
                cmd += ["-t", f"{audio_s:.6f}"]
        return cmd + ["-movflags", "+faststart", "-f", "mp4", str(self.temp_path)]

    def _feed(self, stdin: IO[bytes]) -> None:
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

    def _prepare(self, frame: Frame) -> Frame:
        import cv2

        if (self.out_width, self.out_height) != (self.width, self.height):
            extra_h, extra_w = self.out_height - self.height, self.out_width - self.width
            # cv2's stubs type every image as MatLike; padding keeps the uint8 dtype.
            frame = cast(Frame, cv2.copyMakeBorder(frame, 0, extra_h, 0, extra_w, cv2.BORDER_REPLICATE))
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
            kill(self._proc)
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


# -- choosing the encoder -------------------------------------------------------------------------


def video_codec_args(encoder: str, x264_preset: str, crf: int) -> list[str]:
    """ffmpeg output arguments for one H.264 encoder at a comparable constant quality."""
    if encoder == LIBX264:
        return ["-c:v", LIBX264, "-preset", x264_preset, "-crf", str(crf), *X264_REPEATABLE]
    if encoder == NVENC:
        # Constant-quality VBR: -cq plays the role of x264's CRF; -b:v 0 lifts the bitrate cap.
        return ["-c:v", NVENC, "-preset", NVENC_PRESET, "-rc", "vbr", "-cq", str(crf), "-b:v", "0"]
    return ["-c:v", encoder]


def choose_encoder(requested: str, device: str) -> str:
    """The H.264 encoder a job on `device` uses: "auto" means NVENC on CUDA when it opens.

    Anything but libx264 is tried once per process (a one-frame encode); an encoder this ffmpeg
    lacks or cannot open falls back to libx264 with one warning line, never a failed job.
    """
    if requested == "auto":
        requested = NVENC if device.startswith("cuda") and NVENC in ffmpeg_encoders() else LIBX264
    if requested == LIBX264:
        return LIBX264
    problem = encoder_problem(requested)
    if problem:
        log.warning("video encoder %s is not usable (%s); encoding with %s", requested, problem, LIBX264)
        return LIBX264
    return requested


@functools.lru_cache(maxsize=1)
def ffmpeg_encoders() -> frozenset[str]:
    """Encoder names this ffmpeg was built with (`ffmpeg -encoders`), read once per process."""
    try:
        proc = subprocess.run(
            [FFMPEG, "-hide_banner", "-nostdin", "-encoders"],
            capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    # Lines look like " V....D libx264   libx264 H.264 / AVC ...": flags, then the name.
    rows = (line.split() for line in proc.stdout.splitlines())
    return frozenset(row[1] for row in rows if len(row) > 1 and len(row[0]) == 6 and row[0][0] == "V")


@functools.lru_cache(maxsize=8)
def encoder_problem(encoder: str) -> str:
    """Why `encoder` cannot encode here ("" when it can): absent from ffmpeg, or fails to open."""
    if encoder not in ffmpeg_encoders():
        return "this ffmpeg does not have it"
    frame = bytes(PROBE_SIDE * PROBE_SIDE * BGR_CHANNELS)
    cmd = [
        FFMPEG, "-hide_banner", "-nostdin", "-v", "error",
        "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{PROBE_SIDE}x{PROBE_SIDE}",
        "-protocol_whitelist", "pipe", "-i", "pipe:0",
        "-frames:v", "1", *video_codec_args(encoder, X264_PRESET, DEFAULT_CRF), "-pix_fmt", "yuv420p",
        "-f", "null", "-",
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, input=frame, capture_output=True, timeout=PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the test encode did not finish: {exc}"
    if proc.returncode == 0:
        return ""
    # The encoder's own complaint (e.g. "Cannot load libcuda.so.1") comes first, ffmpeg's summary last.
    lines = [line.strip() for line in proc.stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    return " | ".join(lines)[:PROBLEM_MAX_CHARS] or f"ffmpeg exit {proc.returncode}"
