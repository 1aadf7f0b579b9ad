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

import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Literal

from heygem.errors import InputError
from heygem.settings import ENGINES, PRECISIONS, Settings

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
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def load(self) -> None:
        raise NotImplementedError

    def status(self) -> EngineStatus:
        raise NotImplementedError

    def warmup(self) -> float:
        raise NotImplementedError

    def run(
        self,
        audio: Path,
        face: Path,
        output: Path,
        options: SyncOptions | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> SyncResult:
        raise NotImplementedError
