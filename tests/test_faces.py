"""Face detection (Haar on a real face, S3FD through its real loader) and box tracking rules."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from heygem.engine.faces import detect, track
from heygem.engine.faces.detect import Detection, HaarDetector, S3FDDetector, ScaledDetector
from heygem.engine.faces.track import CachedVideo, FaceTrack, RawDetections, TrackCache, TrackOptions
from heygem.engine.media.decode import read_frames
from heygem.engine.media.probe import probe
from heygem.errors import InputError, ModelError, NoFaceError, WeightsMissingError
from tests import media

# Where the astronaut's face sits in the 256x256 fixture (x1, y1, x2, y2), give or take the drift.
ASTRONAUT_FACE = (88, 31, 140, 84)


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


class CountingDetector:
    """Wraps a detector and counts the frames it was asked to look at."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = inner.name
        self.cache_tag = inner.cache_tag
        self.frames_seen = 0

    def detect(self, frames):
        self.frames_seen += len(frames)
        return self.inner.detect(frames)


class FixedDetector:
    """Reports the same faces (given as fractions of the frame) in every frame."""

    name = "fixed"
    cache_tag = "fixed"

    def __init__(self, *fractions) -> None:
        self.fractions = fractions

    def detect(self, frames):
        h, w = frames[0].shape[:2]
        faces = [Detection(a * w, b * h, c * w, d * h, 0.9) for a, b, c, d in self.fractions]
        return [list(faces) for _ in frames]


@pytest.fixture(scope="module")
def haar() -> HaarDetector:
    return HaarDetector()


# --- detectors -----------------------------------------------------------------------------------


def test_haar_finds_the_astronaut_in_every_frame(face_video, haar):
    info = probe(face_video)
    faces = track.detect_faces(read_frames(face_video, info), haar, info.size, batch_size=8)
    assert len(faces) == 50
    for frame_faces in faces.faces:
        best = track.choose_face(frame_faces)
        assert best is not None and _iou(best, ASTRONAUT_FACE) > 0.6


def test_detection_on_downscaled_frames_gives_full_size_boxes(face_video, haar):
    info = probe(face_video)
    small = read_frames(face_video, info, max_side=128)
    faces = track.detect_faces(small, haar, info.size, batch_size=16)
    boxes = [track.choose_face(f) for f in faces.faces]
    found = [b for b in boxes if b is not None]
    assert len(found) >= 45
    assert all(_iou(b, ASTRONAUT_FACE) > 0.5 for b in found)


def test_scaled_detector_shrinks_big_frames_and_scales_boxes_back():
    seen = []

    class Recorder(FixedDetector):
        def detect(self, frames):
            seen.append(frames[0].shape)
            return super().detect(frames)

    scaled = ScaledDetector(Recorder((0.25, 0.25, 0.5, 0.75)), max_side=100)
    result = scaled.detect([np.zeros((200, 400, 3), np.uint8)] * 2)
    assert seen == [(50, 100, 3)]
    d = result[1][0]
    assert (d.x1, d.y1, d.x2, d.y2) == pytest.approx((100, 50, 200, 150))
    assert scaled.cache_tag != ScaledDetector(Recorder(), max_side=200).cache_tag


def test_s3fd_with_random_weights_runs_a_batch(random_s3fd):
    detector = S3FDDetector(random_s3fd, "cpu")
    noise = np.random.default_rng(1).integers(0, 256, (128, 128, 3), np.uint8)
    frames = [media.astronaut_bgr(128), noise]
    result = detector.detect(frames)
    assert len(result) == 2 and all(isinstance(faces, list) for faces in result)
    for faces in result:
        assert all(isinstance(d, Detection) and d.score > 0.5 for d in faces)
        boxes = [(d.x1, d.y1, d.x2, d.y2) for d in faces]
        # NMS ran: no two kept boxes overlap by more than the reference's 0.3 (with its +1 convention).
        for i in range(min(len(boxes), 30)):
            for j in range(i + 1, min(len(boxes), 30)):
                a, b = boxes[i], boxes[j]
                iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
                ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
                area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
                assert iw * ih / (area(a) + area(b) - iw * ih) <= 0.3 + 1e-6
    assert detector.detect([]) == []


