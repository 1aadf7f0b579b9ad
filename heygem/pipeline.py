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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from heygem.settings import Settings

log = logging.getLogger("heygem.pipeline")

STAGES = ("probe", "audio", "detect", "synthesize", "encode", "done")
ProgressCallback = Callable[[int, int, str], None]

Blend = Literal["feather", "rect"]
DurationPolicy = Literal["loop", "pingpong"]
FaceChoice = Literal["largest", "nearest"]


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

    @classmethod
    def from_dict(cls, data: dict | None) -> SyncOptions:
        """Build from JSON-like data (API, job store); raise InputError naming a bad key/value."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        raise NotImplementedError


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
