"""The preview engine: audio -> mouth motion, motion -> pixels, and measured audio/video sync."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from heygem.engine import preview
from heygem.engine.audio import SAMPLE_RATE, load_audio
from heygem.engine.preview import MouthMotion, PreviewRenderer, mouth_motion
from heygem.errors import InputError
from tests import media

FPS = 25.0
SAMPLES_PER_FRAME = int(SAMPLE_RATE / FPS)
# Haar cascade box of the 256 px astronaut (x 86-139, y 31-84) with the reference's +10 px chin pad.
BOX = (86, 31, 139, 94)
# The lips and chin of that face: lip line near y 72, chin near y 86.
MOUTH = (slice(64, 92), slice(98, 128))
LIP_GAP = (slice(70, 78), slice(104, 122))  # where the lips part
SILENT = 1e-6  # espeak-ng pauses are digital silence
# Openness may linger this long after the sound stops (release to below the gate) ...
RELEASE_TAIL_S = 0.35
# ... and start this long before it (look-ahead plus one frame of rounding).
LEAD_S = preview.LOOKAHEAD_MS / 1000.0 + 1.0 / FPS


@pytest.fixture(scope="module")
def wav(speech_wav) -> np.ndarray:
    return load_audio(speech_wav)


@pytest.fixture(scope="module")
def n_frames(wav) -> int:
    return int(np.ceil(len(wav) / SAMPLES_PER_FRAME))


@pytest.fixture(scope="module")
def motion(wav, n_frames) -> MouthMotion:
    return mouth_motion(wav, FPS, n_frames)


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    return media.astronaut_bgr()


def frame_rms(wav: np.ndarray, n_frames: int) -> np.ndarray:
    """RMS of the audio each video frame covers: the audio envelope at the video rate."""
    padded = np.zeros(n_frames * SAMPLES_PER_FRAME, dtype=np.float64)
    padded[: len(wav)] = wav[: len(padded)]
    return np.sqrt(np.mean(padded.reshape(n_frames, SAMPLES_PER_FRAME) ** 2, axis=1))


def still_frames(wav: np.ndarray, n_frames: int) -> np.ndarray:
    """Frames whose surroundings, from RELEASE_TAIL_S before to LEAD_S after, are all silence."""
    out = np.zeros(n_frames, dtype=bool)
    for i in range(n_frames):
        centre = (i + 0.5) / FPS
        lo = max(0, int((centre - RELEASE_TAIL_S) * SAMPLE_RATE))
        hi = min(len(wav), int((centre + LEAD_S) * SAMPLE_RATE))
        out[i] = hi > lo and np.all(np.abs(wav[lo:hi]) < SILENT)
    return out


def single(openness: float, roundness: float = 0.0, **kwargs) -> PreviewRenderer:
    motion = MouthMotion(np.array([openness], np.float32), np.array([roundness], np.float32))
    return PreviewRenderer(motion, **kwargs)


def outside_mask(shape: tuple[int, ...], box: tuple[int, int, int, int], top_fraction: float) -> np.ndarray:
    """True outside the box and in the box rows above top_fraction of its height."""
    x1, y1, x2, y2 = box
    keep = np.ones(shape[:2], dtype=bool)
    keep[y1 + int(top_fraction * (y2 - y1)) : y2, x1:x2] = False
    return keep


def lagged_corr(a: np.ndarray, b: np.ndarray, lag: int) -> float:
    """Correlation of a[t + lag] with b[t]."""
    if lag > 0:
        a, b = a[lag:], b[:-lag]
    elif lag < 0:
        a, b = a[:lag], b[-lag:]
    return float(np.corrcoef(a, b)[0, 1])


# --- audio -> motion ------------------------------------------------------------------------


def test_motion_has_one_value_per_frame_in_range(motion, n_frames):
    assert motion.openness.shape == motion.roundness.shape == (n_frames,)
    assert motion.openness.dtype == np.float32
    for values in (motion.openness, motion.roundness):
        assert values.min() >= 0.0 and values.max() <= 1.0


def test_mouth_is_exactly_closed_in_pauses(wav, motion, n_frames):
    still = still_frames(wav, n_frames)
    assert still.sum() >= 10, "the fixture should have two long pauses"
    assert np.all(motion.openness[still] == 0.0)
    assert np.all(motion.roundness[still] == 0.0)


def test_mouth_opens_during_speech(wav, motion, n_frames):
    rms = frame_rms(wav, n_frames)
    loud = 20 * np.log10(rms / rms.max() + 1e-12) > -20.0
    assert loud.sum() >= 50
    assert np.all(motion.openness[loud] > 0.0)
    assert np.median(motion.openness[loud]) > 0.5


def test_mouth_opens_no_later_than_each_speech_onset(wav, motion, n_frames):
    # The onset frame after a pause is the first one with audible speech (within 30 dB of the
    # loudest frame): a few ms of a faint fricative before it are not an onset.
    rms = frame_rms(wav, n_frames)
    audible = 20 * np.log10(rms / rms.max() + 1e-12) > -30.0
    silent = rms < SILENT
    onsets = []
    for k in range(5, n_frames):
        if audible[k] and not audible[k - 1] and silent[max(0, k - 8) : k - 2].all():
            onsets.append(k)
    assert len(onsets) >= 2, "the two pauses end in two onsets"
    for k in onsets:
        assert motion.openness[k] > 0.0, f"frame {k} has speech but a closed mouth"


def test_look_ahead_opens_before_the_sound_but_not_long_before():
    onset_s = 1.0
    t = np.arange(int(2.0 * SAMPLE_RATE)) / SAMPLE_RATE
    wav = np.where(t >= onset_s, 0.3 * np.sin(2 * np.pi * 800.0 * t), 0.0).astype(np.float32)
    fps = 100.0  # 10 ms frames, centred at (i + 0.5) / fps
    motion = mouth_motion(wav, fps, 200)
    just_before = int((onset_s - 0.03) * fps)  # centre 25 ms before the sound
    long_before = int((onset_s - 0.1) * fps)  # centre 95 ms before: beyond the look-ahead
    assert motion.openness[just_before] > 0.0
    assert motion.openness[long_before] == 0.0
    assert motion.openness[int(1.5 * fps)] > 0.9


def test_silence_and_faint_noise_keep_the_mouth_closed():
    rng = np.random.default_rng(0)
    silence = np.zeros(SAMPLE_RATE, np.float32)
    hiss = (1e-4 * rng.standard_normal(SAMPLE_RATE)).astype(np.float32)  # about -80 dBFS
    for wav in (silence, hiss):
        motion = mouth_motion(wav, FPS, 25)
        assert np.all(motion.openness == 0.0) and np.all(motion.roundness == 0.0)


def test_frames_past_the_audio_are_closed(wav):
    frames = int(len(wav) / SAMPLES_PER_FRAME) + 20
    assert np.all(mouth_motion(wav, FPS, frames).openness[-10:] == 0.0)


def test_empty_audio_and_zero_frames():
    assert len(mouth_motion(np.zeros(0, np.float32), FPS, 7)) == 7
    assert len(mouth_motion(np.ones(1600, np.float32), FPS, 0)) == 0


@pytest.mark.parametrize(
    ("wav", "fps", "frames", "words"),
    [
        (np.zeros((2, 100), np.float32), 25.0, 4, "one channel"),
        (np.zeros(100, np.float32), 0.0, 4, "fps"),
        (np.full(100, np.nan, np.float32), 25.0, 4, "invalid samples"),
        (np.zeros(100, np.float32), 25.0, -1, "frame count"),
    ],
)
def test_bad_motion_input_is_an_input_error(wav, fps, frames, words):
    with pytest.raises(InputError, match=words):
        mouth_motion(wav, fps, frames)


def espeak(tmp_path: Path, text: str) -> np.ndarray:
    path = tmp_path / "words.wav"
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True)
    return load_audio(path)


def test_rounded_vowels_are_rounder_than_spread_ones(tmp_path):
    def mean_roundness(text: str) -> float:
        wav = espeak(tmp_path, text)
        motion = mouth_motion(wav, FPS, int(len(wav) / SAMPLES_PER_FRAME))
        return float(motion.roundness[motion.openness > 0.3].mean())

    rounded = mean_roundness("who moves through blue rooms")
    spread = mean_roundness("see me, feed the bees")
    assert rounded > spread + 0.1


# --- motion -> pixels -------------------------------------------------------------------------


def test_open_mouth_changes_the_mouth_region(face):
    out = single(1.0).render([face], [BOX], [0])[0]
    diff = np.abs(out[MOUTH].astype(int) - face[MOUTH])
    assert diff.mean() > 5.0
    # The gap between the lips is darker than the source there.
    assert out[LIP_GAP].mean() < face[LIP_GAP].mean() - 15.0


def test_openness_scales_the_change(face):
    def change(openness: float) -> float:
        out = single(openness).render([face], [BOX], [0])[0]
        return float(np.abs(out[MOUTH].astype(int) - face[MOUTH]).mean())

    assert change(0.2) < change(0.5) < change(1.0)


def test_closed_mouth_stays_at_the_source(face):
    assert np.array_equal(single(0.0).render([face], [BOX], [0])[0], face)
    barely = single(0.02, 0.5).render([face], [BOX], [0])[0]
    diff = np.abs(barely.astype(int) - face)
    assert diff.mean() < 0.05 and diff.max() <= 8


def test_roundness_narrows_the_mouth(face):
    spread = single(1.0, 0.0).render([face], [BOX], [0])[0]
    rounded = single(1.0, 1.0).render([face], [BOX], [0])[0]
    assert np.abs(spread[MOUTH].astype(int) - rounded[MOUTH]).mean() > 2.0
    # The dark gap is narrower: fewer dark pixels across the mouth row.
    row = 75
    dark = lambda img: int((img[row, 90:136].mean(axis=1) < 90).sum())  # noqa: E731
    assert dark(rounded) < dark(spread)


def test_roundness_pulls_the_mouth_corners_inward():
    # On a left-to-right ramp, a squeeze towards the centre shows as darker pixels left of the
    # centre and brighter ones right of it. The row is just above the lip line, where the jaw
    # does not move and the mouth is not shaded, so only the squeeze shows.
    ramp = np.tile(np.arange(256, dtype=np.uint8)[None, :, None], (256, 1, 3))
    x1, y1, x2, y2 = BOX
    row = y1 + int(0.635 * (y2 - y1))
    centre = (x1 + x2) // 2
    out = single(1.0, 1.0).render([ramp], [BOX], [0])[0]
    left, right = slice(centre - 10, centre - 3), slice(centre + 4, centre + 11)
    assert np.all(out[row, left, 0] < ramp[row, left, 0])
    assert np.all(out[row, right, 0] > ramp[row, right, 0])
    unrounded = single(1.0, 0.0).render([ramp], [BOX], [0])[0]
    assert np.array_equal(unrounded[row], ramp[row])


@pytest.mark.parametrize("openness, roundness", [(1.0, 0.0), (1.0, 1.0), (0.6, 0.4)])
def test_upper_face_and_outside_the_box_are_untouched(face, openness, roundness):
    out = single(openness, roundness).render([face], [BOX], [0])[0]
    keep = outside_mask(face.shape, BOX, 0.5)
    assert np.array_equal(out[keep], face[keep])
    assert not np.array_equal(out, face)


def test_box_hanging_over_the_frame_edge(face):
    box = (200, 150, 290, 280)  # right and bottom beyond the 256 px frame
    out = single(1.0, 1.0).render([face], [box], [0])[0]
    keep = outside_mask(face.shape, (200, 150, 256, 256), 0.6)
    assert out.shape == face.shape
    assert np.array_equal(out[keep], face[keep])
    assert not np.array_equal(out, face)


def test_frames_without_a_face_come_back_unchanged(face):
    renderer = single(1.0, 1.0)
    out = renderer.render([face, face], [None, BOX], [0, 0])
    assert np.array_equal(out[0], face)
    assert not np.array_equal(out[1], face)


def test_render_leaves_its_inputs_alone(face):
    frame = face.copy()
    out = single(1.0, 1.0, watermark=True).render([frame], [BOX], [0])[0]
    assert np.array_equal(frame, face)
    assert out is not frame


def test_frame_index_beyond_the_motion_is_closed(face):
    assert np.array_equal(single(1.0).render([face], [BOX], [5])[0], face)


def test_mismatched_batch_is_rejected(face):
    with pytest.raises(ValueError, match="differ in length"):
        single(1.0).render([face, face], [BOX], [0, 1])


def test_unknown_blend_is_an_input_error():
    with pytest.raises(InputError, match="blend"):
        single(1.0, blend="poisson")


def test_watermark_marks_every_frame_in_the_corner(face):
    plain = single(0.0).render([face], [None], [0])[0]
    marked = single(0.0, watermark=True).render([face, face], [None, BOX], [0, 0])
    for frame in marked:
        changed = np.any(frame != plain, axis=2)
        ys, xs = np.nonzero(changed)
        assert changed.sum() > 50
        assert ys.max() < face.shape[0] // 4 and xs.max() < face.shape[1] // 2


# --- sync, measured ---------------------------------------------------------------------------


def mouth_movement(frames, source: np.ndarray) -> np.ndarray:
    """Per frame: mean absolute difference of the mouth region from the source frame."""
    ref = source[MOUTH].astype(np.float32)
    return np.array([np.abs(f[MOUTH].astype(np.float32) - ref).mean() for f in frames])


def assert_in_sync(movement: np.ndarray, envelope: np.ndarray) -> None:
    at_zero = lagged_corr(movement, envelope, 0)
    assert at_zero >= 0.5
    assert at_zero > lagged_corr(movement, envelope, 5)
    assert at_zero > lagged_corr(movement, envelope, -5)


def test_mouth_motion_is_in_sync_with_the_speech(wav, motion, n_frames, face):
    frames = PreviewRenderer(motion).render([face] * n_frames, [BOX] * n_frames, list(range(n_frames)))
    assert_in_sync(mouth_movement(frames, face), frame_rms(wav, n_frames))


def test_sync_survives_video_encoding(wav, motion, n_frames, face, tmp_path):
    # The same measurement on frames that went through H.264 and back, as a viewer sees them.
    frames = PreviewRenderer(motion).render([face] * n_frames, [BOX] * n_frames, list(range(n_frames)))
    decoded = media.read_frames(media.write_video(tmp_path / "preview.mp4", frames, fps=FPS))
    assert len(decoded) == n_frames
    assert_in_sync(mouth_movement(decoded, face), frame_rms(wav, n_frames))
