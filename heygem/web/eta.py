"""How long a queued or running job has left, from its speech length and the recent render speed.

Honest by construction: no estimate without data. The speed is frames written per second of
engine run time over the tenant's recent finished jobs (the job records carry both); a job's
frame count is its speech length times its output frame rate. Plain data: no gradio import.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from heygem.engine.api import option_default
from heygem.engine.media import probe
from heygem.errors import HeygemError
from heygem.jobs.records import Job, JobStatus

log = logging.getLogger(__name__)

RECENT_JOBS = 20  # finished jobs whose speed is averaged
MIN_RUN_S = 0.05  # shorter runs say nothing about the speed


def recent_fps(jobs: Iterable[Job]) -> float | None:
    """Frames per second of engine time over the finished jobs given; None without any."""
    frames = seconds = 0.0
    for job in jobs:
        if (
            job.status == JobStatus.SUCCEEDED
            and job.frames
            and job.run_seconds
            and job.run_seconds > MIN_RUN_S
        ):
            frames += job.frames
            seconds += job.run_seconds
    return frames / seconds if seconds > 0 else None


def speech_seconds(job: Job) -> float | None:
    """The length of a job's speech file when it is a local file; None for text jobs (the speech
    does not exist yet) and remote references (not fetched yet)."""
    if not job.audio:
        return None
    path = Path(job.audio)
    if not path.is_file():
        return None
    try:
        return probe.probe(path, require_video=False, verify=False).duration_s
    except HeygemError as exc:
        log.debug("job %s: no speech length for the ETA: %s", job.id, exc)
        return None


def render_seconds(job: Job, speech_s: float | None, fps: float | None) -> float | None:
    """Seconds of rendering a job still needs; None when the speech length or speed is unknown."""
    if speech_s is None or not fps:
        return None
    frame_rate = float(job.options.get("fps") or option_default("fps") or 0)
    remaining = speech_s * frame_rate * (1.0 - min(max(job.progress, 0.0), 1.0))
    return remaining / fps