def test_s3fd_weight_errors_name_the_file(tmp_path):
    missing = tmp_path / "models" / "s3fd.pth"
    with pytest.raises(WeightsMissingError, match=str(missing)):
        S3FDDetector(missing)
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(ModelError, match="junk.pth"):
        S3FDDetector(junk)
    import torch

    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(ModelError, match="does not fit the S3FD network"):
        S3FDDetector(other)


def test_create_detector_prefers_s3fd_weights_and_falls_back_to_haar(settings, random_s3fd, caplog):
    caplog.set_level("INFO", logger="heygem.engine.faces.detect")
    fallback = detect.create_detector(settings)
    assert fallback.name == "haar" and fallback.max_side == detect.HAAR_MAX_SIDE < settings.detect_max_side
    assert detect.create_detector(settings.replace(detect_max_side=200)).max_side == 200
    assert "no S3FD weights" in caplog.text

    (settings.models_dir / "s3fd.pth").write_bytes(random_s3fd.read_bytes())
    on_torch = settings.replace(backend="torch")  # OpenVINO's S3FD: tests/test_s3fd_openvino.py
    chosen = detect.create_detector(on_torch.replace(detect_max_side=320), device="cpu")
    assert chosen.name == "s3fd" and "max_side=320" in chosen.cache_tag
    explicit = detect.create_detector(on_torch.replace(detector_weights=random_s3fd), device="cpu")
    assert isinstance(explicit.inner, S3FDDetector) and explicit.inner.weights_path == random_s3fd
    assert explicit.max_side == settings.detect_max_side  # S3FD keeps the 640 px it was built for


# --- choosing, padding, filling, smoothing -------------------------------------------------------


def test_smoothing_matches_the_reference_by_hand():
    boxes = np.array(
        [
            [0, 1, 100, 200],
            [10, 2, 110, 200],
            [20, 2, 120, 200],
            [30, 2, 130, 200],
            [40, 2, 140, 200],
            [50, 0, 150, 200],
            [60, 0, 160, 200],
        ],
        dtype=np.int64,
    )
    out = track.smooth_boxes(boxes.copy())
    # Forward window of 5 unsmoothed rows while it fits, then the last 5 rows (partly smoothed).
    assert out[:, 0].tolist() == [20, 30, 40, 44, 46, 48, 47]
    assert out[:, 1].tolist() == [1, 1, 1, 1, 0, 0, 0]  # means truncate: 1.8 -> 1, 0.8 -> 0
    assert out[:, 2].tolist() == [120, 130, 140, 144, 146, 148, 147]
    assert out[:, 3].tolist() == [200] * 7


@pytest.mark.parametrize(
    "x1s, expected",
    [
        ([0, 10, 20, 30], [30, 30, 30, 30]),  # N=4: the slice [-1:] is only the last row
        ([0, 10, 21], [15, 15, 18]),  # N=3: the last two rows, the second pass sees row 1 smoothed
        ([0, 11], [5, 8]),  # N=2: all rows
        ([7], [7]),
    ],
)
def test_smoothing_quirks_for_short_runs(x1s, expected):
    boxes = np.array([[x, 0, x + 50, 50] for x in x1s], dtype=np.int64)
    assert track.smooth_boxes(boxes)[:, 0].tolist() == expected


def test_pads_grow_and_clamp_to_the_frame():
    assert track.pad_box((10, 10, 30, 30), (0, 10, 0, 0), (64, 64)) == (10, 10, 30, 40)
    assert track.pad_box((10, 5, 50, 60), (5, 10, 15, 20), (64, 64)) == (0, 0, 64, 64)
    assert track.pad_box((10, 10, 30, 30), (-10, -10, 0, 0), (64, 64)) is None  # shrunk to nothing


def test_face_choice_largest_or_nearest():
    small_left = (10, 10, 40, 40, 0.99)
    big_right = (100, 20, 180, 100, 0.6)
    assert track.choose_face([small_left, big_right]) == (100, 20, 180, 100)
    assert track.choose_face([small_left, big_right], "nearest", (20, 30)) == (10, 10, 40, 40)
    assert track.choose_face([], "largest") is None
    with pytest.raises(InputError):
        track.choose_face([small_left], "nearest", None)


