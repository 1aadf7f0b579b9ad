"""Avatars: a face video (or photo) kept once, prepared once, and named by many jobs.

    <data_dir>/avatars/<id>/media<.ext>       the stored video or photo
    <data_dir>/avatars/<id>/thumbnail.jpg     first frame, at most THUMBNAIL_SIDE px
    <data_dir>/avatars/<id>/voice<.ext>       the person's voice sample (optional)

An avatar is created `preparing`; a small background thread (AvatarPreparer) probes the media
within the media limits, computes the face track once through the engine's TrackCache (so every
later job on the avatar is a cache hit), writes the thumbnail and marks it `ready`, or `failed`
with the reason. A job names it as "avatar:<id>"; the id resolves only for the avatar's tenant.
Avatars are not subject to retention: they stay until deleted.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from heygem import storage
from heygem.errors import HeygemError, InputError, JobNotFoundError
from heygem.jobs import fleetfiles
from heygem.jobs.records import shown_path
from heygem.jobs.tenancy import Principal
from heygem.settings import Settings
from heygem.speech.api import MAX_REFERENCE_TEXT, VoiceReference

if TYPE_CHECKING:
    from heygem.engine.faces.detect import FaceDetector
    from heygem.engine.faces.track import TrackCache
    from heygem.engine.media.probe import MediaInfo
    from heygem.jobs.store import AvatarStore, JobStore

log = logging.getLogger("heygem.jobs.avatars")

AvatarStatus = Literal["preparing", "ready", "failed"]
PREPARING: AvatarStatus = "preparing"
READY: AvatarStatus = "ready"
FAILED: AvatarStatus = "failed"

AVATAR_PREFIX = "avatar:"  # how a job's "video" names an avatar
AVATAR_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_NAME_CHARS = 80
MEDIA_STEM = "media"
VOICE_STEM = "voice"
THUMBNAIL_NAME = "thumbnail.jpg"
THUMBNAIL_SIDE = 320  # longer side of the thumbnail, in pixels
THUMBNAIL_QUALITY = 85
SUFFIX = re.compile(r"^\.[a-z0-9]{1,8}$")  # a stored file keeps its upload's suffix if plain
DOWNLOAD_FOLDER = ".download"  # a remote reference is fetched here, then moved into place
PREPARE_THREADS = 1  # preparation shares the machine with the workers: one avatar at a time


class AvatarNotFoundError(JobNotFoundError):
    """No avatar with that id for this caller (another tenant's looks exactly the same): 404."""


@dataclass(frozen=True)
class Avatar:
    id: str  # uuid4 hex
    tenant: str
    name: str
    status: AvatarStatus
    error: str | None  # why preparation failed
    media: Path  # the stored video or photo under <data_dir>/avatars/<id>/
    thumbnail: Path | None  # a JPEG, once prepared
    voice_audio: Path | None  # the voice sample, if one was given
    voice_text: str | None  # its transcript
    created_at: float  # unix seconds
    duration_s: float | None  # of the video (0 for a photo), once probed
    is_image: bool
    # The face track's TrackCache key: retention keeps that entry while the avatar exists.
    track_key: str | None = field(default=None, metadata={"internal": True})

    @property
    def ready(self) -> bool:
        return self.status == READY

    @property
    def ref(self) -> str:
        return AVATAR_PREFIX + self.id

    def to_dict(self, data_dir: Path | None = None) -> dict[str, Any]:
        """JSON view: paths relative to the data folder (the web layer adds thumbnail_url)."""

        def shown(path: Path | None) -> str | None:
            if path is None:
                return None
            return shown_path(str(path), data_dir) if data_dir is not None else str(path)

        return {
            "id": self.id,
            "tenant": self.tenant,
            "name": self.name,
            "status": self.status,
            "error": self.error,
            "media": shown(self.media),
            "thumbnail": shown(self.thumbnail),
            "voice_audio": shown(self.voice_audio),
            "voice_text": self.voice_text,
            "has_voice": self.voice_audio is not None,
            "created_at": self.created_at,
            "duration_s": self.duration_s,
            "is_image": self.is_image,
            "ref": self.ref,
        }


def avatar_id_of(ref: str) -> str | None:
    """The id in an "avatar:<id>" reference; None for any other reference. InputError when the
    reference starts like an avatar but the id is malformed."""
    if not isinstance(ref, str) or not ref.lower().startswith(AVATAR_PREFIX):
        return None
    avatar_id = ref[len(AVATAR_PREFIX) :].strip()
    check_id(avatar_id)
    return avatar_id


def check_id(avatar_id: str) -> str:
    if not isinstance(avatar_id, str) or not AVATAR_ID.match(avatar_id):
        raise InputError("an avatar id is 32 lowercase hex characters")
    return avatar_id


def check_name(raw: object) -> str:
    """A display name: control and format characters removed, whitespace collapsed, at most
    MAX_NAME_CHARS characters; InputError when nothing is left."""
    if not isinstance(raw, str):
        raise InputError("the avatar name must be text")
    kept = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in raw)
    name = " ".join(kept.split())
    if not name:
        raise InputError("give the avatar a name")
    if len(name) > MAX_NAME_CHARS:
        raise InputError(f"the avatar name is {len(name)} characters; the limit is {MAX_NAME_CHARS}")
    return name


