"""LipSyncPipeline: audio + face video/photo in, lip-synced mp4 out, in bounded memory.

LipSyncPipeline implements heygem.engine.api.Engine: constructing it is cheap, `load` loads the
detector and generator once, and `run` streams one job through its frames: one pass when the
output shows the whole video (faces are detected as it is read), else a detection pass first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, cast

import numpy as np
from numpy.typing import NDArray

from heygem.engine.api import (
    PREVIEW,
    WAV2LIP,
    Box,
    Engine,
    EngineStatus,
    Frame,
    MouthRenderer,
    ProgressCallback,
    SyncOptions,
    SyncResult,
)
from heygem.engine.audio import SAMPLE_RATE, frames_for_audio, load_audio, mel_chunks, melspectrogram
from heygem.engine.faces.detect import FaceDetector, shared_detector
from heygem.engine.faces.stream import BoxedFrame, tracked_frames
from heygem.engine.faces.track import (
    KEY_FRAME_SEARCH,
    CachedVideo,
    FaceTrack,
    TrackCache,
    TrackOptions,
    choose_face,
    detect_faces,
    known_track,
    pad_box,
    track_faces,
)
from heygem.engine.media.decode import read_frames
from heygem.engine.media.encode import FrameWriter, choose_encoder
from heygem.engine.media.guard import MediaLimits
from heygem.engine.media.probe import MediaInfo, probe
from heygem.engine.media.schedule import scheduled_frames
from heygem.engine.model.array_runner import ArrayRunner
from heygem.engine.model.backends import configured_threads
from heygem.engine.model.devices import AUTO_BATCH_SIZES, CPU, cpu_precision, cpu_without_torch
from heygem.engine.model.download import resolve_checkpoint
from heygem.engine.renderers import Wav2LipRenderer, choose_engine
from heygem.errors import LimitExceededError, ModelError
from heygem.settings import Settings

if TYPE_CHECKING:
    import torch

    from heygem.engine.model.backends import Backend, BackendRequest
    from heygem.engine.model.inference import Placement

log = logging.getLogger("heygem.engine.pipeline")

WARMUP_SIDE = 128  # built-in warm-up frame: a plain grey square treated as one face box
WARMUP_GREY = 128
WARMUP_FPS = 25.0
WARMUP_SAMPLES = SAMPLE_RATE  # one second of silence: enough for a full mel window
BOX_COLOUR_BGR = (0, 200, 0)
BOX_LINE_DIVISOR = 200  # box outline thickness = frame width / this, at least 2 px
# Faces per OpenVINO pass when batch_size is auto: as many frames per CPU-second as 32 on the
# reference workload (bf16, 2 cores), with 85 MiB less peak memory (activations scale with it).
OPENVINO_BATCH_SIZE = 16
PREFETCH_AHEAD = 1  # batches decoded ahead of the one rendering: overlap for one batch of memory

T = TypeVar("T")


@dataclass(frozen=True)
class _Loaded:
    """What `load` settles once: where the generator runs, the detector, what "auto" means."""

    device: str  # cpu | cuda:N
    precision: str  # what the torch path computes in for the configured precision
    detector: FaceDetector
    checkpoint: Path
    engine: str  # the engine "auto" resolves to
    reason: str  # why that engine
    encoder: str  # the H.264 encoder the output videos use


@dataclass(frozen=True)
class _FaceSource:
    """One job's face file: what it is, who detects in it, how boxes are made, its cache entry."""

    info: MediaInfo
    detector: FaceDetector
    options: TrackOptions
    cache: CachedVideo


