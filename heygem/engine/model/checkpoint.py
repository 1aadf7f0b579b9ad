"""Load and verify generator weights, with errors that name the file and say what is wrong.

Accepts the public Wav2Lip files (a dict whose 'state_dict' keys carry a DataParallel `module.`)
as well as bare or unprefixed state dicts, in both torch's zip and legacy formats. Loading is
always `weights_only`, so a checkpoint can never run code.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from heygem.engine.hashing import sha256_of
from heygem.errors import DOWNLOAD_COMMAND, ModelError, WeightsMissingError

if TYPE_CHECKING:
    import torch

    from heygem.engine.model.wav2lip import Wav2Lip

log = logging.getLogger("heygem.engine.model.checkpoint")

DATA_PARALLEL_PREFIX = "module."
# Checkpoints from torch < 0.4.1 lack these BatchNorm counters; zeros are what torch would use.
OPTIONAL_SUFFIX = "num_batches_tracked"
NAMES_SHOWN = 3  # how many offending keys an error message lists
REASON_MAX_CHARS = 200
ZIP_MAGIC = b"PK\x03\x04"  # torch >= 1.6 files are zip archives
PICKLE_MAGIC = b"\x80"  # legacy files start with a pickle protocol opcode
TRUNCATION_MARKERS = (
    "central directory",
    "failed reading zip",
    "unexpected eof",
    "corrupt",
    "ran out of input",
)


def load_checkpoint(path: str | Path, device: str = "cpu") -> Wav2Lip:
    """Build the generator from a weights file; returned in eval mode on `device`.

    Raises WeightsMissingError when the file does not exist and ModelError when it is not a
    readable Wav2Lip generator checkpoint.
    """
    from heygem.engine.model.wav2lip import Wav2Lip

    path = Path(path)
    state = extract_state_dict(read_checkpoint(path), path)
    model = Wav2Lip()
    model.load_state_dict(_complete_state(state, model.state_dict(), path), strict=True)
    log.info("loaded generator weights from %s (%d tensors)", path, len(state))
    return model.to(device).eval()


def read_checkpoint(path: Path) -> object:
    """torch.load with weights_only; memory-mapped when the file is in the zip format."""
    import torch

    _require_file(path)
    # mmap keeps the optimizer state (2/3 of a public file) out of RAM; legacy files cannot mmap.
    use_mmap = zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files; all mean "unreadable"
        raise ModelError(f"cannot read weights file {path}: {_load_failure(exc, path)}") from None


def extract_state_dict(checkpoint: object, path: Path) -> dict[str, torch.Tensor]:
    """The name -> tensor mapping, with every `module.` removed (as the reference loaders do)."""
    import torch

    if not isinstance(checkpoint, Mapping):
        raise ModelError(f"{path} is not a checkpoint: it holds a {type(checkpoint).__name__}")
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping) or not state:
        raise ModelError(f"{path} is not a checkpoint: no state_dict in it")
    bad = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelError(f"{path} is not a generator checkpoint: non-tensor entries {_few(bad)}")
    return {str(k).replace(DATA_PARALLEL_PREFIX, ""): v for k, v in state.items()}


def _complete_state(
    state: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor], path: Path
) -> dict[str, torch.Tensor]:
    """Check names and shapes against the network; fill in absent BatchNorm counters."""
    import torch

    missing = [k for k in expected if k not in state and not k.endswith(OPTIONAL_SUFFIX)]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ModelError(f"{path} does not fit the Wav2Lip generator: {_key_report(missing, unexpected)}")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise ModelError(
                f"{path} does not fit the Wav2Lip generator: {name} has shape "
                f"{_shape(tensor)}, expected {_shape(expected[name])}"
            )
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ModelError(f"{path} is corrupt: {name} contains NaN or infinite values")
    return {name: state.get(name, default) for name, default in expected.items()}


def verify_file(path: str | Path, expected_sha256: str) -> None:
    """Raise ModelError unless the file's SHA-256 equals expected_sha256 (hex, any case)."""
    path = Path(path)
    _require_file(path)
    actual = sha256_of(path)
    if actual != expected_sha256.strip().lower():
        raise ModelError(
            f"{path} has SHA-256 {actual}, expected {expected_sha256.strip().lower()}; "
            f"the file is damaged or a different version (fetch it again: {DOWNLOAD_COMMAND})"
        )


def _require_file(path: Path) -> None:
    if not path.exists():
        raise WeightsMissingError(f"weights file not found: {path}; fetch it with `{DOWNLOAD_COMMAND}`")
    if not path.is_file():
        raise ModelError(f"weights path {path} is not a file")


def _load_failure(exc: Exception, path: Path) -> str:
    """A short reason; torch's own messages for bad files are long, multi-line or cryptic."""
    text = str(exc).lower()
    with path.open("rb") as handle:
        head = handle.read(len(ZIP_MAGIC))
    if not head.startswith((ZIP_MAGIC, PICKLE_MAGIC)):
        return "not a PyTorch weights file"
    if "weights only load failed" in text:
        return "it holds Python objects that safe (weights_only) loading refuses"
    if any(marker in text for marker in TRUNCATION_MARKERS):
        return "the file is truncated or corrupt; download it again"
    first_line = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return (first_line or type(exc).__name__)[:REASON_MAX_CHARS]


def _key_report(missing: list[str], unexpected: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys ({_few(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({_few(unexpected)})")
    return "; ".join(parts)


def _few(names: list[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown + (", ..." if len(names) > NAMES_SHOWN else "")


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(str(d) for d in tensor.shape) or "scalar"


__all__ = ["load_checkpoint", "read_checkpoint", "extract_state_dict", "verify_file", "DOWNLOAD_COMMAND"]
