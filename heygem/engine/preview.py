"""The `preview` engine: audio-driven mouth motion rendered as a geometric warp, no weights needed.

Two halves. `mouth_motion` turns 16 kHz speech into per-frame openness and roundness values
(speech-band energy in dB above a noise floor, look-ahead, attack/release smoothing, gate to an
exact zero in silence). `PreviewRenderer` moves the lower lip and jaw of each face box down with a
smooth displacement field (cv2.remap), narrows the mouth with roundness and darkens the gap
between the lips. Nothing here is learned: it is a stand-in that keeps the product usable without
the Wav2Lip weights, and it says so (the job record, the UI and the optional watermark name it).

Geometry is in box-relative units: the box is the detector's (x1, y1, x2, y2) after the pipeline's
padding (the reference's +10 px chin pad) and smoothing. The displacement is exactly zero above
WARP_TOP and outside the box, so the eyes, nose and background are byte-identical to the source.
No torch here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np
from numpy.typing import NDArray

from heygem.engine.api import PREVIEW, Box, Frame, MouthRenderer
from heygem.engine.audio import SAMPLE_RATE, Samples
from heygem.errors import InputError

log = logging.getLogger("heygem.engine.preview")

# --- audio analysis ------------------------------------------------------------------------
ANALYSIS_HOP = 160  # 10 ms between analysis frames at 16 kHz
ANALYSIS_WIN = 512  # 32 ms Hann window: resolves the 300 Hz band edge, short enough for syllables
ANALYSIS_RATE = SAMPLE_RATE / ANALYSIS_HOP  # analysis frames per second (100)
SPEECH_BAND_HZ = (300.0, 3400.0)  # telephone band: carries the voiced energy of speech
LOW_BAND_HZ = (300.0, 1000.0)  # first formants; dominant for rounded vowels (o, u)
MID_BAND_HZ = (1000.0, 3000.0)  # second formants; strong for spread vowels (e, i)
ABSOLUTE_FLOOR_DBFS = -65.0  # band energy below this is silence, whatever the loudness of the rest
DYNAMIC_RANGE_DB = 24.0  # openness spans [reference - range, reference] dB
REFERENCE_PERCENTILE = 95.0  # robust "loud speech" level: ignores a few clipped peaks
MIN_RANGE_DB = 6.0  # a near-constant signal still gets a usable scale
LEVEL_CURVE = 1.4  # > 1 keeps loud vowels from saturating, so syllables stay visible
STFT_BLOCK = 4096  # analysis frames per block, bounding memory on long audio

# --- smoothing ------------------------------------------------------------------------------
LOOKAHEAD_MS = 60.0  # the mouth starts opening this long before the sound (lips lead the voice)
ATTACK_MS = 15.0  # time constant while the level rises: the mouth opens quickly
RELEASE_MS = 70.0  # time constant while it falls: the mouth closes more slowly than it opens
ROUNDNESS_SMOOTH_MS = 60.0  # time constant of the roundness follower (lip shape changes slowly)
GATE = 0.04  # openness below this is exactly 0, so pauses are still (the release tail ends)
ROUND_RATIO_DB = (-2.0, 10.0)  # low/mid band ratio mapped to roundness 0..1
DB_EPS = 1e-20  # keeps log10 finite on digital silence

# --- geometry, as fractions of the face box ------------------------------------------------
WARP_TOP = 0.55  # no displacement above this height (nose and up stay untouched)
LIP_LINE = 0.67  # where the lips meet (Haar box with a 10 px chin pad; S3FD is similar)
LIP_BAND_ABOVE = 0.03  # the jaw shift ramps in from LIP_LINE - this ...
LIP_BAND_BELOW = 0.02  # ... to LIP_LINE + this (the stretched band becomes the mouth gap)
CHIN_LINE = 0.86  # the jaw moves rigidly down to here ...
WARP_BOTTOM = 1.0  # ... and the shift fades out to zero at the bottom of the box
JAW_HALF_WIDTH = 0.5  # horizontal support of the jaw shift (half the box width: the whole box)
JAW_SIGMA = 0.45  # Gaussian falloff of the jaw shift, in units of JAW_HALF_WIDTH
MAX_JAW_DROP = 0.06  # jaw drop at openness 1
ROUND_DROP_REDUCTION = 0.3  # rounded lips (o, u) open less far than spread ones (a)
MOUTH_HALF_WIDTH = 0.2  # half the mouth width
MOUTH_HALF_HEIGHT = 0.12  # vertical support of the rounding pinch around LIP_LINE
MOUTH_SIGMA = 0.6  # Gaussian falloff of the pinch, in units of its support
MAX_PINCH = 0.35  # fraction by which roundness 1 narrows the mouth
GAP_HALF_WIDTH = 0.15  # half width of the dark gap between the lips at roundness 0
GAP_ROUND_SHRINK = 0.35  # how much narrower the gap is at roundness 1
GAP_FEATHER = 1.5  # the shading fades out at this many ellipse radii
GAP_SIGMA = 0.45  # Gaussian falloff of the shading, in units of GAP_FEATHER radii
MAX_DARKEN = 0.75  # opacity of the mouth interior at openness 1
MOUTH_INTERIOR_BGR = (28, 22, 60)  # dark red-brown: throat and tongue in shadow
BLENDS = ("feather", "rect")  # accepted for parity with the neural engine's paste modes
MIN_OPENNESS = 1e-3  # below this a frame is returned as it is (no resampling at all)

# --- watermark --------------------------------------------------------------------------------
WATERMARK_TEXT = "preview"
WATERMARK_HEIGHT = 0.035  # text height as a fraction of the frame height
WATERMARK_MARGIN = 0.02  # distance from the top-left corner, fraction of the frame height
WATERMARK_MIN_SCALE = 0.3  # cv2 font scale floor, so small frames still get readable text

Curve = NDArray[np.float64]  # a value per analysis frame (or a grid of box coordinates)
Track = NDArray[np.float32]  # a value per video frame
Field = NDArray[np.float32]  # a value per pixel of the warped region, or a row/column of it


@dataclass(frozen=True)
class MouthMotion:
    """Per output frame: how far the mouth is open and how rounded it is, both in [0, 1]."""

    openness: Track  # shape (n_frames,); exactly 0 in silence
    roundness: Track  # shape (n_frames,); 0 = spread (a, e, i), 1 = round (o, u)

    def __len__(self) -> int:
        return int(self.openness.shape[0])


# --- audio -> motion ------------------------------------------------------------------------


def mouth_motion(wav: NDArray[np.floating], fps: float, n_frames: int) -> MouthMotion:
    """Openness and roundness for n_frames video frames at fps of 16 kHz mono float32 speech.

    Frame i shows the audio around its centre time (i + 0.5) / fps; frames past the end of the
    audio are closed (0).
    """
    wav = _check_motion_input(wav, fps, n_frames)
    if wav.size == 0 or n_frames == 0:
        zeros = np.zeros(n_frames, dtype=np.float32)
        return MouthMotion(zeros, zeros.copy())
    speech, low, mid = band_energies(wav)
    level = _level_from_energy(speech)
    level = _look_ahead(level, _frames_of(LOOKAHEAD_MS))
    openness = _gate(_attack_release(level, ATTACK_MS, RELEASE_MS))
    roundness = _roundness(low, mid, speaking=openness > 0)
    times = (np.arange(n_frames) + 0.5) / fps
    grid = np.arange(openness.size) / ANALYSIS_RATE
    motion = MouthMotion(
        openness=_sample(grid, openness, times),
        roundness=_sample(grid, roundness, times),
    )
    log.debug(
        "mouth motion: %d frames, %.0f%% with the mouth open, mean openness %.2f",
        n_frames,
        100.0 * np.mean(motion.openness > 0),
        float(np.mean(motion.openness)),
    )
    return motion


def _check_motion_input(wav: NDArray[np.floating], fps: float, n_frames: int) -> Samples:
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 1:
        raise InputError(f"audio must be one channel, got an array of shape {wav.shape}")
    if not (math.isfinite(fps) and fps > 0):
        raise InputError(f"fps must be positive, got {fps}")
    if n_frames < 0:
        raise InputError(f"frame count must not be negative, got {n_frames}")
    if not np.isfinite(wav).all():
        raise InputError("the audio contains invalid samples (NaN or infinity); is it corrupt?")
    return wav


def band_energies(wav: Samples) -> tuple[Curve, Curve, Curve]:
    """Mean power per analysis frame (every ANALYSIS_HOP samples) in the speech, low and mid bands."""
    padded = np.pad(wav.astype(np.float32), (ANALYSIS_WIN // 2, ANALYSIS_WIN // 2))
    count = 1 + wav.size // ANALYSIS_HOP
    frames = np.lib.stride_tricks.sliding_window_view(padded, ANALYSIS_WIN)[::ANALYSIS_HOP][:count]
    masks = [_band_mask(band) for band in (SPEECH_BAND_HZ, LOW_BAND_HZ, MID_BAND_HZ)]
    out = np.empty((len(masks), count), dtype=np.float64)
    window = np.hanning(ANALYSIS_WIN).astype(np.float32)
    for start in range(0, count, STFT_BLOCK):
        block = frames[start : start + STFT_BLOCK] * window
        power = np.abs(np.fft.rfft(block, axis=1)) ** 2 / (ANALYSIS_WIN * np.sum(window**2))
        for row, mask in enumerate(masks):
            out[row, start : start + block.shape[0]] = power[:, mask].sum(axis=1)
    return out[0], out[1], out[2]


def _band_mask(band: tuple[float, float]) -> NDArray[np.bool_]:
    freqs = np.fft.rfftfreq(ANALYSIS_WIN, d=1.0 / SAMPLE_RATE)
    return (freqs >= band[0]) & (freqs < band[1])


def _level_from_energy(energy: Curve) -> Curve:
    """Band energy to 0..1: dB above max(absolute floor, reference - range), over that range."""
    db = 10.0 * np.log10(energy + DB_EPS)
    voiced = db[db > ABSOLUTE_FLOOR_DBFS]
    if voiced.size == 0:
        return np.zeros_like(db)
    reference = float(np.percentile(voiced, REFERENCE_PERCENTILE))
    floor = max(ABSOLUTE_FLOOR_DBFS, reference - DYNAMIC_RANGE_DB)
    span = max(reference - floor, MIN_RANGE_DB)
    return np.clip((db - floor) / span, 0.0, 1.0) ** LEVEL_CURVE


def _frames_of(ms: float) -> int:
    return int(round(ms * ANALYSIS_RATE / 1000.0))


def _look_ahead(level: Curve, frames: int) -> Curve:
    """Each frame takes the loudest level of the next `frames` frames, so openings lead the sound."""
    if frames <= 0:
        return level
    padded = np.concatenate([level, np.zeros(frames, dtype=level.dtype)])
    ahead: Curve = np.lib.stride_tricks.sliding_window_view(padded, frames + 1).max(axis=1)
    return ahead  # annotated: numpy's stubs give Any for a reduction


def _attack_release(level: Curve, attack_ms: float, release_ms: float) -> Curve:
    """One-pole follower: rises with the attack time constant, falls with the release one."""
    up = 1.0 - math.exp(-1000.0 / (attack_ms * ANALYSIS_RATE))
    down = 1.0 - math.exp(-1000.0 / (release_ms * ANALYSIS_RATE))
    out = np.empty_like(level)
    state = 0.0
    for i, target in enumerate(level.tolist()):
        state += (up if target > state else down) * (target - state)
        out[i] = state
    return out


def _gate(envelope: Curve) -> Curve:
    """Subtract the gate and rescale, so small tails become an exact 0 without a jump."""
    return np.clip((envelope - GATE) / (1.0 - GATE), 0.0, 1.0)


def _roundness(low: Curve, mid: Curve, speaking: NDArray[np.bool_]) -> Curve:
    ratio_db = 10.0 * np.log10((low + DB_EPS) / (mid + DB_EPS))
    lo, hi = ROUND_RATIO_DB
    raw = np.where(speaking, np.clip((ratio_db - lo) / (hi - lo), 0.0, 1.0), 0.0)
    smoothed = _attack_release(raw, ROUNDNESS_SMOOTH_MS, ROUNDNESS_SMOOTH_MS)
    return np.where(speaking, smoothed, 0.0)


def _sample(grid: NDArray[np.floating], values: Curve, times: NDArray[np.floating]) -> Track:
    sampled: Track = np.interp(times, grid, values, left=0.0, right=0.0).astype(np.float32)
    return sampled  # annotated: numpy's stubs give Any for interp


# --- motion -> pixels -------------------------------------------------------------------------


class PreviewRenderer:
    """Warps the lower face of each frame according to a MouthMotion. Stateless between batches."""

    name = PREVIEW

    def __init__(self, motion: MouthMotion, blend: str = "feather", watermark: bool = False) -> None:
        # `blend` is accepted for interface parity with the neural engine; the warp is always
        # feathered because a hard-edged warp would show as a moving rectangle.
        if blend not in BLENDS:
            raise InputError(f"blend must be one of {', '.join(BLENDS)}; got {blend!r}")
        self.motion = motion
        self.blend = blend
        self.watermark = watermark

    def render(
        self,
        frames: list[Frame],
        boxes: list[Box | None],
        frame_indices: Sequence[int],
    ) -> list[Frame]:
        """New frames with the mouth moved; frames whose box is None come back unchanged."""
        if not len(frames) == len(boxes) == len(frame_indices):
            raise ValueError(
                f"frames, boxes and frame_indices differ in length: "
                f"{len(frames)}, {len(boxes)}, {len(frame_indices)}"
            )
        return [
            self._render_one(frame, box, index) for frame, box, index in zip(frames, boxes, frame_indices)
        ]

    def _render_one(self, frame: Frame, box: Box | None, index: int) -> Frame:
        openness, roundness = self._motion_at(index)
        out = frame.copy()
        if box is not None and openness >= MIN_OPENNESS:
            warp_mouth(frame, out, box, openness, roundness)
        if self.watermark:
            draw_watermark(out)
        return out

    def _motion_at(self, index: int) -> tuple[float, float]:
        if not 0 <= index < len(self.motion):
            return 0.0, 0.0
        return float(self.motion.openness[index]), float(self.motion.roundness[index])


@dataclass(frozen=True)
class _Region:
    """The part of the frame the warp may touch: box rows from WARP_TOP down, clamped to the frame."""

    x1: int
    y1: int
    x2: int
    y2: int
    box_x: float  # box left edge
    box_y: float  # box top edge
    box_w: float
    box_h: float


def _region(box: Box, shape: tuple[int, ...]) -> _Region | None:
    x1, y1, x2, y2 = (int(v) for v in box)
    w, h = x2 - x1, y2 - y1
    if w < 4 or h < 4:
        return None
    height, width = shape[:2]
    top = y1 + math.ceil(WARP_TOP * h)
    rx1, ry1 = max(x1, 0), max(top, 0)
    rx2, ry2 = min(x2, width), min(y2, height)
    if rx2 <= rx1 or ry2 <= ry1:
        return None
    return _Region(rx1, ry1, rx2, ry2, float(x1), float(y1), float(w), float(h))


def warp_mouth(
    src: Frame,
    dst: Frame,
    box: Box,
    openness: float,
    roundness: float,
) -> None:
    """Write the warped, darkened lower face of `src` into `dst` (same shape) inside `box`."""
    region = _region(box, src.shape)
    if region is None:
        return
    u, v = _box_coords(region)
    opening = MAX_JAW_DROP * openness * (1.0 - ROUND_DROP_REDUCTION * roundness)  # box heights
    drop = _jaw_drop(u, v) * (opening * region.box_h)
    pinch = _pinch(u, v) * (MAX_PINCH * roundness * min(1.0, 4.0 * openness))
    xs = np.arange(region.x1, region.x2, dtype=np.float32)[None, :]
    ys = np.arange(region.y1, region.y2, dtype=np.float32)[:, None]
    centre_x = region.box_x + 0.5 * region.box_w
    map_x = (xs + pinch * (xs - centre_x)).astype(np.float32)
    map_y = (ys - drop).astype(np.float32)
    warped = cv2.remap(src, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    moved = (drop > 0) | (pinch > 0)
    patch = dst[region.y1 : region.y2, region.x1 : region.x2]
    np.copyto(patch, warped, where=moved[..., None])
    _darken_gap(patch, u, v, region, opening, openness, roundness)


def _box_coords(region: _Region) -> tuple[Field, Field]:
    """Pixel centres of the region as box fractions: u across (0.5 = centre), v down."""
    xs = (np.arange(region.x1, region.x2, dtype=np.float32) - region.box_x) / region.box_w
    ys = (np.arange(region.y1, region.y2, dtype=np.float32) - region.box_y) / region.box_h
    return xs[None, :], ys[:, None]


def _smoothstep(edge0: float, edge1: float, x: Field) -> Field:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    smooth: Field = t * t * (3.0 - 2.0 * t)  # annotated: numpy's stubs give Any for this product
    return smooth


def _truncated_gaussian(x: NDArray[np.floating], sigma: float) -> Field:
    """Gaussian of x (support units) shifted and rescaled to be 1 at 0 and exactly 0 from |x| >= 1."""
    edge = math.exp(-0.5 / sigma**2)
    g = (np.exp(-0.5 * (x / sigma) ** 2) - edge) / (1.0 - edge)
    return np.where(np.abs(x) < 1.0, np.maximum(g, 0.0), 0.0).astype(np.float32)


def _jaw_drop(u: Field, v: Field) -> Field:
    """0..1 shape of the downward shift: ramps in at the lips, rigid to the chin, fades by the box edge."""
    ramp = _smoothstep(LIP_LINE - LIP_BAND_ABOVE, LIP_LINE + LIP_BAND_BELOW, v)
    fade = 1.0 - _smoothstep(CHIN_LINE, WARP_BOTTOM, v)
    across = _truncated_gaussian((u - 0.5) / JAW_HALF_WIDTH, JAW_SIGMA)
    return (ramp * fade * (v >= WARP_TOP)) * across


def _pinch(u: Field, v: Field) -> Field:
    """0..1 weight of the horizontal squeeze that narrows the mouth, centred on the lips."""
    across = _truncated_gaussian((u - 0.5) / (2.0 * MOUTH_HALF_WIDTH), MOUTH_SIGMA)
    down = _truncated_gaussian((v - LIP_LINE) / MOUTH_HALF_HEIGHT, MOUTH_SIGMA)
    return across * down * (v >= WARP_TOP)


def _darken_gap(
    patch: Frame,
    u: Field,
    v: Field,
    region: _Region,
    opening: float,
    openness: float,
    roundness: float,
) -> None:
    """Shade a feathered ellipse over the stretched band between the lips (the open mouth).

    `opening` is the jaw drop in box heights; the gap spans it below the lip line.
    """
    top = LIP_LINE - LIP_BAND_ABOVE / 2.0
    centre_v = top + opening / 2.0
    half_h = max(opening / 2.0, 1.0 / region.box_h)
    half_w = GAP_HALF_WIDTH * (1.0 - GAP_ROUND_SHRINK * roundness)
    # Work only on the rows and columns the ellipse's support can reach.
    rows = np.flatnonzero((np.abs(v[:, 0] - centre_v) < GAP_FEATHER * half_h) & (v[:, 0] >= WARP_TOP))
    cols = np.flatnonzero(np.abs(u[0] - 0.5) < GAP_FEATHER * half_w)
    if rows.size == 0 or cols.size == 0:
        return
    rs, cs = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    r = np.sqrt(((u[:, cs] - 0.5) / half_w) ** 2 + ((v[rs] - centre_v) / half_h) ** 2)
    alpha = (MAX_DARKEN * openness * _truncated_gaussian(r / GAP_FEATHER, GAP_SIGMA))[..., None]
    area = patch[rs, cs]
    shaded = area * (1.0 - alpha) + np.asarray(MOUTH_INTERIOR_BGR, np.float32) * alpha
    np.copyto(area, np.clip(np.rint(shaded), 0, 255).astype(area.dtype), where=alpha > 0)


def draw_watermark(frame: Frame) -> None:
    """Burn a small 'preview' label into the top-left corner, in place."""
    height = frame.shape[0]
    font = cv2.FONT_HERSHEY_SIMPLEX
    (_, base_h), _ = cv2.getTextSize(WATERMARK_TEXT, font, 1.0, 1)
    scale = max(WATERMARK_MIN_SCALE, WATERMARK_HEIGHT * height / base_h)
    thickness = max(1, int(round(scale)))
    margin = max(2, int(WATERMARK_MARGIN * height))
    (_, text_h), _ = cv2.getTextSize(WATERMARK_TEXT, font, scale, thickness)
    origin = (margin, margin + text_h)
    cv2.putText(frame, WATERMARK_TEXT, origin, font, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
    cv2.putText(frame, WATERMARK_TEXT, origin, font, scale, (255, 255, 255), thickness, cv2.LINE_AA)


__all__ = ["MouthMotion", "PreviewRenderer", "mouth_motion", "band_energies", "warp_mouth", "draw_watermark"]


if TYPE_CHECKING:
    # The pipeline streams every frame through a MouthRenderer; mypy holds this class to it.
    _IS_A_RENDERER: type[MouthRenderer] = PreviewRenderer
