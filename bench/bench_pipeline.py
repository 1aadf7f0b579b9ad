"""End-to-end pipeline benchmark: frames/s per stage, end-to-end vs model-only, peak memory.

    python bench/bench_pipeline.py [--output docs/benchmarks.md] [--work-dir DIR] [--quick]
        [--reference /path/to/Wav2Lip [--reference-python PY]] [--backend auto|torch|openvino]

Inputs are built here (no downloads): the scikit-image astronaut moving slightly inside a 1280x720
frame (10 s and 60 s), espeak-ng speech looped to length, and the reference comparison workload
(8.7 s of speech on a 480x480 25 fps video with a fixed box, plus a 60 s version of it). The
generator is a random-initialised checkpoint in the official format: the same network and cost as
the public weights. Face detection uses what a fresh install has without downloads (Haar).

Every measurement runs in its own subprocess (`--child`), so peak RSS (ru_maxrss) is clean. Wall
times depend on what else the machine runs; CPU-seconds per frame (this process plus its ffmpeg
children) are steadier on a shared machine, so both are reported.

`--reference` runs the reference Wav2Lip `inference.py` from a checkout outside this repository
(never copied into it) on the same 8.7 s workload with the same random checkpoint, interleaved
with heygem's `python -m heygem generate`, so both see the same machine load. `--backend` is passed
to heygem (`--backend` flag, Settings.backend) when this checkout has that setting.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

FPS = 25
MOTION_FRAMES = 50  # one 2 s motion cycle, looped by ffmpeg to the wanted length
HD = (1280, 720)
REFERENCE_SIDE = 480
REFERENCE_SPEECH_S = 8.7
# The reference on this workload in an earlier run (2-core machine), used only without --reference.
REFERENCE_SECONDS = 25.8
REFERENCE_PEAK_MIB = 2.2 * 1024
REFERENCE_ROUNDS = 2  # reference / heygem pairs, interleaved
SPEED_TARGET = 3.0  # heygem should be at least this many times faster than the reference
MEMORY_TARGET = 0.25  # and use at most this fraction of its peak memory
RATIO_TARGET = 0.80  # end-to-end throughput with detection vs model-only throughput (issue 14)
FLAT_LIMIT = 1.20  # a 60 s job may peak at most this much above the short one to count as flat
FACE_BOX_256 = (31, 94, 86, 139)  # top, bottom, left, right of the astronaut's face at 256 px
SPEECH_TEXT = (
    "Good morning, and welcome to the quarterly update. Revenue grew in every region, "
    "and the new studio opened on time. Thank you all for your hard work this year."
)
STAGE_DECODE_FRAMES = 250
STAGE_DETECT_FRAMES = 100
STAGE_KEEP_FRAMES = 64  # decoded frames kept in memory for the blend and encode stages
STAGE_ENCODE_FRAMES = 250
STAGE_MODEL_BATCHES = 3  # timed generator batches after one warm-up batch
MODEL_ONLY_FRAMES = 64  # generator frames timed after each end-to-end run
TORCH_STAGE_BATCH = 32  # the torch generator rows' batch when --batch-size is 0 (auto)
WIDE_DETECT_SIDE = 640  # what-if: Haar at S3FD's detection size instead of its own
SLOW_PRESET = "medium"  # what-if: the x264 preset the writer used before veryfast
DEFAULTS = "defaults"
CLI_VARIANTS = {  # label -> extra `python -m heygem generate` flags
    DEFAULTS: [],
    "batch 8": ["--batch-size", "8"],
    "bf16, batch 32": ["--precision", "bf16"],
}
KIB_PER_MIB = 1024
NOTES_MARKER = "<!-- notes: written by hand, kept when the tables are regenerated -->"
ENCODE_PRESET = "veryfast"  # only for building inputs


# --------------------------------------------------------------------------------------------------
# inputs


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-y", "-nostdin", "-loglevel", "error", *args], check=True)


def astronaut(side: int) -> np.ndarray:
    import cv2
    import skimage.data

    rgb = skimage.data.astronaut()
    return cv2.resize(rgb[:, :, ::-1], (side, side), interpolation=cv2.INTER_AREA).copy()


def motion_frames(side: int, canvas: tuple[int, int]) -> Iterator[np.ndarray]:
    """The astronaut (side x side) drifting a few pixels, centred on a grey canvas (width, height)."""
    import cv2

    face = astronaut(side)
    width, height = canvas
    x0, y0 = (width - side) // 2, (height - side) // 2
    for i in range(MOTION_FRAMES):
        phase = 2 * np.pi * i / MOTION_FRAMES
        matrix = np.float32([[1, 0, 3 * np.sin(phase)], [0, 1, 2 * np.cos(phase)]])
        frame = np.full((height, width, 3), 96, np.uint8)
        moved = cv2.warpAffine(face, matrix, (side, side), borderMode=cv2.BORDER_REFLECT)
        frame[y0 : y0 + side, x0 : x0 + side] = moved
        yield frame


def face_box(side: int, canvas: tuple[int, int]) -> tuple[int, int, int, int]:
    """--box TOP BOTTOM LEFT RIGHT of the face in `motion_frames(side, canvas)`."""
    scale = side / 256
    x0, y0 = (canvas[0] - side) // 2, (canvas[1] - side) // 2
    top, bottom, left, right = FACE_BOX_256
    return (
        y0 + round(top * scale),
        y0 + round(bottom * scale),
        x0 + round(left * scale),
        x0 + round(right * scale),
    )


def write_motion(path: Path, side: int, canvas: tuple[int, int]) -> Path:
    from tests import media  # the tests' H.264 writer (real ffmpeg), also used for the fixtures

    return media.write_video(
        path, motion_frames(side, canvas), fps=FPS, size=canvas, output_args=("-preset", ENCODE_PRESET)
    )


def looped_video(cycle: Path, path: Path, seconds: float) -> Path:
    if not path.exists():
        ffmpeg(
            "-stream_loop",
            "-1",
            "-i",
            str(cycle),
            "-t",
            f"{seconds:.3f}",
            "-an",
            "-c:v",
            "libx264",
            "-preset",
            ENCODE_PRESET,
            "-crf",
            "18",
            "-pix_fmt",
            "yuv420p",
            str(path),
        )
    return path


def looped_audio(speech: Path, path: Path, seconds: float) -> Path:
    if not path.exists():
        ffmpeg(
            "-stream_loop", "-1", "-i", str(speech), "-t", f"{seconds:.3f}", "-c:a", "pcm_s16le", str(path)
        )
    return path


def random_checkpoint(path: Path) -> Path:
    """A random-initialised generator saved like the public files (state_dict, `module.` keys)."""
    import torch

    from heygem.engine.model import Wav2Lip

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        state = {f"module.{k}": v for k, v in Wav2Lip().state_dict().items()}
        torch.save({"state_dict": state, "optimizer": None, "global_step": 0}, path)
    return path


def build_inputs(work: Path, long_s: float, short_s: float) -> dict[str, object]:
    work.mkdir(parents=True, exist_ok=True)
    speech = work / "speech.wav"
    if not speech.exists():
        subprocess.run(["espeak-ng", "-w", str(speech), SPEECH_TEXT], check=True)
    hd_cycle = work / "hd-cycle.mp4"
    ref_cycle = work / "ref-cycle.mp4"
    if not hd_cycle.exists():
        write_motion(hd_cycle, HD[1], HD)
    if not ref_cycle.exists():
        write_motion(ref_cycle, REFERENCE_SIDE, (REFERENCE_SIDE, REFERENCE_SIDE))
    ref_speech_s = min(REFERENCE_SPEECH_S, short_s)

    def looped(cycle: Path, tag: str, seconds: float) -> tuple[str, str]:
        """(video, speech) of `seconds`: the motion cycle and the speech looped to that length."""
        video = looped_video(cycle, work / f"{tag}-{seconds:g}s.mp4", seconds)
        return str(video), str(looped_audio(speech, work / f"speech-{seconds:g}s.wav", seconds))

    return {
        "models": str(random_checkpoint(work / "models" / "wav2lip_gan.pth").parent),
        "hd_box": face_box(HD[1], HD),
        "ref_box": face_box(REFERENCE_SIDE, (REFERENCE_SIDE, REFERENCE_SIDE)),
        "hd_short": looped(hd_cycle, "hd", short_s),
        "hd_long": looped(hd_cycle, "hd", long_s),
        "ref_short": looped(ref_cycle, "ref", ref_speech_s),
        "ref_long": looped(ref_cycle, "ref", long_s),
    }


# --------------------------------------------------------------------------------------------------
# measuring inside a child process


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB_PER_MIB


def cpu_seconds() -> float:
    """CPU time of this process plus its finished children (ffmpeg), user + system."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class Clock:
    """Wall and CPU seconds of a block, and a rate over it."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = cpu_seconds() - self.cpu

    def rate(self, frames: int) -> dict[str, float]:
        return {
            "frames": frames,
            "seconds": round(self.wall, 2),
            "fps": round(frames / self.wall, 2),
            "cpu_s_per_frame": round(self.cpu / max(frames, 1), 4),
        }


def child_settings(spec: dict, tag: str):
    from heygem.settings import Settings

    data = Path(spec["work"]) / f"data-{tag}-{os.getpid()}"
    extra = {"backend": spec["backend"]} if spec.get("backend") else {}
    return Settings(
        data_dir=data,
        models_dir=Path(spec["models"]),
        warmup=False,
        batch_size=spec["batch_size"],
        precision=spec.get("precision", "auto"),
        **extra,
    )


def has_backend_setting() -> bool:
    """Whether this checkout has the generator backend setting (issue 14, part A)."""
    import dataclasses

    from heygem.settings import Settings

    return any(f.name == "backend" for f in dataclasses.fields(Settings))


def measure_stages(spec: dict) -> dict:
    """Each stage alone on the short 720p input: decode, detect, mel, model, blend, encode."""
    from heygem.engine.audio import load_audio, mel_chunks, melspectrogram
    from heygem.engine.blend import crop_face, paste_feathered
    from heygem.engine.faces.detect import ScaledDetector, create_detector
    from heygem.engine.faces.track import detect_faces
    from heygem.engine.media.decode import read_frames
    from heygem.engine.media.encode import FrameWriter
    from heygem.engine.media.probe import probe
    from heygem.engine.model import load_checkpoint
    from heygem.engine.model.inference import GeneratorRunner, choose_placement, prepare_model

    settings = child_settings(spec, "stages")
    video, audio = (Path(p) for p in spec["input"])
    top, bottom, left, right = spec["box"]
    box = (left, top, right, bottom)
    info = probe(video)
    out: dict[str, dict] = {}

    kept: list[np.ndarray] = []
    with Clock() as clock:
        decoded = itertools.islice(read_frames(video, info), STAGE_DECODE_FRAMES)
        for count, frame in enumerate(decoded, 1):  # noqa: B007 - count is read after the loop
            if len(kept) < STAGE_KEEP_FRAMES:
                kept.append(frame)
    out["decode"] = clock.rate(count)

    detector = create_detector(settings, "cpu")

    def detect_frames():
        return itertools.islice(
            read_frames(video, info, max_side=settings.detect_max_side), STAGE_DETECT_FRAMES
        )

    with Clock() as clock:
        raw = detect_faces(detect_frames(), detector, info.size, settings.detect_batch_size)
    out["detect"] = clock.rate(len(raw)) | {
        "detector": f"{detector.name} at {detector.max_side} px",
        "found": found(raw),
    }
    with Clock() as clock:
        raw = detect_faces(
            detect_frames(), detector, info.size, settings.detect_batch_size, every=settings.detect_every
        )
    out["detect sparse"] = clock.rate(len(raw)) | {"found": found(raw), "every": settings.detect_every}
    wide = ScaledDetector(detector.inner, WIDE_DETECT_SIDE)
    with Clock() as clock:
        raw = detect_faces(detect_frames(), wide, info.size, settings.detect_batch_size)
    out["detect 640"] = clock.rate(len(raw)) | {"found": found(raw)}

    with Clock() as clock:
        wav = load_audio(audio)
        windows = mel_chunks(melspectrogram(wav), info.fps)
    out["mel"] = clock.rate(len(windows))

    out["model default"] = default_generator(settings)
    batch = settings.batch_size or TORCH_STAGE_BATCH
    placement = choose_placement("cpu", "fp32")
    model = prepare_model(load_checkpoint(Path(spec["models"]) / "wav2lip_gan.pth", "cpu"), placement)
    runner = GeneratorRunner(model, placement, batch)
    crops = np.stack([crop_face(kept[i % len(kept)], box) for i in range(batch)])
    mels = windows[:batch]
    mouths = runner.infer(mels, crops)  # warm-up: oneDNN picks its kernels on the first call
    with Clock() as clock:
        for _ in range(STAGE_MODEL_BATCHES):
            mouths = runner.infer(mels, crops)
    out["model"] = clock.rate(STAGE_MODEL_BATCHES * batch)
    bf16 = GeneratorRunner(model, choose_placement("cpu", "bf16"), batch)
    bf16.infer(mels, crops)
    with Clock() as clock:
        for _ in range(STAGE_MODEL_BATCHES):
            bf16.infer(mels, crops)
    out["model bf16"] = clock.rate(STAGE_MODEL_BATCHES * batch)

    blended = []
    with Clock() as clock:
        for i, frame in enumerate(kept):
            crop_face(frame, box)
            blended.append(paste_feathered(frame, mouths[i % len(mouths)], box))
    out["blend"] = clock.rate(len(kept))

    target = settings.data_dir / "encode.mp4"
    with Clock() as clock:
        with FrameWriter(target, info.width, info.height, info.fps_text, audio) as writer:
            for i in range(STAGE_ENCODE_FRAMES):
                writer.write(blended[i % len(blended)])
    out["encode"] = clock.rate(STAGE_ENCODE_FRAMES) | {"preset": settings.x264_preset}
    with Clock() as clock:
        slow = FrameWriter(target, info.width, info.height, info.fps_text, audio, preset=SLOW_PRESET)
        with slow as writer:
            for i in range(STAGE_ENCODE_FRAMES):
                writer.write(blended[i % len(blended)])
    out["encode medium"] = clock.rate(STAGE_ENCODE_FRAMES)
    out["threads"] = __import__("torch").get_num_threads()
    return out


def default_generator(settings) -> dict:
    """The generator as the pipeline runs it by default (backend, precision and batch chosen by
    the settings), caught through the instrumented runner its warm-up uses."""
    from heygem.engine.pipeline import LipSyncPipeline

    timers = StageTimers()
    instrument(timers)
    pipeline = LipSyncPipeline(settings)
    pipeline.warmup()
    return model_only(timers.runner) | {"backend": pipeline.status().backend}


def found(raw) -> str:
    return f"face in {sum(bool(faces) for faces in raw.faces)} of {len(raw)} frames"


class StageTimers:
    """Wall seconds the pipeline's main thread spends in each stage of the synthesis pass."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.runner = None  # the pipeline's own generator runner, reused for model-only

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def wrap(self, stage: str, func: Callable) -> Callable:
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.add(stage, time.perf_counter() - started)

        return timed

    def wrap_iterator(self, stage: str, func: Callable) -> Callable:
        def timed(*args, **kwargs):
            iterator = iter(func(*args, **kwargs))
            while True:
                started = time.perf_counter()
                try:
                    item = next(iterator)
                except StopIteration:
                    return
                finally:
                    self.add(stage, time.perf_counter() - started)
                yield item

        return timed


