"""The exceptions heygem raises. Each message is one line a user can act on."""

from __future__ import annotations

DOWNLOAD_COMMAND = "python -m heygem models download"  # named in every missing-weights message


class HeygemError(Exception):
    """Base of every error heygem raises on purpose; its message is safe to show a user."""


class InputError(HeygemError):
    """Something about the user's files or options is wrong."""


class NoFaceError(InputError):
    """No frame of the video has a face in it."""


class UnsupportedMediaError(InputError):
    """The file is not audio or video that ffmpeg can decode, or lacks the needed stream."""


class AudioTooShortError(InputError):
    """The audio is shorter than one 0.2 s model window."""


class LimitExceededError(InputError):
    """A file is larger or longer than the configured limit."""


class ForbiddenPathError(InputError):
    """A path or URL points outside the places jobs may read or write."""


class ForbiddenError(HeygemError):
    """The caller is known but its role may not do this (an admin-only view)."""


class ModelError(HeygemError):
    """Weights are missing, corrupt, or do not fit the network."""


class WeightsMissingError(ModelError):
    """The weights file does not exist; the message names the path and the command that fetches it."""


class MediaProcessError(HeygemError):
    """ffmpeg failed; the message carries the tail of its stderr."""


class StorageError(HeygemError):
    """Object storage or URL fetch/upload failed (missing object, denied, bad credentials)."""


class QueueFullError(HeygemError):
    """The job queue is at its bound; try again later."""


class ShuttingDownError(HeygemError):
    """The service is draining for shutdown and takes no new work."""


class JobNotFoundError(HeygemError):
    """No job or batch has that id."""


class SpeechError(HeygemError):
    """Text-to-speech failed: the speech server refused, timed out or sent no audio, or espeak-ng
    failed. The message names the provider and the reason, never the API key."""


class JobExpiredError(JobNotFoundError):
    """The job or batch existed but retention deleted it; `expired_at` (Unix seconds) says when.
    The web layer answers 410 with that date instead of 404."""

    def __init__(self, message: str, expired_at: float | None = None) -> None:
        super().__init__(message)
        self.expired_at = expired_at


class DiskFullError(StorageError):
    """No space (or quota) left while staging inputs or writing a result (ENOSPC/EDQUOT). The
    message names no server path; the web layer answers 507, and the work can be retried once
    space returns."""
