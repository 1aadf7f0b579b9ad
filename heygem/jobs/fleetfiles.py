"""A fleet's files in the object store (Settings.storage_url): what one instance stores so that
every other instance can read it.

    <storage_url>inputs/<upload folder>/<file>   uploads, put there at submit; workers fetch them
    <storage_url>outputs/<job id>/<name>.mp4     results, published there when the run ends
    <storage_url>tracks/<key>.json               avatars' face tracks: detected once per fleet
    <storage_url>avatars/<avatar id>/<file>      avatars' media, thumbnails and voice samples

The area belongs to heygem: a caller may neither read from it as an input nor publish into it
(check_not_fleet_area), or one tenant could name another's upload or result. With no storage_url
(one machine, or a shared data folder) every function here leaves things as they are.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from heygem import storage
from heygem.errors import ForbiddenPathError, StorageError
from heygem.jobs import files
from heygem.jobs.records import Job, JobStatus, NewJob
from heygem.settings import Settings

log = logging.getLogger(__name__)

INPUTS_AREA = "inputs"
OUTPUTS_AREA = "outputs"
TRACKS_AREA = "tracks"
AVATARS_AREA = "avatars"
TRACK_SUFFIX = ".json"  # the engine's TrackCache file per key


def area(settings: Settings, name: str, *parts: str) -> str:
    """<storage_url><name>/<parts...>/ as an object prefix (always ending in /)."""
    base = settings.storage_url if settings.storage_url.endswith("/") else settings.storage_url + "/"
    return base + "/".join((name, *parts)) + "/"


def check_not_fleet_area(ref: str, settings: Settings, what: str) -> None:
    """Refuse a caller's reference or output prefix inside heygem's own area of the store."""
    if settings.uses_object_store and storage.is_under(ref, settings.storage_url):
        raise ForbiddenPathError(
            f"{what} lies in heygem's own storage area (storage_url); name another place"
        )


def stage_uploads(specs: Sequence[NewJob], settings: Settings) -> list[NewJob]:
    """Put the files the submitter uploaded into the store and point the jobs at them; each
    job's `uploads` become the object prefixes it owns. Unchanged without storage_url."""
    if not settings.uses_object_store:
        return list(specs)
    staged: dict[str, str] = {}  # local path -> object URL: a batch's shared audio goes up once
    changed = []
    try:
        for spec in specs:
            owned = [Path(entry) for entry in spec.uploads]
            changed.append(
                dataclasses.replace(
                    spec,
                    audio=_staged_ref(spec.audio, owned, settings, staged),
                    video=_staged_ref(spec.video, owned, settings, staged),
                    uploads=tuple(dict.fromkeys(_upload_area(settings, entry) for entry in owned)),
                )
            )
    except StorageError:
        for url in staged.values():  # the submission fails: nothing of it stays in the store
            remove_prefix(url, settings)
        raise
    return changed


def discard_staged(specs: Sequence[NewJob], settings: Settings) -> None:
    """Remove what stage_uploads put in the store (the submission was not accepted)."""
    for prefix in sorted({entry for spec in specs for entry in spec.uploads if storage.is_remote(entry)}):
        remove_prefix(prefix, settings)


def result_prefix(settings: Settings, job_id: str) -> str | None:
    """Where a job's result is published for the fleet; None without storage_url."""
    return area(settings, OUTPUTS_AREA, job_id) if settings.uses_object_store else None


def remove_job_objects(settings: Settings, job_id: str, uploads: Sequence[str], still_used: set[str]) -> None:
    """A deleted or expired job's result and staged uploads, unless another job reads them."""
    if not settings.uses_object_store:
        return
    remove_prefix(area(settings, OUTPUTS_AREA, job_id), settings)
    for prefix in uploads:
        if not storage.is_under(prefix, settings.storage_url):
            continue
        if any(ref.startswith(prefix) for ref in still_used):
            continue
        remove_prefix(prefix, settings)


def remove_prefix(prefix: str, settings: Settings) -> None:
    try:
        storage.delete_objects(prefix, settings)
    except StorageError as exc:  # the files stay behind; the job record goes anyway
        log.warning("could not delete %s from the object store: %s", prefix, exc)


