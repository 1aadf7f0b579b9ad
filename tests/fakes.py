"""A fast stand-in for LipSyncPipeline, for tests whose subject is not the engine.

It honours the pipeline contract (load/status/warmup/run with progress callbacks and typed errors)
and writes a real mp4 with ffmpeg: the input video's frames with the audio muxed in. The real
engine is covered by its own tests and by one end-to-end test per layer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

from heygem.errors import UnsupportedMediaError
from heygem.engine.api import EngineStatus, SyncOptions, SyncResult

# Subprocess tests (kill/recover, drain) set this to make every job take a while.
DELAY_ENV = "HEYGEM_FAKE_DELAY_S"


class FakePipeline:
    """Mux video + audio with ffmpeg; optionally sleep in steps to simulate a long job."""

    def __init__(self, settings, delay_s: float | None = None) -> None:
        self.settings = settings
        self.delay_s = float(os.environ.get(DELAY_ENV, "0")) if delay_s is None else delay_s
        self.loaded = False
        self.runs: list[tuple[Path, Path]] = []
        self._lock = threading.Lock()

    def load(self) -> None:
        self.loaded = True

    def status(self) -> EngineStatus:
        return EngineStatus(
            engine="fake", reason="test double", checkpoint="", detector="none",
            device="cpu", device_name="test", loaded=self.loaded,
        )

    def warmup(self) -> float:
        return 0.0

    def run(self, audio, face, output, options: SyncOptions | None = None, on_progress=None):
        started = time.monotonic()
        audio, face, output = Path(audio), Path(face), Path(output)
        with self._lock:
            self.runs.append((audio, face))
        _require_stream(face, "video")
        _require_stream(audio, "audio")
        steps = 10
        for step in range(steps):
            if on_progress:
                on_progress(step, steps, "synthesize")
            time.sleep(self.delay_s / steps)
        output.parent.mkdir(parents=True, exist_ok=True)
        partial = output.with_name(output.stem + ".partial.mp4")
        subprocess.run(
            ["ffmpeg", "-y", "-loglevel", "error", "-i", str(face), "-i", str(audio),
             "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", "-shortest",
             str(partial)],
            check=True,
        )
        shutil.move(partial, output)
        if on_progress:
            on_progress(steps, steps, "done")
        return SyncResult(
            output=output, engine="fake", frames=0, frames_without_face=0, fps=25.0,
            duration_s=0.0, seconds=time.monotonic() - started,
        )


def _require_stream(path: Path, kind: str) -> None:
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", kind[0], "-show_entries",
         "stream=codec_type", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True,
    )
    if result.returncode != 0 or kind not in result.stdout:
        raise UnsupportedMediaError(f"{path.name}: no {kind} stream that ffmpeg can read")
