"""Boxes settled while the synthesis pass reads: the same boxes as detecting first, one decode."""

from __future__ import annotations

import numpy as np
import pytest

from heygem.engine.faces import stream, track
from heygem.engine.faces.track import CachedVideo, RawDetections, TrackCache, TrackOptions
from heygem.errors import NoFaceError
from tests.test_faces import ScriptedDetector, numbered_frames

SIZE = (64, 64)


def scheduled(count: int, wraps_to: list[int] | None = None, cut_at: int | None = None):
    """(source index, frame) like the pipeline's schedule: the source in order, then `wraps_to`."""
    frames = list(numbered_frames(count, cut_at))
    yield from enumerate(frames)
    for index in wraps_to or []:
        yield index, frames[index]


def flickering_face(seed: int):
    """A face that drifts, jumps now and then, and vanishes for gaps short and long."""
    rng = np.random.default_rng(seed)
    boxes, x = [], 10.0
    for _ in range(120):
        x = rng.uniform(2, 30) if rng.random() < 0.05 else min(30.0, max(2.0, x + rng.normal(0, 1)))
        boxes.append([] if rng.random() < 0.15 else [(x, 12.0, x + 24, 40.0)])
    # a long gap too: longer than the gap filler bridges
    boxes[60:70] = [[] for _ in range(10)]
    return lambda i: boxes[i]


def streamed(script, count, options, wraps_to=None, cache=None, cut_at=None):
    out = list(
        stream.tracked_frames(
            scheduled(count, wraps_to, cut_at), ScriptedDetector(script), options,
            frame_size=SIZE, detect_side=64, expected_frames=count, cache=cache,
        )
    )  # fmt: skip
    return out


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("every", [1, 5])
def test_streamed_boxes_equal_detect_then_build_track(seed, every):
    script = flickering_face(seed)
    options = TrackOptions(batch_size=3, detect_every=every)
    raw = track.detect_faces(numbered_frames(120), ScriptedDetector(script), SIZE, 3, every=every)
    expected = track.build_track(raw, options).boxes
    out = streamed(script, 120, options)
    assert [index for index, _, _ in out] == list(range(120))
    assert [box for _, _, box in out] == expected
    assert all(int(frame[0, 0, 0]) == index for index, frame, _ in out)  # each frame with its own box


def test_without_smoothing_and_with_a_longer_gap_filler_the_boxes_still_match():
    script = flickering_face(3)
    options = TrackOptions(batch_size=4, smooth=False, max_gap=12, detect_every=5)
    raw = track.detect_faces(numbered_frames(120), ScriptedDetector(script), SIZE, 4, every=5)
    assert [box for _, _, box in streamed(script, 120, options)] == track.build_track(raw, options).boxes


def test_after_a_wrap_the_finished_track_serves_and_is_cached(tmp_path):
    script = flickering_face(1)
    options = TrackOptions(batch_size=2, detect_every=5)
    cache = CachedVideo(TrackCache(tmp_path), _video(tmp_path), {"fps": "25"})
    wraps = [0, 1, 2, 119, 50]
    out = streamed(script, 120, options, wraps_to=wraps, cache=cache)
    full = track.build_track(
        track.detect_faces(numbered_frames(120), ScriptedDetector(script), SIZE, 2, every=5)
    )
    assert [index for index, _, _ in out] == list(range(120)) + wraps
    assert [box for _, _, box in out] == full.boxes + [full.boxes[i] for i in wraps]
    stored = cache.load("scripted", SIZE)
    assert stored is not None and len(stored) == 120


def test_a_first_pass_shorter_than_the_container_count_is_not_cached(tmp_path):
    cache = CachedVideo(TrackCache(tmp_path), _video(tmp_path), {})
    out = list(
        stream.tracked_frames(
            scheduled(20), ScriptedDetector(lambda i: [(10.0, 10.0, 40.0, 40.0)]), TrackOptions(),
            frame_size=SIZE, detect_side=64, expected_frames=30, cache=cache,
        )
    )  # fmt: skip
    assert len(out) == 20 and all(box is not None for _, _, box in out)
    assert cache.load("scripted", SIZE) is None  # 20 of 30 frames: not the whole video


def test_frames_are_held_only_until_their_box_is_settled():
    options = TrackOptions(batch_size=2, detect_every=5)
    detector = ScriptedDetector(lambda i: [(10.0, 10.0, 40.0, 40.0)])
    frames = stream.tracked_frames(
        scheduled(200), detector, options, frame_size=SIZE, detect_side=64, expected_frames=200
    )
    held = []
    for index, _, _ in frames:
        held.append(max(detector.seen) - index)  # read ahead of the frame handed on
    # two strides of key frames plus the settling margin, never the whole video
    assert max(held) <= 2 * 5 + track.settle_lookahead(options)


def test_a_video_without_a_face_fails_after_the_first_pass():
    frames = stream.tracked_frames(
        scheduled(12), ScriptedDetector(lambda i: []), TrackOptions(), frame_size=SIZE,
        detect_side=64, expected_frames=12, name="wall.mp4",
    )  # fmt: skip
    with pytest.raises(NoFaceError, match="wall.mp4"):
        list(frames)


def test_the_detector_sees_frames_shrunk_to_the_detection_side():
    seen = []

    class Sizes:
        name = cache_tag = "sizes"

        def detect(self, frames):
            seen.extend(f.shape for f in frames)
            return [[track_detection()] for _ in frames]

    big = ((i, np.zeros((360, 640, 3), np.uint8)) for i in range(3))
    out = list(
        stream.tracked_frames(
            big, Sizes(), TrackOptions(), frame_size=(640, 360), detect_side=320, expected_frames=3
        )
    )
    assert seen == [(180, 320, 3)] * 3
    assert out[0][1].shape == (360, 640, 3)  # the frames handed on stay full size
    assert out[0][2] is not None and out[0][2][2] > 320  # boxes in full-frame pixels


def track_detection():
    from heygem.engine.faces.detect import Detection

    return Detection(100.0, 50.0, 200.0, 150.0, 0.9)


def _video(tmp_path):
    path = tmp_path / "video.bin"
    path.write_bytes(b"a video's bytes")
    return path


def test_settle_boxes_matches_build_track_on_a_whole_video():
    raw = RawDetections(64, 64, [[(1, 2, 30, 40, 0.9)], [], [(3, 2, 32, 40, 0.9)]])
    assert track.settle_boxes(raw) == track.build_track(raw).boxes


def test_big_frames_get_fewer_key_frames_per_detector_pass():
    options = TrackOptions(batch_size=8, detect_every=5)
    assert stream._key_batch(options, 1280 * 720 * 3) == 8
    assert stream._key_batch(options, 3840 * 2160 * 3) == 1  # 5 held 4K frames per key frame: 124 MB
    assert (
        5 * 3840 * 2160 * 3 * stream._key_batch(options, 3840 * 2160 * 3) <= stream.HELD_FRAMES_BUDGET_BYTES
    )
