"""Turn what a user uploaded for a batch into JobService items (shared by the API and the Batch tab).

Three shapes:
  * one audio and many videos: every video speaks the same audio;
  * as many audios as videos: paired by order;
  * a JSONL manifest (heygem.jobs.manifest format). Uploads are saved beside the manifest under
    their own names, so a manifest line may name a file uploaded with it; other references
    (paths under the input folders, s3://, obs://, https://) are checked by the job layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from heygem.errors import InputError
from heygem.jobs.manifest import parse_manifest
from heygem.settings import Settings


def pair_uploads(audios: Sequence[Path | str], videos: Sequence[Path | str]) -> list[dict[str, str]]:
    """Items for one audio with many videos, or audios and videos paired by order."""
    if not videos:
        raise InputError("a batch needs at least one face video or photo")
    if not audios:
        raise InputError("a batch needs an audio file")
    if len(audios) == 1:
        chosen = [audios[0]] * len(videos)
    elif len(audios) == len(videos):
        chosen = list(audios)
    else:
        raise InputError(
            f"{len(audios)} audio files for {len(videos)} videos: give one audio, or one per video"
        )
    return [{"audio": str(a), "video": str(v)} for a, v in zip(chosen, videos)]


def manifest_items(manifest: Path, settings: Settings) -> list[dict[str, str]]:
    """Items from a JSONL manifest; relative names resolve against the manifest's folder."""
    return [item.as_item() for item in parse_manifest(manifest, settings.allowed_input_roots)]
