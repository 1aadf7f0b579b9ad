"""Generator-only CPU throughput (frames/s) in fp32 and bf16, and the bf16 output error.

    python bench/bench_model.py [--batches 1 8 32] [--seconds 6] [--threads N]

Random weights (no download). Freshly initialised BatchNorm statistics shrink every activation,
so the output sits near 0.5 and precision errors look smaller than with trained weights; the
"calibrated" row first sets each BatchNorm's running statistics from a few random batches, so
activations have the unit scale a trained network has, which is the more honest bf16 estimate.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from heygem.engine.model.wav2lip import FACE_SIZE, MEL_BINS, MEL_STEPS, Wav2Lip  # noqa: E402

PRECISIONS = ("fp32", "bf16")
CALIBRATION_BATCHES = 4
CALIBRATION_BATCH_SIZE = 8
DIFF_BATCH_SIZE = 8


def inputs(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    mel = torch.randn(batch, 1, MEL_BINS, MEL_STEPS, generator=gen) * 1.5 - 1.0  # roughly mel-like
    face = torch.rand(batch, 6, FACE_SIZE, FACE_SIZE, generator=gen)
    face[:, :3, FACE_SIZE // 2 :] = 0.0  # the lower half of the first three channels is masked
    return mel, face


def precision_context(precision: str):
    if precision == "bf16":
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def run(model: Wav2Lip, mel: torch.Tensor, face: torch.Tensor, precision: str) -> torch.Tensor:
    with torch.inference_mode(), precision_context(precision):
        return model(mel, face).float()


def throughput(model: Wav2Lip, batch: int, precision: str, seconds: float) -> tuple[float, float]:
    """(frames per wall second, frames per CPU second of this process).

    The second figure stays meaningful on a shared machine where other work steals the cores.
    """
    mel, face = inputs(batch)
    run(model, mel, face, precision)  # warm-up: allocator, oneDNN kernel selection
    frames, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while True:
        run(model, mel, face, precision)
        frames += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return frames / elapsed, frames / (time.process_time() - cpu_start)


def calibrate(model: Wav2Lip) -> Wav2Lip:
    """Give BatchNorm the running statistics of real activations (cumulative average)."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        for seed in range(CALIBRATION_BATCHES):
            model(*inputs(CALIBRATION_BATCH_SIZE, seed=100 + seed))
    return model.eval()


def bf16_error(model: Wav2Lip) -> tuple[float, float, float]:
    mel, face = inputs(DIFF_BATCH_SIZE, seed=7)
    reference = run(model, mel, face, "fp32")
    reduced = run(model, mel, face, "bf16")
    diff = (reduced - reference).abs()
    return diff.max().item(), diff.mean().item(), reference.std().item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=6.0, help="timed run per cell")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch default")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = Wav2Lip().eval()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters"
    )
    print(f"{'batch':>5} {'precision':>9} {'frames/s':>9} {'frames/CPU-s':>13} {'ms/frame':>9}")
    for batch in args.batches:
        for precision in PRECISIONS:
            wall, cpu = throughput(model, batch, precision, args.seconds)
            print(f"{batch:>5} {precision:>9} {wall:>9.2f} {cpu:>13.2f} {1000 / wall:>9.0f}", flush=True)

    print("\nbf16 vs fp32 on the same input (output in [0, 1]):")
    print(f"{'weights':>12} {'max |diff|':>11} {'mean |diff|':>12} {'output std':>11}")
    for label in ("random init", "calibrated"):
        if label == "calibrated":
            calibrate(model)  # in place: after the random-init row has been measured
        worst, mean, spread = bf16_error(model)
        print(f"{label:>12} {worst:>11.5f} {mean:>12.6f} {spread:>11.5f}")
        print(f"{'':>12} = {worst * 255:.2f} of 255 grey levels at worst")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