def local_result(job: Job, settings: Settings) -> Path | None:
    """A succeeded job's video on this instance: its own file, else (a fleet: another instance
    made it) a copy of the object it published, fetched once into this instance's folder for the
    job; None when neither exists. StorageError (one line) when the object cannot be read."""
    if job.status != JobStatus.SUCCEEDED:
        return None
    if job.output_path is not None and _is_local_output(job.output_path, settings):
        return job.output_path
    if not job.output_url or not storage.is_remote(job.output_url):
        return None
    folder = files.output_dir(settings, job.id)
    copy = folder / job.result_name
    if not copy.is_file():
        downloads = folder / files.temp_name()
        try:
            files.move_atomic(storage.fetch_input(job.output_url, downloads, settings), copy)
        finally:
            files.remove_tree(downloads)
    return copy


def _is_local_output(path: Path, settings: Settings) -> bool:
    return path.resolve().is_relative_to(settings.outputs_dir.resolve()) and path.is_file()


def push_track(settings: Settings, key: str) -> None:
    """Share a face track this instance computed (an avatar's), so no other instance detects it."""
    local = settings.track_cache_dir / f"{key}{TRACK_SUFFIX}"
    if not settings.uses_object_store or not local.is_file():
        return
    storage.publish_output(local, area(settings, TRACKS_AREA), settings)


def pull_track(settings: Settings, key: str, scratch: Path) -> bool:
    """Bring a face track another instance computed into the local cache; True when it is there.
    A missing object is not an error (the engine then detects as usual)."""
    local = settings.track_cache_dir / f"{key}{TRACK_SUFFIX}"
    if local.is_file() or not settings.uses_object_store:
        return local.is_file()
    try:
        fetched = storage.fetch_input(area(settings, TRACKS_AREA) + local.name, scratch, settings)
    except StorageError as exc:
        log.info("face track %s is not shared yet (%s); detecting here", key, exc)
        return False
    files.move_atomic(fetched, local)
    return True


def push_avatar(settings: Settings, avatar_id: str, paths: Sequence[Path], track_key: str | None) -> None:
    """Share a prepared avatar (its files and its face track) with the fleet."""
    if not settings.uses_object_store:
        return
    prefix = area(settings, AVATARS_AREA, avatar_id)
    for path in paths:
        if path.is_file():
            storage.publish_output(path, prefix, settings)
    if track_key:
        push_track(settings, track_key)


def pull_avatar(settings: Settings, avatar_id: str, paths: Sequence[Path], track_key: str | None) -> None:
    """Bring an avatar another instance prepared into this instance's avatars folder (the same
    names under settings.avatars_dir/<id>/), with its face track, so a run here detects nothing.
    StorageError when its files are gone from the store."""
    if not settings.uses_object_store:
        return
    prefix = area(settings, AVATARS_AREA, avatar_id)
    scratch = settings.avatars_dir / avatar_id / files.temp_name()
    try:
        for path in paths:
            if not path.is_file():
                files.move_atomic(storage.fetch_input(prefix + path.name, scratch, settings), path)
        if track_key:
            pull_track(settings, track_key, scratch)
    finally:
        files.remove_tree(scratch)


def remove_avatar_objects(settings: Settings, avatar_id: str) -> None:
    if settings.uses_object_store:
        remove_prefix(area(settings, AVATARS_AREA, avatar_id), settings)


def _staged_ref(ref: str, owned: list[Path], settings: Settings, staged: dict[str, str]) -> str:
    if not ref or storage.is_remote(ref):
        return ref
    path = Path(ref)
    if not any(path == entry or path.is_relative_to(entry) for entry in owned):
        if path.is_relative_to(settings.inputs_dir.resolve()):
            raise ForbiddenPathError(
                f"{path.name}: this instance's inputs folder is not shared with the fleet; upload "
                "the file with the request or name an object (s3://, obs://)"
            )
        return ref  # under input_roots: a mount every instance has
    if ref not in staged:
        folder = files.upload_folder_of(settings, path) or path.parent
        inner = path.parent.relative_to(folder).parts if path.parent != folder else ()
        prefix = area(settings, INPUTS_AREA, folder.name, *inner)
        staged[ref] = storage.publish_output(path, prefix, settings).url
    return staged[ref]


def _upload_area(settings: Settings, entry: Path) -> str:
    folder = files.upload_folder_of(settings, entry) or entry
    return area(settings, INPUTS_AREA, folder.name)