def instrument(timers: StageTimers) -> None:
    """Patch the pipeline's collaborators with timing wrappers (this child process only)."""
    from heygem.engine import pipeline
    from heygem.engine import renderers as engines
    from heygem.engine.media.encode import FrameWriter
    from heygem.engine.model import array_runner, inference

    # Decoding runs in the prefetch thread; "frame wait" is the main thread waiting for it.
    pipeline.scheduled_frames = timers.wrap_iterator("decode", pipeline.scheduled_frames)
    pipeline.prefetched = timers.wrap_iterator("frame wait", pipeline.prefetched)
    pipeline.melspectrogram = timers.wrap("mel", pipeline.melspectrogram)
    pipeline.mel_chunks = timers.wrap("mel", pipeline.mel_chunks)
    # torch's runner, or the array runner that serves OpenVINO without torch
    for runner_class in (inference.GeneratorRunner, array_runner.ArrayRunner):
        runner_class.infer = remembering(timers, timers.wrap("model", runner_class.infer))
    engines.crop_face = timers.wrap("blend", engines.crop_face)
    engines.paste_feathered = timers.wrap("blend", engines.paste_feathered)
    engines.paste_rect = timers.wrap("blend", engines.paste_rect)
    FrameWriter.write = timers.wrap("encode wait", FrameWriter.write)
    FrameWriter.close = timers.wrap("encode tail", FrameWriter.close)