def test_short_gaps_hold_neighbours_and_long_gaps_stay_empty():
    a, b, c = (0, 0, 10, 10), (5, 5, 15, 15), (9, 9, 19, 19)
    boxes = [None, a, None, None, b] + [None] * (track.MAX_GAP_FRAMES + 2) + [c, None]
    filled = track.fill_gaps(boxes)
    assert filled[:5] == [a, a, a, b, b]  # leading gap and the 2-frame gap take the nearest box
    assert filled[5 : 5 + track.MAX_GAP_FRAMES + 2] == [None] * (track.MAX_GAP_FRAMES + 2)
    assert filled[-2:] == [c, c]


def test_build_track_keeps_faceless_stretches_as_none():
    face = [(100, 40, 150, 90, 0.9)]
    frames = [face] * 6 + [[]] * 10 + [face] * 3
    built = track.build_track(RawDetections(256, 256, frames), TrackOptions(pads=(0, 10, 0, 0)))
    assert built.count_missing() == 10 and track.count_missing(built) == 10
    assert built.boxes[0] == (100, 40, 150, 100)
    assert built.boxes[6:16] == [None] * 10
    assert built.boxes[-1] == (100, 40, 150, 100)
    assert built.box_at(10_000) == built.boxes[-1]
    assert FaceTrack.from_dict(json.loads(json.dumps(built.to_dict()))) == built


def test_no_face_anywhere_raises(tmp_path, haar):
    blank = media.write_video(tmp_path / "wall.mp4", [np.full((256, 256, 3), 128, np.uint8)] * 10)
    info = probe(blank)
    with pytest.raises(NoFaceError, match=r"no face found in wall.mp4 \(checked 10 frames\).*--box"):
        track.track_faces(read_frames(blank, info), haar, info.size, name="wall.mp4")


def test_fixed_box_is_used_as_given_and_clamped():
    fixed = track.fixed_track((31, 84, 88, 140), (256, 256))
    assert fixed.box_at(0) == fixed.box_at(999) == (88, 31, 140, 84) and fixed.count_missing() == 0
    assert track.fixed_track((-5, 300, 10, 400), (256, 256)).fixed == (10, 0, 256, 256)
    with pytest.raises(InputError, match="--box"):
        track.fixed_track((100, 50, 0, 10), (256, 256))

    def never():
        raise AssertionError("frames were read although the box is fixed")
        yield  # pragma: no cover

    counting = CountingDetector(FixedDetector())
    tracked = track.track_faces(never(), counting, (256, 256), TrackOptions(box=(31, 84, 88, 140)))
    assert counting.frames_seen == 0
    assert tracked.fixed == (88, 31, 140, 84)


# --- detection on every Nth frame ----------------------------------------------------------------


class ScriptedDetector:
    """Faces by frame number: frame i is flat grey i (see `numbered_frames`), `script(i)` its faces.

    `batched`: it is given whole key frames (a crop would lose the number), like S3FD on a GPU."""

    name = "scripted"
    cache_tag = "scripted"
    batched = True

    def __init__(self, script) -> None:
        self.script = script
        self.seen: list[int] = []

    def detect(self, frames):
        numbers = [int(frame[0, 0, 0]) for frame in frames]
        self.seen += numbers
        return [[Detection(*box, 0.9) for box in self.script(i)] for i in numbers]


def numbered_frames(count: int, cut_at: int | None = None):
    """Flat 64x64 frames whose pixel (0, 0) is their index; after `cut_at` the rest turns white."""
    for i in range(count):
        frame = np.full((64, 64, 3), 255 if cut_at is not None and i >= cut_at else 40, np.uint8)
        frame[0, 0] = i
        yield frame


def sliding_face(i: int) -> list[tuple[float, float, float, float]]:
    return [(10.0 + i, 12.0, 40.0 + i, 44.0)]  # one face moving one pixel right per frame


def test_sparse_detection_looks_at_every_nth_frame_and_the_last_and_fills_the_rest():
    detector = ScriptedDetector(sliding_face)
    sparse = track.detect_faces(numbered_frames(23), detector, (64, 64), batch_size=2, every=5)
    dense = track.detect_faces(numbered_frames(23), ScriptedDetector(sliding_face), (64, 64), batch_size=2)
    assert detector.seen == [0, 5, 10, 15, 20, 22]
    assert sparse.faces == dense.faces  # linear motion is filled in exactly


