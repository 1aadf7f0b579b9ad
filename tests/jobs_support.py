"""Helpers for the job-layer tests: input files in the inputs folder and a second store connection.

Started services, the fake engine and polling are in tests/kit.py."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from heygem.jobs.store import SQLiteJobStore
from heygem.settings import Settings


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


@contextmanager
def open_store(settings: Settings) -> Iterator[SQLiteJobStore]:
    """A test's own connection to the service's database, as a second process would have."""
    job_store = SQLiteJobStore(settings.database_path)
    job_store.open()
    try:
        yield job_store
    finally:
        job_store.close()
