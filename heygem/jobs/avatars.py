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

import logging
import re
import shutil
import threading
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from heygem.errors import HeygemError, InputError, JobNotFoundError
from heygem.jobs.records import shown_path
from heygem.settings import Settings
from heygem.speech.api import VoiceReference

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
            "id": self.id, "tenant": self.tenant, "name": self.name, "status": self.status,
            "error": self.error, "media": shown(self.media), "thumbnail": shown(self.thumbnail),
            "voice_audio": shown(self.voice_audio), "voice_text": self.voice_text,
            "has_voice": self.voice_audio is not None, "created_at": self.created_at,
            "duration_s": self.duration_s, "is_image": self.is_image, "ref": self.ref,
        }


def avatar_id_of(ref: str) -> str | None:
    """The id in an "avatar:<id>" reference; None for any other reference. InputError when the
    reference starts like an avatar but the id is malformed."""
    if not isinstance(ref, str) or not ref.lower().startswith(AVATAR_PREFIX):
        return None
    avatar_id = ref[len(AVATAR_PREFIX):].strip()
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
    media = avatar.media
    if not media.is_file() or not media.resolve().is_relative_to(settings.avatars_dir.resolve()):
        raise InputError(f"avatar {avatar_id} has lost its video; create it again")
    return RunFace(media, voice_reference(avatar))


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
        except Exception as exc:  # noqa: BLE001 - a bad file must end as 'failed', never kill the thread
            log.exception("avatar %s: preparation failed unexpectedly", avatar.id)
            return self._record_failure(avatar, f"internal error ({type(exc).__name__}); see the service log")
        updated = self.store.update_avatar(
            avatar.id, status=READY, error=None, duration_s=prepared.duration_s,
            is_image=prepared.is_image, thumbnail=prepared.thumbnail, track_key=prepared.track_key,
        )
        if updated is None:  # deleted while it was prepared: leave nothing behind
            remove_folder(self.settings, avatar.id)
            return None
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
        face_track(self.settings, cache, info, detector, TrackOptions())
        key = cached_face(self.settings, cache, info).key(detector.cache_tag, info.size)
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
    "Avatar",
    "AvatarNotFoundError",
    "AvatarPreparer",
    "AvatarStatus",
    "FAILED",
    "PREPARING",
    "READY",
    "avatar_id_of",
    "check_name",
]

