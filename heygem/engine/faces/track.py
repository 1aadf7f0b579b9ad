"""Face boxes over time: detection pass, face choice, pads, gap filling, smoothing and a box cache.

No torch here. The flow is

    raw = detect_faces(frames, detector, frame_size)    # every face in every frame (cacheable)
    track = build_track(raw, TrackOptions(...))          # one padded, smoothed box per frame

`track_faces` does both, with the cache in between: raw detections are cached by video content
and detector settings, so changing pads, smoothing or the face choice never re-detects.
`TrackOptions` carries the per-job choices; its defaults are the option schema's (SyncOptions).
Boxes are (x1, y1, x2, y2) ints in full-frame pixels; None means "no face: pass the frame through".
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, SupportsInt, cast

import numpy as np
from numpy.typing import NDArray

from heygem.engine.api import (
    Box,
    FaceChoice,
    Frame,
    Point,
    ProgressCallback,
    Quad,
    SyncOptions,
    option_default,
)
from heygem.engine.faces.detect import Detection, FaceDetector
from heygem.engine.hashing import sha256_of
from heygem.errors import InputError, NoFaceError
from heygem.settings import Settings

log = logging.getLogger("heygem.engine.faces.track")

RawFace = tuple[int, int, int, int, float]  # x1, y1, x2, y2, score
JsonDict = dict[str, Any]  # what json.loads gives for the stored tracks

# The schema's defaults (the reference's extra 10 px of chin, its 5-frame window), read not copied.
DEFAULT_PADS: Quad = option_default("pads")
SMOOTH_WINDOW: int = option_default("smooth_window")
# A plain dataclass default, so the class attribute is the server's default detection batch.
DETECT_BATCH: int = Settings.detect_batch_size
MAX_GAP_FRAMES = 5  # gaps up to this long (0.2 s at 25 fps) hold the neighbouring box
PROGRESS_STAGE = "detect"
CACHE_FORMAT = 1  # bump when the stored layout changes; old entries then simply miss
SCORE_DIGITS = 4
# Sparse detection: key-frame faces must overlap this much to count as the same face, and a mean
# grey change above CUT_GREY_CHANGE (0-255) between consecutive CUT_THUMB_SIDE-px thumbnails is a
# scene cut. A talking head moves a few grey levels per frame; a cut moves tens.
SPARSE_MIN_IOU = 0.5
CUT_THUMB_SIDE = 32
CUT_GREY_CHANGE = 24.0
# A key frame is first searched only around the previous key frame's faces: each face's
# neighbourhood (NEAR_CONTEXT times its size), at the scale the detector searches whole frames
# (so the boxes are alike), costs a Haar cascade about a sixth of the whole frame. Every
# NEAR_FULL_EVERY-th key frame, and whenever a face is not found again near where it was, the
# whole frame is searched, so a face entering the picture is found within that many strides.
NEAR_CONTEXT = 2.5
NEAR_MIN_IOU = 0.3
NEAR_FULL_EVERY = 5
# ...unless the neighbourhoods together cover this much of the frame (many faces, or a close-up),
# when the whole frame costs less than searching them one by one.
NEAR_MAX_AREA_FRACTION = 0.5
# Names this key-frame search in cache keys, so entries made by an earlier search are not taken
# for this one's.
KEY_FRAME_SEARCH = "near-previous"


# --------------------------------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class TrackOptions:
    """How one job turns detections into boxes: face choice, pads, gaps, smoothing, fixed box.

    Defaults are the option schema's; `from_job` takes a job's SyncOptions and the server's
    detection batch size.
    """

    pads: Quad = DEFAULT_PADS  # top, bottom, left, right
    smooth: bool = option_default("smooth")
    smooth_window: int = SMOOTH_WINDOW
    face_choice: FaceChoice = option_default("face_choice")
    face_point: Point | None = option_default("face_point")
    box: Quad | None = option_default("box")  # fixed box, top bottom left right: no detection
    batch_size: int = DETECT_BATCH  # frames per detector pass
    max_gap: int = MAX_GAP_FRAMES
    detect_every: int = 1  # detector on every Nth frame, the rest filled in (settings.detect_every)

    @classmethod
    def from_job(cls, options: SyncOptions, settings: Settings) -> TrackOptions:
        return cls(
            pads=options.pads,
            smooth=options.smooth,
            smooth_window=options.smooth_window,
            face_choice=options.face_choice,
            face_point=options.face_point,
            box=options.box,
            batch_size=settings.detect_batch_size,
            detect_every=settings.detect_every,
        )


DEFAULT_TRACK = TrackOptions()


@dataclass(frozen=True)
class CachedVideo:
    """Where `track_faces` may find or keep raw detections: a cache and the video they belong to.

    `params` names whatever else changes the frames (e.g. the fps they were read at).
    """

    cache: TrackCache
    video: Path
    params: Mapping[str, object] = field(default_factory=dict)

    def key(self, detector_tag: str, frame_size: tuple[int, int]) -> str:
        """The cache key of this video's detections (also what keeps an avatar's entry alive)."""
        params = {"frame_size": list(frame_size), **self.params}
        return self.cache.key(self.video, detector_tag, **params)

    def load(self, detector_tag: str, frame_size: tuple[int, int]) -> RawDetections | None:
        return self.cache.get(self.key(detector_tag, frame_size))

    def store(self, detector_tag: str, frame_size: tuple[int, int], raw: RawDetections) -> None:
        self.cache.put(self.key(detector_tag, frame_size), raw)


@dataclass
class RawDetections:
    """Every face the detector found in every frame, in full-frame pixels (the cacheable part)."""

    width: int
    height: int
    faces: list[list[RawFace]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.faces)

    def to_dict(self) -> JsonDict:
        faces = [[list(face) for face in frame] for frame in self.faces]
        return {"width": self.width, "height": self.height, "faces": faces}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RawDetections:
        faces = [[_raw_face(f) for f in frame] for frame in data["faces"]]
        return cls(width=int(data["width"]), height=int(data["height"]), faces=faces)


def _raw_face(values: Sequence[Any]) -> RawFace:
    x1, y1, x2, y2, score = values
    return int(x1), int(y1), int(x2), int(y2), float(score)


@dataclass
class FaceTrack:
    """One box per source frame (or None), or one fixed box for every frame. JSON-friendly."""

    width: int
    height: int
    boxes: list[Box | None] = field(default_factory=list)
    fixed: Box | None = None

    def __len__(self) -> int:
        return len(self.boxes)

    def box_at(self, index: int) -> Box | None:
        """The box of source frame `index`. Past the end, the last frame's box is held."""
        if self.fixed is not None:
            return self.fixed
        if not self.boxes:
            return None
        return self.boxes[min(index, len(self.boxes) - 1)]

    def count_missing(self) -> int:
        """Frames without a face (they pass through unchanged)."""
        return 0 if self.fixed is not None else sum(box is None for box in self.boxes)

    def to_dict(self) -> JsonDict:
        return {
            "width": self.width,
            "height": self.height,
            "boxes": [list(b) if b is not None else None for b in self.boxes],
            "fixed": list(self.fixed) if self.fixed is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaceTrack:
        boxes = [_box(b) if b is not None else None for b in data.get("boxes", [])]
        fixed = _box(data["fixed"]) if data.get("fixed") is not None else None
        return cls(width=int(data["width"]), height=int(data["height"]), boxes=boxes, fixed=fixed)


def _box(values: Iterable[SupportsInt]) -> Box:
    x1, y1, x2, y2 = (int(v) for v in values)
    return x1, y1, x2, y2


def count_missing(track: FaceTrack) -> int:
    return track.count_missing()


# --------------------------------------------------------------------------------------------------
# detection pass


def detect_faces(
    frames: Iterable[Frame],
    detector: FaceDetector,
    frame_size: tuple[int, int],
    batch_size: int = DETECT_BATCH,
    on_progress: ProgressCallback | None = None,
    total: int = 0,
    every: int = 1,
) -> RawDetections:
    """Stream frames through the detector in batches, keeping only boxes.

    `frame_size` is the full (width, height) the boxes are wanted in; frames may be smaller (read
    downscaled for detection) and their boxes are scaled up. `total` is only for progress.
    `every` > 1 runs the detector on every Nth frame only (see `SparseDetection`).
    """
    width, height = frame_size
    raw = RawDetections(width=width, height=height)
    detection = start_detection(detector, raw, batch_size, every, _Progress(on_progress, total))
    for frame in frames:
        detection.add(frame)
    detection.finish()
    return raw


class FaceDetection(Protocol):
    """A detection pass fed one frame at a time: `raw.faces` grows as batches are resolved."""

    raw: RawDetections

    def add(self, frame: Frame) -> None: ...

    def finish(self) -> None:
        """Resolve what is still pending; afterwards `raw` has one entry per frame added."""
        ...


def start_detection(
    detector: FaceDetector,
    raw: RawDetections,
    batch_size: int = DETECT_BATCH,
    every: int = 1,
    progress: Callable[[int], None] | None = None,
) -> FaceDetection:
    """A detection pass appending to `raw`: on every frame, or on every `every`th (sparse)."""
    report = progress or _Progress(None, 0)
    if every > 1:
        return SparseDetection(detector, raw, every, batch_size, report)
    return DenseDetection(detector, raw, batch_size, report)


def _detect_scaled(batch: list[Frame], detector: FaceDetector, raw: RawDetections) -> list[list[RawFace]]:
    """The detector's faces in each frame, in the full-frame pixels `raw` is kept in."""
    frame_h, frame_w = batch[0].shape[:2]
    sx, sy = raw.width / frame_w, raw.height / frame_h
    return [[_to_raw(d.scaled(sx, sy)) for d in faces] for faces in detector.detect(batch)]


@dataclass
class _Progress:
    callback: ProgressCallback | None
    total: int

    def __call__(self, done: int) -> None:
        if self.callback is not None:
            self.callback(done, max(self.total, done), PROGRESS_STAGE)


class DenseDetection:
    """The detector on every frame, `batch_size` frames per pass."""

    def __init__(
        self, detector: FaceDetector, raw: RawDetections, batch_size: int, progress: Callable[[int], None]
    ) -> None:
        self.detector, self.raw, self.batch_size, self.progress = detector, raw, batch_size, progress
        self.batch: list[Frame] = []

    def add(self, frame: Frame) -> None:
        self.batch.append(frame)
        if len(self.batch) == self.batch_size:
            self.finish()

    def finish(self) -> None:
        if self.batch:
            self.raw.faces.extend(_detect_scaled(self.batch, self.detector, self.raw))
            self.batch = []
            self.progress(len(self.raw.faces))


@dataclass
class _Stride:
    """A detected key frame and the frames since the previous key frame, not detected yet."""

    key: Frame
    between: list[Frame]
    key_faces: list[RawFace] = field(default_factory=list)
    cut: bool | None = None  # a scene cut since the previous key frame; None until checked


class SparseDetection:
    """Detection on every Nth frame (and the last), with the frames between filled in.

    Between two key frames whose faces match (same count, each overlapping its counterpart by
    SPARSE_MIN_IOU) and with no scene cut, each face moves linearly from one key frame to the
    next; the track's smoothing then treats those frames like detected ones. A face that appears,
    disappears or jumps, or a cut, makes the detector look at every frame between the two key frames,
    so the result there is exactly what every-frame detection gives. Key frames go to the detector
    `batch_size` at a time; memory holds about `every * batch_size` detection-sized frames.
    """

    def __init__(
        self,
        detector: FaceDetector,
        raw: RawDetections,
        every: int,
        batch_size: int,
        progress: Callable[[int], None],
    ) -> None:
        self.detector, self.raw, self.every = detector, raw, every
        self.batch_size, self.progress = batch_size, progress
        self.previous: _Stride | None = None
        self.pending: list[_Stride] = []
        self.between: list[Frame] = []
        self.added = 0
        self.keys_since_full = 0  # key frames searched only near the previous faces, in a row
        self.dense_frames = 0  # frames between key frames that needed the detector after all

    def add(self, frame: Frame) -> None:
        if self.added % self.every == 0:
            self._key(frame)
        else:
            self.between.append(frame)
        self.added += 1

    def finish(self) -> None:
        if self.between:  # the final frame is always a key frame: nothing is extrapolated
            self._key(self.between.pop())
        if self.pending:
            self._resolve()
        if self.dense_frames:
            log.info(
                "face detection on every frame for %d frames (cuts or faces changing)", self.dense_frames
            )
            self.dense_frames = 0

    def _key(self, frame: Frame) -> None:
        self.pending.append(_Stride(frame, self.between))
        self.between = []
        if len(self.pending) == self.batch_size:
            self._resolve()

    def _resolve(self) -> None:
        strides, self.pending = self.pending, []
        # A GPU wants the key frames together; otherwise each is searched alone, near the faces
        # of the key frame before it.
        batched = bool(getattr(self.detector, "batched", False))
        together = _detect_scaled([s.key for s in strides], self.detector, self.raw) if batched else []
        for index, stride in enumerate(strides):
            stride.key_faces = together[index] if batched else self._detect_key(stride)
            self.raw.faces.extend(self._between(stride))
            self.raw.faces.append(stride.key_faces)
            self.previous = stride
        self.progress(len(self.raw.faces))

    def _detect_key(self, stride: _Stride) -> list[RawFace]:
        near = self._near_previous(stride)
        if near is not None:
            self.keys_since_full += 1
            return near
        self.keys_since_full = 0
        return _detect_scaled([stride.key], self.detector, self.raw)[0]

    def _near_previous(self, stride: _Stride) -> list[RawFace] | None:
        """The previous key frame's faces found again near where they were; None: search it all."""
        before = self.previous
        due = self.keys_since_full >= NEAR_FULL_EVERY - 1
        if before is None or not before.key_faces or due or self._cut_before(stride):
            return None
        if _near_area(before.key_faces) > NEAR_MAX_AREA_FRACTION * self.raw.width * self.raw.height:
            return None  # many or big faces: one look at the whole frame is cheaper
        near = [_find_near(stride.key, face, self.detector, self.raw) for face in before.key_faces]
        found = [face for face in near if face is not None]
        return found if len(found) == len(near) else None

    def _cut_before(self, stride: _Stride) -> bool:
        if stride.cut is None:
            assert self.previous is not None
            stride.cut = _has_cut([self.previous.key, *stride.between, stride.key])
        return stride.cut

    def _between(self, stride: _Stride) -> list[list[RawFace]]:
        if not stride.between:
            return []
        before = self.previous
        assert before is not None, "only the first key frame has no predecessor, and nothing before it"
        matched = _match_faces(before.key_faces, stride.key_faces)
        if matched is not None and not self._cut_before(stride):
            steps = len(stride.between) + 1
            return [_interpolate(matched, k / steps) for k in range(1, steps)]
        self.dense_frames += len(stride.between)
        return _detect_scaled(stride.between, self.detector, self.raw)


def _near_area(faces: Sequence[RawFace]) -> float:
    """Full-frame pixels the neighbourhoods of `faces` cover together (overlaps counted twice)."""
    return sum((max(f[2] - f[0], f[3] - f[1]) * NEAR_CONTEXT) ** 2 for f in faces)


def _find_near(frame: Frame, face: RawFace, detector: FaceDetector, raw: RawDetections) -> RawFace | None:
    """The face in `frame` that overlaps `face` (full-frame pixels) the most, searching only its
    neighbourhood; None when nothing there overlaps it enough."""
    region = _Neighbourhood.around(frame, face, raw, getattr(detector, "max_side", None))
    found = [region.to_full(d) for d in detector.detect([region.pixels])[0]]
    best = max(found, key=lambda other: _overlap(face, other), default=None)
    return best if best is not None and _overlap(face, best) >= NEAR_MIN_IOU else None


@dataclass(frozen=True)
class _Neighbourhood:
    """A face's surroundings cut from a detection frame, shrunk to the detector's `max_side` scale."""

    pixels: Frame
    left: float  # its top-left corner in full-frame pixels
    top: float
    scale_x: float  # full-frame pixels per pixel of `pixels`
    scale_y: float

    @classmethod
    def around(cls, frame: Frame, face: RawFace, raw: RawDetections, max_side: int | None) -> _Neighbourhood:
        import cv2

        frame_h, frame_w = frame.shape[:2]
        fx, fy = frame_w / raw.width, frame_h / raw.height  # frame pixels per full-frame pixel
        x1, y1, x2, y2 = face[0] * fx, face[1] * fy, face[2] * fx, face[3] * fy
        side = max(x2 - x1, y2 - y1, 1.0)
        reach = side * NEAR_CONTEXT / 2
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        left, top = max(0, int(cx - reach)), max(0, int(cy - reach))
        right, bottom = min(frame_w, int(cx + reach) + 1), min(frame_h, int(cy + reach) + 1)
        shrink = min(1.0, max_side / max(frame_w, frame_h)) if max_side else 1.0
        size = max(1, round((right - left) * shrink)), max(1, round((bottom - top) * shrink))
        # cv2's stubs type every image as MatLike; area resizing keeps the uint8 dtype.
        pixels = cast(Frame, cv2.resize(frame[top:bottom, left:right], size, interpolation=cv2.INTER_AREA))
        return cls(pixels, left / fx, top / fy, (right - left) / size[0] / fx, (bottom - top) / size[1] / fy)

    def to_full(self, d: Detection) -> RawFace:
        x1, y1 = self.left + d.x1 * self.scale_x, self.top + d.y1 * self.scale_y
        x2, y2 = self.left + d.x2 * self.scale_x, self.top + d.y2 * self.scale_y
        return _to_raw(Detection(x1, y1, x2, y2, d.score))


def _match_faces(before: Sequence[RawFace], after: Sequence[RawFace]) -> list[tuple[RawFace, RawFace]] | None:
    """Pairs of the same face in two key frames, or None when the faces do not correspond."""
    if len(before) != len(after):
        return None
    pairs = []
    unused = list(after)
    for face in before:
        best = max(unused, key=lambda other: _overlap(face, other), default=None)
        if best is None or _overlap(face, best) < SPARSE_MIN_IOU:
            return None
        unused.remove(best)
        pairs.append((face, best))
    return pairs


def _overlap(a: RawFace, b: RawFace) -> float:
    """Intersection over union of two boxes."""
    inter_w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _interpolate(pairs: list[tuple[RawFace, RawFace]], t: float) -> list[RawFace]:
    faces = []
    for a, b in pairs:
        x1, y1, x2, y2 = (int(round(p + (q - p) * t)) for p, q in zip(a[:4], b[:4], strict=True))
        faces.append((x1, y1, x2, y2, min(a[4], b[4])))
    return faces


def _has_cut(frames: list[Frame]) -> bool:
    """Whether consecutive frames differ like a scene cut: mean grey change of a tiny thumbnail."""
    import cv2

    thumbs = []
    for frame in frames:
        grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        thumbs.append(cv2.resize(grey, (CUT_THUMB_SIDE, CUT_THUMB_SIDE), interpolation=cv2.INTER_AREA))
    return any(
        float(np.mean(cv2.absdiff(a, b))) > CUT_GREY_CHANGE for a, b in zip(thumbs, thumbs[1:], strict=False)
    )


def _to_raw(d: Detection) -> RawFace:
    # The reference clips negatives to 0 and truncates to int; the far edges are clamped after padding.
    x1, y1, x2, y2 = (int(max(0.0, v)) for v in (d.x1, d.y1, d.x2, d.y2))
    return x1, y1, x2, y2, round(d.score, SCORE_DIGITS)


# --------------------------------------------------------------------------------------------------
# from detections to one box per frame


def build_track(
    raw: RawDetections, options: TrackOptions = DEFAULT_TRACK, name: str = "the video"
) -> FaceTrack:
    """Choose a face per frame, pad and clamp it, hold boxes over short gaps, smooth each run.

    Raises NoFaceError only when no frame has a face. Frames in longer gaps stay None.
    """
    check_any_face(raw, options, name)
    boxes = settle_boxes(raw, options)
    missing = sum(box is None for box in boxes)
    if missing:
        log.info("%d of %d frames of %s have no face and pass through unchanged", missing, len(boxes), name)
    return FaceTrack(width=raw.width, height=raw.height, boxes=boxes)


def check_any_face(raw: RawDetections, options: TrackOptions, name: str) -> None:
    """Raise NoFaceError when no frame of `raw` has a face `options` would choose."""
    if not any(choose_face(faces, options.face_choice, options.face_point) for faces in raw.faces):
        raise NoFaceError(
            f"no face found in {name} (checked {len(raw)} frames); try a clearer frontal video or give --box"
        )


def settle_boxes(raw: RawDetections, options: TrackOptions = DEFAULT_TRACK) -> list[Box | None]:
    """One box per frame of `raw` (None: no face), chosen, padded, gap-filled and smoothed.

    A frame's box depends on at most `options.max_gap + 1` frames before it and
    `settle_lookahead(options)` frames after it, so a window of `raw` settles its middle exactly.
    """
    chosen = [choose_face(faces, options.face_choice, options.face_point) for faces in raw.faces]
    size = (raw.width, raw.height)
    boxes = [pad_box(box, options.pads, size) if box is not None else None for box in chosen]
    boxes = fill_gaps(boxes, options.max_gap)
    if options.smooth:
        boxes = smooth_runs(boxes, options.smooth_window)
    return boxes


def settle_lookahead(options: TrackOptions) -> int:
    """Frames after a frame that can change its box: a gap's far end, then the smoothing window."""
    return options.max_gap + 1 + (options.smooth_window if options.smooth else 0)


def choose_face(
    faces: Sequence[RawFace],
    face_choice: FaceChoice = DEFAULT_TRACK.face_choice,
    face_point: Point | None = None,
) -> Box | None:
    """The largest face, or the one whose centre is nearest `face_point` (x, y) for "nearest"."""
    usable = [f for f in faces if f[2] > f[0] and f[3] > f[1]]
    if not usable:
        return None
    if face_choice == "nearest":
        if face_point is None:
            raise InputError("face_choice 'nearest' needs a face point (x, y)")
        px, py = face_point
        best = min(usable, key=lambda f: ((f[0] + f[2]) / 2 - px) ** 2 + ((f[1] + f[3]) / 2 - py) ** 2)
    elif face_choice == "largest":
        best = max(usable, key=lambda f: (f[2] - f[0]) * (f[3] - f[1]))
    else:
        raise InputError(f"unknown face choice {face_choice!r}; use largest or nearest")
    return best[0], best[1], best[2], best[3]


def pad_box(box: Box, pads: Sequence[int], frame_size: tuple[int, int]) -> Box | None:
    """Grow a box by (top, bottom, left, right) pixels, clamped to the frame; None if nothing is left."""
    top, bottom, left, right = pads
    width, height = frame_size
    x1, y1, x2, y2 = box
    x1, y1 = min(width, max(0, x1 - left)), min(height, max(0, y1 - top))
    x2, y2 = max(0, min(width, x2 + right)), max(0, min(height, y2 + bottom))
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def fill_gaps(boxes: Sequence[Box | None], max_gap: int = MAX_GAP_FRAMES) -> list[Box | None]:
    """Give each frame of a gap of at most `max_gap` frames the box of its nearest face frame.

    A detector missing a face for a frame or two (blink, motion blur) should not make the mouth
    flicker back to the original; a long gap is a real absence and stays None.
    """
    filled = list(boxes)
    i, n = 0, len(filled)
    while i < n:
        if filled[i] is not None:
            i += 1
            continue
        end = i
        while end < n and filled[end] is None:
            end += 1
        if end - i <= max_gap:
            before = filled[i - 1] if i > 0 else None
            after = filled[end] if end < n else None
            for k in range(i, end):
                nearer_before = before is not None and (after is None or k - (i - 1) <= end - k)
                filled[k] = before if nearer_before else after
        i = end
    return filled


def smooth_boxes(boxes: NDArray[np.int64], window: int = SMOOTH_WINDOW) -> NDArray[np.int64]:
    """The reference's smoothing, exactly: in place over an int (N, 4) array, row by row.

    Row i becomes the truncated mean of rows i..i+window-1 (not yet smoothed) when they exist,
    else of the last `window` rows (some already smoothed). For N < window the last slice starts
    at N-window, a negative index, so N=4 averages only the last row, N=3 the last two, N<=2 all.
    """
    n = len(boxes)
    for i in range(n):
        rows = boxes[n - window :] if i + window > n else boxes[i : i + window]
        boxes[i] = np.mean(rows, axis=0)
    return boxes


def smooth_runs(boxes: Sequence[Box | None], window: int = SMOOTH_WINDOW) -> list[Box | None]:
    """Smooth each run of consecutive frames that have a box, separately."""
    if window <= 1:
        return list(boxes)
    out = list(boxes)
    i, n = 0, len(out)
    while i < n:
        if out[i] is None:
            i += 1
            continue
        end = i
        while end < n and out[end] is not None:
            end += 1
        run = smooth_boxes(np.array(out[i:end], dtype=np.int64), window)
        out[i:end] = [_box(row) for row in run]
        i = end
    return out


def fixed_track(box_tblr: Sequence[int], frame_size: tuple[int, int]) -> FaceTrack:
    """`--box TOP BOTTOM LEFT RIGHT` (the reference's order): used as given, clamped to the frame.

    No detection, padding or smoothing. Raises InputError when nothing of the box is in the frame.
    """
    top, bottom, left, right = (int(v) for v in box_tblr)
    width, height = frame_size
    x1, x2 = min(max(0, left), width), min(max(0, right), width)
    y1, y2 = min(max(0, top), height), min(max(0, bottom), height)
    if x2 <= x1 or y2 <= y1:
        raise InputError(
            f"--box {top} {bottom} {left} {right} (top bottom left right) "
            f"is empty inside the {width}x{height} frame"
        )
    return FaceTrack(width=width, height=height, fixed=(x1, y1, x2, y2))


# --------------------------------------------------------------------------------------------------
# one call for the pipeline


def track_faces(
    frames: Iterable[Frame],
    detector: FaceDetector,
    frame_size: tuple[int, int],
    options: TrackOptions = DEFAULT_TRACK,
    *,
    cache: CachedVideo | None = None,
    on_progress: ProgressCallback | None = None,
    total: int = 0,
    name: str = "the video",
) -> FaceTrack:
    """Boxes for every frame of a video: fixed `options.box`, else cached or fresh detections.

    `frames` is consumed only when detection actually runs (no fixed box, no cache hit), so pass a
    lazy iterator such as `read_frames(path, info, max_side=settings.detect_max_side)`. `total` is
    the expected frame count, for progress only; `name` names the video in messages.
    """
    known = known_track(detector, frame_size, options, cache, name)
    if known is not None:
        _close(frames)
        if on_progress is not None and known.fixed is None:
            on_progress(len(known), len(known), PROGRESS_STAGE)
        return known
    raw = detect_faces(
        frames, detector, frame_size, options.batch_size, on_progress, total, options.detect_every
    )
    if cache is not None:
        cache.store(detector.cache_tag, frame_size, raw)
    return build_track(raw, options, name)


def known_track(
    detector: FaceDetector,
    frame_size: tuple[int, int],
    options: TrackOptions = DEFAULT_TRACK,
    cache: CachedVideo | None = None,
    name: str = "the video",
) -> FaceTrack | None:
    """The track without running the detector: the fixed `options.box`, or cached detections.
    None when the video has to be detected."""
    if options.box is not None:
        return fixed_track(options.box, frame_size)
    if cache is None:
        return None
    raw = cache.load(detector.cache_tag, frame_size)
    return None if raw is None else build_track(raw, options, name)


def _close(frames: Iterable[Frame]) -> None:
    close = getattr(frames, "close", None)
    if callable(close):
        close()


# --------------------------------------------------------------------------------------------------
# cache


class TrackCache:
    """Raw detections on disk, keyed by video content + detector settings. Safe across processes.

    Files are written to a unique temporary name and renamed, so a reader never sees half a file;
    an unreadable entry counts as a miss.
    """

    def __init__(self, cache_dir: Path | str) -> None:
        self.cache_dir = Path(cache_dir)
        self._hashes: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()

    def key(self, video_path: Path | str, detector_tag: str, **params: object) -> str:
        payload = json.dumps(
            {
                "format": CACHE_FORMAT,
                "video": self.content_hash(video_path),
                "detector": detector_tag,
                "params": params,
            },
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def content_hash(self, video_path: Path | str) -> str:
        """SHA-256 of the file's bytes, read in chunks; remembered per (path, size, mtime)."""
        path = Path(video_path)
        stat = path.stat()
        memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if memo in self._hashes:
                return self._hashes[memo]
        digest = sha256_of(path)
        with self._lock:
            self._hashes[memo] = digest
        return digest

    def path_for(self, key: str) -> Path:
        return self.cache_dir / f"{key}.json"

    def get(self, key: str) -> RawDetections | None:
        path = self.path_for(key)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            raw = RawDetections.from_dict(data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable face cache entry %s: %s", path.name, exc)
            return None
        try:
            os.utime(path)  # retention prunes entries by last use: keep active avatars cached
        except OSError:
            pass  # a read-only cache still serves hits
        log.info("face boxes from cache (%d frames)", len(raw))
        return raw

    def put(self, key: str, raw: RawDetections) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        final = self.path_for(key)
        temp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
        try:
            temp.write_text(json.dumps(raw.to_dict(), separators=(",", ":")), encoding="utf-8")
            os.replace(temp, final)
        except OSError as exc:
            log.warning("could not store face boxes in the cache: %s", exc)  # the job can go on
        finally:
            temp.unlink(missing_ok=True)


__all__ = [
    "RawDetections",
    "FaceTrack",
    "TrackOptions",
    "CachedVideo",
    "detect_faces",
    "build_track",
    "choose_face",
    "pad_box",
    "fill_gaps",
    "smooth_boxes",
    "smooth_runs",
    "fixed_track",
    "track_faces",
    "known_track",
    "settle_boxes",
    "settle_lookahead",
    "start_detection",
    "count_missing",
    "TrackCache",
    "MAX_GAP_FRAMES",
    "SMOOTH_WINDOW",
    "DEFAULT_PADS",
]
