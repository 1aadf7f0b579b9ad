"""Generator throughput and drift per backend and precision, measured interleaved on one CPU.

    python bench/bench_backends.py [--rounds 3] [--seconds 4] [--batch 32]
    python bench/bench_backends.py --s3fd [--rounds 3] [--frames 2]

With --s3fd, the face detector instead: S3FD per 640x360 frame on torch fp32 eager and on
OpenVINO (fp32 and bf16 hints; the dynamic-shape model heygem caches against one reshaped to the
frame size; with and without flushing denormals), through heygem's own backend layer, and the
drift of each from torch fp32 on the astronaut (skimage.data.astronaut, resized): the largest
move of any decoded anchor box in pixels and of any anchor score, since with random weights the
final boxes mean nothing.

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


S3FD_FRAME = (360, 640)  # height, width: the default detection size (detect_max_side 640)


def astronaut_frames(count: int) -> np.ndarray:
    import cv2
    from skimage.data import astronaut

    height, width = S3FD_FRAME
    bgr = cv2.resize(astronaut()[:, :, ::-1], (width, height), interpolation=cv2.INTER_AREA)
    return np.stack([bgr] * count)


def s3fd_configs(weights: Path, cache: Path) -> dict[str, object]:
    """label -> a callable on a network input batch returning the six output pairs as arrays."""
    import openvino as ov

    from heygem.engine.faces.detect import S3FDDetector, s3fd_network
    from heygem.engine.model.backends import OpenVinoOutputs

    net = S3FDDetector(weights, "cpu").torch_module
    configs: dict[str, object] = {}

    def on_torch(batch: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            return [o.numpy() for o in net(torch.from_numpy(batch))]

    configs["torch fp32"] = on_torch
    network = s3fd_network()
    for precision in ("fp32", "bf16"):
        request = BackendRequest("openvino", precision, "fp32", "cpu", weights, (cache,))
        started = time.perf_counter()
        backend = select_backend(net, request, network)
        print(
            f"  openvino/{precision}: chose {backend.label} in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
        configs[f"openvino {precision} dynamic"] = backend.forward
    core = ov.Core()
    (entry,) = [path for path in cache.iterdir() if path.is_dir() and "-s3fd-" in path.name]
    height, width = S3FD_FRAME
    for hint in ("f32", "bf16"):
        static = core.read_model(str(entry / "model.xml"))
        static.reshape([-1, 3, height, width])
        name = "fp32" if hint == "f32" else hint
        configs[f"openvino {name} static"] = OpenVinoOutputs(
            core.compile_model(static, "CPU", {"INFERENCE_PRECISION_HINT": hint})
        )
        denormals = {"INFERENCE_PRECISION_HINT": hint, "CPU_DENORMALS_OPTIMIZATION": "YES"}
        dynamic = core.read_model(str(entry / "model.xml"))
        configs[f"openvino {name} no-denormals"] = OpenVinoOutputs(
            core.compile_model(dynamic, "CPU", denormals)
        )
    return configs


def s3fd_main(args: argparse.Namespace) -> int:
    from heygem.engine.faces.s3fd import anchor_boxes, network_input

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads;"
        f" S3FD at {S3FD_FRAME[1]}x{S3FD_FRAME[0]}"
    )
    with tempfile.TemporaryDirectory(prefix="heygem-bench-s3fd-") as scratch:
        from face_alignment.detection.sfd.net_s3fd import s3fd

        torch.manual_seed(0)
        weights = Path(scratch) / "s3fd.pth"
        torch.save(s3fd().state_dict(), weights)
        configs = s3fd_configs(weights, Path(scratch) / "cache")
        batch = network_input(astronaut_frames(args.frames))
        reference_boxes, reference_scores = anchor_boxes(configs["torch fp32"](batch))
        samples: dict[str, list[tuple[float, float]]] = {label: [] for label in configs}
        for _ in range(args.rounds):
            for label, forward in configs.items():
                forward(batch)  # warm-up
                started, cpu_started = time.perf_counter(), time.process_time()
                forward(batch)
                wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
                samples[label].append((wall / args.frames, cpu / args.frames))
        base = statistics.median(w for w, _ in samples["torch fp32"])
        print(f"\nS3FD per frame, batch {args.frames}, median of {args.rounds} interleaved rounds:")
        print(f"{'configuration':>26} {'s/frame':>8} {'x':>6} {'CPU-s/frame':>12} {'box px':>8} {'score':>8}")
        for label, forward in configs.items():
            wall = statistics.median(w for w, _ in samples[label])
            cpu = statistics.median(c for _, c in samples[label])
            boxes, scores = anchor_boxes(forward(batch))
            moved = np.abs(boxes - reference_boxes).max()
            score = np.abs(scores - reference_scores).max()
            print(f"{label:>26} {wall:8.3f} {base / wall:5.2f}x {cpu:12.3f} {moved:8.3f} {score:8.5f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="timed run per configuration and round")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--s3fd", action="store_true", help="the face detector instead of the generator")
    parser.add_argument("--frames", type=int, default=2, help="--s3fd: frames per forward pass")
    args = parser.parse_args(argv)
    if args.s3fd:
        return s3fd_main(args)
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