class LipSyncPipeline:
    """Loads detector and generator once; each `run` streams one job through one or two frame passes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.RLock()
        self._loaded: _Loaded | None = None
        self._generator: torch.nn.Module | None = None
        self._backends: dict[str, Backend] = {}  # by requested precision
        self._track_cache = TrackCache(settings.track_cache_dir)

    # -- loading --------------------------------------------------------------------------------
    def load(self) -> None:
        """Pick device, detector and the engine "auto" means; load the generator if that is wav2lip."""
        self._ready()

    def _ready(self) -> _Loaded:
        with self._lock:
            if self._loaded is not None:
                return self._loaded
            device, precision = self._device_and_precision()
            detector = shared_detector(self.settings, device)
            checkpoint = resolve_checkpoint(self.settings)
            engine, reason = choose_engine(self.settings.engine, checkpoint)
            encoder = choose_encoder(self.settings.video_encoder, device)
            loaded = _Loaded(device, precision, detector, checkpoint, engine, reason, encoder)
            batch_size = AUTO_BATCH_SIZES[device.split(":")[0]]
            if engine == WAV2LIP:
                backend = self._backend(loaded, self.settings.precision)
                precision = backend.precision
                if backend.forward is not None:
                    batch_size = OPENVINO_BATCH_SIZE
            if self.settings.batch_size == 0:  # auto: the device and backend decide
                self.settings = self.settings.replace(batch_size=batch_size)
            self._loaded = loaded
            log.info("engine: %s (%s) on %s %s", engine, reason, device, precision)
            return loaded

    def _device_and_precision(self) -> tuple[str, str]:
        """The configured device and precision resolved; torch is only imported to ask about a GPU."""
        if cpu_without_torch(self.settings.device):
            return CPU, cpu_precision(self.settings.precision)
        from heygem.engine.model.inference import choose_placement

        placement = choose_placement(self.settings.device, self.settings.precision)
        return str(placement.device), placement.precision

    def _placement(self, loaded: _Loaded, precision: str | None = None) -> Placement:
        from heygem.engine.model.inference import choose_placement

        return choose_placement(loaded.device, precision or loaded.precision)

    def _load_generator(self, loaded: _Loaded) -> torch.nn.Module:
        with self._lock:
            if self._generator is None:
                from heygem.engine.model.checkpoint import load_checkpoint
                from heygem.engine.model.inference import prepare_model

                model = load_checkpoint(loaded.checkpoint, loaded.device)
                self._generator = prepare_model(model, self._placement(loaded))
            return self._generator

    def _backend(self, loaded: _Loaded, precision: str) -> Backend:
        """The generator's backend for one requested precision, chosen (and checked) once: from a
        verified OpenVINO cache entry without torch when possible, else checked against torch."""
        with self._lock:
            if precision not in self._backends:
                from heygem.engine.model.backends import BackendRequest, cached_backend

                on_cpu = loaded.device == CPU
                request = BackendRequest(
                    self.settings.backend, precision, "",  # torch_precision: set by _checked_backend
                    loaded.device.split(":")[0], loaded.checkpoint,
                    self.settings.backend_cache_dirs(loaded.checkpoint),
                )  # fmt: skip
                backend = cached_backend(request) if on_cpu else None
                self._backends[precision] = backend or self._checked_backend(loaded, request)
            return self._backends[precision]

    def _checked_backend(self, loaded: _Loaded, request: BackendRequest) -> Backend:
        from heygem.engine.model.backends import select_backend

        placement = self._placement(loaded, request.precision)
        request = dataclasses.replace(request, torch_precision=placement.precision)
        return select_backend(self._load_generator(loaded), request)

    def status(self) -> EngineStatus:
        loaded = self._ready()
        return EngineStatus(
            engine=loaded.engine,
            reason=loaded.reason,
            checkpoint=str(loaded.checkpoint) if self._generator is not None or self._backends else "",
            detector=loaded.detector.name,
            device=loaded.device,
            device_name=self._device_name(loaded),
            loaded=True,
            backend=backend.label if (backend := self._backends.get(self.settings.precision)) else "",
        )

    def _device_name(self, loaded: _Loaded) -> str:
        if self._generator is None and loaded.device == CPU:
            threads = configured_threads()
            return f"CPU ({threads} threads)" if threads else "CPU"
        from heygem.engine.model.inference import device_name

        return device_name(self._placement(loaded))

    def warmup(self) -> float:
        """Render one built-in frame with the default engine: proves the model runs, not just loads."""
        loaded = self._ready()
        started = time.monotonic()
        frame = np.full((WARMUP_SIDE, WARMUP_SIDE, 3), WARMUP_GREY, np.uint8)
        box = (0, 0, WARMUP_SIDE, WARMUP_SIDE)
        wav = np.zeros(WARMUP_SAMPLES, np.float32)
        renderer = self._renderer(loaded, loaded.engine, wav, WARMUP_FPS, 1, SyncOptions())
        rendered = renderer.render([frame], [box], [0])
        if len(rendered) != 1 or rendered[0].shape != frame.shape:
            raise ModelError("warm-up inference returned no frame")
        return time.monotonic() - started

    # -- one job --------------------------------------------------------------------------------
    def run(
        self,
        audio: Path,
        face: Path,
        output: Path,
        options: SyncOptions | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> SyncResult:
        options = options or SyncOptions()
        job = _Job(Path(audio), Path(face), Path(output), options, on_progress or _no_progress)
        # Inputs are checked before any model work, so a bad file fails in a second, not after a
        # checkpoint load; an explicitly requested generator is loaded before the detection pass.
        job.report(0, 1, "probe")
        info = self._probe_face(job.face)
        fps = options.fps if info.is_image else info.fps
        with job.timed("audio"):
            wav = self._load_speech(job.audio)
            n_out = frames_for_audio(len(wav), fps)
        loaded = self._ready()
        engine = self._engine_for(options, loaded)
        if engine == WAV2LIP:
            self._backend(loaded, self._job_precision(options))
        face_source = _FaceSource(
            info, loaded.detector, TrackOptions.from_job(options, self.settings),
            cached_face(self.settings, self._track_cache, info),
        )  # fmt: skip
        with job.timed("detect"):
            track = self._face_track(job, face_source, n_out)
        renderer = self._renderer(loaded, engine, wav, fps, n_out, options)
        job.output.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".heygem-", dir=job.output.parent) as scratch:
            frames = self._boxed_frames(job, face_source, n_out, track, Path(scratch))
            missing = self._synthesize(job, info, fps, n_out, frames, renderer)
        return job.result(engine, n_out, fps, missing)

    def _engine_for(self, options: SyncOptions, loaded: _Loaded) -> str:
        if options.engine == "auto":
            return loaded.engine
        engine, _reason = choose_engine(options.engine, loaded.checkpoint)
        return engine

    def _probe_face(self, face: Path) -> MediaInfo:
        # The limits travel in the MediaInfo: every later read of the face enforces them too.
        return probe(face, limits=MediaLimits.from_settings(self.settings))

    def _load_speech(self, audio_path: Path) -> NDArray[np.float32]:
        wav = load_audio(audio_path, max_duration_s=self.settings.max_duration_s)
        seconds = len(wav) / SAMPLE_RATE
        if seconds > self.settings.max_duration_s:
            raise LimitExceededError(
                f"{audio_path.name} is {seconds:.0f} s long; the limit is "
                f"{self.settings.max_duration_s:.0f} s"
            )
        return wav

    def _face_track(self, job: _Job, face: _FaceSource, n_out: int) -> FaceTrack | None:
        """The job's face track before synthesis, or None when the synthesis pass detects as it reads.

        A video the output shows in full (the speech is at least as long) has every frame decoded at
        full size by the synthesis pass anyway, so it is detected there instead of decoded twice. A
        video whose header gives no length is read whole first (which also enforces the limits).
        """
        info = face.info
        if info.is_image or info.duration_s <= 0 or n_out < info.frame_count:
            return face_track(
                self.settings, face.cache, info, face.detector, face.options, on_progress=job.report
            )
        return known_track(face.detector, info.size, face.options, face.cache, info.path.name)

    def _boxed_frames(
        self, job: _Job, face: _FaceSource, n_out: int, track: FaceTrack | None, scratch: Path
    ) -> Iterator[BoxedFrame]:
        """(source index, frame, box) for every output frame, by the job's duration policy."""
        info = face.info
        source = scheduled_frames(
            job.face, info, n_out, job.options.duration_policy, scratch,
            fps=None if info.is_image else info.fps_text,
            n_src=_source_frames(info, track),
        )  # fmt: skip
        if track is not None:
            return ((index, frame, track.box_at(index)) for index, frame in source)
        return tracked_frames(
            source, face.detector, face.options,
            frame_size=info.size, detect_side=self.settings.detect_max_side,
            expected_frames=info.frame_count, cache=face.cache, name=info.path.name,
        )  # fmt: skip

    def _renderer(
        self,
        loaded: _Loaded,
        engine: str,
        wav: NDArray[np.float32],
        fps: float,
        n_out: int,
        options: SyncOptions,
    ) -> MouthRenderer:
        if engine == PREVIEW:
            from heygem.engine.preview import PreviewRenderer, mouth_motion

            motion = mouth_motion(wav, fps, n_out)
            return PreviewRenderer(motion, options.blend, watermark=self.settings.preview_watermark)
        windows = mel_chunks(melspectrogram(wav), fps, frames=n_out)
        batch_size = options.batch_size or self.settings.batch_size
        precision = self._job_precision(options)
        backend = self._backend(loaded, precision)
        if backend.forward is not None:  # OpenVINO: arrays in and out, torch not needed
            return Wav2LipRenderer(ArrayRunner(backend.forward, batch_size), windows, options.blend)
        from heygem.engine.model.inference import GeneratorRunner

        placement = self._placement(loaded, options.precision if options.precision != "auto" else None)
        runner = GeneratorRunner(self._load_generator(loaded), placement, batch_size, backend)
        return Wav2LipRenderer(runner, windows, options.blend)

    def _job_precision(self, options: SyncOptions) -> str:
        return options.precision if options.precision not in (None, "auto") else self.settings.precision

    def _synthesize(
        self,
        job: _Job,
        info: MediaInfo,
        fps: float,
        n_out: int,
        frames: Iterator[BoxedFrame],
        renderer: MouthRenderer,
    ) -> int:
        """The synthesis pass: boxed frames -> renderer in batches -> encoder, muxing audio.

        Returns how many output frames had no face and passed through unchanged.
        """
        batch_size = job.options.batch_size or self.settings.batch_size
        writer = self._frame_writer(job, info, fps)
        done = missing = 0
        with writer, job.timed("synthesize"):
            # The next batch is decoded (and detected, when that happens here) while this one
            # renders; the encoder has its own thread.
            for batch in prefetched(_batched(frames, batch_size)):
                indices = range(done, done + len(batch))
                boxes = [box for _, _, box in batch]
                missing += boxes.count(None)
                rendered = renderer.render([frame for _, frame, _ in batch], boxes, indices)
                for frame in rendered:
                    writer.write(frame)
                done += len(batch)
                job.report(done, n_out, "synthesize")
                # Drop this batch before the next is decoded: otherwise two batches of source
                # frames and one of rendered frames are alive at once.
                del batch, boxes, rendered
            job.report(n_out, n_out, "encode")
        job.report(n_out, n_out, "done")
        return missing

    def _frame_writer(self, job: _Job, info: MediaInfo, fps: float) -> FrameWriter:
        return FrameWriter(
            job.output, info.width, info.height, fps, job.audio, label=job.options.watermark,
            preset=self.settings.x264_preset, encoder=self._ready().encoder,
        )  # fmt: skip


