"""Face crops for the model and paste-back of its output.

`paste_rect` is the reference's hard rectangle (bit-exact parity). `paste_feathered` blends only a
soft ellipse over the mouth and jaw, so neither the box edge nor the model's blurrier upper face
shows. Both return a new frame and leave the input untouched, unless asked to draw in place: a
full-frame copy costs about as much as the paste itself at 720p (it is a fresh, page-faulted
allocation every frame).
"""

from __future__ import annotations

from functools import lru_cache
from typing import cast

import cv2
import numpy as np
from numpy.typing import NDArray

from heygem.engine.api import FACE_SIZE, Box, Frame

Mask = NDArray[np.float32]

MASK_TOP = 0.45  # the blended region starts this far down the box: the generator redraws the lower half
FEATHER_FRACTION = 0.12  # soft edge width, relative to the box's shorter side
GAUSS_SIGMAS_IN_FEATHER = 3.0  # sigma = feather width / 3, so the blur has died out by the border
MASK_FLOOR = 1e-3  # blur tails below this are cut to exactly 0 (invisible: < 0.3 grey levels)
MASK_CACHE_SIZE = 64  # distinct box sizes remembered (smoothed boxes change size by a pixel or two)


def crop_face(frame: Frame, box: Box, size: int = FACE_SIZE) -> Frame:
    """The box's pixels stretched (aspect not kept) to size x size with bilinear filtering."""
    x1, y1, x2, y2 = box
    # cv2's stubs type every image as MatLike; resizing keeps the uint8 dtype.
    return cast(Frame, cv2.resize(frame[y1:y2, x1:x2], (size, size), interpolation=cv2.INTER_LINEAR))


def paste_rect(frame: Frame, patch: Frame, box: Box, in_place: bool = False) -> Frame:
    """Reference paste: `patch` resized bilinearly to the box overwrites it.

    Into `frame` itself when `in_place` and it is writable, else into a copy."""
    x1, y1, x2, y2 = box
    out = _target(frame, in_place)
    out[y1:y2, x1:x2] = cv2.resize(patch, (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR)
    return out


def paste_feathered(frame: Frame, patch: Frame, box: Box, in_place: bool = False) -> Frame:
    """Blend `patch` (resized to the box) into the lower face through `lower_face_mask`.

    Outside the soft ellipse, including the whole box border and the upper face, the frame is
    unchanged, so no rectangle edge can show. Into `frame` itself when `in_place` and it is
    writable, else into a copy.
    """
    x1, y1, x2, y2 = box
    width, height = x2 - x1, y2 - y1
    resized = cv2.resize(patch, (width, height), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    mask = lower_face_mask(width, height)[:, :, None]
    out = _target(frame, in_place)
    region = out[y1:y2, x1:x2].astype(np.float32)
    blended = region + (resized - region) * mask
    out[y1:y2, x1:x2] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out


def _target(frame: Frame, in_place: bool) -> Frame:
    return frame if in_place and frame.flags.writeable else frame.copy()


@lru_cache(maxsize=MASK_CACHE_SIZE)
def lower_face_mask(width: int, height: int) -> Mask:
    """A height x width float32 mask in [0, 1]: 1 over mouth and jaw, soft edges, 0 at the border.

    An ellipse fills the box's lower part (from MASK_TOP down, full width), shrunk by the feather
    width on every side; blurring it with sigma = feather / 3 makes the edge soft and lets it reach
    zero by the box border. Read-only because it is shared between calls.
    """
    if width < 1 or height < 1:
        raise ValueError(f"bad box size {width}x{height}")
    feather = max(1.0, FEATHER_FRACTION * min(width, height))
    top = MASK_TOP * height
    centre = (width / 2.0, (top + height) / 2.0)
    axes = (max(0.5, width / 2.0 - feather), max(0.5, (height - top) / 2.0 - feather))
    mask = _ellipse(width, height, centre, axes)
    sigma = feather / GAUSS_SIGMAS_IN_FEATHER
    # cv2's stubs type every image as MatLike; blurring keeps the float32 dtype.
    mask = cast(
        Mask, cv2.GaussianBlur(mask, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_CONSTANT)
    )
    np.clip(mask, 0.0, 1.0, out=mask)  # the blur's float sums overshoot 1 by an ulp or so
    mask[mask < MASK_FLOOR] = 0.0
    mask[: int(top)] = 0.0  # cut the last blur tail so the upper face is guaranteed untouched
    mask[[0, -1], :] = 0.0
    mask[:, [0, -1]] = 0.0
    mask.flags.writeable = False
    return mask


def _ellipse(width: int, height: int, centre: tuple[float, float], axes: tuple[float, float]) -> Mask:
    """A hard 0/1 ellipse sampled at pixel centres (exact for any size, unlike integer cv2.ellipse)."""
    ys = (np.arange(height, dtype=np.float32) + 0.5 - centre[1]) / axes[1]
    xs = (np.arange(width, dtype=np.float32) + 0.5 - centre[0]) / axes[0]
    return ((xs[None, :] ** 2 + ys[:, None] ** 2) <= 1.0).astype(np.float32)


__all__ = ["FACE_SIZE", "crop_face", "paste_rect", "paste_feathered", "lower_face_mask"]
