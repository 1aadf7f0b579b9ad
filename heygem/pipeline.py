"""LipSyncPipeline: audio + face video/photo in, lip-synced mp4 out, in bounded memory.

CONTRACT (filled in by the engine work; the job layer, web app and CLI code against this surface):

    pipeline = LipSyncPipeline(settings)      # cheap; nothing loaded yet
    pipeline.load()                           # loads detector + generator once (idempotent)
    result = pipeline.run(audio_path, face_path, output_path, SyncOptions(...),
                          on_progress=lambda done, total, stage: ...)
    pipeline.status()  -> EngineStatus        # what is loaded, for the UI and /ready
    pipeline.warmup()  -> float               # one-frame inference on a built-in sample, seconds

`run` raises heygem.errors.InputError subclasses for bad input, ModelError for weights problems and
MediaProcessError when ffmpeg fails. `stage` is one of STAGES.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np

from heygem.audio import SAMPLE_RATE, frames_for_audio, load_audio, mel_chunks, melspectrogram
from heygem.engines import PREVIEW, WAV2LIP, Wav2LipRenderer, choose_engine
from heygem.errors import InputError, LimitExceededError, ModelError
from heygem.faces.detect import create_detector
from heygem.faces.track import FaceTrack, TrackCache, choose_face, detect_faces, pad_box, track_faces
from heygem.model.download import resolve_checkpoint
from heygem.settings import ENGINES, PRECISIONS, Settings
from heygem.video import FrameWriter, MediaInfo, probe, read_frames, scheduled_frames

log = logging.getLogger("heygem.pipeline")

STAGES = ("probe", "audio", "detect", "synthesize", "encode", "done")
ProgressCallback = Callable[[int, int, str], None]

Blend = Literal["feather", "rect"]
DurationPolicy = Literal["loop", "pingpong"]
FaceChoice = Literal["largest", "nearest"]
BLENDS = ("feather", "rect")
DURATION_POLICIES = ("loop", "pingpong")
FACE_CHOICES = ("largest", "nearest")
TUPLE_OPTIONS = ("box", "pads", "face_point")
MAX_FPS = 120.0
MAX_LABEL_CHARS = 40
WARMUP_SIDE = 128  # built-in warm-up frame: a plain grey square treated as one face box
WARMUP_GREY = 128
WARMUP_FPS = 25.0
WARMUP_SAMPLES = SAMPLE_RATE  # one second of silence: enough for a full mel window
BOX_COLOUR_BGR = (0, 200, 0)
BOX_LINE_DIVISOR = 200  # box outline thickness = frame width / this, at least 2 px


@dataclass(frozen=True)
class SyncOptions:
    """Per-job knobs. Frozen: built per job, never mutated, never shared state."""

    engine: str = "auto"  # auto | wav2lip | preview
    box: tuple[int, int, int, int] | None = None  # fixed face box: top, bottom, left, right (px)
    pads: tuple[int, int, int, int] = (0, 10, 0, 0)  # grow the box: top, bottom, left, right (px)
    smooth: bool = True  # average boxes over time
    smooth_window: int = 5  # frames in the smoothing window (the reference's 5)
    blend: Blend = "feather"  # feather = soft lower-face mask; rect = reference-exact paste
    duration_policy: DurationPolicy = "loop"  # how the video is extended when the audio is longer
    face_choice: FaceChoice = "largest"  # which face when several are found
    face_point: tuple[int, int] | None = None  # (x, y) for face_choice="nearest"
    fps: float = 25.0  # frame rate given to a still image
    batch_size: int | None = None  # None = Settings.batch_size
    precision: str | None = None  # None = Settings.precision
    watermark: str = ""  # visible label burnt into the corner, e.g. "AI generated"; "" = none

    def __post_init__(self) -> None:
        _check_options(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> SyncOptions:
        """Build from JSON-like data (API, job store); raise InputError naming a bad key/value."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown option(s): {', '.join(unknown)}")
        try:
            for name in TUPLE_OPTIONS:
                if data.get(name) is not None:
                    data[name] = tuple(int(v) for v in data[name])
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise InputError(f"invalid options: {exc}") from None

    def to_dict(self) -> dict:
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in fields(self)
        }


