"""Which device a model runs on, and what that device can do: the rules shared by the generator and
the face detector.

- A CUDA GPU is used only if the installed torch has kernels for it (its compute capability is in
  `torch.cuda.get_arch_list()`, or PTX for an older architecture can be compiled for it). A wheel
  without them still reports `torch.cuda.is_available()`, then fails at the first kernel; here it
  falls back to the CPU with one line instead.
- bf16 needs compute capability 8.0 (Ampere); older GPUs get fp16.
- Several workers on several GPUs: worker i gets GPU i mod n when the device is "auto" or "cuda".
- Out-of-memory errors come as `torch.cuda.OutOfMemoryError`, or from cuDNN and cuBLAS as a plain
  RuntimeError naming the failed allocation; `is_out_of_memory` recognises all of them, and
  `BatchBackoff` runs batches that halve on one and remember the size that worked.

torch is imported inside functions only, so that the job layer can ask for a worker's device
without loading it when there is nothing to spread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from numpy.typing import NDArray

from heygem.errors import ModelError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CPU = "cpu"
CUDA = "cuda"
SPREAD_DEVICES = ("auto", CUDA)  # the device values that let each worker take its own GPU
BF16_MIN_CAPABILITY = (8, 0)
# What cuDNN, cuBLAS and the CUDA runtime say when an allocation fails inside them; torch passes
# these on as a plain RuntimeError rather than torch.cuda.OutOfMemoryError.
OUT_OF_MEMORY_MARKERS = (
    "out of memory",
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "cudaErrorMemoryAllocation",
)

# Faces per generator pass when the batch_size setting is 0 (auto). A GPU wants bigger batches to
# stay busy; the pipeline also holds this many full frames per batch in host memory, which is what
# keeps the CUDA default from going higher (64 frames of 1080p are 400 MB).
AUTO_BATCH_SIZES = {CPU: 32, CUDA: 64}
# Where the NVIDIA kernel driver shows itself; a host with neither has no GPU torch could drive.
NVIDIA_GPU_LIST = Path("/proc/driver/nvidia/gpus")
NVIDIA_DEVICE_NODE = Path("/dev/nvidia0")

Result = TypeVar("Result")


def cpu_without_torch(requested: str) -> bool:
    """True when `requested` surely means the CPU: "cpu", or "auto" on a host without an NVIDIA
    driver. Answers without importing torch (1.5 s and 100+ MiB); False means "ask torch"."""
    if requested == CPU:
        return True
    return requested == "auto" and not _nvidia_driver_present()


def _nvidia_driver_present() -> bool:
    try:
        listed = NVIDIA_GPU_LIST.is_dir() and any(NVIDIA_GPU_LIST.iterdir())
    except OSError:
        listed = True  # unreadable: let torch decide
    return listed or NVIDIA_DEVICE_NODE.exists()


def cpu_precision(requested: str) -> str:
    """What the generator computes in on a CPU: "auto" and fp16 (slow and inexact there) are fp32."""
    if requested == "fp16":
        log.warning("fp16 is slow and inexact on CPU; using fp32 (bf16 is the fast CPU option)")
    return "fp32" if requested in ("auto", "fp16") else requested


def capability_problem(index: int) -> str | None:
    """Why torch cannot run kernels on GPU `index`, or None when it can."""
    import torch

    major, minor = torch.cuda.get_device_capability(index)
    arches = torch.cuda.get_arch_list()
    if kernels_exist(major, minor, arches):
        return None
    name = torch.cuda.get_device_name(index)
    built = " ".join(arches) or "no CUDA architectures"
    return (
        f"GPU {index} ({name}, compute capability {major}.{minor}) is not supported by torch "
        f"{torch.__version__} (built for {built})"
    )


def kernels_exist(major: int, minor: int, arches: list[str]) -> bool:
    """sm_XY runs on exactly that architecture family; compute_XY (PTX) is compiled for any newer one."""
    capability = major * 10 + minor
    for arch in arches:
        kind, _, number = arch.partition("_")
        if not number.isdigit():
            continue
        built = int(number)
        if kind == "sm" and built // 10 == major and built <= capability:
            return True
        if kind == "compute" and built <= capability:
            return True
    return False


def resolve_device(requested: str) -> str:
    """ "auto", "cpu", "cuda" or "cuda:N" -> a device torch can really run on, logging any fallback."""
    if cpu_without_torch(requested):
        return CPU
    import torch

    if not torch.cuda.is_available():
        if requested != "auto":
            log.warning("device %s requested but torch sees no CUDA GPU; using cpu", requested)
        return CPU
    device = torch.device(CUDA if requested == "auto" else requested)
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        log.warning(
            "device %s requested but torch sees %d GPU(s); using cpu", requested, torch.cuda.device_count()
        )
        return CPU
    problem = capability_problem(index)
    if problem is not None:
        log.warning("%s; using cpu (install a torch wheel built for this GPU, see docs/gpu.md)", problem)
        return CPU
    return f"{CUDA}:{index}"


def worker_device(requested: str, index: int, workers: int) -> str:
    """The device worker `index` of `workers` uses: GPU index mod n when the device is auto or cuda.

    One worker keeps the device as given (and torch unloaded); so does a CPU or an explicit cuda:N.
    """
    if workers < 2 or requested not in SPREAD_DEVICES:
        return requested
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return requested
    return f"{CUDA}:{index % count}"


def use_device(device: torch.device) -> None:
    """Make `device` the calling thread's current GPU, so that implicit allocations (cuDNN and cuBLAS
    handles, the caching allocator's empty_cache) happen there and not on GPU 0."""
    import torch

    if device.type == CUDA:
        torch.cuda.set_device(device)


