"""Helpers for the job-layer tests: input files in the inputs folder and services with fakes."""

from __future__ import annotations

import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from heygem.jobs.service import JobService
from heygem.jobs.store import SQLiteJobStore
from heygem.settings import Settings
from tests.fakes import FakePipeline

WAIT_S = 30.0  # generous bound for a fake job to finish on a busy 2-core machine


@dataclass(frozen=True)
class Inputs:
    audio: Path
    video: Path
    corrupt: Path  # named like a video, but random bytes


def place_inputs(settings: Settings, speech_wav: Path, face_video: Path) -> Inputs:
    """Copy the session fixtures into this test's inputs folder (the only allowed root)."""
    folder = settings.inputs_dir
    folder.mkdir(parents=True, exist_ok=True)
    audio = Path(shutil.copy(speech_wav, folder / "speech.wav"))
    video = Path(shutil.copy(face_video, folder / "face.mp4"))
    corrupt = folder / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x01not a video" * 512)
    return Inputs(audio, video, corrupt)


class Pipelines:
    """A pipeline factory that keeps the FakePipelines it built; optionally gates load()."""

    def __init__(self, delay_s: float = 0.0, gate: threading.Event | None = None) -> None:
        self.delay_s = delay_s
        self.gate = gate
        self.built: list[FakePipeline] = []

    def __call__(self, settings: Settings) -> FakePipeline:
        pipeline = _GatedFake(settings, self.delay_s, self.gate)
        self.built.append(pipeline)
        return pipeline

    @property
    def runs(self) -> list[tuple[Path, Path]]:
        return [run for pipeline in self.built for run in pipeline.runs]


class _GatedFake(FakePipeline):
    def __init__(self, settings, delay_s: float, gate: threading.Event | None) -> None:
        super().__init__(settings, delay_s=delay_s)
        self.gate = gate

    def load(self) -> None:
        # Holding load() keeps the worker from claiming, so tests can fill the queue exactly.
        if self.gate is not None:
            self.gate.wait()
        super().load()


@contextmanager
def running_service(settings: Settings, pipelines: Pipelines) -> Iterator[JobService]:
    service = JobService(settings, pipeline_factory=pipelines)
    service.start()
    try:
        yield service
    finally:
        if pipelines.gate is not None:
            pipelines.gate.set()
        service.stop(drain_seconds=5)


POLL_S = 0.05


def wait_until(predicate, timeout: float = WAIT_S, what: str = "condition"):
    """The first truthy value of `predicate()`, polled until `timeout`; AssertionError after."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(POLL_S)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def open_store(settings: Settings) -> Iterator[SQLiteJobStore]:
    """A test's own connection to the service's database, as a second process would have."""
    job_store = SQLiteJobStore(settings.database_path)
    job_store.open()
    try:
        yield job_store
    finally:
        job_store.close()