def _check_options(options: SyncOptions) -> None:
    for name, value, allowed in (
        ("engine", options.engine, ENGINES),
        ("blend", options.blend, BLENDS),
        ("duration_policy", options.duration_policy, DURATION_POLICIES),
        ("face_choice", options.face_choice, FACE_CHOICES),
    ):
        if value not in allowed:
            raise InputError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    if options.precision is not None and options.precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}")
    _check_quad("box", options.box, minimum=0)
    _check_quad("pads", options.pads, minimum=0)
    if options.box is not None and not (options.box[0] < options.box[1] and options.box[2] < options.box[3]):
        raise InputError("box must be TOP BOTTOM LEFT RIGHT with top < bottom and left < right")
    if options.face_choice == "nearest" and (options.face_point is None or len(options.face_point) != 2):
        raise InputError("face_choice 'nearest' needs face_point as (x, y)")
    if not 0 < options.fps <= MAX_FPS:
        raise InputError(f"fps must be between 0 and {MAX_FPS:g}")
    if options.smooth_window < 1 or (options.batch_size is not None and options.batch_size < 1):
        raise InputError("smooth_window and batch_size must be at least 1")
    if len(options.watermark) > MAX_LABEL_CHARS:
        raise InputError(f"watermark text is longer than {MAX_LABEL_CHARS} characters")


def _check_quad(name: str, value: tuple[int, ...] | None, minimum: int) -> None:
    if value is None:
        return
    if len(value) != 4 or any(v < minimum for v in value):
        raise InputError(f"{name} needs 4 whole numbers (top bottom left right), each >= {minimum}")


@dataclass
class SyncResult:
    output: Path
    engine: str  # the engine that actually ran: wav2lip or preview
    frames: int  # frames written
    frames_without_face: int  # frames passed through unchanged
    fps: float
    duration_s: float  # output duration (equals the audio duration within one frame)
    seconds: float  # wall time of the run
    stage_seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class EngineStatus:
    engine: str  # engine "auto" resolves to: wav2lip or preview
    reason: str  # why that engine (e.g. "no weights at models/wav2lip_gan.pth")
    checkpoint: str  # path of the loaded generator weights, or ""
    detector: str  # "s3fd" or "haar"
    device: str  # "cpu", "cuda:0"
    device_name: str  # GPU name or CPU description
    loaded: bool


