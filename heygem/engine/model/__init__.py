"""The Wav2Lip generator and its weights: network, checkpoint loading, downloading.

Attributes load lazily so that `heygem.engine.model.download` (weights status, fetching) works without
importing torch; `Wav2Lip` and `load_checkpoint` import it on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["Wav2Lip", "load_checkpoint"]

if TYPE_CHECKING:
    from heygem.engine.model.checkpoint import load_checkpoint
    from heygem.engine.model.wav2lip import Wav2Lip


def __getattr__(name: str) -> object:
    if name == "Wav2Lip":
        from heygem.engine.model.wav2lip import Wav2Lip

        return Wav2Lip
    if name == "load_checkpoint":
        from heygem.engine.model.checkpoint import load_checkpoint

        return load_checkpoint
    raise AttributeError(f"module 'heygem.engine.model' has no attribute {name!r}")
