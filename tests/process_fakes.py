"""Test engines that misbehave inside the supervised engine process (heygem.jobs.isolation).

They are module-level classes so that the spawned engine process can import them: a test passes
one as the JobService's engine factory with worker_isolation="process". Each writes what it did
to files in the data folder, the only channel between the engine process and the test.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.kit import FakePipeline

KILLED_ONCE = "killed-once"  # exists once KillOnceEngine has killed its process
PIDS = "engine-pids"  # one line per run: the pid of the process that ran it
HOG_CHUNK = 64 * 1024 * 1024
STUCK_S = 600.0


def _note_pid(settings) -> None:
    with open(Path(settings.data_dir) / PIDS, "a", encoding="utf-8") as out:
        out.write(f"{os.getpid()}\n")


def _die(on_progress) -> None:
    if on_progress:
        on_progress(0, 10, "detect")
    os.kill(os.getpid(), signal.SIGKILL)


class KillOnceEngine(FakePipeline):
    """The first run kills its own process (as the OOM killer would); later runs succeed."""

    def run(self, audio, face, output, options=None, on_progress=None):
        _note_pid(self.settings)
        marker = Path(self.settings.data_dir) / KILLED_ONCE
        if not marker.exists():
            marker.write_text("killed")
            _die(on_progress)
        return super().run(audio, face, output, options, on_progress)


class AlwaysKilledEngine(FakePipeline):
    """Every run kills its own process."""

    def run(self, audio, face, output, options=None, on_progress=None):
        _note_pid(self.settings)
        _die(on_progress)


class MemoryHogEngine(FakePipeline):
    """Every run allocates until the process's memory limit stops it."""

    def run(self, audio, face, output, options=None, on_progress=None):
        _note_pid(self.settings)
        hoard = []
        while True:
            hoard.append(bytearray(HOG_CHUNK))
            if on_progress:
                on_progress(len(hoard), 1000, "detect")


class StuckEngine(FakePipeline):
    """Reports "detect" once, then works without reporting progress (a long detection pass)."""

    def run(self, audio, face, output, options=None, on_progress=None):
        _note_pid(self.settings)
        if on_progress:
            on_progress(0, 100, "detect")
        time.sleep(STUCK_S)
        return super().run(audio, face, output, options, on_progress)


def engine_pids(settings) -> list[int]:
    path = Path(settings.data_dir) / PIDS
    return [int(line) for line in path.read_text().split()] if path.exists() else []
