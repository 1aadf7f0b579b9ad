"""Generator throughput and drift per backend and precision, measured interleaved on one CPU.

    python bench/bench_backends.py [--rounds 3] [--seconds 4] [--batch 32]

Every configuration runs through heygem's own backend layer (select_backend + GeneratorRunner),
on random weights saved in the official format and read by the real loader. Timed runs are
interleaved (round 1 of every configuration, then round 2, ...) so that load from other work on
the machine spreads over all of them; the median round is printed.

Drift is the max abs difference from torch fp32 eager in 0-255 grey levels over real face crops
(the astronaut test video, 50 frames), for two weight sets: "random init" (fresh BatchNorm
statistics shrink every activation, so errors look small) and "calibrated" (BatchNorm statistics
set from random batches, so activations have the unit scale of trained weights).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_model import calibrate  # noqa: E402

from heygem.engine.blend import crop_face  # noqa: E402
from heygem.engine.model import load_checkpoint  # noqa: E402
from heygem.engine.model.backends import Backend, BackendRequest, select_backend  # noqa: E402
from heygem.engine.model.inference import GeneratorRunner, choose_placement  # noqa: E402
from heygem.engine.model.wav2lip import MEL_BINS, MEL_STEPS, Wav2Lip  # noqa: E402
from tests import media  # noqa: E402

CONFIGS = (("torch", "fp32"), ("torch", "bf16"), ("openvino", "fp32"), ("openvino", "bf16"))
FACE_BOX = (84, 32, 140, 96)  # x1, y1, x2, y2 of the astronaut's face in the 256 px test frames
DRIFT_FRAMES = 50
COLUMNS = (9, 9, 16, 9, 6, 13, 6)  # widths of the throughput table


def save_weights(model: torch.nn.Module, path: Path) -> Path:
    state = {"module." + name: tensor for name, tensor in model.state_dict().items()}
    torch.save({"state_dict": state, "optimizer": None, "global_step": 0, "global_epoch": 0}, path)
    return path


def backends_for(checkpoint: Path, cache: Path) -> dict[tuple[str, str], tuple[torch.nn.Module, Backend]]:
    model = load_checkpoint(checkpoint, "cpu")
    chosen = {}
    for name, precision in CONFIGS:
        request = BackendRequest(name, precision, precision, "cpu", checkpoint, (cache,))
        started = time.perf_counter()
        backend = select_backend(model, request)
        print(
            f"  {name}/{precision}: chose {backend.label} in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
        chosen[(name, precision)] = (model, backend)
    return chosen


def face_batch(count: int) -> tuple[np.ndarray, np.ndarray]:
    frames = media.moving_frames(count)
    crops = np.stack([crop_face(frame, FACE_BOX) for frame in frames])
    rng = np.random.default_rng(0)
    mels = (rng.normal(-1.0, 1.5, (count, MEL_BINS, MEL_STEPS))).astype(np.float32)
    return mels, crops


def runner(model: torch.nn.Module, backend: Backend, batch: int) -> GeneratorRunner:
    return GeneratorRunner(model, choose_placement("cpu", backend.precision), batch, backend)


def drift_row(chosen, label: str) -> None:
    mels, crops = face_batch(DRIFT_FRAMES)
    model, _ = chosen[("torch", "fp32")]
    reference = runner(model, chosen[("torch", "fp32")][1], DRIFT_FRAMES).infer(mels, crops).astype(np.int16)
    cells = []
    for key in CONFIGS:
        model, backend = chosen[key]
        out = runner(model, backend, DRIFT_FRAMES).infer(mels, crops).astype(np.int16)
        cells.append(f"{np.abs(out - reference).max():>14d}")
    print(f"{label:>12} " + " ".join(cells), flush=True)


def timed(model: torch.nn.Module, backend: Backend, batch: int, seconds: float) -> tuple[float, float]:
    """(frames per wall second, frames per CPU second of this process): the second stays
    meaningful when other work on a shared machine steals the cores."""
    mels, crops = face_batch(batch)
    run = runner(model, backend, batch)
    run.infer(mels, crops)  # warm-up: kernel selection, first allocation
    frames, started, cpu_started = 0, time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - started) < seconds or frames == 0:
        run.infer(mels, crops)
        frames += batch
    return frames / elapsed, frames / (time.process_time() - cpu_started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="timed run per configuration and round")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    with tempfile.TemporaryDirectory(prefix="heygem-bench-backends-") as scratch:
        folder = Path(scratch)
        torch.manual_seed(0)
        fresh = Wav2Lip().eval()
        print("random init weights:")
        chosen = backends_for(save_weights(fresh, folder / "random.pth"), folder / "cache")
        print("calibrated weights:")
        calibrated = backends_for(save_weights(calibrate(fresh), folder / "calibrated.pth"), folder / "cache")

        print(f"\ngenerator frames/s, batch {args.batch}, median of {args.rounds} interleaved rounds:")
        samples: dict[tuple[str, str], list[tuple[float, float]]] = {key: [] for key in CONFIGS}
        for _ in range(args.rounds):
            for key in CONFIGS:
                model, backend = chosen[key]
                samples[key].append(timed(model, backend, args.batch, args.seconds))
        base = statistics.median(wall for wall, _ in samples[("torch", "fp32")])
        cpu_base = statistics.median(cpu for _, cpu in samples[("torch", "fp32")])
        heads = ("backend", "precision", "served as", "frames/s", "x", "frames/CPU-s", "x")
        print(" ".join(f"{head:>{width}}" for head, width in zip(heads, COLUMNS)))
        for key in CONFIGS:
            wall = statistics.median(w for w, _ in samples[key])
            cpu = statistics.median(c for _, c in samples[key])
            served = f"{chosen[key][1].name} {chosen[key][1].precision}"
            cells = (
                *key,
                served,
                f"{wall:.1f}",
                f"{wall / base:.2f}x",
                f"{cpu:.2f}",
                f"{cpu / cpu_base:.2f}x",
            )
            print(" ".join(f"{cell:>{width}}" for cell, width in zip(cells, COLUMNS)))

        print(f"\nmax drift from torch fp32 eager, grey levels (0-255), {DRIFT_FRAMES} face crops:")
        print(f"{'weights':>12} " + " ".join(f"{n + ' ' + p:>14}" for n, p in CONFIGS))
        drift_row(chosen, "random init")
        drift_row(calibrated, "calibrated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
