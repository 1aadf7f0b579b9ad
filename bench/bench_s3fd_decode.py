"""S3FD's decoding after the network: face_alignment's per-candidate Python loop against heygem's
vectorised decoder (detect.s3fd_candidates + greedy_nms), on this machine's CPU.

    python bench/bench_s3fd_decode.py [--frames 8] [--repeats 5]

The network's outputs are synthesised for 640x360 frames (the default detection size) with a
chosen number of confident anchors per frame, from a face-like handful to a crowded frame, so
only the decoding is timed. Prints milliseconds per frame for both, and whether they agree.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

WIDTH, HEIGHT = 640, 360
LEVELS = 6
CANDIDATE_COUNTS = (20, 200, 2000)  # anchors per frame above the 0.05 candidate floor
THRESHOLD = 0.5


def network_outputs(frames: int, confident: int, seed: int = 0) -> list:
    """Six (logits, offsets) pairs with `confident` high-scoring anchors per frame, spread over the
    first three levels where most of S3FD's anchors are."""
    import torch

    rng = np.random.default_rng(seed)
    outputs = []
    for level in range(LEVELS):
        stride = 2 ** (level + 2)
        h, w = -(-HEIGHT // stride), -(-WIDTH // stride)
        logits = np.zeros((frames, 2, h, w), np.float32)
        logits[:, 1] = -8.0
        if level < 3:
            for frame in range(frames):
                flat = rng.choice(h * w, size=min(h * w, confident // 3), replace=False)
                logits[frame, 1].flat[flat] = rng.normal(2.0, 1.0, flat.size)
        offsets = rng.normal(0, 0.5, (frames, 4, h, w)).astype(np.float32)
        outputs += [torch.from_numpy(logits), torch.from_numpy(offsets)]
    return outputs


def face_alignment_decode(outputs: list) -> list[np.ndarray]:
    import torch
    from face_alignment.detection.sfd.bbox import nms
    from face_alignment.detection.sfd.detect import get_predictions

    probabilities = [torch.softmax(o, dim=1) if i % 2 == 0 else o for i, o in enumerate(outputs)]
    candidates = get_predictions([o.numpy() for o in probabilities], len(outputs[0]))
    kept = []
    for rows in candidates:
        rows = rows[nms(rows, 0.3)] if len(rows) else rows
        kept.append(np.array([r[:5] for r in rows if r[4] > THRESHOLD]).reshape(-1, 5))
    return kept


def heygem_decode(outputs: list) -> list[np.ndarray]:
    from heygem.engine.faces.detect import greedy_nms, s3fd_candidates

    table = s3fd_candidates(outputs, THRESHOLD).numpy()
    return [greedy_nms(table[i]) for i in range(len(table))]


def best_ms_per_frame(decode, outputs: list, repeats: int) -> tuple[float, list[np.ndarray]]:
    times, result = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        result = decode(outputs)
        times.append(time.perf_counter() - started)
    return min(times) * 1000 / len(outputs[0]), result


def agree(ours: list[np.ndarray], theirs: list[np.ndarray]) -> str:
    same = all(a.shape == b.shape and np.allclose(a, b, rtol=1e-4, atol=1e-3) for a, b in zip(ours, theirs))
    return "same boxes" if same else "differ (more candidates than the per-frame table keeps)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8, help="frames per batch")
    parser.add_argument("--repeats", type=int, default=5, help="best of this many runs")
    args = parser.parse_args(argv)
    print(f"S3FD decoding, {WIDTH}x{HEIGHT}, {args.frames} frames per batch, CPU, best of {args.repeats}")
    print("| confident anchors per frame | face_alignment ms/frame | heygem ms/frame | result |")
    print("|---|---|---|---|")
    for count in CANDIDATE_COUNTS:
        outputs = network_outputs(args.frames, count)
        theirs_ms, theirs = best_ms_per_frame(face_alignment_decode, outputs, args.repeats)
        ours_ms, ours = best_ms_per_frame(heygem_decode, outputs, args.repeats)
        print(f"| {count} | {theirs_ms:.1f} | {ours_ms:.1f} | {agree(ours, theirs)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
