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
from heygem.engine.faces.s3fd import (
    BOX_COLUMNS,
    S3FD_ANCHOR_SCALE,
    S3FD_CENTRE_VARIANCE,
    S3FD_MAX_CANDIDATES,
    S3FD_MEAN,
    S3FD_MIN_SCORE,
    S3FD_NMS_IOU,
    S3FD_SIZE_VARIANCE,
    S3FD_THRESHOLD,
    anchor_boxes,
    anchor_stride,
    candidate_table,
    greedy_nms,
    network_input,
    padding,
)
from heygem.errors import DOWNLOAD_COMMAND, ModelError, WeightsMissingError
from heygem.settings import Settings

if TYPE_CHECKING:
    import torch

    from heygem.engine.model.backends import Backend, Network

log = logging.getLogger("heygem.engine.faces.detect")

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

    @property
    def torch_module(self) -> torch.nn.Module:
        """The loaded network, for the backend layer to convert."""
        return self._net

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
        return kept_detections(table)


def kept_detections(table: NDArray[np.float32]) -> list[Detection]:
    """One frame's candidate table -> Detections kept by greedy NMS, best first."""
    return [Detection(*map(float, row[:BOX_COLUMNS])) for row in greedy_nms(table)]


def _s3fd_input(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC BGR -> float NCHW, channels flipped and the mean subtracted (on the device),
    padded to the network's smallest input like `network_input`."""
    import torch

    mean = torch.tensor(S3FD_MEAN, device=pixels.device).view(1, 3, 1, 1)
    centred = pixels.permute(0, 3, 1, 2).flip(1).float() - mean
    missing_rows, missing_columns = padding(pixels.shape[1]), padding(pixels.shape[2])
    if missing_rows or missing_columns:  # the mean colour, as the numpy input pads
        centred = torch.nn.functional.pad(centred, (0, missing_columns, 0, missing_rows))
    return centred


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
    # A stable sort rather than topk: equal scores keep anchor order, as in the numpy decoder.
    best, index = (part[:, :k] for part in all_scores.sort(dim=1, descending=True, stable=True))
    best = torch.where(best > min_score, best, torch.zeros_like(best))
    chosen = _decode(all_offsets.gather(2, index.unsqueeze(1).expand(-1, 4, -1)), all_anchors[:, index])
    overlaps = _overlaps(chosen) > S3FD_NMS_IOU
    later = torch.ones(k, k, dtype=torch.bool, device=chosen.device).triu(1)
    return torch.cat([chosen, best.unsqueeze(-1), (overlaps & later).float()], dim=-1)


def _anchors(level: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    """(3, H * W) centre x, centre y and size of one level's anchors, row-major like its outputs."""
    import torch

    stride = anchor_stride(level)
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


# -- S3FD on OpenVINO -----------------------------------------------------------------------------
S3FD_DRIFT_BOUND = 1  # pixels any decoded anchor box may move from torch fp32 for a default precision
# Scores decide which boxes are kept: a precision that moves any anchor's score by more than this
# counts as drifting past every bound.
S3FD_SCORE_TOLERANCE = 0.01
S3FD_WORST_DRIFT = 255  # the largest drift a cache manifest records
S3FD_SAMPLE_SEED = 3
S3FD_SAMPLE_FRAMES = 2
S3FD_SAMPLE_SIZE = (96, 128)  # height, width: every level has anchors, the check takes ~0.1 s
S3FD_SAMPLE_BLOCK = 8  # pixels per random value: smooth regions and edges, not pure noise


class OpenVinoS3FD:
    """S3FD compiled by OpenVINO on the CPU: fed the torch detector's input, decoded in numpy, so
    a start from a checked cache entry needs no torch. Same name and cache tag as S3FDDetector:
    its boxes are held within S3FD_DRIFT_BOUND pixels of it (the check in backends.py)."""

    name = "s3fd"
    batched = False  # on the CPU, like torch there: key frames one by one, near the last faces first

    def __init__(self, backend: Backend, threshold: float = S3FD_THRESHOLD) -> None:
        if backend.forward is None:
            raise ValueError("OpenVinoS3FD needs a backend with a forward")
        self.backend = backend
        self._forward = backend.forward
        self.threshold = threshold
        self.cache_tag = f"s3fd:threshold={threshold}"

    def detect(self, frames: list[Frame]) -> list[list[Detection]]:
        if not frames:
            return []
        _check_same_size(frames)
        outputs = self._forward(network_input(np.stack(frames)))
        table = candidate_table(outputs, max(self.threshold, S3FD_MIN_SCORE))
        return [kept_detections(table[i]) for i in range(len(frames))]


def s3fd_sample() -> tuple[NDArray[np.float32], ...]:
    """The fixed check input: frames of blocky random colour, as the detector's input."""
    rng = np.random.default_rng(S3FD_SAMPLE_SEED)
    height, width = S3FD_SAMPLE_SIZE
    coarse = (S3FD_SAMPLE_FRAMES, height // S3FD_SAMPLE_BLOCK, width // S3FD_SAMPLE_BLOCK, 3)
    blocks = rng.integers(0, 256, coarse, dtype=np.uint8)
    frames = blocks.repeat(S3FD_SAMPLE_BLOCK, axis=1).repeat(S3FD_SAMPLE_BLOCK, axis=2)
    return (network_input(frames),)


def s3fd_torch_outputs(
    net: object, sample: tuple[NDArray[np.float32], ...], precision: str
) -> list[NDArray[np.float32]]:
    """The torch network on the check sample, outputs as float32 arrays."""
    from heygem.engine.model.backends import torch_outputs

    return [output.float().cpu().numpy() for output in torch_outputs(net, sample, precision)]


def s3fd_drift(outputs: list[NDArray[np.float32]], reference: list[NDArray[np.float32]]) -> int:
    """Whole pixels (rounded up) the furthest decoded anchor box moved from the reference; the
    worst drift when any score moved more than S3FD_SCORE_TOLERANCE or anything is not finite."""
    boxes, scores = anchor_boxes(outputs)
    reference_boxes, reference_scores = anchor_boxes(reference)
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        return S3FD_WORST_DRIFT
    if float(np.abs(scores - reference_scores).max()) > S3FD_SCORE_TOLERANCE:
        return S3FD_WORST_DRIFT
    moved = float(np.abs(boxes - reference_boxes).max())
    return min(S3FD_WORST_DRIFT, int(np.ceil(moved)))


def s3fd_network() -> Network:
    """S3FD as the backend layer converts, checks and caches it: any batch and frame size."""
    from heygem.engine.model.backends import Network, OpenVinoOutputs

    return Network(
        name="s3fd",
        sample=s3fd_sample,
        run_torch=s3fd_torch_outputs,
        drift=s3fd_drift,
        bound=S3FD_DRIFT_BOUND,
        unit="pixel(s)",
        serve=OpenVinoOutputs,
        dynamic_axes=((-1, 3, -1, -1),),
        entry_tag="s3fd",
    )


def _s3fd_detector(settings: Settings, weights: Path, device: str) -> FaceDetector:
    """S3FD on the backend Settings.backend picks: OpenVINO on the CPU from a checked cache entry
    (no torch), else converted and checked against the torch network; torch on CUDA, for
    `--backend torch`, and whenever OpenVINO cannot serve (one warning, never an error)."""
    from heygem.engine.model.backends import TORCH, BackendRequest, cached_backend, select_backend

    half = settings.precision != "fp32"
    if device != "cpu" or settings.backend == TORCH:
        return S3FDDetector(weights, device, batch_size=settings.detect_batch_size, half=half)
    network = s3fd_network()
    request = BackendRequest(
        settings.backend, settings.precision, "fp32", "cpu", weights, settings.backend_cache_dirs(weights)
    )
    fast = cached_backend(request, network)
    if fast is not None:
        return OpenVinoS3FD(fast)
    torch_detector = S3FDDetector(weights, device, batch_size=settings.detect_batch_size, half=half)
    backend = select_backend(torch_detector.torch_module, request, network)
    return torch_detector if backend.forward is None else OpenVinoS3FD(backend)


def create_detector(settings: Settings, device: str | None = None) -> ScaledDetector:
    """S3FD when its weights file exists, else the Haar cascade; detection capped at detect_max_side.

    `device` defaults to settings.device, resolved like the generator's (a GPU torch cannot drive
    means the CPU). S3FD runs in fp16 on CUDA unless the precision is fp32. Logs the choice.
    """
    weights = settings.resolved_detector_weights
    if weights.is_file():
        resolved = device or _resolve_device(settings.device)
        inner: FaceDetector = _s3fd_detector(settings, weights, resolved)
        runs_on = f"openvino {inner.backend.precision}" if isinstance(inner, OpenVinoS3FD) else "torch"
        reason = f"weights at {weights}, device {resolved}, {runs_on}"
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


def detector_label(detector: FaceDetector) -> str:
    """What finds the faces, for `models verify`: e.g. "s3fd on openvino bf16, 1 pixel(s) from
    fp32 eager", "s3fd on torch cpu", "haar"."""
    inner = detector.inner if isinstance(detector, ScaledDetector) else detector
    if isinstance(inner, OpenVinoS3FD):
        return f"{inner.name} on {inner.backend.label}"
    if isinstance(inner, S3FDDetector):
        return f"{inner.name} on torch {inner.device}"
    return inner.name


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
        settings.backend,
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
    "detector_label",
    "shared_detector",
]