def avatar_dir(settings: Settings, avatar_id: str) -> Path:
    return settings.avatars_dir / check_id(avatar_id)


def stored_name(stem: str, original: Path) -> str:
    """media.mp4, voice.wav...: the upload's suffix when it is plain, else none (ffprobe reads
    the content either way)."""
    suffix = original.suffix.lower()
    return stem + (suffix if SUFFIX.match(suffix) else "")


def remove_folder(settings: Settings, avatar_id: str) -> None:
    shutil.rmtree(avatar_dir(settings, avatar_id), ignore_errors=True)


# (reference, kind, staged folders) -> the checked local path of a job-like input
InputCheck = Callable[[str, str, tuple[str, ...]], str]


class AvatarBook:
    """Creating, reading, renaming and deleting a tenant's avatars over a store; `prepare` hands
    a new avatar to its preparation (a background AvatarPreparer in the service, a direct call in
    the CLI) and `check_input` vets a local media reference like a job input."""

    def __init__(
        self,
        settings: Settings,
        store: AvatarStore,
        check_input: InputCheck,
        prepare: Callable[[Avatar], object],
    ) -> None:
        self.settings = settings
        self.store = store
        self._check_input = check_input
        self._prepare = prepare

    def create(
        self,
        name: str,
        media: str | os.PathLike[str],
        *,
        principal: Principal,
        voice_audio: str | os.PathLike[str] | None = None,
        voice_text: str | None = None,
        owned: tuple[str, ...] = (),
    ) -> Avatar:
        shown = check_name(name)
        transcript = voice_transcript(voice_audio, voice_text)
        limit = self.settings.max_avatars
        if limit and self.store.count_avatars(principal.tenant) >= limit:
            raise InputError(f"tenant {principal.tenant} has {limit} avatars, the limit; delete one first")
        avatar_id = uuid.uuid4().hex
        folder = avatar_dir(self.settings, avatar_id)
        folder.mkdir(parents=True)
        try:
            stored = self._store_file(os.fspath(media), "media", MEDIA_STEM, folder, owned)
            voice = None
            if voice_audio is not None:
                voice = self._store_file(os.fspath(voice_audio), "voice", VOICE_STEM, folder, owned)
            avatar = Avatar(
                id=avatar_id,
                tenant=principal.tenant,
                name=shown,
                status=PREPARING,
                error=None,
                media=stored,
                thumbnail=None,
                voice_audio=voice,
                voice_text=transcript,
                created_at=time.time(),
                duration_s=None,
                is_image=False,
            )
            self.store.add_avatar(avatar)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        log.info("avatar %s (%s) created for tenant %s; preparing", avatar.id, shown, avatar.tenant)
        self._prepare(avatar)
        return avatar

    def _store_file(self, ref: str, kind: str, stem: str, folder: Path, owned: tuple[str, ...]) -> Path:
        """Move a staged upload, download a remote reference or copy a local input into the
        avatar's folder, as <stem><suffix>."""
        if storage.is_remote(ref):
            download = folder / DOWNLOAD_FOLDER
            fetched = storage.fetch_input(ref, download, self.settings)
            target = folder / stored_name(stem, fetched)
            os.replace(fetched, target)
            shutil.rmtree(download, ignore_errors=True)
            return target
        source = Path(self._check_input(ref, kind, owned))
        target = folder / stored_name(stem, source)
        if any(source.is_relative_to(Path(entry)) for entry in owned):
            shutil.move(source, target)
        else:
            shutil.copyfile(source, target)
        return target

    def get(self, avatar_id: str, *, principal: Principal) -> Avatar:
        """AvatarNotFoundError for an unknown id and for another tenant's avatar alike."""
        avatar = self.store.get_avatar(check_id(avatar_id))
        if avatar is None or not principal.can_see(avatar):
            raise AvatarNotFoundError(f"no avatar with id {avatar_id!r}")
        return avatar

    def rename(self, avatar_id: str, name: str, *, principal: Principal) -> Avatar:
        self.get(avatar_id, principal=principal)
        updated = self.store.update_avatar(avatar_id, name=check_name(name))
        if updated is None:
            raise AvatarNotFoundError(f"no avatar with id {avatar_id!r}")
        return updated

    def delete(self, avatar_id: str, *, principal: Principal) -> None:
        self.get(avatar_id, principal=principal)
        self.store.delete_avatar(avatar_id)
        remove_folder(self.settings, avatar_id)
        log.info("avatar %s deleted", avatar_id)


