"""LipSyncPipeline end to end: real ffmpeg in and out, real detector, real (random-weight) generator.

Runs are short (0.3-3 s of audio on 256 px frames) and shared per module where several assertions
look at one output. The preview engine is used where the engine is not the subject; blending is
checked with the neural engine, whose random weights change every pixel of the face box.
"""

from __future__ import annotations

import logging
import shutil
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from heygem.engine.api import SyncOptions
from heygem.engine.media.schedule import pingpong_index
from heygem.engine.pipeline import LipSyncPipeline, prefetched
from heygem.errors import NoFaceError
from heygem.settings import Settings
from tests import e2e_media as em
from tests import media
from tests.kit import wait_until

pytestmark = pytest.mark.slow  # the real engine end to end, on random weights

FPS = media.FIXTURE_FPS
SIDE = media.FIXTURE_SIDE
BOX = em.FACE_BOX_256  # top, bottom, left, right
NOISE_MARGIN = 0.75  # grey levels a run may add to the mean codec error of a plain re-encode
EDGE_LIMIT = 8.0  # mean error on the 1 px ring just outside a hard paste (ringing only, ~3.5)
CHANGED = 20.0  # mean error where random-weight mouths are pasted (~55)
MARKER_ROWS = 12  # frame-index marker band at the top of the marked video
MARKER_STEP = 5  # px per source frame index in the marker band


# --------------------------------------------------------------------------------------------------
# shared inputs and pipelines


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pipeline")


@pytest.fixture(scope="module")
def clip(work, speech_wav):
    """clip(seconds) -> the first `seconds` of the espeak speech, cached per length."""
    made: dict[float, Path] = {}

    def make(seconds: float) -> Path:
        if seconds not in made:
            made[seconds] = em.cut_audio(speech_wav, work / f"speech-{seconds:g}s.wav", seconds)
        return made[seconds]

    return make


def _settings(folder: Path, checkpoint: Path | None = None) -> Settings:
    models = folder / "models"
    models.mkdir(parents=True)
    if checkpoint is not None:
        media.install_checkpoint(checkpoint, models)
    return Settings(data_dir=folder, models_dir=models, warmup=False)


@pytest.fixture(scope="module")
def preview(work) -> LipSyncPipeline:
    """No weights installed: "auto" resolves to the preview engine."""
    return LipSyncPipeline(_settings(work / "preview-data"))


@pytest.fixture(scope="module")
def neural(work, checkpoint_file) -> LipSyncPipeline:
    """The random official-format checkpoint installed: "auto" resolves to wav2lip."""
    return LipSyncPipeline(_settings(work / "neural-data", checkpoint_file))


@pytest.fixture(scope="module")
def source_frames(face_video) -> np.ndarray:
    return media.read_frames(face_video)


@pytest.fixture(scope="module")
def reencoded(source_frames, work) -> np.ndarray:
    """The fixture's frames through heygem's encoder unchanged: what codec noise alone does."""
    return em.reencode(source_frames, work / "reencoded.mp4", FPS)


@pytest.fixture(scope="module")
def marked_video(work) -> Path:
    """2 s of the moving astronaut with a white block at x = 5*i in a black top band on frame i."""
    frames = []
    for i, frame in enumerate(media.moving_frames(2 * FPS)):
        frame[:MARKER_ROWS] = 0
        frame[:MARKER_ROWS, MARKER_STEP * i : MARKER_STEP * (i + 1)] = 255
        frames.append(frame)
    return em.write_frames(work / "marked.mp4", frames, SIDE, SIDE, FPS)


