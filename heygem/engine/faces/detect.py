"""Face detectors behind one small protocol: S3FD (weights file) or OpenCV's Haar cascade (no download).

This is the only faces module that touches torch or face_alignment, and only inside S3FDDetector,
so importing it stays cheap. Detectors take BGR uint8 frames and return every face per frame, in
that frame's pixels. `create_detector` picks one from the settings and caps detection resolution.
"""

from __future__ import annotations

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
    """Finds faces. `name` is short ("s3fd", "haar"); `cache_tag` also names what changes results."""

    name: str
    cache_tag: str

    def detect(self, frames: list[Frame]) -> list[list[Detection]]:
        """All faces in each frame (same-size HxWx3 uint8 BGR frames), best first."""
        ...


class S3FDDetector:
    """S3FD through face_alignment's network and decoder, fed exactly like the reference.

    Frames go in as BGR; face_alignment's batch decoder flips channels and subtracts (104, 117, 123),
    which is the reference's pre-processing. NMS at IoU 0.3, then boxes scoring above 0.5 are kept.
    """

    name = "s3fd"

    def __init__(
        self, weights_path: Path | str, device: str = "cpu", threshold: float = S3FD_THRESHOLD
    ) -> None:
        self.weights_path = Path(weights_path)
        self.device = device
        self.threshold = threshold
        self.cache_tag = f"s3fd:threshold={threshold}"
        self._net = _load_s3fd(self.weights_path, device)
        self._lock = threading.Lock()

    def detect(self, frames: list[Frame]) -> list[list[Detection]]:
        if not frames:
            return []
        _check_same_size(frames)
        with self._lock:
            return self._detect_splitting_on_oom(frames)

    def _detect_splitting_on_oom(self, frames: list[Frame]) -> list[list[Detection]]:
        import torch

        try:
            return self._detect_batch(frames)
        except torch.cuda.OutOfMemoryError:
            if len(frames) == 1:
                raise ModelError(
                    "out of GPU memory detecting faces in a single frame; lower detect_max_side"
                ) from None
            torch.cuda.empty_cache()
            half = len(frames) // 2
            log.warning("out of GPU memory detecting %d frames; retrying in halves", len(frames))
            first = self._detect_splitting_on_oom(frames[:half])
            return first + self._detect_splitting_on_oom(frames[half:])

    def _detect_batch(self, frames: list[Frame]) -> list[list[Detection]]:
        import torch
        from face_alignment.detection.sfd.detect import batch_detect

        batch = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)  # uint8 NCHW, still BGR
        with torch.inference_mode():
            candidates = batch_detect(self._net, batch, device=self.device)
        return [self._keep(candidates[i]) for i in range(len(frames))]

    def _keep(self, candidates: NDArray[np.float32]) -> list[Detection]:
        """(N, 5) rows of x1, y1, x2, y2, score -> the boxes kept after NMS and the threshold."""
        from face_alignment.detection.sfd.bbox import nms

        if len(candidates) == 0:
            return []
        boxes = candidates[nms(candidates, S3FD_NMS_IOU)]
        return [Detection(*map(float, box[:5])) for box in boxes if box[4] > self.threshold]


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

    `device` defaults to settings.device ("auto" = cuda when torch sees a GPU). Logs the choice.
    """
    weights = settings.resolved_detector_weights
    if weights.is_file():
        resolved = device or _resolve_device(settings.device)
        inner: FaceDetector = S3FDDetector(weights, resolved)
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


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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
]