def test_a_lost_face_makes_the_detector_look_at_every_frame_around_it():
    present = ScriptedDetector(lambda i: sliding_face(i) if i < 7 or i >= 17 else [])
    raw = track.detect_faces(numbered_frames(25), present, (64, 64), batch_size=8, every=5)
    assert sorted(present.seen) == [0, 5, 6, 7, 8, 9, 10, 15, 16, 17, 18, 19, 20, 24]
    assert [bool(f) for f in raw.faces] == [i < 7 or i >= 17 for i in range(25)]


def test_a_face_that_jumps_or_a_scene_cut_makes_it_look_at_every_frame():
    jumping = ScriptedDetector(lambda i: [(2.0, 2.0, 20.0, 20.0)] if i < 8 else [(40.0, 40.0, 60.0, 60.0)])
    raw = track.detect_faces(numbered_frames(11), jumping, (64, 64), every=5)
    assert sorted(jumping.seen) == [0, 5, 6, 7, 8, 9, 10]  # only between the key frames around the jump
    assert raw.faces[7][0][:4] == (2, 2, 20, 20) and raw.faces[8][0][:4] == (40, 40, 60, 60)

    still = ScriptedDetector(lambda i: [(10.0, 10.0, 40.0, 40.0)])
    track.detect_faces(numbered_frames(11, cut_at=3), still, (64, 64), every=5)
    assert sorted(still.seen) == [0, 1, 2, 3, 4, 5, 10]  # the cut is between 0 and 5 only


def test_sparse_boxes_on_the_fixture_video_stay_within_three_pixels_of_every_frame(face_video, haar):
    info = probe(face_video)
    options = TrackOptions(batch_size=8)
    every_frame = track.build_track(track.detect_faces(read_frames(face_video, info), haar, info.size))
    counting = CountingDetector(haar)
    for every in (3, 5):
        raw = track.detect_faces(read_frames(face_video, info), counting, info.size, every=every)
        sparse = track.build_track(raw, options)
        gap = np.abs(np.array(sparse.boxes) - np.array(every_frame.boxes))
        assert gap.max() <= 3, (every, gap.max())
    assert counting.frames_seen < 50 // 3 + 50 // 5 + 10  # about one frame in N, plus the last ones


class SquareDetector:
    """Finds white squares on black in whatever it is given (whole frames or crops of them), and
    records the size of each image it searched."""

    name = "squares"
    cache_tag = "squares"

    def __init__(self) -> None:
        self.searched: list[tuple[int, int]] = []

    def detect(self, frames):
        found = []
        for frame in frames:
            self.searched.append(frame.shape[1::-1])
            labels, stats = cv2.connectedComponentsWithStats((frame[:, :, 0] > 127).astype(np.uint8))[1:3]
            found.append([Detection(x, y, x + w, y + h, 0.9) for x, y, w, h, _ in stats[1:]])
        return found


def square_frames(count: int, second_from: int | None = None):
    """320x240 black frames with a 40 px square drifting right, and a second one from `second_from`."""
    for i in range(count):
        frame = np.zeros((240, 320, 3), np.uint8)
        frame[100:140, 40 + i : 80 + i] = 255
        if second_from is not None and i >= second_from:
            frame[20:60, 250:290] = 255
        yield frame


def test_key_frames_are_searched_near_the_last_faces_with_a_whole_frame_now_and_then():
    squares = SquareDetector()
    raw = track.detect_faces(square_frames(101), squares, (320, 240), batch_size=4, every=5)
    whole = [size for size in squares.searched if size == (320, 240)]
    assert len(squares.searched) == 21  # the key frames, each searched once
    assert len(whole) == 5  # the first, then every NEAR_FULL_EVERY-th key frame
    near = [size for size in squares.searched if size != (320, 240)]
    assert all(max(size) <= 40 * track.NEAR_CONTEXT + 2 for size in near)  # the 40 px square's surroundings
    full = track.detect_faces(square_frames(101), SquareDetector(), (320, 240), batch_size=4)
    gap = np.abs(np.array([f[0][:4] for f in raw.faces]) - np.array([f[0][:4] for f in full.faces]))
    assert gap.max() <= 1


def test_many_faces_or_a_close_up_are_searched_in_the_whole_frame():
    crowd = FixedDetector(*[(0.1 * i, 0.1, 0.1 * i + 0.08, 0.2) for i in range(9)])
    close_up = FixedDetector((0.2, 0.1, 0.8, 0.9))
    for detector in (crowd, close_up):
        counting = CountingSizes(detector)
        track.detect_faces(
            (np.zeros((100, 200, 3), np.uint8) for _ in range(21)), counting, (200, 100), every=5
        )
        assert counting.sizes == [(200, 100)] * 5  # every key frame whole: no neighbourhood searches


