"""Process-wide tuning for CPU jobs, applied by the entry points (app.py, cli.py) before torch loads."""

from __future__ import annotations

import ctypes
import os

# On CPU, torch shares the cores with the ffmpeg decoder and encoder. OpenMP threads that spin while
# they wait take the core ffmpeg needs; passive waiting gives it back (paired runs at 480x480 were
# noisy: about 0.20 -> 0.16 CPU-s per frame on average). Read when torch loads, so set it first.
OMP_WAIT_POLICY = "PASSIVE"
# glibc raises its mmap threshold each time a large block is freed; frame-sized buffers then come
# from the heap, which fragments and makes peak memory creep up with the video's length (measured:
# 892 -> 1110 MiB from 8.7 s to 60 s at 480x480; with a fixed threshold 847 -> 856 MiB), because
# a fixed threshold keeps frame buffers mmapped and returned to the system on free.
M_MMAP_THRESHOLD = -3  # mallopt() parameter number in glibc's malloc.h
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value, now fixed


def tune_process() -> None:
    """Process-wide settings for CPU jobs; an operator's own environment values win."""
    os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass
