"""Face detectors behind one small protocol: S3FD (weights file) or OpenCV's Haar cascade (no download).

This is the only faces module that touches torch or face_alignment, and only inside S3FDDetector,
so importing it stays cheap. Detectors take BGR uint8 frames and return every face per frame, in
that frame's pixels. `create_detector` picks one from the settings and caps detection resolution.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from heygem.engine.api import Frame
from heygem.errors import DOWNLOAD_COMMAND, ModelError, WeightsMissingError
from heygem.settings import Settings

if TYPE_CHECKING:
    import torch

log = logging.getLogger("heygem.engine.faces.detect")

S3FD_THRESHOLD = 0.5  # the reference keeps boxes scoring above this after NMS
S3FD_NMS_IOU = 0.3
S3FD_MIN_SCORE = 0.05  # face_alignment's candidate floor; boxes below it never count
S3FD_MEAN = (104.0, 117.0, 123.0)  # subtracted after the channel flip, as face_alignment does
S3FD_ANCHOR_SCALE = 4  # an anchor is 4 strides wide at each of the six levels (strides 4 to 128)
S3FD_CENTRE_VARIANCE = 0.1
S3FD_SIZE_VARIANCE = 0.2
# Anchors per frame that go through NMS: a face gives a few dozen above 0.5; 256 leaves room for
# several faces while keeping the per-frame overlap matrix small.
S3FD_MAX_CANDIDATES = 256
S3FD_BATCH = 8  # frames per forward pass on a GPU (the tracker's batches are padded to this)
DETECTING = "detecting faces"
DATA_PARALLEL_PREFIX = "module."

HAAR_CASCADE = "haarcascade_frontalface_default.xml"
HAAR_SCALE_STEP = 1.1
HAAR_MIN_NEIGHBOURS = 5
HAAR_MIN_FACE_FRACTION = 0.08  # of the frame's shorter side: smaller hits are background noise
HAAR_MIN_FACE_PX = 24  # the cascade's own training window
# The cascade has no calibrated confidence; how many overlapping windows agreed is the best proxy.
# A real face gathers 25+ such neighbours where texture that merely looks like a face gets 5-10, so
# hits with less than half the support of the frame's strongest one are dropped.
HAAR_RELATIVE_SUPPORT = 0.5
HAAR_FULL_SUPPORT = 25  # neighbours that count as score 1.0
# Haar at 320 px found the face in 100 of 100 720p frames at 37% of the CPU of 640 px
# (docs/benchmarks.md); faces must then be at least HAAR_MIN_FACE_PX of the shrunk frame.
HAAR_MAX_SIDE = 320


@dataclass(frozen=True)
class Detection:
    """One face: corners in pixels of the frame it was found in, and a confidence (higher = surer)."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float

    @property
    def area(self) -> float:
        return max(0.0, self.x2 - self.x1) * max(0.0, self.y2 - self.y1)

    def scaled(self, sx: float, sy: float) -> Detection:
        return Detection(self.x1 * sx, self.y1 * sy, self.x2 * sx, self.y2 * sy, self.score)


@runtime_checkable
class FaceDetector(Protocol):
    """Finds faces. `name` is short ("s3fd", "haar"); `cache_tag` also names what changes results.

    A detector with a true `batched` attribute (S3FD on a GPU) gets whole key frames together;
    the others are given each key frame alone, first only around the last faces (faces.track).
    """

    name: str
    cache_tag: str

    def detect(self, frames: list[Frame]) -> list[list[Detection]]:
        """All faces in each frame (same-size HxWx3 uint8 BGR frames), best first."""
        ...


class S3FDDetector:
    """S3FD through face_alignment's network, fed exactly like the reference, decoded here.

    Frames go in as BGR uint8; like face_alignment's batch decoder the channels are flipped and
    (104, 117, 123) subtracted, which is the reference's pre-processing. Boxes scoring above 0.5
    survive NMS at IoU 0.3. Only uint8 pixels cross to the device; the network runs in fp16 on
    CUDA (autocast); the anchors are decoded, thresholded and compared for NMS there too, and one
    transfer per batch brings back a fixed-size table of the best candidates per frame.
    """

    name = "s3fd"

    def __init__(
        self,
        weights_path: Path | str,
        device: str = "cpu",
        threshold: float = S3FD_THRESHOLD,
        batch_size: int = S3FD_BATCH,
        half: bool = True,
    ) -> None:
        import torch

        self.weights_path = Path(weights_path)
        self.device = torch.device(device)
        self.threshold = threshold
        self.cache_tag = f"s3fd:threshold={threshold}"
        on_gpu = self.device.type == "cuda"
        # Autocast rather than a half-precision copy of the net: the convolutions run in fp16 while
        # the L2 normalisation's squares and sums stay in fp32 (in fp16 they overflow past 65504,
        # and its 1e-10 epsilon is zero, so a dark patch would divide 0 by 0).
        self._half = on_gpu and half
        self.batched = on_gpu
        self._net = _load_s3fd(self.weights_path, str(self.device))
        self._batch_size = batch_size
        self._lock = threading.Lock()
        if on_gpu:
            from heygem.engine.model.devices import use_device

            use_device(self.device)
            torch.backends.cudnn.benchmark = True  # batches are padded to one shape per video size

    def detect(self, frames: list[Frame]) -> list[list[Detection]]:
        if not frames:
            return []
        _check_same_size(frames)
        with self._lock, self._device_context():
            return self._detect_in_batches(frames)

    def _device_context(self) -> contextlib.AbstractContextManager[object]:
        import torch

        return torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()

    def _detect_in_batches(self, frames: list[Frame]) -> list[list[Detection]]:
        from heygem.engine.model.devices import BatchBackoff, shared_backoff

        size = max(self._batch_size, len(frames)) if self.device.type == "cpu" else self._batch_size
        backoff = (
            shared_backoff(DETECTING, str(self.device), size)
            if self.device.type == "cuda"
            else BatchBackoff(size, DETECTING)
        )
        pad_to = backoff.size if self.device.type == "cuda" else 0
        results = backoff.run(len(frames), lambda a, b: self._detect_batch(frames[a:b], pad_to))
        return [faces for batch in results for faces in batch]

    def _detect_batch(self, frames: list[Frame], pad_to: int = 0) -> list[list[Detection]]:
        import torch

        from heygem.engine.model.devices import padded

        stacked = padded(np.stack(frames), pad_to)
        with torch.inference_mode():
            pixels = torch.from_numpy(stacked).to(self.device, non_blocking=True)  # uint8 NHWC, BGR
            with self._precision():
                outputs = self._net(_s3fd_input(pixels))
            table = s3fd_candidates(outputs, max(self.threshold, S3FD_MIN_SCORE)).cpu().numpy()
        return [self._keep(table[i]) for i in range(len(frames))]

    def _precision(self) -> contextlib.AbstractContextManager[object]:
        import torch

        if not self._half:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.float16)

    def _keep(self, table: NDArray[np.float32]) -> list[Detection]:
        """One frame's candidate table -> Detections kept by greedy NMS, best first."""
        return [Detection(*map(float, row[:5])) for row in greedy_nms(table)]


def _s3fd_input(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC BGR -> float NCHW, channels flipped and the mean subtracted (on the device)."""
    import torch

    mean = torch.tensor(S3FD_MEAN, device=pixels.device).view(1, 3, 1, 1)
    return pixels.permute(0, 3, 1, 2).flip(1).float() - mean


def s3fd_candidates(outputs: list[torch.Tensor], min_score: float) -> torch.Tensor:
    """The network's six (scores, offsets) pairs -> (N, K, 5 + K) per frame: the K best anchors'
    boxes (x1, y1, x2, y2, score; score 0 when below `min_score`) in descending score order, then
    a K x K flag matrix: row i marks the later candidates box i overlaps above the NMS IoU.

    Computed on the tensors' device in float32 (fp16 outputs are cast first: exp() of an fp16
    offset overflows). Only the K best anchors are decoded. On a GPU K is fixed, so nothing waits
    for the device until the caller copies the table back; on the CPU, where waiting is free, K
    shrinks to the anchors above `min_score`.
    """
    import torch

    scores, offsets, anchors = [], [], []
    for level in range(len(outputs) // 2):
        logits, deltas = outputs[2 * level].float(), outputs[2 * level + 1].float()
        # softmax over (background, face), face column: the same as a sigmoid of the difference.
        scores.append(torch.sigmoid(logits[:, 1] - logits[:, 0]).flatten(1))
        offsets.append(deltas.flatten(2))
        anchors.append(_anchors(level, logits.shape[2], logits.shape[3], logits.device))
    # A NaN score (a reduced-precision overflow) must neither count nor crowd out real candidates.
    all_scores = torch.cat(scores, dim=1).nan_to_num(nan=0.0)
    all_offsets, all_anchors = torch.cat(offsets, dim=2), torch.cat(anchors, dim=1)
    k = min(S3FD_MAX_CANDIDATES, all_scores.shape[1])
    if all_scores.device.type == "cpu":
        k = max(1, min(k, int((all_scores > min_score).sum(dim=1).max())))
    best, index = all_scores.topk(k, dim=1)
    best = torch.where(best > min_score, best, torch.zeros_like(best))
    chosen = _decode(all_offsets.gather(2, index.unsqueeze(1).expand(-1, 4, -1)), all_anchors[:, index])
    overlaps = _overlaps(chosen) > S3FD_NMS_IOU
    later = torch.ones(k, k, dtype=torch.bool, device=chosen.device).triu(1)
    return torch.cat([chosen, best.unsqueeze(-1), (overlaps & later).float()], dim=-1)


def _anchors(level: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    """(3, H * W) centre x, centre y and size of one level's anchors, row-major like its outputs."""
    import torch

    stride = 2 ** (level + 2)
    ys = torch.arange(height, device=device, dtype=torch.float32) * stride + stride / 2
    xs = torch.arange(width, device=device, dtype=torch.float32) * stride + stride / 2
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    size = torch.full_like(grid_x, float(stride * S3FD_ANCHOR_SCALE))
    return torch.stack([grid_x.flatten(), grid_y.flatten(), size.flatten()])