def voice_transcript(voice_audio: object, voice_text: str | None) -> str | None:
    """A voice sample needs its transcript (voice cloning reads both), and a transcript its
    sample."""
    text = " ".join((voice_text or "").split()) or None
    if voice_audio is None and text is not None:
        raise InputError("voice_text goes with a voice sample: upload the voice too")
    if voice_audio is not None and text is None:
        raise InputError("give voice_text: the words spoken in the voice sample")
    if text is not None and len(text) > MAX_REFERENCE_TEXT:
        raise InputError(f"voice_text is {len(text)} characters; the limit is {MAX_REFERENCE_TEXT}")
    return text


def voice_reference(avatar: Avatar) -> VoiceReference | None:
    """The avatar's voice sample as a cloning reference (its path: the speech server shares the
    data volume), or None without one."""
    if avatar.voice_audio is None or not avatar.voice_text:
        return None
    return VoiceReference(str(avatar.voice_audio), avatar.voice_text)


@dataclass(frozen=True)
class RunFace:
    """What a run needs from the avatar its job names."""

    face: Path
    reference: VoiceReference | None


def face_for_run(store: AvatarStore, settings: Settings, ref: str, tenant: str) -> RunFace | None:
    """For a job's video "avatar:<id>": the stored media and voice sample; None for any other
    reference. InputError (the job fails) when the avatar was deleted, is another tenant's, or
    is not ready (submit refuses those; this guards what changed since)."""
    avatar_id = avatar_id_of(ref)
    if avatar_id is None:
        return None
    avatar = store.get_avatar(avatar_id)
    if avatar is None or avatar.tenant != tenant:
        raise InputError(f"avatar {avatar_id} no longer exists (it was deleted)")
    check_usable(avatar)
    if settings.uses_object_store:  # prepared on any instance: its files come from the store
        avatar = rooted_here(avatar, settings)
        fleetfiles.pull_avatar(settings, avatar.id, avatar_files(avatar), avatar.track_key)
    media = avatar.media
    if not media.is_file() or not media.resolve().is_relative_to(settings.avatars_dir.resolve()):
        raise InputError(f"avatar {avatar_id} has lost its video; create it again")
    return RunFace(media, voice_reference(avatar))


def avatar_files(avatar: Avatar) -> list[Path]:
    """The files an avatar keeps in its folder: media, and thumbnail and voice sample if any."""
    return [path for path in (avatar.media, avatar.thumbnail, avatar.voice_audio) if path is not None]


def rooted_here(avatar: Avatar, settings: Settings) -> Avatar:
    """The avatar with its files in this instance's avatars folder (same names)."""
    folder = settings.avatars_dir / avatar.id

    def here(path: Path | None) -> Path | None:
        return folder / path.name if path is not None else None

    return dataclasses.replace(
        avatar,
        media=folder / avatar.media.name,
        thumbnail=here(avatar.thumbnail),
        voice_audio=here(avatar.voice_audio),
    )


def check_usable(avatar: Avatar) -> None:
    """InputError naming why a job cannot use the avatar yet (or ever)."""
    if avatar.status == PREPARING:
        raise InputError(f"avatar {avatar.name!r} is still being prepared; try again when it is ready")
    if avatar.status == FAILED:
        raise InputError(f"avatar {avatar.name!r} could not be prepared: {avatar.error}")


# --------------------------------------------------------------------------------------------------
# preparation


@dataclass(frozen=True)
class Prepared:
    duration_s: float
    is_image: bool
    thumbnail: Path
    track_key: str