def bf16_supported(device: torch.device) -> bool:
    import torch

    if device.type != CUDA:
        return True  # CPUs emulate bf16 where they lack it; whether that pays is a precision choice
    return torch.cuda.get_device_capability(device) >= BF16_MIN_CAPABILITY


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(marker in str(exc) for marker in OUT_OF_MEMORY_MARKERS)


def padded(items: NDArray[np.generic], size: int) -> NDArray[np.generic]:
    """`items` with the last one repeated up to `size` rows. cuDNN's benchmark mode tunes once per
    input shape, so every GPU batch, the last and the warm-up included, gets the same shape."""
    missing = size - len(items)
    if missing <= 0:
        return np.ascontiguousarray(items)
    return np.concatenate([items, np.repeat(items[-1:], missing, axis=0)])


def free_cached_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class BatchBackoff:
    """Runs work in slices of at most `size` items; a slice that runs out of GPU memory is retried
    with half the size. The size that worked is kept for later calls (a GPU that could not hold 64
    faces once will not hold them for the next video either).

    The retry happens after the `except` block has ended: inside it, the exception's traceback
    still holds the failed forward pass's tensors, and the retry would run out of memory again.
    """

    def __init__(self, size: int, what: str) -> None:
        if size < 1:
            raise ValueError("batch size must be at least 1")
        self.size = size
        self.what = what
        self._lock = threading.Lock()

    def run(self, count: int, forward: Callable[[int, int], Result]) -> list[Result]:
        """forward(start, stop) for consecutive slices covering range(count), in order."""
        results: list[Result] = []
        start = 0
        while start < count:
            stop = min(count, start + self.size)
            if self._attempt(forward, start, stop, results):
                start = stop
            else:
                self._shrink()
        return results

    def _attempt(
        self, forward: Callable[[int, int], Result], start: int, stop: int, results: list[Result]
    ) -> bool:
        try:
            results.append(forward(start, stop))
        except Exception as exc:  # noqa: BLE001 - anything but an out-of-memory error is re-raised
            if not is_out_of_memory(exc):
                raise
            return False
        return True

    def _shrink(self) -> None:
        free_cached_memory()
        with self._lock:
            if self.size == 1:
                raise ModelError(
                    f"GPU out of memory {self.what} even one at a time; try a smaller video or the CPU"
                )
            self.size = max(1, self.size // 2)
        log.warning("GPU out of memory %s; continuing with batches of %d", self.what, self.size)


_backoffs: dict[tuple[str, str, int], BatchBackoff] = {}
_backoffs_lock = threading.Lock()


def shared_backoff(what: str, device: str, size: int) -> BatchBackoff:
    """One BatchBackoff per (work, device, requested size) for the process, so that what one job
    learned about the GPU's memory holds for the next."""
    key = (what, device, size)
    with _backoffs_lock:
        if key not in _backoffs:
            _backoffs[key] = BatchBackoff(size, what)
        return _backoffs[key]
