"""The generator as plain arrays: the network's input built in numpy, and a runner around an
`ArrayForward` (the OpenVINO compiled model) that needs neither torch nor the torch model.

`GeneratorRunner` (inference.py, which imports torch) uses the same helpers for a non-torch
backend, so both paths feed the network the same input and truncate its output the same way.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from heygem.engine.api import FACE_SIZE
from heygem.engine.model.backends import ArrayForward, mouth_pixels

MASKED_ROWS = slice(FACE_SIZE // 2, FACE_SIZE)  # the lower half the network must fill in
PIXEL_SCALE = 255.0

MelWindows = NDArray[np.float32]  # (N, 80, 16)
Faces = NDArray[np.uint8]  # (N, 96, 96, 3) BGR


def network_input(faces: Faces) -> NDArray[np.float32]:
    """(N, 96, 96, 3) uint8 -> (N, 6, 96, 96) float32: lower-half-masked copy, then the full face."""
    scaled = faces.astype(np.float32) / PIXEL_SCALE
    masked = scaled.copy()
    masked[:, MASKED_ROWS] = 0.0
    stacked = np.concatenate([masked, scaled], axis=3)
    return np.ascontiguousarray(stacked.transpose(0, 3, 1, 2))


def forward_mouths(forward: ArrayForward, mels: MelWindows, faces: Faces) -> Faces:
    """One batch through `forward`: (N, 80, 16) mels and (N, 96, 96, 3) faces -> uint8 mouths."""
    network_mels = np.ascontiguousarray(mels[:, np.newaxis], np.float32)
    return mouth_pixels(forward(network_mels, network_input(faces)))


class ArrayRunner:
    """GeneratorRunner's `infer` for a backend that computes on arrays: batches of `batch_size`."""

    def __init__(self, forward: ArrayForward, batch_size: int) -> None:
        self.forward = forward
        self.batch_size = batch_size

    def infer(self, mels: MelWindows, faces: Faces) -> Faces:
        """mels (N, 80, 16) float32, faces (N, 96, 96, 3) uint8 BGR -> (N, 96, 96, 3) uint8 BGR."""
        if len(faces) == 0:
            return np.empty((0, FACE_SIZE, FACE_SIZE, 3), np.uint8)
        starts = range(0, len(faces), self.batch_size)
        return np.concatenate(
            [
                forward_mouths(self.forward, mels[a : a + self.batch_size], faces[a : a + self.batch_size])
                for a in starts
            ]
        )