def remembering(timers: StageTimers, infer: Callable) -> Callable:
    """The runner's infer, noting which runner served the run (model-only reuses it)."""

    def remembered_infer(runner, *args, **kwargs):
        timers.runner = runner
        return infer(runner, *args, **kwargs)

    return remembered_infer


def measure_run(spec: dict) -> dict:
    """One pipeline.run with the neural engine: wall, CPU, peak memory, where the time went."""
    from heygem.engine.api import SyncOptions
    from heygem.engine.pipeline import LipSyncPipeline

    timers = StageTimers()
    instrument(timers)
    settings = child_settings(spec, "run")
    pipeline = LipSyncPipeline(settings)
    with Clock() as load:
        pipeline.load()
    loaded_mib = peak_mib()
    video, audio = (Path(p) for p in spec["input"])
    options = SyncOptions(engine="wav2lip", box=tuple(spec["box"]) if spec.get("box") else None)
    with Clock() as clock:
        result = pipeline.run(audio, video, settings.data_dir / "out.mp4", options)
    peak = peak_mib()  # before the model-only comparison below adds a second copy of the weights
    synth = result.stage_seconds.get("synthesize", clock.wall)
    stages = {name: round(s, 2) for name, s in timers.seconds.items()}
    stages["detect pass"] = round(result.stage_seconds.get("detect", 0.0), 2)
    audio_s = result.stage_seconds.get("audio", 0.0) + timers.seconds.get("mel", 0.0)
    stages["audio+mel"] = round(audio_s, 2)
    return {
        "run": clock.rate(result.frames),
        "synthesis_fps": round(result.frames / synth, 2),
        "load_s": round(load.wall, 2),
        "loaded_peak_mib": round(loaded_mib, 1),
        "peak_mib": round(peak, 1),
        "stages": stages,
        "frames": result.frames,
        "model_only": model_only(timers.runner),
    }


