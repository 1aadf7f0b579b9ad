"""heygem: self-hosted talking-head lip-sync (Wav2Lip-compatible)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from heygem.settings import Settings

__version__ = "0.1.0"
__all__ = ["Settings", "LipSyncPipeline", "SyncOptions", "__version__"]

if TYPE_CHECKING:
    from heygem.engine.api import SyncOptions
    from heygem.engine.pipeline import LipSyncPipeline


def __getattr__(name: str):
    # Lazy so that `import heygem` stays light: torch loads only when the pipeline is wanted.
    if name in ("LipSyncPipeline", "SyncOptions"):
        from heygem.engine import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'heygem' has no attribute {name!r}")
