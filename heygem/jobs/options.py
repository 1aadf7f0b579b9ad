"""Per-job options: JSON-like dicts in the store, SyncOptions for the engine."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from heygem.engine.api import SyncOptions
from heygem.errors import InputError


def options_dict(
    options: Mapping[str, Any] | SyncOptions | None, watermark: str | None = None
) -> dict[str, Any]:
    """Normalise what a caller passed into a plain JSON-ready dict; InputError if it is invalid."""
    if options is None:
        data: dict[str, Any] = {}
    elif isinstance(options, SyncOptions):
        data = options.to_dict()
    elif isinstance(options, Mapping):
        data = dict(options)
    else:
        raise InputError("options must be a JSON object")
    if watermark is not None:
        data["watermark"] = watermark
    sync_options(data)
    return data


def sync_options(data: Mapping[str, Any] | None) -> SyncOptions:
    """Build the engine's SyncOptions; InputError names a bad key or value."""
    return SyncOptions.from_dict(dict(data or {}))