def _decode(offsets: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """offsets (N, 4, K) and their anchors (3, N, K) -> boxes (N, K, 4) as x1, y1, x2, y2."""
    import torch

    cx0, cy0, size = anchors
    cx = cx0 + offsets[:, 0] * S3FD_CENTRE_VARIANCE * size
    cy = cy0 + offsets[:, 1] * S3FD_CENTRE_VARIANCE * size
    w = size * torch.exp(offsets[:, 2] * S3FD_SIZE_VARIANCE)
    h = size * torch.exp(offsets[:, 3] * S3FD_SIZE_VARIANCE)
    x1, y1 = cx - w / 2, cy - h / 2
    return torch.stack([x1, y1, x1 + w, y1 + h], dim=-1)


def _overlaps(boxes: torch.Tensor) -> torch.Tensor:
    """(N, K, 4) -> (N, K, K) IoU, with the reference's +1 pixel convention for widths."""
    import torch

    x1, y1, x2, y2 = boxes.unbind(-1)
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    w = (torch.minimum(x2[:, :, None], x2[:, None]) - torch.maximum(x1[:, :, None], x1[:, None]) + 1).clamp(
        min=0
    )
    h = (torch.minimum(y2[:, :, None], y2[:, None]) - torch.maximum(y1[:, :, None], y1[:, None]) + 1).clamp(
        min=0
    )
    inter = w * h
    return inter / (areas[:, :, None] + areas[:, None] - inter)


def greedy_nms(table: NDArray[np.float32]) -> NDArray[np.float32]:
    """Rows (x1, y1, x2, y2, score, K overlap flags) in descending score order -> the kept rows.

    The overlaps were computed on the device; what is left is the order-dependent greedy walk,
    over the few candidates above the threshold.
    """
    live = np.flatnonzero(table[:, 4] > 0)
    flags = table[:, 5:] > 0
    suppressed = np.zeros(len(table), bool)
    kept = []
    for i in live:
        if not suppressed[i]:
            kept.append(i)
            suppressed |= flags[i]
    return table[kept, :5]


def _load_s3fd(path: Path, device: str) -> torch.nn.Module:
    import torch
    from face_alignment.detection.sfd.net_s3fd import s3fd

    if not path.is_file():
        raise WeightsMissingError(f"S3FD weights not found: {path}; fetch them with `{DOWNLOAD_COMMAND}`")
    try:
        # map_location: a file saved from a GPU must still load on a CPU-only host.
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same thing to a user
        reason = f"{type(exc).__name__}: {_first_line(exc)}"
        raise ModelError(f"cannot read S3FD weights {path}: {reason}") from None
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict):
        raise ModelError(f"{path} is not an S3FD state dict")
    state = {key.removeprefix(DATA_PARALLEL_PREFIX): value for key, value in state.items()}
    net: torch.nn.Module = s3fd()  # face_alignment ships no type information
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"{path} does not fit the S3FD network: {_first_line(exc)}") from None
    return net.to(device).eval()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"


class HaarDetector:
    """OpenCV's bundled frontal-face cascade: no download, good enough for frontal talking heads."""

    name = "haar"
    cache_tag = (
        f"haar:{HAAR_CASCADE}:scale={HAAR_SCALE_STEP}:neighbours={HAAR_MIN_NEIGHBOURS}"
        f":support={HAAR_RELATIVE_SUPPORT}"
    )

    def __init__(self) -> None:
        import cv2

        folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
        if folder is None:
            raise ModelError(
                "this OpenCV build has no bundled Haar cascades; install opencv-python-headless 4.x"
            )
        self._cascade = cv2.CascadeClassifier(str(Path(folder) / HAAR_CASCADE))
        if self._cascade.empty():
            raise ModelError(f"cannot load the Haar cascade {HAAR_CASCADE} from {folder}")
        self._lock = threading.Lock()  # a CascadeClassifier is not safe to share between threads

    def detect(self, frames: list[Frame]) -> list[list[Detection]]:
        with self._lock:
            return [self._detect_one(frame) for frame in frames]

    def _detect_one(self, frame: Frame) -> list[Detection]:
        import cv2

        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        side = max(HAAR_MIN_FACE_PX, int(min(gray.shape) * HAAR_MIN_FACE_FRACTION))
        found, support = self._cascade.detectMultiScale2(
            gray, scaleFactor=HAAR_SCALE_STEP, minNeighbors=HAAR_MIN_NEIGHBOURS, minSize=(side, side)
        )
        if len(found) == 0:
            return []
        votes = np.asarray(support, dtype=np.float64).ravel()
        keep = votes >= HAAR_RELATIVE_SUPPORT * votes.max()
        faces = [
            Detection(float(x), float(y), float(x + w), float(y + h), min(1.0, n / HAAR_FULL_SUPPORT))
            for (x, y, w, h), n, kept in zip(found, votes, keep)
            if kept
        ]
        return sorted(faces, key=lambda d: d.score, reverse=True)