class AvatarPreparer:
    """Prepares avatars on a small thread pool, one at a time, with one detector it builds on
    first use. The engine's modules are imported only then."""

    def __init__(self, settings: Settings, store: JobStore) -> None:
        self.settings = settings
        self.store = store
        self._pool = ThreadPoolExecutor(PREPARE_THREADS, thread_name_prefix="heygem-avatar")
        self._detector: FaceDetector | None = None
        self._cache: TrackCache | None = None
        self._lock = threading.Lock()

    def submit(self, avatar: Avatar) -> None:
        self._pool.submit(self.prepare, avatar)

    def stop(self) -> None:
        # Unfinished preparations stay 'preparing' in the store and run again at the next start.
        self._pool.shutdown(wait=False, cancel_futures=True)

    def prepare(self, avatar: Avatar) -> Avatar | None:
        """Prepare one avatar and record the result; the updated record (None once deleted)."""
        try:
            prepared = self._prepare(avatar)
        except HeygemError as exc:
            return self._record_failure(avatar, str(exc))
        except Exception as exc:
            log.exception("avatar %s: preparation failed unexpectedly", avatar.id)
            return self._record_failure(avatar, f"internal error ({type(exc).__name__}); see the service log")
        updated = self.store.update_avatar(
            avatar.id,
            status=READY,
            error=None,
            duration_s=prepared.duration_s,
            is_image=prepared.is_image,
            thumbnail=prepared.thumbnail,
            track_key=prepared.track_key,
        )
        if updated is None:  # deleted while it was prepared: leave nothing behind
            remove_folder(self.settings, avatar.id)
            return None
        fleetfiles.push_avatar(self.settings, avatar.id, avatar_files(updated), updated.track_key)
        log.info("avatar %s (%s) is ready", avatar.id, avatar.name)
        return updated

    def _record_failure(self, avatar: Avatar, reason: str) -> Avatar | None:
        log.info("avatar %s (%s) failed: %s", avatar.id, avatar.name, reason)
        updated = self.store.update_avatar(avatar.id, status=FAILED, error=reason)
        if updated is None:
            remove_folder(self.settings, avatar.id)
        return updated

    def _prepare(self, avatar: Avatar) -> Prepared:
        from heygem.engine.faces.track import TrackOptions
        from heygem.engine.media.guard import MediaLimits
        from heygem.engine.media.probe import probe
        from heygem.engine.pipeline import cached_face, face_track

        limits = MediaLimits.from_settings(self.settings)
        if avatar.voice_audio is not None:
            check_voice_sample(avatar.voice_audio, self.settings)
        info = probe(avatar.media, limits=limits)
        detector, cache = self._tools()
        # Default track options: the cached part (raw detections) does not depend on them.
        cached = cached_face(self.settings, cache, info)
        face_track(self.settings, cached, info, detector, TrackOptions())
        key = cached.key(detector.cache_tag, info.size)
        thumbnail = write_thumbnail(info, avatar.media.parent / THUMBNAIL_NAME)
        return Prepared(info.duration_s, info.is_image, thumbnail, key)

    def _tools(self) -> tuple[FaceDetector, TrackCache]:
        from heygem.engine.faces.detect import create_detector
        from heygem.engine.faces.track import TrackCache

        with self._lock:
            if self._detector is None or self._cache is None:
                # The CPU: the workers own the GPU, and one avatar's detection is a one-off.
                self._detector = create_detector(self.settings, "cpu")
                self._cache = TrackCache(self.settings.track_cache_dir)
            return self._detector, self._cache


def check_voice_sample(path: Path, settings: Settings) -> None:
    """The voice sample must be audio ffmpeg reads, within the duration limit."""
    from heygem.engine.media.guard import MediaLimits
    from heygem.engine.media.probe import probe

    info = probe(path, require_video=False, verify=False, limits=MediaLimits.from_settings(settings))
    if not info.has_audio:
        raise InputError(f"the voice sample {path.name} has no audio")


def write_thumbnail(info: MediaInfo, target: Path) -> Path:
    """The first frame as a JPEG whose longer side is at most THUMBNAIL_SIDE."""
    import cv2

    from heygem.engine.media.decode import read_frames

    frames = read_frames(info.path, info)
    try:
        frame = next(frames)
    except StopIteration:
        raise InputError(f"{info.path.name} has no frame to show") from None
    finally:
        frames.close()
    height, width = frame.shape[:2]
    scale = min(1.0, THUMBNAIL_SIDE / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(frame, size, interpolation=cv2.INTER_AREA) if scale < 1.0 else frame
    ok, encoded = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, THUMBNAIL_QUALITY])
    if not ok:
        raise InputError(f"could not make a thumbnail of {info.path.name}")
    partial = target.with_name(target.name + ".part")
    partial.write_bytes(encoded.tobytes())
    partial.replace(target)
    return target


__all__ = [
    "AVATAR_PREFIX",
    "FAILED",
    "PREPARING",
    "READY",
    "Avatar",
    "AvatarNotFoundError",
    "AvatarPreparer",
    "AvatarStatus",
    "avatar_id_of",
    "check_name",
]