def _source_indices(path: Path) -> list[int]:
    band = media.read_frames(path)[:, 2 : MARKER_ROWS - 2].astype(np.float32).mean(axis=(1, 3))
    return [int(np.argmax(row)) // MARKER_STEP for row in band]


def _assert_lasts(output: Path, audio: Path, fps: float) -> None:
    expected = media.duration_of(audio)
    assert abs(media.duration_of(output) - expected) <= 1 / fps + 1e-3
    video = em.video_stream(output)
    assert abs(int(video["nb_frames"]) / fps - expected) <= 1 / fps + 1e-3


# --------------------------------------------------------------------------------------------------
# container, length, size and rate


@pytest.fixture(scope="module")
def plain_run(preview, clip, face_video, work):
    return preview.run(clip(1.0), face_video, work / "plain.mp4")


def test_output_lasts_as_long_as_the_audio(plain_run, clip):
    assert plain_run.engine == "preview"
    assert plain_run.frames == FPS
    assert plain_run.duration_s == pytest.approx(1.0, abs=1 / FPS)
    _assert_lasts(plain_run.output, clip(1.0), FPS)


def test_output_is_h264_yuv420p_with_aac_audio(plain_run):
    streams = media.probe(plain_run.output)["streams"]
    kinds = {s["codec_type"]: s for s in streams}
    assert sorted(kinds) == ["audio", "video"]
    assert kinds["video"]["codec_name"] == "h264"
    assert kinds["video"]["pix_fmt"] == "yuv420p"
    assert kinds["audio"]["codec_name"] == "aac"
    assert not list(plain_run.output.parent.glob(".plain.mp4*")), "temporary output left behind"


def test_odd_size_becomes_even_and_30_fps_stays_30(preview, clip, work):
    frames = [f[:253, :255] for f in media.moving_frames(30)]
    odd = em.write_frames(work / "odd.mp4", frames, 255, 253, 30, pix_fmt="yuv444p")
    result = preview.run(clip(0.6), odd, work / "odd-out.mp4")
    video = em.video_stream(result.output)
    assert (video["width"], video["height"]) == (256, 254)
    assert video["pix_fmt"] == "yuv420p"
    assert em.frame_rate(result.output) == Fraction(30)
    assert result.fps == 30 and result.frames == 18
    _assert_lasts(result.output, clip(0.6), 30)


def test_audio_shorter_than_the_video_ends_with_the_audio(preview, clip, marked_video, work):
    result = preview.run(clip(0.6), marked_video, work / "short.mp4", SyncOptions(box=BOX))
    _assert_lasts(result.output, clip(0.6), FPS)
    assert _source_indices(result.output) == list(range(15))


@pytest.mark.parametrize("policy", ["loop", "pingpong"])
def test_audio_longer_than_the_video_extends_it(preview, clip, marked_video, work, policy):
    result = preview.run(
        clip(3.0),
        marked_video,
        work / f"long-{policy}.mp4",
        SyncOptions(box=BOX, duration_policy=policy),
    )
    _assert_lasts(result.output, clip(3.0), FPS)
    n_src = 2 * FPS
    expected = [i % n_src if policy == "loop" else pingpong_index(i, n_src) for i in range(3 * FPS)]
    assert _source_indices(result.output) == expected


@pytest.mark.parametrize("fps", [None, 30.0])
def test_still_image_becomes_a_video(preview, clip, face_image, work, fps):
    assert face_image.suffix == ".PNG"
    options = SyncOptions() if fps is None else SyncOptions(fps=fps)
    result = preview.run(clip(0.6), face_image, work / f"still-{fps}.mp4", options)
    rate = fps or 25.0
    assert em.frame_rate(result.output) == Fraction(rate).limit_denominator()
    assert result.frames == round(0.6 * rate)
    assert media.stream_types(result.output) == ["video", "audio"]
    _assert_lasts(result.output, clip(0.6), rate)


# --------------------------------------------------------------------------------------------------
# paste-back


@pytest.fixture(scope="module")
def rect_run(neural, clip, face_video, work, source_frames):
    result = neural.run(clip(0.6), face_video, work / "rect.mp4", SyncOptions(box=BOX, blend="rect"))
    return result, media.read_frames(result.output)


@pytest.fixture(scope="module")
def feather_run(neural, clip, face_video, work):
    result = neural.run(clip(0.6), face_video, work / "feather.mp4", SyncOptions(box=BOX))
    return result, media.read_frames(result.output)


def test_auto_engine_is_wav2lip_with_weights(neural, rect_run):
    status = neural.status()
    assert status.engine == "wav2lip" and status.checkpoint.endswith("wav2lip_gan.pth")
    assert rect_run[0].engine == "wav2lip"


def test_rect_blend_changes_only_the_box(rect_run, source_frames, reencoded):
    _, out = rect_run
    n = len(out)
    src, base = source_frames[:n], reencoded[:n]
    outside = ~em.box_mask(SIDE, SIDE, BOX)
    assert em.mean_abs_diff(out, src, outside) <= em.mean_abs_diff(base, src, outside) + NOISE_MARGIN
    just_outside = em.box_mask(SIDE, SIDE, BOX, margin=1) & outside
    assert em.mean_abs_diff(out, src, just_outside) < EDGE_LIMIT
    inside = em.box_mask(SIDE, SIDE, BOX)
    assert em.mean_abs_diff(out, src, inside) > CHANGED


def test_feather_blend_shows_no_rectangle(feather_run, source_frames, reencoded):
    _, out = feather_run
    n = len(out)
    src, base = source_frames[:n], reencoded[:n]
    top, bottom, left, right = BOX
    inner = (top + 2, bottom - 2, left + 2, right - 2)
    border = em.box_mask(SIDE, SIDE, BOX) & ~em.box_mask(SIDE, SIDE, inner)
    assert em.mean_abs_diff(out, src, border) <= em.mean_abs_diff(base, src, border) + NOISE_MARGIN
    height, width = bottom - top, right - left
    mouth = np.zeros((SIDE, SIDE), bool)
    rows = slice(top + int(0.65 * height), top + int(0.9 * height))
    mouth[rows, left + int(0.3 * width) : left + int(0.7 * width)] = True
    assert em.mean_abs_diff(out, src, mouth) > CHANGED
    upper = np.zeros((SIDE, SIDE), bool)
    upper[top + 2 : top + int(0.4 * height), left + 2 : right - 2] = True
    assert em.mean_abs_diff(out, src, upper) <= em.mean_abs_diff(base, src, upper) + 2 * NOISE_MARGIN


# --------------------------------------------------------------------------------------------------
# frames without a face


@pytest.fixture(scope="module")
def gap_video(work) -> tuple[Path, np.ndarray]:
    """10 face frames, 10 frames of smooth noise (no face), 10 face frames; and its decoded frames."""
    faces = list(media.moving_frames(20))
    frames = faces[:10] + em.no_face_frames(10) + faces[10:]
    path = em.write_frames(work / "gap.mp4", frames, SIDE, SIDE, FPS)
    return path, media.read_frames(path)


def test_frames_without_a_face_pass_through(preview, clip, gap_video, work):
    path, source = gap_video
    result = preview.run(clip(1.2), path, work / "gap-out.mp4")
    assert result.frames == 30
    assert result.frames_without_face == 10
    out = media.read_frames(result.output)
    baseline = em.reencode(source, work / "gap-reencoded.mp4", FPS)
    gap = slice(10, 20)
    codec_noise = em.mean_abs_diff(baseline[gap], source[gap])
    assert em.mean_abs_diff(out[gap], source[gap]) <= codec_noise + NOISE_MARGIN


def test_a_video_without_any_face_is_refused(preview, clip, work):
    path = em.write_frames(work / "noface.mp4", em.no_face_frames(10, seed=1), SIDE, SIDE, FPS)
    with pytest.raises(NoFaceError, match="no face found in noface.mp4"):
        preview.run(clip(0.4), path, work / "noface-out.mp4")
    assert not (work / "noface-out.mp4").exists()


# --------------------------------------------------------------------------------------------------
# face track cache


class CountingDetector:
    """Wraps the real detector and counts the frames it is asked to look at."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name, self.cache_tag = inner.name, inner.cache_tag
        self.frames = 0

    def detect(self, frames):
        self.frames += len(frames)
        return self.inner.detect(frames)


def test_second_run_and_new_pads_reuse_cached_face_boxes(
    settings, clip, face_video, tmp_path, monkeypatch, caplog
):
    from heygem.engine import pipeline as pipeline_module

    counters: list[CountingDetector] = []

    def counting(*args, **kwargs):
        counters.append(CountingDetector(real_create(*args, **kwargs)))
        return counters[-1]

    real_create = pipeline_module.shared_detector
    monkeypatch.setattr(pipeline_module, "shared_detector", counting)
    engine = LipSyncPipeline(settings)
    audio = clip(0.3)

    engine.run(audio, face_video, tmp_path / "first.mp4")
    (detector,) = counters
    key_frames = len(range(0, 2 * FPS, settings.detect_every)) + 1  # every Nth frame and the last
    assert settings.detect_every > 1 and detector.frames == key_frames
    caplog.set_level(logging.INFO, logger="heygem.engine.faces.track")
    engine.run(audio, face_video, tmp_path / "second.mp4")
    engine.run(audio, face_video, tmp_path / "pads.mp4", SyncOptions(pads=(5, 20, 5, 5), smooth=False))
    renamed = shutil.copy(face_video, tmp_path / "same-content.mp4")
    engine.run(audio, renamed, tmp_path / "renamed.mp4")
    assert detector.frames == key_frames, "a cached video was detected again"
    assert caplog.text.count("face boxes from cache") == 3

    # A new pipeline (a restarted server) finds the boxes on disk.
    LipSyncPipeline(settings).run(audio, face_video, tmp_path / "restarted.mp4")
    assert counters[-1].frames == 0


def test_a_job_that_shows_the_whole_video_decodes_it_once(settings, clip, face_video, tmp_path, monkeypatch):
    from heygem.engine import pipeline as pipeline_module
    from heygem.engine.media import schedule

    reads: list[int | None] = []  # max_side of each decoder that ran: None is full size

    def counted(real):
        def read_frames(path, info, fps=None, max_side=None):
            frames = real(path, info, fps=fps, max_side=max_side)
            try:
                yield next(frames)  # ffmpeg starts with the first frame asked for
            except StopIteration:
                return
            reads.append(max_side)
            yield from frames

        return read_frames

    monkeypatch.setattr(pipeline_module, "read_frames", counted(pipeline_module.read_frames))
    monkeypatch.setattr(schedule, "read_frames", counted(schedule.read_frames))
    engine = LipSyncPipeline(settings)
    result = engine.run(clip(2.4), face_video, tmp_path / "once.mp4")  # 2.4 s of speech, 2 s of video
    assert result.frames == 60 and result.frames_without_face == 0
    assert reads == [None, None], "a detection pass decoded the video besides the synthesis pass"

    # Its detections were cached: a shorter job (which detects before synthesis) finds them ...
    del reads[:]
    engine.run(clip(0.3), face_video, tmp_path / "short.mp4")
    assert reads == [None]
    # ... and they are the boxes a separate detection pass finds, give or take the downscaler.
    info = pipeline_module.probe(face_video)
    detector = pipeline_module.shared_detector(settings)
    options = pipeline_module.TrackOptions.from_job(SyncOptions(), settings)

    def boxes_from(cache):
        cached = pipeline_module.cached_face(settings, cache, info)
        return pipeline_module.face_track(settings, cached, info, detector, options)

    streamed = boxes_from(engine._track_cache)
    fresh = boxes_from(pipeline_module.TrackCache(tmp_path / "fresh"))
    assert len(streamed) == len(fresh) == 50
    assert np.abs(np.array(streamed.boxes) - np.array(fresh.boxes)).max() <= 2


# --- prefetching ---------------------------------------------------------------------------------


class CountedSource:
    """An iterator that counts what it has produced and whether it was closed."""

    def __init__(self, count: int, fail_at: int | None = None) -> None:
        self.produced = 0
        self.closed = False
        self._items = self._generate(count, fail_at)

    def _generate(self, count: int, fail_at: int | None):
        try:
            for i in range(count):
                if i == fail_at:
                    raise NoFaceError(f"item {i} is bad")
                self.produced += 1
                yield i
        finally:
            self.closed = True

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._items)

    def close(self) -> None:
        self._items.close()


def test_prefetched_keeps_order_and_runs_at_most_one_item_ahead():
    source = CountedSource(20)
    ahead = []
    for item in prefetched(source):
        wanted = min(item + 2, 20)
        wait_until(lambda wanted=wanted: source.produced >= wanted, message="the producer to run ahead")
        ahead.append(source.produced - item - 1)  # items produced but not yet consumed
    assert ahead[:-1] and max(ahead) == 1 and source.closed


def test_prefetched_raises_the_producers_error_in_the_consumer():
    source = CountedSource(10, fail_at=4)
    got = []
    with pytest.raises(NoFaceError, match="item 4 is bad"):
        for item in prefetched(source):
            got.append(item)
    assert got == [0, 1, 2, 3] and source.closed


def test_a_consumer_that_stops_early_stops_and_closes_the_producer():
    source = CountedSource(1000)
    for item in prefetched(source):
        if item == 3:
            break
    assert source.closed and source.produced <= 6
    assert not [t for t in threading.enumerate() if t.name == "heygem-prefetch"]
