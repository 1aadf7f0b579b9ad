"""The visible watermark label: Hershey text scaled to the frame, white on a dark outline."""

from __future__ import annotations

from heygem.engine.api import Frame

LABEL_HEIGHT_FRACTION = 0.035  # text height relative to the frame height
LABEL_MIN_SCALE = 0.35
LABEL_MARGIN_FRACTION = 0.02
FIRST_PRINTABLE, PAST_PRINTABLE = 32, 127  # OpenCV's built-in Hershey fonts only have ASCII glyphs
UNPRINTABLE = "?"
OUTLINE_BGR = (0, 0, 0)
TEXT_BGR = (255, 255, 255)
OUTLINE_EXTRA_PX = 2


def ascii_label(label: str) -> str:
    """The label as the font can draw it: trimmed, every non-ASCII character shown as '?'."""
    return "".join(ch if FIRST_PRINTABLE <= ord(ch) < PAST_PRINTABLE else UNPRINTABLE for ch in label.strip())


def draw_label(frame: Frame, label: str) -> None:
    """Burn `label` into the bottom-right corner of `frame` in place (white text, dark outline)."""
    import cv2

    height, width = frame.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    (_, base_h), _ = cv2.getTextSize("X", font, 1.0, 1)
    scale = max(LABEL_MIN_SCALE, height * LABEL_HEIGHT_FRACTION / base_h)
    thickness = max(1, round(scale))
    (text_w, text_h), baseline = cv2.getTextSize(label, font, scale, thickness)
    margin = max(2, round(min(width, height) * LABEL_MARGIN_FRACTION))
    origin = (max(0, width - text_w - margin), max(text_h, height - margin - baseline))
    cv2.putText(frame, label, origin, font, scale, OUTLINE_BGR, thickness + OUTLINE_EXTRA_PX, cv2.LINE_AA)
    cv2.putText(frame, label, origin, font, scale, TEXT_BGR, thickness, cv2.LINE_AA)