class LipSyncPipeline:
    """Loads detector and generator once; each `run` streams one job through two frame passes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.RLock()
        self._detector = None
        self._placement = None
        self._generator = None
        self._checkpoint: Path | None = None
        self._auto_engine: tuple[str, str] | None = None
        self._track_cache = TrackCache(settings.track_cache_dir)

    # -- loading --------------------------------------------------------------------------------
    def load(self) -> None:
        """Pick device, detector and the engine "auto" means; load the generator if that is wav2lip."""
        with self._lock:
            if self._auto_engine is not None:
                return
            from heygem.model.inference import choose_placement

            self._placement = choose_placement(self.settings.device, self.settings.precision)
            self._detector = create_detector(self.settings, str(self._placement.device))
            self._checkpoint = resolve_checkpoint(self.settings)
            engine, reason = choose_engine(self.settings.engine, self._checkpoint)
            if engine == WAV2LIP:
                self._load_generator()
            self._auto_engine = (engine, reason)
            log.info("engine: %s (%s) on %s", engine, reason, self._placement.label)

    def _load_generator(self):
        with self._lock:
            if self._generator is None:
                from heygem.model import load_checkpoint
                from heygem.model.inference import prepare_model

                model = load_checkpoint(self._checkpoint, str(self._placement.device))
                self._generator = prepare_model(model, self._placement)
            return self._generator

    def status(self) -> EngineStatus:
        self.load()
        from heygem.model.inference import device_name

        engine, reason = self._auto_engine
        return EngineStatus(
            engine=engine,
            reason=reason,
            checkpoint=str(self._checkpoint) if self._generator is not None else "",
            detector=self._detector.name,
            device=str(self._placement.device),
            device_name=device_name(self._placement),
            loaded=True,
        )

    def warmup(self) -> float:
        """Render one built-in frame with the default engine: proves the model runs, not just loads."""
        self.load()
        started = time.monotonic()
        frame = np.full((WARMUP_SIDE, WARMUP_SIDE, 3), WARMUP_GREY, np.uint8)
        box = (0, 0, WARMUP_SIDE, WARMUP_SIDE)
        wav = np.zeros(WARMUP_SAMPLES, np.float32)
        renderer = self._renderer(self._auto_engine[0], wav, WARMUP_FPS, 1, SyncOptions())
        rendered = renderer.render([frame], [box], [0])
        if len(rendered) != 1 or rendered[0].shape != frame.shape:
            raise ModelError("warm-up inference returned no frame")
        return time.monotonic() - started

    # -- one job --------------------------------------------------------------------------------
    def run(
        self,
        audio: Path,
        face: Path,
        output: Path,
        options: SyncOptions | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> SyncResult:
        options = options or SyncOptions()
        job = _Job(Path(audio), Path(face), Path(output), options, on_progress or _no_progress)
        # Inputs are checked before any model work, so a bad file fails in a second, not after a
        # checkpoint load; an explicitly requested generator is loaded before the detection pass.
        job.report(0, 1, "probe")
        info = self._probe_face(job.face)
        fps = options.fps if info.is_image else info.fps
        with job.timed("audio"):
            wav = self._load_speech(job.audio)
            n_out = frames_for_audio(len(wav), fps)
        self.load()
        engine = self._engine_for(options)
        if engine == WAV2LIP:
            self._load_generator()
        with job.timed("detect"):
            track = self._face_track(job, info, n_out)
        renderer = self._renderer(engine, wav, fps, n_out, options)
        job.output.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".heygem-", dir=job.output.parent) as scratch:
            missing = self._synthesize(job, info, fps, n_out, track, renderer, Path(scratch))
        return job.result(engine, n_out, fps, missing)

    def _engine_for(self, options: SyncOptions) -> str:
        if options.engine == "auto":
            return self._auto_engine[0]
        engine, reason = choose_engine(options.engine, self._checkpoint)
        return engine

    def _probe_face(self, face: Path) -> MediaInfo:
        info = probe(face)
        if info.duration_s > self.settings.max_duration_s:
            raise LimitExceededError(
                f"{face.name} is {info.duration_s:.0f} s long; the limit is "
                f"{self.settings.max_duration_s:.0f} s"
            )
        return info

    def _load_speech(self, audio_path: Path) -> np.ndarray:
        wav = load_audio(audio_path)
        seconds = len(wav) / SAMPLE_RATE
        if seconds > self.settings.max_duration_s:
            raise LimitExceededError(
                f"{audio_path.name} is {seconds:.0f} s long; the limit is "
                f"{self.settings.max_duration_s:.0f} s"
            )
        return wav

    def _face_track(self, job: _Job, info: MediaInfo, n_out: int) -> FaceTrack:
        options = job.options
        detect_fps = None if info.is_image else info.fps_text
        frames = read_frames(job.face, info, fps=detect_fps, max_side=self.settings.detect_max_side)
        return track_faces(
            frames,
            self._detector,
            info.size,
            pads=options.pads,
            smooth=options.smooth,
            smooth_window=options.smooth_window,
            face_choice=options.face_choice,
            face_point=options.face_point,
            box=options.box,
            batch_size=self.settings.detect_batch_size,
            on_progress=job.report,
            total=info.frame_count,
            cache=self._track_cache,
            video_path=job.face,
            cache_params={"fps": detect_fps or "still", "max_side": self.settings.detect_max_side},
            name=job.face.name,
        )

    def _renderer(self, engine: str, wav: np.ndarray, fps: float, n_out: int, options: SyncOptions):
        if engine == PREVIEW:
            from heygem.preview import PreviewRenderer, mouth_motion

            motion = mouth_motion(wav, fps, n_out)
            return PreviewRenderer(motion, options.blend, watermark=self.settings.preview_watermark)
        from heygem.model.inference import GeneratorRunner

        windows = mel_chunks(melspectrogram(wav), fps, frames=n_out)
        batch_size = options.batch_size or self.settings.batch_size
        placement = self._placement
        if options.precision not in (None, "auto", placement.precision):
            from heygem.model.inference import choose_placement

            placement = choose_placement(str(placement.device), options.precision)
        runner = GeneratorRunner(self._load_generator(), placement, batch_size)
        return Wav2LipRenderer(runner, windows, options.blend)

    def _synthesize(self, job, info, fps, n_out, track, renderer, scratch: Path) -> int:
        """Pass 2: frames by the duration policy -> renderer in batches -> encoder, muxing audio.

        Returns how many output frames had no face and passed through unchanged.
        """
        batch_size = job.options.batch_size or self.settings.batch_size
        source = scheduled_frames(
            job.face, info, n_out, job.options.duration_policy, scratch,
            fps=None if info.is_image else info.fps_text, n_src=len(track) if track.fixed is None else None,
        )
        writer = FrameWriter(job.output, info.width, info.height, fps, job.audio, label=job.options.watermark)
        done = missing = 0
        with writer, job.timed("synthesize"):
            for batch in _batched(source, batch_size):
                indices = range(done, done + len(batch))
                boxes = [track.box_at(src) for src, _ in batch]
                missing += boxes.count(None)
                frames = renderer.render([frame for _, frame in batch], boxes, indices)
                for frame in frames:
                    writer.write(frame)
                done += len(batch)
                job.report(done, n_out, "synthesize")
                # Drop this batch before the next is decoded: otherwise two batches of source
                # frames and one of rendered frames are alive at once.
                del batch, boxes, frames
            job.report(n_out, n_out, "encode")
        job.report(n_out, n_out, "done")
        return missing


def preview_face(settings: Settings, face: Path) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
    """The first frame (RGB) with the face box the engine would use drawn on it, and that box.

    For the UI's "check face" button: one frame, no model, no job.
    """
    import cv2

    info = probe(face)
    frames = read_frames(face, info)
    try:
        frame = next(frames)
    finally:
        frames.close()
    raw = detect_faces([frame], _cached_detector(settings), info.size)
    box = choose_face(raw.faces[0]) if raw.faces and raw.faces[0] else None
    if box is not None:
        box = pad_box(box, SyncOptions().pads, info.size)
        thickness = max(2, info.width // BOX_LINE_DIVISOR)
        cv2.rectangle(frame, box[:2], box[2:], BOX_COLOUR_BGR, thickness)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), box


@functools.lru_cache(maxsize=2)
def _cached_detector(settings: Settings):
    return create_detector(settings, "cpu")


class _Job:
    """One run's inputs, progress reporting and stage timings."""

    def __init__(self, audio, face, output, options, on_progress) -> None:
        self.audio, self.face, self.output, self.options = audio, face, output, options
        self._on_progress = on_progress
        self.started = time.monotonic()
        self.stage_seconds: dict[str, float] = {}

    def report(self, done: int, total: int, stage: str) -> None:
        self._on_progress(done, total, stage)

    @contextlib.contextmanager
    def timed(self, stage: str):
        started = time.monotonic()
        try:
            yield
        finally:
            self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + time.monotonic() - started

    def result(self, engine: str, frames: int, fps: float, missing: int) -> SyncResult:
        seconds = time.monotonic() - self.started
        log.info(
            "wrote %s: %d frames at %.3g fps with %s (%d without a face) in %.1f s",
            self.output, frames, fps, engine, missing, seconds,
        )
        return SyncResult(
            output=self.output, engine=engine, frames=frames, frames_without_face=missing, fps=fps,
            duration_s=frames / fps, seconds=seconds, stage_seconds=dict(self.stage_seconds),
        )


def _batched(items: Iterator, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _no_progress(done: int, total: int, stage: str) -> None:
    pass
