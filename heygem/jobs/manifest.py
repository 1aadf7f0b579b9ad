"""Batch manifests: JSONL, one {"audio": ..., "video": ..., "output_name": ...} per line.

A line may carry "text" (and optionally "voice") instead of "audio": its speech is synthesised.
"video" may name an avatar as "avatar:<id>"; it passes through for the job layer to resolve.

Relative paths resolve against the manifest's folder and must land inside the allowed roots;
references written as URLs (s3://, obs://, https://, or a scheme storage refuses) pass through
unchanged for storage to check. Every error names the line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heygem.errors import HeygemError, InputError
from heygem.jobs.avatars import AVATAR_PREFIX
from heygem.storage import is_url
from heygem.storage.paths import UNSAFE_NAME_CHARS, resolve_under, safe_output_name

ITEM_KEYS = ("audio", "video")
OPTIONAL_KEYS = ("output_name", "text", "voice")
TEXT_STEM = "text"  # stands for the audio's name in a text line's default output name
MAX_MANIFEST_BYTES = 10 * 1024 * 1024  # a manifest is a list of paths; anything bigger is a mistake
STEM_CHARS = 40  # characters of each input's name kept in a default output name


@dataclass(frozen=True)
class ManifestItem:
    line: int  # 1-based line number in the manifest
    audio: str  # resolved absolute path, or a remote reference as written
    video: str
    output_name: str  # validated plain name ending in .mp4 (a default when the line had none)
    text: str | None = None  # a text line: speech is synthesised from it (audio is then "")
    voice: str | None = None

    def as_item(self) -> dict[str, str]:
        """The shape JobService.submit_batch takes."""
        item = {"video": self.video, "output_name": self.output_name}
        if self.text is None:
            return {"audio": self.audio, **item}
        return {"text": self.text, **({"voice": self.voice} if self.voice else {}), **item}


def shown_ref(ref: str) -> str:
    """A reference fit for logs and summaries: a URL loses its query, which may hold a signature."""
    return ref.split("?", 1)[0] if is_url(ref) else ref


def parse_manifest(path: Path, roots: Sequence[Path]) -> list[ManifestItem]:
    """Read and check a manifest file; raise InputError/ForbiddenPathError naming the line."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise InputError(f"manifest {path.name} is larger than {MAX_MANIFEST_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"manifest not found: {path}") from None
    except UnicodeDecodeError:
        raise InputError(f"manifest {path.name} is not UTF-8 text") from None
    return parse_manifest_text(text, base=path.resolve().parent, roots=roots)


def parse_manifest_text(text: str, *, base: Path, roots: Sequence[Path]) -> list[ManifestItem]:
    items: list[ManifestItem] = []
    used: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            item = _parse_line(raw, number, base, roots)
        except HeygemError as exc:
            raise type(exc)(f"manifest line {number}: {exc}") from None
        if item.output_name in used:
            raise InputError(
                f"manifest line {number}: output_name {item.output_name!r} is already used "
                f"on line {used[item.output_name]}"
            )
        used[item.output_name] = number
        items.append(item)
    if not items:
        raise InputError("the manifest has no items")
    return items


def default_output_name(number: int, audio: str, video: str) -> str:
    """Deterministic, so a second run of the same manifest finds the first run's outputs."""
    return f"{number:04d}_{ref_stem(video)}_{ref_stem(audio)}.mp4"


def _parse_line(raw: str, number: int, base: Path, roots: Sequence[Path]) -> ManifestItem:
    try:
        data: Any = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise InputError('expected an object like {"audio": ..., "video": ...}')
    unknown = sorted(set(data) - set(ITEM_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise InputError(
            f"unknown key(s) {', '.join(unknown)}; expected audio or text (+ voice), video, output_name"
        )
    text, voice = _speech(data)
    refs = {"audio": ""}
    for key in ITEM_KEYS if text is None else ("video",):
        value = data.get(key)
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"{key!r} is missing or not a string")
        refs[key] = value if _passes_through(value) else str(resolve_under(value, roots, base=base))
    name = data.get("output_name")
    if name is None:
        name = default_output_name(number, refs["audio"] or TEXT_STEM, refs["video"])
    elif not isinstance(name, str):
        raise InputError("'output_name' must be a string")
    return ManifestItem(number, refs["audio"], refs["video"], safe_output_name(name), text, voice)


def _speech(data: dict[str, Any]) -> tuple[str | None, str | None]:
    """(text, voice) of a text line, (None, None) of an audio line; exactly one of the two."""
    text, voice = data.get("text"), data.get("voice")
    if text is not None and "audio" in data:
        raise InputError("give either 'audio' or 'text', not both")
    if text is None:
        if voice is not None:
            raise InputError("'voice' goes with 'text'")
        return None, None
    if not isinstance(text, str) or not text.strip():
        raise InputError("'text' must be a non-empty string")
    if voice is not None and not isinstance(voice, str):
        raise InputError("'voice' must be a string")
    return text, voice or None


def _passes_through(ref: str) -> bool:
    """URLs are storage's to check; an avatar reference is the job layer's."""
    return is_url(ref) or ref.lower().startswith(AVATAR_PREFIX)


def ref_stem(ref: str) -> str:
    """A short, file-name-safe stem of a reference (its last path part, no extension)."""
    last = ref.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
    stem = last.rsplit(".", 1)[0] if "." in last else last
    return UNSAFE_NAME_CHARS.sub("-", stem).strip("-.")[:STEM_CHARS] or "input"