def model_only(runner) -> dict:
    """Generator throughput alone, in the same process right after the run, with the very runner
    the run used (same backend, batch and precision).

    Measured here rather than once per benchmark because the shared machine's load drifts.
    """
    batch = runner.batch_size  # the size the run used (the setting may be 0: auto)
    frames = max(MODEL_ONLY_FRAMES, batch)
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (frames, 96, 96, 3), dtype=np.uint8)
    mels = rng.standard_normal((frames, 80, 16)).astype(np.float32)
    runner.infer(mels[:batch], crops[:batch])  # warm-up
    with Clock() as clock:
        runner.infer(mels, crops)
    return clock.rate(frames)


def measure_cli(spec: dict) -> dict:
    """`python -m heygem generate` exactly as a user runs it, in this process: peak RSS after it."""
    from heygem.cli import main as cli_main
    from heygem.engine.media.encode import FrameWriter

    first_frame: list[float] = []
    write = FrameWriter.write

    def noting_write(writer, frame):
        if not first_frame:
            first_frame.append(time.time())
        return write(writer, frame)

    FrameWriter.write = noting_write
    video, audio = spec["input"]
    top, bottom, left, right = spec["box"]
    data = Path(spec["work"]) / f"data-cli-{os.getpid()}"
    argv = [
        "generate",
        "--audio",
        audio,
        "--video",
        video,
        "--output",
        str(data / "out.mp4"),
        "--box",
        str(top),
        str(bottom),
        str(left),
        str(right),
        "--engine",
        "wav2lip",
        "--data-dir",
        str(data),
        "--models-dir",
        spec["models"],
        "--log-level",
        "WARNING",
        *(["--backend", spec["backend"]] if spec.get("backend") else []),
        *spec["flags"],
    ]
    code = cli_main(argv)
    if code != 0:
        raise RuntimeError(f"python -m heygem {' '.join(argv)} exited with {code}")
    # From the parent starting this interpreter to the first frame reaching the encoder.
    to_first = first_frame[0] - spec["launched_at"] if first_frame else float("nan")
    return {"peak_mib": round(peak_mib(), 1), "first_frame_s": round(to_first, 2)}