class ScaledDetector:
    """Runs another detector on frames shrunk so the longer side is at most `max_side`.

    Detection cost grows with pixels while a face stays findable far below 1080p, so big frames are
    shrunk first and the boxes scaled back to the caller's pixels. Frames already small enough
    (e.g. read downscaled by ffmpeg) pass straight through.
    """

    def __init__(self, inner: FaceDetector, max_side: int) -> None:
        if max_side < 1:
            raise ValueError("max_side must be at least 1")
        self.inner = inner
        self.max_side = max_side
        self.name = inner.name
        self.batched = bool(getattr(inner, "batched", False))
        self.cache_tag = f"{inner.cache_tag}:max_side={max_side}"

    def detect(self, frames: list[Frame]) -> list[list[Detection]]:
        import cv2

        if not frames:
            return []
        height, width = frames[0].shape[:2]
        if max(width, height) <= self.max_side:
            return self.inner.detect(frames)
        scale = self.max_side / max(width, height)
        small_w, small_h = max(1, round(width * scale)), max(1, round(height * scale))
        # cv2's stubs type every image as MatLike; resizing keeps the uint8 dtype.
        small = [cast(Frame, cv2.resize(f, (small_w, small_h), interpolation=cv2.INTER_AREA)) for f in frames]
        sx, sy = width / small_w, height / small_h
        return [[d.scaled(sx, sy) for d in faces] for faces in self.inner.detect(small)]


def create_detector(settings: Settings, device: str | None = None) -> ScaledDetector:
    """S3FD when its weights file exists, else the Haar cascade; detection capped at detect_max_side.

    `device` defaults to settings.device, resolved like the generator's (a GPU torch cannot drive
    means the CPU). S3FD runs in fp16 on CUDA unless the precision is fp32. Logs the choice.
    """
    weights = settings.resolved_detector_weights
    if weights.is_file():
        resolved = device or _resolve_device(settings.device)
        inner: FaceDetector = S3FDDetector(
            weights, resolved, batch_size=settings.detect_batch_size, half=settings.precision != "fp32"
        )
        reason = f"weights at {weights}, device {resolved}"
    else:
        inner = HaarDetector()
        reason = f"no S3FD weights at {weights}"
        if settings.detector_weights is not None:
            log.warning("detector_weights is set but %s does not exist", weights)
    side = settings.detect_max_side
    if isinstance(inner, HaarDetector):
        side = min(side, HAAR_MAX_SIDE)
    log.info("face detector: %s (%s); detection at most %d px", inner.name, reason, side)
    return ScaledDetector(inner, side)


_shared: dict[tuple[object, ...], ScaledDetector] = {}
_shared_lock = threading.Lock()


def shared_detector(settings: Settings, device: str | None = None) -> ScaledDetector:
    """One detector per (weights, device, detection settings) in this process: the engine's jobs and
    the UI's face check use the same loaded network on the configured device, not a copy each."""
    # Haar runs on the CPU whatever the device: no need to load torch to resolve it.
    has_s3fd = settings.resolved_detector_weights.is_file()
    resolved = device or (_resolve_device(settings.device) if has_s3fd else "cpu")
    key = (
        settings.resolved_detector_weights,
        resolved,
        settings.detect_max_side,
        settings.detect_batch_size,
        settings.precision,
    )
    with _shared_lock:
        if key not in _shared:
            _shared[key] = create_detector(settings, resolved)
        return _shared[key]


def _resolve_device(device: str) -> str:
    from heygem.engine.model.devices import resolve_device

    return resolve_device(device)


def _check_same_size(frames: Sequence[Frame]) -> None:
    shape = frames[0].shape
    if any(f.shape != shape for f in frames):
        raise ValueError("all frames in one detection batch must have the same size")


__all__ = [
    "Detection",
    "FaceDetector",
    "S3FDDetector",
    "HaarDetector",
    "ScaledDetector",
    "create_detector",
    "shared_detector",
]
