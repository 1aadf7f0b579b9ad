"""Peak memory does not grow with video length: a 60 s job peaks where a 5 s job does.

Each job runs in its own process (tests/memory_probe.py), which reports its ru_maxrss. The inputs
are the 256 px fixture looped to 5 s and 60 s with speech looped to the same lengths. The preview
engine and a fixed box keep the 60 s job within the suite's time budget: the streaming path (decode,
schedule, render in batches, encoder queue, mux) is the one every engine shares; the detection pass
keeps only boxes and is exercised by test_pipeline.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests import e2e_media as em

pytestmark = pytest.mark.slow  # a subprocess running the real engine twice

PROBE = Path(__file__).resolve().parent / "memory_probe.py"
SHORT_S, LONG_S = 5.0, 60.0
GROWTH = 1.25  # allowed ratio of the long job's peak to the short one's ...
SLACK_MIB = 30.0  # ... plus this much
PROBE_TIMEOUT_S = 300
BATCH = 8


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, face_video, speech_wav) -> dict[float, tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("memory")
    return {
        seconds: (
            em.loop_video(face_video, folder / f"face-{seconds:g}s.mp4", seconds),
            em.loop_audio(speech_wav, folder / f"speech-{seconds:g}s.wav", seconds),
        )
        for seconds in (SHORT_S, LONG_S)
    }


def probe_peak(video: Path, audio: Path, folder: Path) -> dict:
    folder.mkdir()
    cmd = [
        sys.executable,
        str(PROBE),
        "--audio",
        str(audio),
        "--video",
        str(video),
        "--output",
        str(folder / "out.mp4"),
        "--data-dir",
        str(folder),
        "--engine",
        "preview",
        "--batch-size",
        str(BATCH),
        "--box",
        *map(str, em.FACE_BOX_256),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_peak_memory_does_not_grow_with_video_length(inputs, tmp_path):
    short = probe_peak(*inputs[SHORT_S], tmp_path / "short")
    long = probe_peak(*inputs[LONG_S], tmp_path / "long")
    assert (short["frames"], long["frames"]) == (125, 1500)
    assert long["peak_rss_mib"] <= short["peak_rss_mib"] * GROWTH + SLACK_MIB, (short, long)
