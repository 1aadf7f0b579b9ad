"""Path checks shared by the job layer, storage and the web app: nothing escapes its folders.

Pure functions: the only file-system access is `Path.resolve`, which follows symlinks so that a
link pointing out of an allowed folder is caught like a `..` path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from heygem.errors import ForbiddenPathError, InputError

MAX_OUTPUT_NAME = 200  # characters; leaves room for folder names within common path limits
OUTPUT_SUFFIX = ".mp4"


def resolve_under(path: str | Path, roots: Sequence[Path], *, base: Path | None = None) -> Path:
    """Resolve `path` (relative ones against `base`) and return it if it lies inside one of `roots`.

    Raises ForbiddenPathError for '..' escapes, absolute paths elsewhere and symlink escapes.
    """
    text = str(path)
    if not text.strip():
        raise InputError("empty path")
    if "\x00" in text:
        raise ForbiddenPathError(f"{text!r} is not a valid path")
    candidate = Path(text).expanduser()
    if not candidate.is_absolute():
        candidate = (base if base is not None else Path.cwd()) / candidate
    resolved = candidate.resolve()
    for root in roots:
        root_resolved = Path(root).expanduser().resolve()
        if resolved == root_resolved or resolved.is_relative_to(root_resolved):
            return resolved
    raise ForbiddenPathError(f"{text} is outside the allowed input folders")


def safe_output_name(name: str) -> str:
    """Accept a plain file name for a result and return it ending in '.mp4'.

    Refuses separators, '..', hidden names, control characters and names over 200 characters.
    """
    if not isinstance(name, str) or not name.strip():
        raise InputError("output_name is empty")
    if "/" in name or "\\" in name:
        raise ForbiddenPathError(
            f"output_name {name!r} must be a plain file name without '/' or '\\'"
        )
    if ".." in name:
        raise ForbiddenPathError(f"output_name {name!r} must not contain '..'")
    if name.startswith("."):
        raise InputError(f"output_name {name!r} must not start with '.'")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise InputError(f"output_name {name!r} contains control characters")
    if len(name) > MAX_OUTPUT_NAME:
        raise InputError(f"output_name is {len(name)} characters long; the limit is {MAX_OUTPUT_NAME}")
    if name != name.strip():
        raise InputError(f"output_name {name!r} must not start or end with spaces")
    if not name.lower().endswith(OUTPUT_SUFFIX):
        name += OUTPUT_SUFFIX
    return name


__all__ = ["resolve_under", "safe_output_name", "MAX_OUTPUT_NAME"]