def measure_reference(spec: dict) -> dict:
    """The reference inference.py in a child of this process: its peak RSS (ffmpeg's is smaller)."""
    video, audio = spec["input"]
    top, bottom, left, right = spec["box"]
    out = Path(spec["work"]) / f"reference-{os.getpid()}.mp4"
    argv = [
        spec["python"], "inference.py", "--checkpoint_path", str(Path(spec["models"]) / "wav2lip_gan.pth"),
        "--face", video, "--audio", audio, "--outfile", str(out),
        "--box", str(top), str(bottom), str(left), str(right),
    ]  # fmt: skip
    proc = subprocess.run(argv, cwd=spec["reference"], capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"the reference failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / KIB_PER_MIB
    return {"peak_mib": round(peak, 1)}


CHILDREN = {"stages": measure_stages, "run": measure_run, "cli": measure_cli, "reference": measure_reference}
TUNED_CHILDREN = ("stages", "run", "cli")  # heygem's own runs; the reference runs as its users run it


def run_child(kind: str, spec: dict) -> dict:
    """Run one measurement in a fresh interpreter; also time the whole command as a user sees it."""
    spec = dict(spec)
    spec["launched_at"] = time.time()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--spec", json.dumps(spec)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=PROJECT)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} measurement failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["command_s"] = round(elapsed, 2)
    result["command_cpu_s"] = round(
        (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), 2
    )
    return result


# --------------------------------------------------------------------------------------------------
# report


def machine() -> dict[str, str]:
    import torch

    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        mem_kib = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
    except (OSError, StopIteration, ValueError):
        mem_kib = 0
    return {
        "cpu": f"{model}, {os.cpu_count()} cores",
        "memory": f"{mem_kib / 2**20:.0f} GiB",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
        "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }


def stage_table(stages: dict) -> list[str]:
    rows = ["| stage | frames | frames/s | CPU-s per frame | note |", "|---|---:|---:|---:|---|"]
    detect = stages["detect"]
    notes = {
        "decode": "ffmpeg pipe, full 1280x720 BGR frames",
        "detect": f"{detect['detector']} (the default), every frame: {detect['found']}",
        "detect sparse": f"the same on every {stages['detect sparse']['every']}th frame (detect_every, "
        f"the default), the rest filled in: {stages['detect sparse']['found']}",
        "detect 640": f"what-if: Haar at {WIDE_DETECT_SIDE} px (before): {stages['detect 640']['found']}",
        "mel": "ffmpeg decode to 16 kHz + numpy mel + windows",
        "model default": f"generator only as jobs run it by default: {stages['model default']['backend']}, "
        "batch chosen by the backend",
        "model": "generator only, torch eager (`--backend torch`), batch of 96x96 faces, fp32",
        "model bf16": "the same with bf16 autocast (opt-in `--backend torch --precision bf16`)",
        "blend": "crop to 96x96 + feathered paste at 720p",
        "encode": f"FrameWriter: x264 (preset {stages['encode']['preset']}, the default) + AAC mux, 720p",
        "encode medium": f"what-if: the same with x264 preset {SLOW_PRESET} (before)",
    }
    for name, note in notes.items():
        r = stages[name]
        rows.append(f"| {name} | {r['frames']} | {r['fps']:.1f} | {r['cpu_s_per_frame']:.4f} | {note} |")
    return rows


def run_table(runs: dict[str, dict]) -> list[str]:
    rows = [
        "| input | frames | run s | end-to-end frames/s | model-only frames/s | end-to-end / model "
        "(wall) | CPU-s per frame: end-to-end / model | end-to-end / model (CPU) | "
        "peak RSS MiB (after load) | whole command s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in runs.items():
        run, model = r["run"], r["model_only"]
        wall = run["fps"] / model["fps"]
        cpu = model["cpu_s_per_frame"] / run["cpu_s_per_frame"]
        target = f" {mark(max(wall, cpu) >= RATIO_TARGET)}" if "detection" in label else ""
        rows.append(
            f"| {label} | {r['frames']} | {run['seconds']:.1f} | {run['fps']:.2f} | "
            f"{model['fps']:.2f} | "
            f"{wall:.0%} | {run['cpu_s_per_frame']:.3f} / {model['cpu_s_per_frame']:.3f} | "
            f"{cpu:.0%}{target} | "
            f"{r['peak_mib']:.0f} ({r['loaded_peak_mib']:.0f}) | {r['command_s']:.1f} |"
        )
    return rows


MAIN_THREAD_STAGES = [
    "detect pass",
    "audio+mel",
    "frame wait",
    "model",
    "blend",
    "encode wait",
    "encode tail",
]


def breakdown_table(runs: dict[str, dict]) -> list[str]:
    names = MAIN_THREAD_STAGES
    rows = [
        "| input | " + " | ".join(names) + " | other | decode (prefetch thread) |",
        "|---|" + "---:|" * (len(names) + 2),
    ]
    for label, r in runs.items():
        stages = r["stages"]
        total = r["run"]["seconds"]
        parts = [stages.get(n, 0.0) for n in names]
        other = max(0.0, total - sum(parts))
        cells = " | ".join(f"{p:.1f}" for p in parts)
        rows.append(f"| {label} | {cells} | {other:.1f} | {stages.get('decode', 0.0):.1f} |")
    return rows


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def summary(runs: list[dict]) -> dict[str, float]:
    """Median wall and CPU seconds, highest peak, median time to first frame of repeated runs."""
    return {
        "command_s": median([r["command_s"] for r in runs]),
        "command_cpu_s": median([r["command_cpu_s"] for r in runs]),
        "peak_mib": max(r["peak_mib"] for r in runs),
        "first_frame_s": median([r.get("first_frame_s", float("nan")) for r in runs]),
        "runs": len(runs),
    }


def reference_rows(
    cli: dict[str, list[dict]],
    reference: list[dict],
    flat: dict[str, tuple[dict, dict]],
    ref_s: float,
    long_s: float,
) -> list[str]:
    if reference:
        ref = summary(reference)
        ref_line = (
            f"| reference `inference.py --box ...` (measured in this run) | {ref['command_s']:.1f} s | "
            f"{ref['command_cpu_s']:.1f} | 1.00x | 1.00x | {ref['peak_mib']:.0f} MiB | 100% | - | "
            f"{ref['runs']} |"
        )
    else:
        ref = {"command_s": REFERENCE_SECONDS, "command_cpu_s": float("nan"), "peak_mib": REFERENCE_PEAK_MIB}
        ref_line = (
            f"| reference (earlier run, not measured here) | {REFERENCE_SECONDS} s | - | 1.00x | - | "
            f"{REFERENCE_PEAK_MIB:.0f} MiB | 100% | - | - |"
        )
    rows = [
        "| command | whole command (median) | CPU-s (median) | speed-up, wall (target >= 3x) | "
        "speed-up, CPU-s | peak RSS | of the reference's (target <= 25%) | time to first frame | runs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ref_line,
    ]
    for label, runs in cli.items():
        if not runs:
            continue  # not measured yet (--render-only on an interrupted run)
        r = summary(runs)
        speedup = ref["command_s"] / r["command_s"]
        cpu_speedup = ref["command_cpu_s"] / r["command_cpu_s"]
        memory = r["peak_mib"] / ref["peak_mib"]
        rows.append(
            f"| `python -m heygem generate`, {label} | {r['command_s']:.1f} s | {r['command_cpu_s']:.1f} | "
            f"{speedup:.2f}x {mark(speedup >= SPEED_TARGET)} | {cpu_speedup:.2f}x | "
            f"{r['peak_mib']:.0f} MiB | "
            f"{memory:.0%} {mark(memory <= MEMORY_TARGET)} | {r['first_frame_s']:.1f} s | {r['runs']} |"
        )
    rows += [
        "",
        f"Flat memory (target: the same job on a {long_s:g} s input peaks within "
        f"{FLAT_LIMIT - 1:.0%} of the {ref_s:g} s one):",
        "",
        f"| | {ref_s:g} s input | {long_s:g} s input | ratio |",
        "|---|---:|---:|---:|",
    ]
    for label, (short, long) in flat.items():
        growth = long["peak_mib"] / short["peak_mib"]
        rows.append(
            f"| {label} | {short['peak_mib']:.0f} MiB | {long['peak_mib']:.0f} MiB | "
            f"{growth:.2f}x {mark(growth <= FLAT_LIMIT)} |"
        )
    return rows


def mark(ok: bool) -> str:
    return "(met)" if ok else "(missed)"


def render(
    info: dict,
    stages: dict,
    runs: dict,
    cli: dict[str, list[dict]],
    reference: list[dict],
    flat: dict[str, tuple[dict, dict]],
    lengths: tuple[float, float],
) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Made by `python bench/bench_pipeline.py --reference /path/to/Wav2Lip` (it rewrites this file). "
        "Random-initialised generator weights in the official format (same network, same cost as the "
        "public files), the same file for heygem and the reference; face detection with the Haar "
        "fallback, since a fresh install has no S3FD weights.",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {info['cpu']}, {info['memory']} RAM, Python {info['python']}, "
        f"torch {info['torch']}, {info['threads']} torch threads; library runs use batch size "
        f"{info['batch_size']}, device cpu, precision auto, backend {info['backend']} unless the row says "
        "otherwise; heygem's runs first call heygem.engine.runtime.tune_process(), as `python -m heygem` "
        "and the server do (passive OpenMP waiting, a fixed mmap threshold set in-process)",
        f"- load average when the benchmark started / ended: {info['load']} / {info['load_end']}",
        "- **the CPU was shared** with other engineers' test runs while this ran, so wall-clock "
        "numbers are pessimistic and noisy; CPU-seconds (this process plus its ffmpeg "
        "children) are the steadier measure, and the reference and heygem runs are interleaved.",
        "",
        "## Stages on their own (1280x720, 25 fps)",
        "",
        *stage_table(stages),
        "",
        "## End to end (`LipSyncPipeline.run`, neural engine, excluding the one-off model load)",
        "",
        f"Target: with detection, end-to-end throughput >= {RATIO_TARGET:.0%} of model-only throughput. "
        "Model-only is measured in the same process right after each run, with the very generator "
        "runner the run used (same backend, batch size and precision). The CPU ratio (model CPU-s per "
        "frame / end-to-end CPU-s per frame, ffmpeg included) is what the wall ratio converges to on "
        "a machine the job has to itself, since every stage competes for the same 2 cores; a row "
        "counts as met when either ratio reaches the target.",
        "",
        *run_table(runs),
        "",
        "Where the main thread's time went (seconds; 'frame wait' is time waiting for the prefetch "
        "thread's next batch, 'encode wait' time blocked on the encoder queue, 'encode tail' ffmpeg "
        "finishing after the last frame; decoding runs in the prefetch thread, beside the rest):",
        "",
        *breakdown_table(runs),
        "",
        "## Reference comparison",
        "",
        "8.7 s of speech on a 480x480, 25 fps video with a fixed box (`--box`), the same checkpoint "
        "file. The reference is Wav2Lip's `inference.py` (default batch 128) from a checkout outside "
        "this repository, patched only for today's librosa (keyword arguments to `filters.mel`, "
        "`pad_mode='reflect'`); heygem's 'whole command' is `python -m heygem generate` in a fresh "
        "process: interpreter start, imports, weights load and the run. Peak RSS is the main "
        "process's ru_maxrss. Reference and heygem default runs alternate, so they share the "
        "machine's load; 'time to first frame' runs from starting the interpreter to the first "
        "frame reaching the encoder.",
        "",
        *reference_rows(cli, reference, flat, *lengths),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output",
        type=Path,
        default=PROJECT / "docs" / "benchmarks.md",
        help="markdown file to (re)write; '-' prints only",
    )
    parser.add_argument("--work-dir", type=Path, help="where inputs are built (default: a temp dir)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=0,
        help="generator batch for library runs (0 = auto, the Settings default)",
    )
    parser.add_argument("--quick", action="store_true", help="4 s and 2 s inputs: checks the script runs")
    parser.add_argument(
        "--reference", type=Path, help="a Wav2Lip checkout to run side by side (outside the repo)"
    )
    parser.add_argument(
        "--reference-python", default=sys.executable, help="the Python that runs the reference"
    )
    parser.add_argument("--backend", help="heygem's generator backend, when this checkout has the setting")
    parser.add_argument("--render-only", action="store_true", help="only render <work-dir>/results.json")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        if args.child in TUNED_CHILDREN:
            # What `python -m heygem` and the server do first. In-process (mallopt), not through the
            # environment: ffmpeg children must not inherit a fixed mmap threshold, which doubles
            # their system time.
            from heygem.engine.runtime import tune_process

            tune_process()
        print(json.dumps(CHILDREN[args.child](json.loads(args.spec))))
        return 0
    if args.backend and not has_backend_setting():
        parser.error("--backend: this checkout has no backend setting yet (issue 14, part A)")
    with tempfile.TemporaryDirectory(prefix="heygem-bench-") as temp:
        work = args.work_dir or Path(temp)
        return benchmark(work, args)


def benchmark(work: Path, args: argparse.Namespace) -> int:
    """Measure in order of importance; each result is kept in <work>/results.json as it arrives, so
    an interrupted run resumes where it stopped (same --work-dir) and --render-only prints what
    is there."""
    info = machine() | {"batch_size": args.batch_size, "backend": args.backend or "default"}
    long_s, short_s = (4.0, 2.0) if args.quick else (60.0, 10.0)
    ref_s = min(REFERENCE_SPEECH_S, short_s)
    inputs = build_inputs(work, long_s, short_s)
    base = {"work": str(work), "models": inputs["models"], "batch_size": args.batch_size}
    if args.backend:
        base["backend"] = args.backend
    hd_box, ref_box = {"box": inputs["hd_box"]}, {"box": inputs["ref_box"]}
    results = Results(work / "results.json", measure=not args.render_only)
    results.info = results.get("info", lambda: info)
    stages = results.get("stages", lambda: run_child("stages", base | {"input": inputs["hd_short"]} | hd_box))
    ref_spec = base | {"input": inputs["ref_short"]} | ref_box
    cli, reference = compare_with_reference(ref_spec, args, ref_s, results)
    long_spec = base | {"input": inputs["ref_long"], "flags": []} | ref_box
    cli_long = results.get(f"cli {long_s:g} s", lambda: run_child("cli", long_spec))
    plan = {
        f"720p, {short_s:g} s, detection": {"input": inputs["hd_short"]},
        f"720p, {short_s:g} s, fixed box": {"input": inputs["hd_short"]} | hd_box,
        f"480x480, {ref_s:g} s, fixed box": {"input": inputs["ref_short"]} | ref_box,
        f"480x480, {long_s:g} s, fixed box": {"input": inputs["ref_long"]} | ref_box,
    }
    runs = {}
    for label, spec in plan.items():
        run = results.get(label, lambda spec=spec: run_child("run", base | spec))
        if run is not None:
            runs[label] = run
    info = results.info | {"load_end": " ".join(f"{x:.1f}" for x in os.getloadavg())}
    flat = {}
    if cli[DEFAULTS] and cli_long is not None:
        flat["`python -m heygem generate` (defaults)"] = (summary(cli[DEFAULTS]), cli_long)
    short_run, long_run = (
        runs.get(f"480x480, {ref_s:g} s, fixed box"),
        runs.get(f"480x480, {long_s:g} s, fixed box"),
    )
    if short_run and long_run:
        flat["library call (`LipSyncPipeline.run`)"] = (short_run, long_run)
    text = render(info, stages, runs, cli, reference, flat, (ref_s, long_s))
    print(text)
    if str(args.output) != "-":
        args.output.write_text(text + kept_notes(args.output), encoding="utf-8")
    return 0


class Results:
    """Measurements by step name in a JSON file, written after each one (resume, render-only)."""

    def __init__(self, path: Path, measure: bool) -> None:
        self.path, self.measure = path, measure
        self.saved: dict[str, object] = json.loads(path.read_text()) if path.exists() else {}
        self.info: dict = {}

    def get(self, name: str, measure: Callable[[], object]):
        if name in self.saved or not self.measure:
            return self.saved.get(name)
        step(name)
        self.saved[name] = measure()
        self.path.write_text(json.dumps(self.saved, indent=1))
        return self.saved[name]


def compare_with_reference(
    spec: dict, args: argparse.Namespace, ref_s: float, results: Results
) -> tuple[dict[str, list[dict]], list[dict]]:
    """heygem's CLI variants, with the defaults alternating with the reference when it is given."""
    cli: dict[str, list[dict]] = {label: [] for label in CLI_VARIANTS}
    reference: list[dict] = []
    rounds = REFERENCE_ROUNDS if args.reference else 1
    for round_no in range(1, rounds + 1):
        if args.reference:
            ref_spec = spec | {"reference": str(args.reference.resolve()), "python": args.reference_python}
            ref = results.get(
                f"reference {ref_s:g} s, round {round_no}", lambda s=ref_spec: run_child("reference", s)
            )
            reference += [ref] if ref else []
        own = results.get(
            f"cli {ref_s:g} s {DEFAULTS}, round {round_no}", lambda: run_child("cli", spec | {"flags": []})
        )
        cli[DEFAULTS] += [own] if own else []
    for label, flags in CLI_VARIANTS.items():
        if label != DEFAULTS:
            run = results.get(
                f"cli {ref_s:g} s {label}", lambda f=flags: run_child("cli", spec | {"flags": f})
            )
            cli[label] += [run] if run else []
    return cli, reference


def step(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def kept_notes(path: Path) -> str:
    """The hand-written analysis below NOTES_MARKER in the existing file, kept across reruns."""
    try:
        old = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return "\n"
    _, marker, notes = old.partition(NOTES_MARKER)
    return "\n" + marker + notes if marker else "\n"


if __name__ == "__main__":
    raise SystemExit(main())
