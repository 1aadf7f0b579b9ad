"""S3FD's arithmetic outside the network, in numpy: input preparation, anchor decoding, NMS.

The one definition of S3FD's constants. The OpenVINO detector runs entirely on these functions
(no torch); the torch detector (detect.py) decodes on its device with the same constants and the
same candidate table, and `greedy_nms` finishes both. Tie order is defined (stable, lower anchor
index first) on both paths, so equal scores pick the same candidates.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

S3FD_THRESHOLD = 0.5  # the reference keeps boxes scoring above this after NMS
S3FD_NMS_IOU = 0.3
S3FD_MIN_SCORE = 0.05  # face_alignment's candidate floor; boxes below it never count
S3FD_MEAN = (104.0, 117.0, 123.0)  # subtracted after the channel flip, as face_alignment does
S3FD_ANCHOR_SCALE = 4  # an anchor is 4 strides wide at each of the six levels (strides 4 to 128)
S3FD_FIRST_STRIDE_POWER = 2  # level i has stride 2 ** (i + 2)
S3FD_CENTRE_VARIANCE = 0.1
S3FD_SIZE_VARIANCE = 0.2
# Anchors per frame that go through NMS: a face gives a few dozen above 0.5; 256 leaves room for
# several faces while keeping the per-frame overlap matrix small.
S3FD_MAX_CANDIDATES = 256
# The network's fourth pooling needs two rows and columns at stride 16: a smaller frame (a tiny
# face's neighbourhood) is padded to this with the mean colour, which the network sees as zero.
S3FD_MIN_SIDE = 32
BOX_COLUMNS = 5  # x1, y1, x2, y2, score; the overlap flags follow in a candidate table

Frames = NDArray[np.uint8]  # (N, H, W, 3) BGR
NetworkOutputs = list[NDArray[np.float32]]  # six (class logits (N, 2, H, W), offsets (N, 4, H, W)) pairs


def network_input(frames: Frames) -> NDArray[np.float32]:
    """(N, H, W, 3) uint8 BGR -> (N, 3, H', W') float32: channels flipped, the mean subtracted,
    padded on the bottom and right to S3FD_MIN_SIDE (boxes keep the frame's coordinates)."""
    flipped = frames[..., ::-1].astype(np.float32) - np.asarray(S3FD_MEAN, np.float32)
    height, width = frames.shape[1:3]
    missing_rows, missing_columns = padding(height), padding(width)
    if missing_rows or missing_columns:
        flipped = np.pad(flipped, ((0, 0), (0, missing_rows), (0, missing_columns), (0, 0)))
    return np.ascontiguousarray(flipped.transpose(0, 3, 1, 2))


def padding(side: int) -> int:
    """Pixels to add to a side shorter than the network can take."""
    return max(0, S3FD_MIN_SIDE - side)


def anchor_stride(level: int) -> int:
    return int(2 ** (level + S3FD_FIRST_STRIDE_POWER))


def anchors(level: int, height: int, width: int) -> NDArray[np.float32]:
    """(3, H * W) centre x, centre y and size of one level's anchors, row-major like its outputs."""
    stride = anchor_stride(level)
    ys = np.arange(height, dtype=np.float32) * stride + stride / 2
    xs = np.arange(width, dtype=np.float32) * stride + stride / 2
    grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
    size = np.full(grid_x.size, stride * S3FD_ANCHOR_SCALE, np.float32)
    return np.stack([grid_x.ravel(), grid_y.ravel(), size]).astype(np.float32)


def anchor_scores_and_offsets(
    outputs: NetworkOutputs,
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
    """Every anchor of every level: scores (N, A), offsets (N, 4, A), anchors (3, A)."""
    scores, offsets, all_anchors = [], [], []
    for level in range(len(outputs) // 2):
        logits = np.asarray(outputs[2 * level], np.float32)
        deltas = np.asarray(outputs[2 * level + 1], np.float32)
        frames, _, height, width = logits.shape
        # softmax over (background, face), face column: the same as a sigmoid of the difference.
        with np.errstate(over="ignore"):
            scores.append((1.0 / (1.0 + np.exp(logits[:, 0] - logits[:, 1]))).reshape(frames, -1))
        offsets.append(deltas.reshape(frames, 4, -1))
        all_anchors.append(anchors(level, height, width))
    # A NaN score (a reduced-precision overflow) must neither count nor crowd out real candidates.
    joined = np.nan_to_num(np.concatenate(scores, axis=1), nan=0.0).astype(np.float32)
    return joined, np.concatenate(offsets, axis=2), np.concatenate(all_anchors, axis=1)


def decode(offsets: NDArray[np.float32], chosen_anchors: NDArray[np.float32]) -> NDArray[np.float32]:
    """offsets (N, 4, K) and their anchors (3, N, K) -> boxes (N, K, 4) as x1, y1, x2, y2."""
    cx0, cy0, size = chosen_anchors
    cx = cx0 + offsets[:, 0] * np.float32(S3FD_CENTRE_VARIANCE) * size
    cy = cy0 + offsets[:, 1] * np.float32(S3FD_CENTRE_VARIANCE) * size
    with np.errstate(over="ignore"):
        w = size * np.exp(offsets[:, 2] * np.float32(S3FD_SIZE_VARIANCE))
        h = size * np.exp(offsets[:, 3] * np.float32(S3FD_SIZE_VARIANCE))
    x1, y1 = cx - w / 2, cy - h / 2
    return np.stack([x1, y1, x1 + w, y1 + h], axis=-1).astype(np.float32)


def anchor_boxes(outputs: NetworkOutputs) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Every anchor decoded: boxes (N, A, 4) and scores (N, A), in the network's anchor order."""
    scores, offsets, all_anchors = anchor_scores_and_offsets(outputs)
    per_frame = np.broadcast_to(all_anchors[:, np.newaxis], (3, len(scores), all_anchors.shape[1]))
    return decode(offsets, per_frame), scores


def overlaps(boxes: NDArray[np.float32]) -> NDArray[np.float32]:
    """(N, K, 4) -> (N, K, K) IoU, with the reference's +1 pixel convention for widths."""
    x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    w = np.clip(
        np.minimum(x2[:, :, None], x2[:, None]) - np.maximum(x1[:, :, None], x1[:, None]) + 1, 0, None
    )
    h = np.clip(
        np.minimum(y2[:, :, None], y2[:, None]) - np.maximum(y1[:, :, None], y1[:, None]) + 1, 0, None
    )
    inter = w * h
    with np.errstate(divide="ignore", invalid="ignore"):
        iou: NDArray[np.float32] = (inter / (areas[:, :, None] + areas[:, None] - inter)).astype(np.float32)
    return iou


def candidate_count(scores: NDArray[np.float32], min_score: float) -> int:
    """K: the most anchors any frame has above `min_score`, at least 1, at most the table's size."""
    k = min(S3FD_MAX_CANDIDATES, int(scores.shape[1]))
    above = int((scores > min_score).sum(axis=1).max(initial=0))
    return max(1, min(k, above))


def candidate_table(outputs: NetworkOutputs, min_score: float) -> NDArray[np.float32]:
    """The network's six (scores, offsets) pairs -> (N, K, 5 + K) per frame, like the torch
    decoder: the K best anchors' boxes and scores (0 below `min_score`) in descending score order,
    then a K x K flag matrix marking the later candidates each box overlaps above the NMS IoU."""
    scores, offsets, all_anchors = anchor_scores_and_offsets(outputs)
    k = candidate_count(scores, min_score)
    index = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    best = np.take_along_axis(scores, index, axis=1)
    best = np.where(best > min_score, best, np.float32(0.0)).astype(np.float32)
    chosen_offsets = np.take_along_axis(offsets, index[:, np.newaxis], axis=2)
    chosen = decode(chosen_offsets, all_anchors[:, index])
    later = np.triu(np.ones((k, k), bool), 1)
    flags = (overlaps(chosen) > S3FD_NMS_IOU) & later
    return np.concatenate([chosen, best[..., np.newaxis], flags.astype(np.float32)], axis=-1)


def greedy_nms(table: NDArray[np.float32]) -> NDArray[np.float32]:
    """Rows (x1, y1, x2, y2, score, K overlap flags) in descending score order -> the kept rows.

    The overlaps were computed with the table; what is left is the order-dependent greedy walk,
    over the few candidates above the threshold.
    """
    live = np.flatnonzero(table[:, 4] > 0)
    flags = table[:, BOX_COLUMNS:] > 0
    suppressed = np.zeros(len(table), bool)
    kept = []
    for i in live:
        if not suppressed[i]:
            kept.append(i)
            suppressed |= flags[i]
    return table[kept, :BOX_COLUMNS]
