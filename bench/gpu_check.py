"""What an operator runs on a GPU host to see whether heygem's GPU path works and how fast it is.

    python bench/gpu_check.py [--checkpoint PATH] [--seconds 10] [--batch-size N] [--work-dir DIR]

Prints, as a Markdown table to paste into an issue: the GPU and the torch build, the generator's
frames per second alone (fp16, the default on CUDA, and fp32), the fp16-vs-fp32 drift in grey
levels, the end-to-end frames per second of a whole 720p job with a fixed face box, whether the
output was encoded with NVENC, and the GPU memory peak. Inputs are generated here with ffmpeg; the
generator is the given checkpoint or a random-initialised one (the same network and cost).

On a machine where torch sees no usable GPU it says so in one line and exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

NO_GPU_STATUS = 1
TIMED_BATCHES = 8
DRIFT_FACES = 64
E2E_SIZE = (1280, 720)
E2E_FPS = 25
FACE_BOX = (200, 520, 480, 800)  # top, bottom, left, right: a fixed box, so no detector is needed
NVENC = "nvenc"


def no_gpu_reason() -> str | None:
    """One line saying why there is no GPU to check, or None when there is one torch can drive."""
    import torch

    from heygem.engine.model.devices import capability_problem

    if not torch.cuda.is_available():
        return (
            f"gpu_check: no CUDA GPU visible to torch {torch.__version__} "
            f"(built for CUDA {torch.version.cuda or 'none'}); run this on a GPU host"
        )
    problem = capability_problem(torch.cuda.current_device())
    return f"gpu_check: {problem}" if problem else None


def random_inputs(count: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (count, 96, 96, 3), np.uint8)
    mels = rng.standard_normal((count, 80, 16)).astype(np.float32)
    return mels, faces


def generator_fps(model, precision: str, batch: int) -> tuple[float, np.ndarray]:
    """Faces per second over TIMED_BATCHES full batches after one warm-up, and the first outputs."""
    import torch

    from heygem.engine.model.inference import GeneratorRunner, Placement

    runner = GeneratorRunner(
        model, Placement(torch.device("cuda", torch.cuda.current_device()), precision), batch
    )
    mels, faces = random_inputs(batch * TIMED_BATCHES)
    first = runner.infer(mels[:DRIFT_FACES], faces[:DRIFT_FACES])  # also the warm-up (padded to batch)
    torch.cuda.synchronize()
    started = time.perf_counter()
    runner.infer(mels, faces)
    torch.cuda.synchronize()
    return len(faces) / (time.perf_counter() - started), first


def make_inputs(work: Path, seconds: float) -> tuple[Path, Path]:
    video, audio = work / "face.mp4", work / "speech.wav"
    size = f"{E2E_SIZE[0]}x{E2E_SIZE[1]}"
    ffmpeg = ["ffmpeg", "-y", "-nostdin", "-loglevel", "error"]
    subprocess.run(
        [*ffmpeg, "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={E2E_FPS}", "-t", str(seconds),
         "-pix_fmt", "yuv420p", str(video)],
        check=True,
    )  # fmt: skip
    subprocess.run(
        [
            *ffmpeg,
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=220:sample_rate=16000",
            "-t",
            str(seconds),
            str(audio),
        ],
        check=True,
    )
    return video, audio


def output_encoder(path: Path) -> str:
    """The encoder ffmpeg recorded in the video stream's tags (e.g. "Lavc61.19 h264_nvenc")."""
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream_tags=encoder",
         "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    streams = json.loads(result.stdout).get("streams") or [{}]
    return str(streams[0].get("tags", {}).get("encoder", "unknown"))


def end_to_end(checkpoint: Path, work: Path, seconds: float, batch: int) -> tuple[float, str]:
    from heygem.engine.api import SyncOptions
    from heygem.engine.pipeline import LipSyncPipeline
    from heygem.settings import Settings

    video, audio = make_inputs(work, seconds)
    settings = Settings.load(environ={}, argv=[]).replace(
        data_dir=work / "data", checkpoint=checkpoint, device="cuda", engine="wav2lip", batch_size=batch
    )
    pipeline = LipSyncPipeline(settings)
    pipeline.load()
    output = work / "out.mp4"
    started = time.perf_counter()
    result = pipeline.run(audio, video, output, SyncOptions(engine="wav2lip", box=FACE_BOX))
    return result.frames / (time.perf_counter() - started), output_encoder(output)


def report(rows: list[tuple[str, str]]) -> str:
    lines = ["heygem gpu_check", "", "| measure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def check(args: argparse.Namespace, work: Path) -> list[tuple[str, str]]:
    import torch

    from heygem.engine.model.checkpoint import load_checkpoint
    from heygem.engine.model.inference import Placement, auto_batch_size, prepare_model

    sys.path.insert(0, str(PROJECT / "bench"))
    from bench_pipeline import random_checkpoint

    index = torch.cuda.current_device()
    placement = Placement(torch.device("cuda", index), "fp16")
    batch = auto_batch_size(placement, args.batch_size)
    checkpoint = args.checkpoint or random_checkpoint(work / "random_wav2lip.pth")
    model = prepare_model(load_checkpoint(checkpoint, f"cuda:{index}"), placement)
    torch.cuda.reset_peak_memory_stats()
    fp16_fps, fp16_faces = generator_fps(model, "fp16", batch)
    fp32_fps, fp32_faces = generator_fps(model, "fp32", batch)
    drift = int(np.abs(fp16_faces.astype(np.int16) - fp32_faces.astype(np.int16)).max())
    e2e_fps, encoder = end_to_end(checkpoint, work, args.seconds, batch)
    major, minor = torch.cuda.get_device_capability(index)
    return [
        ("GPU", f"{torch.cuda.get_device_name(index)} (compute capability {major}.{minor})"),
        ("torch", f"{torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"),
        ("checkpoint", str(args.checkpoint) if args.checkpoint else "random-initialised (same cost)"),
        ("batch size", str(batch)),
        ("generator fps, fp16", f"{fp16_fps:.0f}"),
        ("generator fps, fp32", f"{fp32_fps:.0f}"),
        ("fp16 vs fp32, max abs (grey levels)", str(drift)),
        (f"end-to-end fps, {E2E_SIZE[1]}p, {args.seconds:g} s, fixed box", f"{e2e_fps:.1f}"),
        ("NVENC used", f"{'yes' if NVENC in encoder else 'no'} ({encoder})"),
        ("GPU memory peak (allocated / reserved)", f"{_mib(torch.cuda.max_memory_allocated())} / "
         f"{_mib(torch.cuda.max_memory_reserved())} MiB"),
    ]  # fmt: skip


def _mib(size: int) -> str:
    return f"{size / 2**20:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="generator weights; default: random-initialised")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the end-to-end job")
    parser.add_argument("--batch-size", type=int, default=0, help="faces per pass; 0 = heygem's CUDA default")
    parser.add_argument("--work-dir", type=Path, help="keep inputs and output here")
    args = parser.parse_args(argv)
    reason = no_gpu_reason()
    if reason is not None:
        print(reason)
        return NO_GPU_STATUS
    with tempfile.TemporaryDirectory(prefix="heygem-gpu-check-") as scratch:
        work = args.work_dir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        print(report(check(args, work)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