def cached_face(settings: Settings, cache: TrackCache, info: MediaInfo) -> CachedVideo:
    """The face file's entry in the track cache, with every parameter that changes its frames;
    an avatar prepared through it is a cache hit for every later run on the same file."""
    detect_fps = None if info.is_image else info.fps_text
    params: dict[str, object] = {"fps": detect_fps or "still", "max_side": settings.detect_max_side}
    if settings.detect_every > 1:  # every-frame entries keep their keys (prepared avatars stay hits)
        params["detect_every"] = settings.detect_every
        params["key_frames"] = KEY_FRAME_SEARCH
    return CachedVideo(cache, info.path, params)


def face_track(
    settings: Settings,
    cached: CachedVideo,
    info: MediaInfo,
    detector: FaceDetector,
    options: TrackOptions,
    on_progress: ProgressCallback | None = None,
) -> FaceTrack:
    """Boxes for every frame of a probed face file, from its entry in the track cache (`cached_face`)
    or by detection (then cached there)."""
    detect_fps = None if info.is_image else info.fps_text
    frames = read_frames(info.path, info, fps=detect_fps, max_side=settings.detect_max_side)
    return track_faces(
        frames,
        detector,
        info.size,
        options,
        cache=cached,
        on_progress=on_progress,
        total=info.frame_count,
        name=info.path.name,
    )


def preview_face(settings: Settings, face: Path) -> tuple[Frame, Box | None]:
    """The first frame (RGB) with the face box the engine would use drawn on it, and that box.

    For the UI's "check face" button: one frame, no generator, no job. The detector is the one the
    engine uses on the configured device (shared_detector), not a second copy on the CPU.
    """
    import cv2

    info = probe(face, limits=MediaLimits.from_settings(settings))
    frames = read_frames(face, info)
    try:
        frame = next(frames)
    finally:
        frames.close()
    raw = detect_faces([frame], shared_detector(settings), info.size)
    box = choose_face(raw.faces[0]) if raw.faces and raw.faces[0] else None
    if box is not None:
        box = pad_box(box, SyncOptions().pads, info.size)
    if box is not None:
        thickness = max(2, info.width // BOX_LINE_DIVISOR)
        cv2.rectangle(frame, box[:2], box[2:], BOX_COLOUR_BGR, thickness)
    # cv2's stubs type every image as MatLike; a colour conversion keeps the uint8 dtype.
    return cast(Frame, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)), box


class _Job:
    """One run's inputs, progress reporting and stage timings."""

    def __init__(
        self, audio: Path, face: Path, output: Path, options: SyncOptions, on_progress: ProgressCallback
    ) -> None:
        self.audio, self.face, self.output, self.options = audio, face, output, options
        self._on_progress = on_progress
        self.started = time.monotonic()
        self.stage_seconds: dict[str, float] = {}

    def report(self, done: int, total: int, stage: str) -> None:
        self._on_progress(done, total, stage)

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + time.monotonic() - started

    def result(self, engine: str, frames: int, fps: float, missing: int) -> SyncResult:
        seconds = time.monotonic() - self.started
        log.info(
            "wrote %s: %d frames at %.3g fps with %s (%d without a face) in %.1f s",
            self.output, frames, fps, engine, missing, seconds,
        )  # fmt: skip
        return SyncResult(
            output=self.output, engine=engine, frames=frames, frames_without_face=missing, fps=fps,
            duration_s=frames / fps, seconds=seconds, stage_seconds=dict(self.stage_seconds),
        )  # fmt: skip


def _source_frames(info: MediaInfo, track: FaceTrack | None) -> int | None:
    """How many source frames the schedule may count on (pingpong spools only beyond them)."""
    if track is None:  # detected while reading: the container's count
        return info.frame_count
    return len(track) if track.fixed is None else None


def _batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def prefetched(items: Iterator[T], ahead: int = PREFETCH_AHEAD) -> Iterator[T]:
    """`items`, produced by a thread at most `ahead` items in front of the consumer.

    An item counts as in use until the consumer asks for the next one, so at most `ahead` + 1
    items are alive at once. The producer's exception is raised in the consumer; a consumer that
    stops early stops the producer, which closes `items` in its own thread.
    """
    handoff: queue.Queue[tuple[str, object]] = queue.Queue()
    room = threading.Semaphore(ahead)
    stop = threading.Event()
    producer = threading.Thread(
        target=_produce, args=(items, handoff, room, stop), name="heygem-prefetch", daemon=True
    )
    producer.start()
    try:
        while True:
            kind, value = handoff.get()
            if kind == _END:
                return
            if kind == _ERROR:
                raise cast(BaseException, value)
            yield cast(T, value)
            del value  # the consumer is done with it: room for one more
            room.release()
    finally:
        stop.set()
        room.release(ahead + 2)  # wake a producer waiting for room, so it sees `stop`
        producer.join()


_ITEM, _END, _ERROR = "item", "end", "error"


def _produce(
    items: Iterator[T],
    handoff: queue.Queue[tuple[str, object]],
    room: threading.Semaphore,
    stop: threading.Event,
) -> None:
    try:
        for item in items:
            handoff.put((_ITEM, item))
            del item
            room.acquire()
            if stop.is_set():
                return
    except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it
        handoff.put((_ERROR, exc))
    finally:
        handoff.put((_END, None))  # after an error too: a consumer never waits for nothing
        close = getattr(items, "close", None)
        if callable(close):
            close()


def _no_progress(done: int, total: int, stage: str) -> None:
    pass


if TYPE_CHECKING:
    # The job layer codes against the Engine protocol; this makes mypy hold the pipeline to it.
    _IS_AN_ENGINE: type[Engine] = LipSyncPipeline
