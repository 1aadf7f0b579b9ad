"""Run the generator on batches of faces: device and precision choice, autocast, OOM back-off.

The network itself (wav2lip.py) knows nothing of devices; this module is the only place that
decides where and how it runs.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from heygem.engine.api import FACE_SIZE
from heygem.engine.model.backends import Backend, mouth_pixels
from heygem.errors import ModelError

log = logging.getLogger("heygem.engine.model.inference")

MASKED_ROWS = slice(FACE_SIZE // 2, FACE_SIZE)  # the lower half the network must fill in
PIXEL_SCALE = 255.0
AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}

MelWindows = NDArray[np.float32]  # (N, 80, 16)
Faces = NDArray[np.uint8]  # (N, 96, 96, 3) BGR


@dataclass(frozen=True)
class Placement:
    device: torch.device
    precision: str  # fp32 | fp16 | bf16

    @property
    def label(self) -> str:
        return f"{self.device} {self.precision}"


def choose_placement(device: str = "auto", precision: str = "auto") -> Placement:
    """Resolve "auto" device/precision: CUDA + fp16 when a GPU is visible, else CPU + fp32."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        log.warning("device %s requested but torch sees no CUDA GPU; using cpu", device)
        device = "cpu"
    resolved = torch.device(device)
    if precision == "auto":
        precision = "fp16" if resolved.type == "cuda" else "fp32"
    if precision == "fp16" and resolved.type == "cpu":
        log.warning("fp16 is slow and inexact on CPU; using fp32 (bf16 is the fast CPU option)")
        precision = "fp32"
    return Placement(resolved, precision)


def device_name(placement: Placement) -> str:
    if placement.device.type == "cuda":
        return torch.cuda.get_device_name(placement.device)
    return f"CPU ({torch.get_num_threads()} threads)"


def prepare_model(model: torch.nn.Module, placement: Placement) -> torch.nn.Module:
    model = model.to(placement.device).eval()
    if placement.device.type == "cuda":
        # Face batches have a fixed shape, so cuDNN's autotuning pays off after the first batch.
        torch.backends.cudnn.benchmark = True
    return model


class GeneratorRunner:
    """Feeds (mel window, face crop) batches to the generator and returns 96x96 BGR mouths."""

    def __init__(
        self, model: torch.nn.Module, placement: Placement, batch_size: int, backend: Backend | None = None
    ) -> None:
        self.model = model
        self.placement = placement
        self.batch_size = batch_size
        self.backend = backend  # None or a torch backend: the eager path below

    def infer(self, mels: MelWindows, faces: Faces) -> Faces:
        """mels (N, 80, 16) float32, faces (N, 96, 96, 3) uint8 BGR -> (N, 96, 96, 3) uint8 BGR."""
        outputs: list[Faces] = []
        start = 0
        while start < len(faces):
            stop = start + self.batch_size
            try:
                outputs.append(self._forward(mels[start:stop], faces[start:stop]))
            except torch.cuda.OutOfMemoryError:
                self._halve_batch()
                continue
            start = stop
        return np.concatenate(outputs) if outputs else np.empty((0, FACE_SIZE, FACE_SIZE, 3), np.uint8)

    def _halve_batch(self) -> None:
        torch.cuda.empty_cache()
        if self.batch_size == 1:
            raise ModelError("GPU out of memory even with batch size 1; try a smaller video or the CPU")
        self.batch_size = max(1, self.batch_size // 2)
        log.warning("GPU out of memory; retrying with batch size %d", self.batch_size)

    def _forward(self, mels: MelWindows, faces: Faces) -> Faces:
        if self.backend is not None and self.backend.forward is not None:
            network_mels = np.ascontiguousarray(mels[:, np.newaxis], np.float32)
            return mouth_pixels(self.backend.forward(network_mels, _network_input(faces)))
        device = self.placement.device
        face_tensor = torch.from_numpy(_network_input(faces)).to(device)
        mel_tensor = torch.from_numpy(np.ascontiguousarray(mels, np.float32)).unsqueeze(1).to(device)
        with torch.inference_mode():
            with self._autocast():
                generated = self.model(mel_tensor, face_tensor)
            pixels = generated.float().clamp_(0, 1).mul_(PIXEL_SCALE)
            # The reference truncates rather than rounds when going back to uint8; keep that.
            mouths: Faces = pixels.permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy()
            return mouths  # annotated: torch types .numpy() as an array of any dtype

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        dtype = AUTOCAST_DTYPES.get(self.placement.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.placement.device.type, dtype=dtype)


def _network_input(faces: Faces) -> NDArray[np.float32]:
    """(N, 96, 96, 3) uint8 -> (N, 6, 96, 96) float32: lower-half-masked copy, then the full face."""
    scaled = faces.astype(np.float32) / PIXEL_SCALE
    masked = scaled.copy()
    masked[:, MASKED_ROWS] = 0.0
    stacked = np.concatenate([masked, scaled], axis=3)
    return np.ascontiguousarray(stacked.transpose(0, 3, 1, 2))
