"""Face boxes settled while the synthesis pass reads the video, so a job that detects decodes once.

Without this, a job on a new video decodes it twice: once (downscaled) to detect, once at full size
to render. Here the detector gets a downscaled copy of each full-size frame the synthesis pass reads,
and a frame is handed on with its box as soon as the detections around it can no longer change that
box (`settle_lookahead` frames later, plus the sparse detector's key-frame batch). The boxes are
exactly those of `build_track` on the whole video: the same `settle_boxes` runs on a window whose
edges are far enough away (tests/test_faces.py checks this on random tracks).

Only the first pass over the source is detected; when the schedule wraps (loop, pingpong), the whole
video has been seen, its track is built once, cached like a detection pass's, and serves the rest.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from typing import cast

from heygem.engine.api import Box, Frame
from heygem.engine.faces.detect import FaceDetector
from heygem.engine.faces.track import (
    CachedVideo,
    FaceTrack,
    RawDetections,
    TrackOptions,
    build_track,
    settle_boxes,
    settle_lookahead,
    start_detection,
)
from heygem.engine.media.decode import scaled_size
from heygem.engine.media.process import BGR_CHANNELS

log = logging.getLogger(__name__)

# Full-size frames held while their boxes settle: the sparse detector's key-frame batch is cut to
# fit (a 4K video then detects one stride at a time), the settling margin is always held.
HELD_FRAMES_BUDGET_BYTES = 192 * 2**20

BoxedFrame = tuple[int, Frame, Box | None]  # source index, full-size frame, its box (None: no face)


def tracked_frames(
    frames: Iterator[tuple[int, Frame]],
    detector: FaceDetector,
    options: TrackOptions,
    *,
    frame_size: tuple[int, int],
    detect_side: int,
    expected_frames: int,
    cache: CachedVideo | None = None,
    name: str = "the video",
) -> Iterator[BoxedFrame]:
    """(source index, frame, box) for each scheduled (source index, frame), detecting as it reads.

    `frames` must start with the source's frames in order from 0 (loop and pingpong do). The
    detector sees each first-pass frame shrunk to at most `detect_side` pixels. Raises NoFaceError
    when the first pass ends without any face, after the frames before it were handed on. The raw
    detections are cached when the first pass covered the video: the schedule wrapped, or it ended
    after at least `expected_frames` (the container's count).
    """
    tracker = _StreamingTrack(detector, options, frame_size, detect_side, cache)
    try:
        for source_index, frame in frames:
            if tracker.track is None and source_index != tracker.added:  # wrapped: the video is complete
                yield from tracker.complete(name, whole_video=True)
            if tracker.track is not None:
                yield source_index, frame, tracker.track.box_at(source_index)
            else:
                yield from tracker.add(frame)
        if tracker.track is None:
            yield from tracker.complete(name, whole_video=tracker.added >= expected_frames)
    finally:
        close = getattr(frames, "close", None)
        if callable(close):
            close()


class _StreamingTrack:
    """Raw detections of the frames added so far, and the full-size frames whose box is not settled."""

    def __init__(
        self,
        detector: FaceDetector,
        options: TrackOptions,
        frame_size: tuple[int, int],
        detect_side: int,
        cache: CachedVideo | None,
    ) -> None:
        width, height = frame_size
        self.options, self.cache, self.cache_tag = options, cache, detector.cache_tag
        self.raw = RawDetections(width=width, height=height)
        self.detect_size = scaled_size(width, height, detect_side)
        self.margin = settle_lookahead(options)
        key_batch = _key_batch(options, width * height * BGR_CHANNELS)
        self.detection = start_detection(detector, self.raw, key_batch, options.detect_every)
        self.held: deque[Frame] = deque()
        self.added = 0
        self.settled = 0  # frames handed on so far
        self.track: FaceTrack | None = None  # the first pass's whole track, once it has ended

    def add(self, frame: Frame) -> list[BoxedFrame]:
        self.held.append(frame)
        self.detection.add(self._shrunk(frame))
        self.added += 1
        return self._settle_up_to(len(self.raw.faces) - self.margin)

    def complete(self, name: str, whole_video: bool) -> list[BoxedFrame]:
        """End the first pass: build its whole track (NoFaceError when it has no face), cache the
        detections when they cover the whole video, and hand on every frame still held."""
        self.detection.finish()
        track = self.track = build_track(self.raw, self.options, name)
        if self.cache is not None and whole_video:
            self.cache.store(self.cache_tag, (self.raw.width, self.raw.height), self.raw)
        released = [
            (self.settled + k, frame, track.box_at(self.settled + k)) for k, frame in enumerate(self.held)
        ]
        self.settled += len(self.held)
        self.held.clear()
        return released

    def _settle_up_to(self, end: int) -> list[BoxedFrame]:
        if end <= self.settled:
            return []
        # Far enough back that the window's own start changes no box handed on from it.
        start = max(0, self.settled - self.margin)
        window = RawDetections(self.raw.width, self.raw.height, self.raw.faces[start:])
        boxes = settle_boxes(window, self.options)
        released = [(index, self.held.popleft(), boxes[index - start]) for index in range(self.settled, end)]
        self.settled = end
        return released

    def _shrunk(self, frame: Frame) -> Frame:
        import cv2

        if frame.shape[1::-1] == self.detect_size:
            # A copy: the frame itself is drawn on once handed on, while the detector may still
            # compare it with the next key frame (scene cut check).
            return frame.copy()
        # cv2's stubs type every image as MatLike; area resizing keeps the uint8 dtype.
        return cast(Frame, cv2.resize(frame, self.detect_size, interpolation=cv2.INTER_AREA))


def _key_batch(options: TrackOptions, frame_bytes: int) -> int:
    """Key frames per detector pass, cut so the frames held in between fit the budget."""
    per_key = options.detect_every * frame_bytes
    return max(1, min(options.batch_size, HELD_FRAMES_BUDGET_BYTES // per_key))
