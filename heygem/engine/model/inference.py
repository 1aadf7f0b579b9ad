"""Run the generator on batches of faces: device and precision choice, autocast, OOM back-off.

The network itself (wav2lip.py) knows nothing of devices; this module is the only place that
decides where and how it runs. On CUDA the faces go over as uint8 through pinned memory with
non-blocking copies, the input is built on the GPU, the model runs in channels_last, and every
batch is padded to the same size so that cuDNN's autotuning (benchmark mode) tunes once. The CPU
path builds its input in numpy, unpadded, as it always has.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from heygem.engine.api import FACE_SIZE
from heygem.engine.model.array_runner import MASKED_ROWS, Faces, MelWindows, forward_mouths, network_input
from heygem.engine.model.backends import Backend
from heygem.engine.model.devices import (
    AUTO_BATCH_SIZES,
    CPU,
    BatchBackoff,
    bf16_supported,
    cpu_precision,
    padded,
    resolve_device,
    shared_backoff,
    use_device,
)

log = logging.getLogger("heygem.engine.model.inference")

PIXEL_SCALE = 255.0
AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
GENERATING = "generating faces"


@dataclass(frozen=True)
class Placement:
    device: torch.device
    precision: str  # fp32 | fp16 | bf16

    @property
    def label(self) -> str:
        return f"{self.device} {self.precision}"


def choose_placement(device: str = "auto", precision: str = "auto") -> Placement:
    """Resolve "auto" device/precision: CUDA + fp16 on a GPU torch can drive, else CPU + fp32.

    bf16 on a GPU without native bf16 (compute capability below 8.0) becomes fp16.
    """
    resolved = torch.device(resolve_device(device))
    if resolved.type == CPU:
        precision = cpu_precision(precision)
    elif precision == "auto":
        precision = "fp16"
    if precision == "bf16" and not bf16_supported(resolved):
        log.warning("bf16 needs compute capability 8.0 (this GPU has less); using fp16")
        precision = "fp16"
    return Placement(resolved, precision)


def auto_batch_size(placement: Placement, requested: int = 0) -> int:
    """`requested` faces per pass, or the device's default when it is 0 (auto)."""
    return requested or AUTO_BATCH_SIZES[placement.device.type]


def device_name(placement: Placement) -> str:
    if placement.device.type == "cuda":
        return torch.cuda.get_device_name(placement.device)
    return f"CPU ({torch.get_num_threads()} threads)"


def prepare_model(model: torch.nn.Module, placement: Placement) -> torch.nn.Module:
    model = model.to(placement.device).eval()
    if placement.device.type == "cuda":
        use_device(placement.device)
        # Face batches have a fixed shape (padded, see GeneratorRunner), so cuDNN's autotuning
        # pays off after the first batch; NHWC is what its fast convolution kernels read.
        torch.backends.cudnn.benchmark = True
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # stubs lack memory_format
    return model


class GeneratorRunner:
    """Feeds (mel window, face crop) batches to the generator and returns 96x96 BGR mouths."""

    def __init__(
        self, model: torch.nn.Module, placement: Placement, batch_size: int, backend: Backend | None = None
    ) -> None:
        self.model = model
        self.placement = placement
        self.batch_size = batch_size = auto_batch_size(placement, batch_size)
        self._on_gpu = placement.device.type == "cuda"
        # On a GPU the size that survived an out-of-memory error holds for later jobs too.
        self.backoff = (
            shared_backoff(GENERATING, str(placement.device), batch_size)
            if self._on_gpu
            else BatchBackoff(batch_size, GENERATING)
        )
        self._staging: dict[str, torch.Tensor] = {}
        self.backend = backend  # None or a torch backend: the eager path below

    def infer(self, mels: MelWindows, faces: Faces) -> Faces:
        """mels (N, 80, 16) float32, faces (N, 96, 96, 3) uint8 BGR -> (N, 96, 96, 3) uint8 BGR."""
        if len(faces) == 0:
            return np.empty((0, FACE_SIZE, FACE_SIZE, 3), np.uint8)
        with self._device_context():
            outputs = self.backoff.run(len(faces), lambda a, b: self._forward(mels[a:b], faces[a:b]))
        return np.concatenate(outputs)

    def _device_context(self) -> contextlib.AbstractContextManager[object]:
        # Whichever thread calls (a worker, a prefetcher), work goes to this runner's GPU.
        return torch.cuda.device(self.placement.device) if self._on_gpu else contextlib.nullcontext()

    def _forward(self, mels: MelWindows, faces: Faces) -> Faces:
        if self.backend is not None and self.backend.forward is not None:
            return forward_mouths(self.backend.forward, mels, faces)
        with torch.inference_mode():
            if self._on_gpu:
                mel_tensor, face_tensor = self._gpu_inputs(mels, faces)
            else:
                face_tensor = torch.from_numpy(network_input(faces))
                mel_tensor = torch.from_numpy(np.ascontiguousarray(mels, np.float32)).unsqueeze(1)
            with self._autocast():
                generated = self.model(mel_tensor, face_tensor)
            pixels = generated[: len(faces)].float().clamp_(0, 1).mul_(PIXEL_SCALE)
            # The reference truncates rather than rounds when going back to uint8; keep that.
            mouths: Faces = pixels.permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy()
            return mouths  # annotated: torch types .numpy() as an array of any dtype

    def _gpu_inputs(self, mels: MelWindows, faces: Faces) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad to the batch size, copy uint8 faces and the mels through pinned buffers without
        blocking, and build the masked six-channel input on the GPU."""
        size = self.backoff.size
        device = self.placement.device
        faces_gpu = self._upload("faces", padded(faces, size), device)
        mels_gpu = self._upload("mels", padded(np.asarray(mels, np.float32), size), device)
        return mels_gpu.unsqueeze(1), device_network_input(faces_gpu)

    def _upload(self, name: str, array: NDArray[np.generic], device: torch.device) -> torch.Tensor:
        # One pinned buffer per input, reused: the previous batch's copy has finished by now (its
        # result was read back), and pinning fresh memory per batch costs more than the copy.
        buffer = self._staging.get(name)
        if buffer is None or tuple(buffer.shape) != array.shape:
            buffer = torch.empty(array.shape, dtype=torch.from_numpy(array[:0]).dtype).pin_memory()
            self._staging[name] = buffer
        buffer.numpy()[...] = array
        return buffer.to(device, non_blocking=True)

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        dtype = AUTOCAST_DTYPES.get(self.placement.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.placement.device.type, dtype=dtype)


def device_network_input(faces: torch.Tensor) -> torch.Tensor:
    """_network_input for a uint8 (N, 96, 96, 3) tensor already on the device, in channels_last."""
    scaled = faces.permute(0, 3, 1, 2).float().div_(PIXEL_SCALE)
    masked = scaled.clone()
    masked[:, :, MASKED_ROWS] = 0.0
    return torch.cat([masked, scaled], dim=1).contiguous(memory_format=torch.channels_last)