class CountingSizes:
    """Records the size of every image a detector is given."""

    def __init__(self, inner) -> None:
        self.inner, self.name, self.cache_tag = inner, inner.name, inner.cache_tag
        self.sizes: list[tuple[int, int]] = []

    def detect(self, frames):
        self.sizes += [frame.shape[1::-1] for frame in frames]
        return self.inner.detect(frames)


def test_the_neighbourhood_is_searched_at_the_scale_whole_frames_are():
    squares = SquareDetector()
    raw = track.detect_faces(square_frames(11), ScaledDetector(squares, 160), (320, 240), every=5)
    whole, near = squares.searched[0], squares.searched[1]
    assert whole == (160, 120)  # the whole frame, halved by the detector's cap
    assert max(near) <= (40 * track.NEAR_CONTEXT + 2) / 2  # the square's surroundings, halved too
    assert abs(raw.faces[5][0][2] - raw.faces[5][0][0] - 40) <= 2  # boxes back in full-frame pixels


def test_a_face_entering_the_picture_is_found_at_the_next_whole_frame_search():
    raw = track.detect_faces(square_frames(80, second_from=7), SquareDetector(), (320, 240), every=5)
    counts = [len(faces) for faces in raw.faces]
    # found by the whole-frame search at key frame 25 at the latest, and every frame after it
    assert counts[-1] == 2 and counts.index(2) <= track.NEAR_FULL_EVERY * 5
    assert all(count == 2 for count in counts[counts.index(2) :])


def test_a_face_not_found_again_near_where_it_was_makes_a_whole_frame_search():
    squares = SquareDetector()

    def jumping(count):
        for i, frame in enumerate(square_frames(count)):
            if i >= 12:  # the square jumps to the far corner
                frame[:] = 0
                frame[180:220, 260:300] = 255
            yield frame

    raw = track.detect_faces(jumping(21), squares, (320, 240), every=5)
    assert raw.faces[15][0][:4] == (260, 180, 300, 220) and raw.faces[20][0][:4] == (260, 180, 300, 220)
    assert squares.searched.count((320, 240)) >= 2  # the first key frame, and the one after the jump


# --- cache ---------------------------------------------------------------------------------------


def test_cache_hit_skips_detection_and_pads_apply_after_it(face_video, haar, tmp_path):
    info = probe(face_video)
    cache = TrackCache(tmp_path / "cache")
    counting = CountingDetector(ScaledDetector(haar, 128))

    def run(detector, **options):
        frames = read_frames(face_video, info, max_side=128)
        return track.track_faces(
            frames,
            detector,
            info.size,
            TrackOptions(batch_size=16, **options),
            cache=CachedVideo(cache, face_video, {"fps": info.fps_text}),
        )

    first = run(counting, pads=(0, 10, 0, 0))
    assert counting.frames_seen == 50 and len(first) == 50
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1

    padded = run(counting, pads=(0, 30, 0, 0), smooth=False)
    assert counting.frames_seen == 50  # no new detection
    assert padded.boxes != first.boxes
    assert padded.boxes[0][3] - padded.boxes[0][1] > first.boxes[0][3] - first.boxes[0][1]

    other = CountingDetector(ScaledDetector(haar, 200))  # different detector settings: a miss
    run(other)
    assert other.frames_seen == 50
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2


def test_cache_key_follows_content_and_unreadable_entries_miss(tmp_path):
    cache = TrackCache(tmp_path / "cache")
    one, two = tmp_path / "a.mp4", tmp_path / "b.mp4"
    one.write_bytes(b"same bytes")
    two.write_bytes(b"same bytes")
    assert cache.key(one, "haar") == cache.key(two, "haar")  # content, not the name
    assert cache.key(one, "haar") != cache.key(one, "s3fd")
    assert cache.key(one, "haar", fps="25/1") != cache.key(one, "haar", fps="30/1")

    key = cache.key(one, "haar")
    raw = RawDetections(64, 48, [[(1, 2, 30, 40, 0.9)], []])
    cache.put(key, raw)
    assert cache.get(key) == raw
    cache.path_for(key).write_text("{broken")
    assert cache.get(key) is None
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"{key}.json"]  # no temp files left
