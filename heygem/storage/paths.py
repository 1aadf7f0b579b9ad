"""Path checks shared by the job layer, storage and the web app: nothing escapes its folders.

Pure functions: the only file-system access is `Path.resolve`, which follows symlinks so that a
link pointing out of an allowed folder is caught like a `..` path.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from heygem.errors import ForbiddenPathError, InputError

MAX_OUTPUT_NAME = 200  # characters; leaves room for folder names within common path limits
OUTPUT_SUFFIX = ".mp4"
MAX_SHOWN_PATH = 120  # characters of a user's path repeated in an error message
# What a file name we make up from someone else's (an upload, an object key, a URL) may hold.
UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_NAME_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,15}$")  # an extension worth keeping


def resolve_under(path: str | Path, roots: Sequence[Path], *, base: Path | None = None) -> Path:
    """Resolve `path` (relative ones against `base`) and return it if it lies inside one of `roots`.

    Raises ForbiddenPathError for '..' escapes, absolute paths elsewhere and symlink escapes.
    """
    text = str(path)
    if not text.strip():
        raise InputError("empty path")
    if "\x00" in text:
        raise ForbiddenPathError(f"{_short(text)!r} is not a valid path")
    try:
        candidate = Path(text).expanduser()
        if not candidate.is_absolute():
            candidate = (base if base is not None else Path.cwd()) / candidate
        resolved = candidate.resolve()
    except (OSError, RuntimeError) as exc:  # too long, a symlink loop, an unknown ~user
        raise InputError(f"cannot use the path {_short(text)}: {_os_reason(exc)}") from None
    for root in roots:
        root_resolved = Path(root).expanduser().resolve()
        if resolved == root_resolved or resolved.is_relative_to(root_resolved):
            return resolved
    raise ForbiddenPathError(f"{_short(text)} is outside the allowed input folders")


def _short(text: str) -> str:
    """A path for a one-line message: a 5000-character path would bury the message."""
    return text if len(text) <= MAX_SHOWN_PATH else text[: MAX_SHOWN_PATH - 3] + "..."


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def safe_output_name(name: str) -> str:
    """Accept a plain file name for a result and return it ending in '.mp4'.

    Refuses separators, '..', hidden names, control characters and names over 200 characters.
    """
    if not isinstance(name, str) or not name.strip():
        raise InputError("output_name is empty")
    if "/" in name or "\\" in name:
        raise ForbiddenPathError(f"output_name {name!r} must be a plain file name without '/' or '\\'")
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


def safe_file_name(name: str, fallback: str = "file") -> str:
    """A name from elsewhere (an upload, an object key, a URL path) made safe to create a file by.

    Keeps the last path segment ('/' or '\\'), turns every run of characters other than letters,
    digits, '.', '-' and '_' into one '_', trims dots and underscores from the ends of the stem (no
    hidden files, no '..'), and shortens the stem so the name fits MAX_OUTPUT_NAME with its
    extension kept (ffmpeg probes by content, but people read names). An empty stem becomes
    `fallback`.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    stem, suffix = _split_suffix(UNSAFE_NAME_CHARS.sub("_", base))
    stem = stem.strip("._")[: MAX_OUTPUT_NAME - len(suffix)].rstrip("._")
    return (stem or fallback) + suffix


def free_name(folder: Path, name: str) -> Path:
    """`folder/name`, or the first free `folder/stem-2.ext`, `stem-3.ext`... when it is taken:
    two inputs may share a name (a/input, b/input) and none may overwrite another."""
    candidate = folder / name
    stem, suffix = _split_suffix(name)
    number = 1
    while candidate.exists():
        number += 1
        candidate = folder / f"{stem}-{number}{suffix}"
    return candidate


def _split_suffix(name: str) -> tuple[str, str]:
    """("clip", ".mp4") for "clip.mp4"; no suffix for "input", ".wav" or "a.b c"."""
    match = _NAME_SUFFIX.search(name)
    if match is None or match.start() == 0:
        return name, ""
    return name[: match.start()], match.group()


__all__ = [
    "MAX_OUTPUT_NAME",
    "free_name",
    "resolve_under",
    "safe_file_name",
    "safe_output_name",
]
