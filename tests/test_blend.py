"""Paste-back: the reference rectangle and the feathered lower-face blend."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from heygem.engine import blend
from tests import media

BOX = (88, 31, 140, 94)  # the astronaut's face with the reference's 10 px of chin: 52 x 63


@pytest.fixture
def frame() -> np.ndarray:
    return media.astronaut_bgr()


@pytest.fixture
def patch() -> np.ndarray:
    """What a generator might return: a flat 96x96 colour far from the frame's."""
    return np.full((96, 96, 3), (20, 220, 60), np.uint8)


def test_crop_face_stretches_the_box_to_96(frame):
    face = blend.crop_face(frame, BOX)
    assert face.shape == (96, 96, 3) and face.dtype == np.uint8
    x1, y1, x2, y2 = BOX
    expected = cv2.resize(frame[y1:y2, x1:x2], (96, 96), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(face, expected)


def test_rect_paste_replaces_exactly_the_box(frame, patch):
    original = frame.copy()
    out = blend.paste_rect(frame, patch, BOX)
    np.testing.assert_array_equal(frame, original)  # input untouched
    x1, y1, x2, y2 = BOX
    inside = np.zeros(frame.shape[:2], bool)
    inside[y1:y2, x1:x2] = True
    assert (out[inside] == (20, 220, 60)).all()
    np.testing.assert_array_equal(out[~inside], original[~inside])


def test_rect_paste_resizes_a_textured_patch_bilinearly(frame):
    patch = np.random.default_rng(0).integers(0, 256, (96, 96, 3), np.uint8)
    out = blend.paste_rect(frame, patch, BOX)
    x1, y1, x2, y2 = BOX
    expected = cv2.resize(patch, (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(out[y1:y2, x1:x2], expected)


def test_feathered_paste_touches_only_the_lower_face(frame, patch):
    original = frame.copy()
    out = blend.paste_feathered(frame, patch, BOX)
    np.testing.assert_array_equal(frame, original)
    x1, y1, x2, y2 = BOX
    h = y2 - y1
    changed = np.abs(out.astype(int) - original.astype(int)).max(axis=2) > 0
    rows, cols = np.nonzero(changed)
    # Nothing outside the box, nothing on its border, nothing in the upper face.
    assert rows.min() > y1 + int(blend.MASK_TOP * h) - 1 and rows.max() < y2 - 1
    assert cols.min() > x1 and cols.max() < x2 - 1
    # The mouth area (lower middle of the box) takes the generated pixels almost fully.
    mouth = out[y1 + int(0.72 * h), (x1 + x2) // 2].astype(int)
    assert np.abs(mouth - (20, 220, 60)).max() <= 3


@pytest.mark.parametrize("paste", [blend.paste_rect, blend.paste_feathered])
def test_in_place_paste_draws_on_a_writable_frame_and_copies_a_read_only_one(frame, patch, paste):
    expected = paste(frame, patch, BOX)
    drawn = paste(frame, patch, BOX, in_place=True)
    assert drawn is frame
    np.testing.assert_array_equal(drawn, expected)

    still = media.astronaut_bgr()
    still.flags.writeable = False  # a still is shared by every output frame
    copied = paste(still, patch, BOX, in_place=True)
    assert copied is not still
    np.testing.assert_array_equal(still, media.astronaut_bgr())
    np.testing.assert_array_equal(copied, expected)


def test_mask_is_soft_bounded_and_zero_at_the_edges():
    for width, height in [(52, 63), (17, 11), (300, 360)]:
        mask = blend.lower_face_mask(width, height)
        assert mask.shape == (height, width) and mask.dtype == np.float32
        assert mask.min() >= 0.0 and mask.max() <= 1.0
        assert not mask[0].any() and not mask[-1].any()
        assert not mask[:, 0].any() and not mask[:, -1].any()
        assert not mask[: int(blend.MASK_TOP * height)].any()
    mask = blend.lower_face_mask(300, 360)
    assert mask[int(0.72 * 360), 150] == pytest.approx(1.0, abs=1e-3)
    # Feathered, not hard: a row through the mouth rises through many intermediate values.
    row = mask[int(0.72 * 360)]
    assert ((row > 0.05) & (row < 0.95)).sum() >= 10
    assert blend.lower_face_mask(300, 360) is mask  # cached per size
    with pytest.raises(ValueError):
        mask[0, 0] = 1.0  # shared, so read-only
