"""Is the same video encoded to the same bytes every time? libx264 settings, fed like the pipeline feeds them.

    python bench/bench_repeatability.py [--runs 12] [--frames 200] [--side 480] [--video job-output.mp4]

The pipeline hands frames to ffmpeg in bursts (one generator batch at a time), and between two
bursts the generator keeps every core busy. Each configuration below encodes the same frames
`--runs` times through a pipe, with the cores kept busy for a random time after every burst, and
the script prints how many different video streams came out, then the encoder's CPU time per frame
and the file size when fed at full speed (median of three interleaved rounds). On the 2-core test
machine one paced run in five to ten differs with heygem's current arguments, so use 12 runs or
more; `--video` takes a real job's output, whose frames show it more often than the synthetic ones.
The generator itself is repeatable (tests/test_backends.py); docs/backends.md has the findings.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pipeline import motion_frames  # noqa: E402

from heygem.engine.media.encode import DEFAULT_CRF, LIBX264, X264_PRESET, video_codec_args  # noqa: E402

BURST = 16  # frames per generator batch (the OpenVINO default)
MAX_PAUSE_S = 0.3  # longest pause after a burst: a batch of 16 at about 50 frames/s
FPS = "25"
TIMING_ROUNDS = 3
MOUTH_SEED = 14
BUSY_SIDE = 512  # a matrix product of this side keeps both cores busy for ~10 ms
CONFIGS = {
    "heygem's libx264 arguments": [],
    "+ sync-lookahead=0": ["-x264-params", "sync-lookahead=0"],
    "+ sliced-threads=1": ["-x264-params", "sliced-threads=1"],
    "+ -threads 1": ["-threads", "1"],
}


def speaking_frames(side: int, count: int) -> list[bytes]:
    """The bench's moving presenter, with a mouth region that changes in every frame as a generated
    mouth does (the looped motion alone is too regular to show the effect)."""
    rng = np.random.default_rng(MOUTH_SEED)
    cycle = itertools.cycle(motion_frames(side * 3 // 4, (side, side)))
    mouth = slice(side * 5 // 8, side * 3 // 4), slice(side * 3 // 8, side * 5 // 8)
    frames = []
    for frame in itertools.islice(cycle, count):
        speaking = frame.copy()
        patch = speaking[mouth].astype(np.int16) + rng.integers(-24, 25, speaking[mouth].shape)
        speaking[mouth] = np.clip(patch, 0, 255).astype(np.uint8)
        frames.append(speaking.tobytes())
    return frames


def encode_command(size: tuple[int, int], extra: list[str], output: str) -> list[str]:
    width, height = size
    return [
        "ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{width}x{height}",
        "-framerate", FPS, "-i", "pipe:0",
        *video_codec_args(LIBX264, X264_PRESET, DEFAULT_CRF), *extra, "-pix_fmt", "yuv420p",
        "-f", "h264", output,
    ]  # fmt: skip


def keep_cores_busy(seconds: float) -> None:
    """Stand in for the generator between two batches: multi-threaded arithmetic on every core."""
    matrix = np.ones((BUSY_SIDE, BUSY_SIDE), np.float32)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        matrix @ matrix


def paced_encode(
    frames: list[bytes], size: tuple[int, int], extra: list[str], pause_s: float, seed: int
) -> bytes:
    """The H.264 stream of `frames` written in bursts of BURST with random busy pauses up to `pause_s`."""
    pauses = random.Random(seed)
    proc = subprocess.Popen(
        encode_command(size, extra, "pipe:1"), stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None
    stdout, chunks = proc.stdout, []
    reader = threading.Thread(target=lambda: chunks.append(stdout.read()))
    reader.start()
    for index, frame in enumerate(frames):
        proc.stdin.write(frame)
        if pause_s and index % BURST == BURST - 1:
            proc.stdin.flush()
            keep_cores_busy(pause_s * pauses.random())
    proc.stdin.close()
    reader.join()
    if proc.wait() != 0:
        raise RuntimeError(f"ffmpeg failed with {' '.join(extra) or 'no extra arguments'}")
    return chunks[0]


def timed_encode(
    frames: list[bytes], size: tuple[int, int], extra: list[str], output: Path
) -> tuple[float, int]:
    """(encoder CPU seconds, bytes) for the frames at full speed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(encode_command(size, extra, str(output)), stdin=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(b"".join(frames))
    proc.stdin.close()
    if proc.wait() != 0:
        raise RuntimeError("ffmpeg failed")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return cpu, output.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=12, help="paced encodes per configuration")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--side", type=int, default=480, help="square frame side in pixels")
    parser.add_argument("--video", type=Path, help="encode this video's frames instead (e.g. a job's output)")
    args = parser.parse_args(argv)
    if args.video:
        from tests import media

        decoded = media.read_frames(args.video)[: args.frames]
        size = (decoded.shape[2], decoded.shape[1])
        frames = [frame.tobytes() for frame in decoded]
    else:
        size = (args.side, args.side)
        frames = speaking_frames(args.side, args.frames)
    encoder = f"libx264 {X264_PRESET} crf {DEFAULT_CRF}"
    print(f"{len(frames)} frames {size[0]}x{size[1]}, {encoder}, {os.cpu_count()} CPUs")

    streams: dict[str, list[str]] = {name: [] for name in CONFIGS}
    for run in range(args.runs):  # interleaved, so every configuration sees the same machine load
        for name, extra in CONFIGS.items():
            stream = paced_encode(frames, size, extra, MAX_PAUSE_S, seed=run)
            streams[name].append(hashlib.sha256(stream).hexdigest())
    costs: dict[str, list[tuple[float, int]]] = {name: [] for name in CONFIGS}
    with tempfile.TemporaryDirectory(prefix="heygem-bench-repeat-") as scratch:
        for _ in range(TIMING_ROUNDS):
            for name, extra in CONFIGS.items():
                costs[name].append(timed_encode(frames, size, extra, Path(scratch) / "out.h264"))

    print(f"\n| libx264 arguments | different streams in {args.runs} paced runs | CPU ms/frame | bytes |")
    print("|---|---|---|---|")
    for name in CONFIGS:
        cpu = statistics.median(cost[0] for cost in costs[name])
        print(
            f"| {name} | {len(set(streams[name]))} | {1000 * cpu / len(frames):.1f} | {costs[name][0][1]} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
