"""The Gradio Blocks page: Single, Batch, Avatars, History and System tabs. The only module importing gradio.

A thin adapter over JobService: handlers copy uploads into the inputs folder, submit jobs and poll
them; they never run the model. Static text is translated in the browser (gr.I18n); text made at
run time (progress, status, errors) uses the language of the request's Accept-Language header.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import time
import uuid
import wave
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import gradio as gr
import numpy as np
import pandas as pd
from fastapi import FastAPI
from gradio.components import Component
from gradio.i18n import I18nData
from PIL import Image

from heygem.engine.api import (
    PREVIEW,
    FaceChoice,
    OptionSpec,
    option_default,
    option_specs,
    option_type,
)
from heygem.errors import HeygemError, InputError, LimitExceededError
from heygem.jobs.api import JobService
from heygem.jobs.avatars import AVATAR_PREFIX, PREPARING, READY, Avatar
from heygem.jobs.records import Batch, Job
from heygem.jobs.tenancy import Principal
from heygem.settings import Settings
from heygem.speech import ESPEAK, make_provider
from heygem.storage.paths import free_name, safe_file_name
from heygem.web import batching, i18n, media
from heygem.web.http import Fault, classify, one_line
from heygem.web.identity import Identity, gradio_user, principal_of

if TYPE_CHECKING:
    from heygem.web.server import LogBuffer

log = logging.getLogger("heygem.web.ui")

POLL_S = 0.5  # how often a waiting Generate call looks at its job
BATCH_REFRESH_S = 1.5
BANNER_REFRESH_S = 2.0
SYSTEM_REFRESH_S = 5.0
UI_CONCURRENCY = 8  # handlers mostly wait on JobService; its own queue does the real limiting
HISTORY_PAGE = 12
LOG_LINES = 60
# Gradio copies every upload and every file it shows into its cache: sweep copies older than an
# hour, every quarter hour, so unauthenticated uploads cannot pile up for a day (issue 12).
CACHE_SWEEP_S = 900
CACHE_MAX_AGE_S = 3600
PLACEHOLDER_SIDE = 160
PLACEHOLDER_GREY = 90
PREVIEW_HEIGHT = 320  # px of the face check, result and history players
GALLERY_COLUMNS = 6
GALLERY_HEIGHT = 360
AUDIO_TYPES = [".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg", ".opus", ".webm"]
FACE_TYPES = [".mp4", ".mov", ".mkv", ".avi", ".webm", ".png", ".jpg", ".jpeg", ".bmp", ".webp"]
MANIFEST_TYPES = [".jsonl", ".json", ".txt"]
AVATAR_REFRESH_S = 1.5  # how often the Avatars tab looks again while an avatar is preparing
AVATAR_LISTING = 6  # outputs of Handlers.avatar_listing: ids, gallery, details, two pickers, timer
PCM16_BYTES = 2
SPEECH_LINES = 3
FACE_UPLOAD_HEIGHT = 150  # px: beside the avatar picker, a compact drop zone
# The options panel, row by row; the other options (box, fps, ...) keep their defaults in the UI.
PANEL_ROWS = (
    ("engine", "blend", "duration_policy"),
    ("pads", "smooth"),
    ("face_choice", "face_point", "watermark"),
)
# Parts of a quad/point option are named <prefix>_<part>: these names are both the i18n keys of
# their labels and the Gradio API's parameter names (pad_top ... pad_right, face_x, face_y).
PART_PREFIX = {"pads": "pad", "face_point": "face"}
USER_ROUTE = "/gradio_api/user"  # Gradio's current-user lookup, a dependency of its routes
NEAREST_FACE: FaceChoice = "nearest"  # the face choice a picked point stands for
P = ParamSpec("P")
R = TypeVar("R")
Translate = Callable[[str], I18nData]
CSS = """
#heygem-banner {border-radius: 8px; padding: 0 12px; background: var(--color-accent-soft);}
"""


# --------------------------------------------------------------------------------------------------
# small helpers


def language(request: gr.Request | None) -> str:
    header = request.headers.get("accept-language", "") if request is not None else ""
    return i18n.pick_language(header)


def _request_in(args: tuple[object, ...], kwargs: dict[str, object]) -> gr.Request | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, gr.Request):
            return value
    return None


def user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """heygem errors become a readable gr.Error; anything else is logged and shown generically."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            lang = language(_request_in(args, kwargs))
            error_class = classify(exc)
            if error_class.fault == Fault.INTERNAL:
                log.exception("web UI handler %s failed", getattr(fn, "__name__", fn))
                raise gr.Error(i18n.t("err_internal", lang), print_exception=False) from None
            title = i18n.t(f"title_{error_class.title}", lang)
            # Gradio 6 shows only the message in its toast: lead with the (translated) title.
            raise gr.Error(f"{title}: {one_line(exc)}", title=title, print_exception=False) from None

    return wrapper


def stage_upload(settings: Settings, folder: Path, path: str, *, require_video: bool | None) -> Path:
    """Copy a Gradio upload into `folder` (under the inputs folder, where jobs may read) under its
    own name, after the size and duration checks; require_video None skips the media check."""
    source = Path(path)
    if source.stat().st_size > settings.max_upload_mb * (1 << 20):
        raise LimitExceededError(f"{source.name} is larger than the {settings.max_upload_mb} MB limit")
    if require_video is not None:
        media.check_duration(source, settings.max_duration_s, source.name, require_video=require_video)
    folder.mkdir(parents=True, exist_ok=True)
    target = free_name(folder, safe_file_name(source.name, fallback="upload"))
    try:
        os.link(source, target)  # same volume: no copy of a large video
    except OSError:
        shutil.copyfile(source, target)
    return target


@contextlib.contextmanager
def staging(settings: Settings) -> Iterator[Path]:
    """A fresh upload folder, removed again when anything fails before the job layer takes over."""
    folder = settings.inputs_dir / uuid.uuid4().hex
    try:
        yield folder
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def build_options(fields: Mapping[str, Any]) -> dict[str, Any]:
    """SyncOptions fields from the options panel's values (a list per quad/point option); the
    job layer validates them. A picked point counts only with the "nearest" face choice."""
    specs = option_specs()
    options: dict[str, Any] = {}
    for name, value in fields.items():
        converted = _panel_value(name, specs[name], value)
        if converted is not None:
            options[name] = converted
    if options.get("face_choice") != NEAREST_FACE:
        options.pop("face_point", None)
    elif "face_point" not in options:
        raise InputError("choose the face: click on it in the face check picture, or enter x and y")
    return options


def _panel_value(name: str, spec: OptionSpec, value: Any) -> Any:
    """One option's panel value as the job layer takes it; None leaves the option unset."""
    kind = option_type(name)
    if spec.parts:
        if any(part is None for part in value) and option_default(name) is None:
            return None
        return [kind(part or 0) for part in value]
    if spec.widget == "check":
        return bool(value)
    if spec.widget == "text":
        return (value or "").strip()
    if spec.widget == "number":
        return None if value is None else kind(value)
    return value


def placeholder(status: str) -> np.ndarray:
    """Grey tile for jobs without a picture (queued, failed); the caption names the status."""
    shade = PLACEHOLDER_GREY if status != "failed" else PLACEHOLDER_GREY + 40
    return np.full((PLACEHOLDER_SIDE, PLACEHOLDER_SIDE, 3), shade, dtype=np.uint8)


def thumbnail_for(job: Job) -> str | np.ndarray:
    if str(job.status) == "succeeded" and job.output_path is not None and job.output_path.exists():
        try:
            return str(media.make_thumbnail(job.output_path))
        except HeygemError as exc:
            log.warning("job %s: %s", job.id, exc)
    return placeholder(str(job.status))


def when(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) if timestamp else ""


def result_file(job: Job) -> str | None:
    if str(job.status) == "succeeded" and job.output_path is not None and job.output_path.exists():
        return str(job.output_path)
    return None


def avatar_reference(avatar_id: str) -> str:
    """How a job names an avatar as its face ("video"): avatar:<id>."""
    return AVATAR_PREFIX + avatar_id


def pair_texts(lines: list[str], faces: list[str]) -> list[dict[str, str]]:
    """Batch items from lines of text and faces: many lines for one face (one avatar, many
    clips), one line for many faces, or as many lines as faces, paired in order."""
    if not faces:
        raise InputError("a batch needs at least one face video, photo or avatar")
    if len(faces) == 1:
        pairs = [(line, faces[0]) for line in lines]
    elif len(lines) == 1:
        pairs = [(lines[0], face) for face in faces]
    elif len(lines) == len(faces):
        pairs = list(zip(lines, faces))
    else:
        raise InputError(
            f"{len(lines)} lines of text for {len(faces)} faces: give one line, one face, "
            "or one line per face"
        )
    return [{"text": line, "video": face} for line, face in pairs]


def wav_samples(path: Path) -> tuple[int, np.ndarray]:
    """(sample rate, samples) of a 16-bit PCM WAV, as gr.Audio takes them."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != PCM16_BYTES:
            raise InputError(f"{path.name}: expected 16-bit PCM speech")
        frames = wav.readframes(wav.getnframes())
        samples = np.frombuffer(frames, dtype="<i2")
        if wav.getnchannels() > 1:
            samples = samples.reshape(-1, wav.getnchannels())
        return wav.getframerate(), samples


def avatar_picture(avatar: Avatar) -> Image.Image | np.ndarray:
    """The avatar's thumbnail, read here and handed over as pixels, so the avatars folder never
    has to be opened to Gradio's file route (other tenants' avatars live there too)."""
    thumbnail = avatar.thumbnail
    if thumbnail is not None and Path(thumbnail).is_file():
        try:
            with Image.open(thumbnail) as picture:
                return picture.convert("RGB")
        except OSError as exc:
            log.warning("avatar %s: unreadable thumbnail: %s", avatar.id, exc)
    return placeholder(str(avatar.status))


def _picker(ready: list[tuple[str, str]], current: str | None, lang: str) -> dict[str, Any]:
    """An avatar picker's choices (none, then the ready avatars by name), keeping the current
    choice while it is still there."""
    ids = {avatar_id for _, avatar_id in ready}
    choices = [(i18n.t("avatar_none", lang), ""), *ready]
    return gr.update(choices=choices, value=current if current in ids else "")


def avatar_caption(avatar: Avatar, lang: str) -> str:
    return f"{avatar.name} · {i18n.t(f'avatar_status_{avatar.status}', lang)}"


# --------------------------------------------------------------------------------------------------
# handlers


class Handlers:
    """Everything the page does, as plain methods over the settings and the job service."""

    def __init__(
        self, settings: Settings, service: JobService, log_lines: Callable[[int], list[str]]
    ) -> None:
        self.settings = settings
        self.service = service
        self.log_lines = log_lines

    # --- banner and system ----------------------------------------------------------------------
    def banner(self, request: gr.Request) -> tuple[Any, ...]:
        """The "model is loading" notice; its timer stops once the engine is ready."""
        ready, reason = self.service.readiness()
        if ready:
            return gr.update(value="", visible=False), gr.Timer(active=False)
        text = i18n.t("banner_loading", language(request), reason=reason)
        return gr.update(value=text, visible=True), gr.Timer(active=True)

    def system(self, request: gr.Request) -> tuple[str, str]:
        lang = language(request)
        ready, reason = self.service.readiness()
        status = self.service.engine_status()
        lines = [f"### {i18n.t('system_engine', lang)}"]
        if status is None:
            lines.append(i18n.t("system_loading", lang, reason=reason))
        else:
            for key in ("engine", "reason", "backend", "checkpoint", "detector", "device", "device_name"):
                lines.append(f"- **{key}**: {getattr(status, key) or '-'}")
            if status.engine == PREVIEW:
                lines.append("\n> " + i18n.t("system_preview_notice", lang))
        lines.append(f"\n### {i18n.t('system_queue', lang)}")
        state = i18n.t("system_ready" if ready else "system_not_ready", lang, reason=reason)
        lines.append(f"- {state}")
        lines.append(f"- {i18n.t('system_queue_depth', lang, count=self.service.queue_depth())}")
        total = self.service.count_jobs(principal=principal_of(request))
        lines.append(f"- {i18n.t('system_jobs_total', lang, count=total)}")
        return "\n".join(lines), self.log_tail(principal_of(request), lang)

    def log_tail(self, who: Principal, lang: str) -> str:
        """The service log names every tenant's files and jobs: admins only."""
        if not who.is_admin:
            return i18n.t("system_log_admins_only", lang)
        return "\n".join(self.log_lines(LOG_LINES))

    # --- single ---------------------------------------------------------------------------------
    @user_errors
    def check_face(self, face: str | None, request: gr.Request) -> tuple[np.ndarray, str]:
        from heygem.engine import pipeline

        lang = language(request)
        if not face:
            raise InputError(i18n.t("err_need_face", lang))
        media.check_duration(Path(face), self.settings.max_duration_s, "the video", require_video=True)
        image, box = pipeline.preview_face(self.settings, Path(face))  # box drawn, (x1, y1, x2, y2)
        if box is None:
            return image, i18n.t("face_none", lang)
        x1, y1, x2, y2 = (int(v) for v in box)
        return image, i18n.t("face_found", lang, w=x2 - x1, h=y2 - y1, x=x1, y=y1)

    def pick_point(self, evt: gr.SelectData) -> tuple[str, int, int]:
        x, y = evt.index[0], evt.index[1]
        return NEAREST_FACE, int(x), int(y)

    @user_errors
    def generate(
        self,
        audio: str | None,
        face: str | None,
        fields: Mapping[str, Any],
        request: gr.Request,
        progress: gr.Progress,
        *,
        avatar: str | None = None,
        text: str | None = None,
        voice: str | None = None,
    ) -> tuple[str, str, str]:
        """Submit one job from the Single tab and wait for it; `fields` are the panel's values.
        The speech is the audio or the typed text (one of them); the face is the upload or the
        picked avatar."""
        lang = language(request)
        who = principal_of(request)
        options = build_options(fields)
        text = (text or "").strip()
        if audio and text:
            raise InputError(i18n.t("err_audio_and_text", lang))
        if not audio and not text:
            raise InputError(i18n.t("err_need_speech", lang))
        if not face and not avatar:
            raise InputError(i18n.t("err_need_face", lang))
        with staging(self.settings) as folder:
            audio_ref = (
                str(stage_upload(self.settings, folder, audio, require_video=False)) if audio else None
            )
            video_ref = (
                avatar_reference(avatar)
                if avatar
                else str(stage_upload(self.settings, folder, face or "", require_video=True))
            )
            job = self.service.submit(
                audio_ref,
                video_ref,
                options,
                text=text or None,
                voice=(voice or "").strip() or None,
                principal=who,
                uploaded=[folder] if folder.exists() else [],
            )
        log.info("job %s submitted from the web UI", job.id)
        job = self._wait(job, progress, lang, who)
        if str(job.status) != "succeeded":
            title = i18n.t("title_failed", lang)
            reason = job.error or i18n.t(f"status_{job.status}", lang)
            raise gr.Error(f"{title}: {reason}", title=title, print_exception=False)
        summary = i18n.t(
            "done_summary",
            lang,
            id=job.id,
            engine=job.engine or "-",
            seconds=f"{job.seconds or 0:.1f}",
            noface=job.frames_without_face or 0,
        )
        return str(job.output_path), str(job.output_path), summary

    @user_errors
    def hear_it(
        self, text: str | None, voice: str | None, avatar: str | None, request: gr.Request
    ) -> tuple[int, np.ndarray]:
        """Only the speech of the typed text (the avatar's voice when one is picked), to listen to
        before generating. Returned as samples: Gradio caches its own copy, which it sweeps."""
        lang = language(request)
        text = (text or "").strip()
        if not text:
            raise InputError(i18n.t("err_need_text", lang))
        wav = self.service.speak(
            text,
            principal=principal_of(request),
            voice=(voice or "").strip() or None,
            avatar_id=avatar or None,
        )
        return wav_samples(wav)

    def avatar_chosen(self, avatar: str | None, request: gr.Request) -> tuple[Any, ...]:
        """The Single tab's picker changed: show the avatar in the face check, drop the upload."""
        if not avatar:
            return gr.skip(), None, ""
        try:
            chosen = self.service.get_avatar(avatar, principal=principal_of(request))
        except HeygemError as exc:
            return None, None, str(exc)
        lang = language(request)
        note = i18n.t(
            "avatar_chosen", lang, name=chosen.name, status=i18n.t(f"avatar_status_{chosen.status}", lang)
        )
        return None, avatar_picture(chosen), note

    def _wait(self, job: Job, progress: gr.Progress, lang: str, who: Principal) -> Job:
        while not job.terminal:
            if str(job.status) == "queued":
                progress(0.0, desc=i18n.t("progress_queued", lang, ahead=self.service.queue_depth()))
            else:
                stage = i18n.t(f"stage_{job.stage}", lang, default=job.stage or "")
                progress(float(job.progress), desc=stage)
            time.sleep(POLL_S)
            job = self.service.get(job.id, principal=who)
        return job

    # --- batch ----------------------------------------------------------------------------------
    @user_errors
    def submit_batch(
        self,
        audios: list[str] | None,
        videos: list[str] | None,
        manifest: str | None,
        fields: Mapping[str, Any],
        request: gr.Request,
        *,
        avatar: str | None = None,
        texts: str | None = None,
    ) -> tuple[Any, ...]:
        """Submit a batch: a manifest, or audios (or lines of text) paired with the uploaded
        videos plus the picked avatar."""
        lang = language(request)
        options = build_options(fields)
        lines = [line.strip() for line in (texts or "").splitlines() if line.strip()]
        if lines and audios:
            raise InputError(i18n.t("err_audio_and_text", lang))
        with staging(self.settings) as folder:
            audio_paths = self._stage_many(folder, audios, require_video=False)
            faces = [str(path) for path in self._stage_many(folder, videos, require_video=True)]
            faces += [avatar_reference(avatar)] if avatar else []
            if manifest:
                staged = stage_upload(self.settings, folder, manifest, require_video=None)
                items = batching.manifest_items(staged, self.settings)
            elif lines:
                items = pair_texts(lines, faces)
            else:
                items = batching.pair_uploads(audio_paths, faces)
            batch = self.service.submit_batch(
                items, options, principal=principal_of(request), uploaded=[folder] if folder.exists() else []
            )
        log.info("batch %s submitted from the web UI with %d items", batch.id, len(items))
        return (batch.id, *self._batch_view(batch, lang), gr.Timer(active=True))

    def _stage_many(self, folder: Path, paths: list[str] | None, *, require_video: bool) -> list[Path]:
        return [
            stage_upload(self.settings, folder, path, require_video=require_video) for path in paths or []
        ]

    def refresh_batch(self, batch_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        """Timer tick: never raises, so one bad moment (a busy disk) does not stop the live table."""
        lang = language(request)
        if not batch_id:
            return (*self._empty_batch(lang), gr.Timer(active=False))
        try:
            batch = self.service.get_batch(batch_id, principal=principal_of(request))
            return (*self._batch_view(batch, lang), gr.Timer(active=not batch.finished))
        except HeygemError as exc:  # e.g. the batch was deleted from the History tab
            log.info("batch %s: live view stopped: %s", batch_id, exc)
            return (gr.skip(), gr.skip(), str(exc), gr.Timer(active=False))
        except Exception:
            log.exception("batch %s: refreshing the live view failed; trying again", batch_id)
            return (gr.skip(), gr.skip(), gr.skip(), gr.Timer(active=True))

    def _empty_batch(self, lang: str) -> tuple[Any, ...]:
        return pd.DataFrame(columns=self._batch_columns(lang)), [], ""

    def _batch_columns(self, lang: str) -> list[str]:
        return [
            i18n.t(key, lang)
            for key in ("col_item", "col_video", "col_status", "col_progress", "col_stage", "col_error")
        ]

    def _batch_view(self, batch: Batch, lang: str) -> tuple[pd.DataFrame, list[Any], str]:
        rows = [
            [
                (item.item_index or 0) + 1,
                Path(item.video).name,
                i18n.t(f"status_{item.status}", lang),
                f"{item.progress * 100:.0f}%",
                i18n.t(f"stage_{item.stage}", lang, default=item.stage),
                item.error or "",
            ]
            for item in batch.items
        ]
        gallery = [(thumbnail_for(item), item.result_name) for item in batch.succeeded]
        summary = i18n.t(
            "batch_summary",
            lang,
            id=batch.id,
            done=len(batch.succeeded),
            failed=len(batch.failed),
            total=len(batch.items),
        )
        return pd.DataFrame(rows, columns=self._batch_columns(lang)), gallery, summary

    @user_errors
    def batch_zip(self, batch_id: str | None, request: gr.Request) -> str:
        if not batch_id:
            raise InputError(i18n.t("err_no_batch", language(request)))
        return str(self.service.batch_zip(batch_id, principal=principal_of(request)))

    @user_errors
    def retry_batch(self, batch_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        lang = language(request)
        if not batch_id:
            raise InputError(i18n.t("err_no_batch", lang))
        batch = self.service.retry_failed(batch_id, principal=principal_of(request))
        return (*self._batch_view(batch, lang), gr.Timer(active=True))

    # --- avatars --------------------------------------------------------------------------------
    def avatar_listing(
        self,
        selected: str | None,
        single: str | None,
        batch: str | None,
        request: gr.Request,
    ) -> tuple[Any, ...]:
        """ids, gallery, the selected avatar's details, the Single and Batch pickers (ready
        avatars; a vanished choice falls back to none) and the refresh timer, active while any
        avatar is still preparing."""
        lang = language(request)
        avatars = self.service.list_avatars(principal=principal_of(request))
        gallery = [(avatar_picture(avatar), avatar_caption(avatar, lang)) for avatar in avatars]
        shown = next((avatar for avatar in avatars if avatar.id == selected), None)
        details = self._avatar_details(shown, lang) if shown is not None else ""
        ready = [(avatar.name, avatar.id) for avatar in avatars if str(avatar.status) == READY]
        preparing = any(str(avatar.status) == PREPARING for avatar in avatars)
        return (
            [avatar.id for avatar in avatars],
            gallery,
            details,
            _picker(ready, single, lang),
            _picker(ready, batch, lang),
            gr.Timer(active=preparing),
        )

    @user_errors
    def avatars(
        self,
        selected: str | None,
        single: str | None,
        batch: str | None,
        request: gr.Request,
    ) -> tuple[Any, ...]:
        return self.avatar_listing(selected, single, batch, request)

    def avatars_tick(
        self,
        selected: str | None,
        single: str | None,
        batch: str | None,
        request: gr.Request,
    ) -> tuple[Any, ...]:
        """Timer tick: never raises, so one bad moment does not stop the refresh."""
        try:
            return self.avatar_listing(selected, single, batch, request)
        except Exception:
            log.exception("refreshing the avatars failed; trying again")
            return (gr.skip(),) * (AVATAR_LISTING - 1) + (gr.Timer(active=True),)

    @user_errors
    def create_avatar(
        self,
        upload: str | None,
        name: str | None,
        voice: str | None,
        voice_text: str | None,
        single: str | None,
        batch: str | None,
        request: gr.Request,
    ) -> tuple[Any, ...]:
        lang = language(request)
        name = (name or "").strip()
        voice_text = (voice_text or "").strip()
        if not upload:
            raise InputError(i18n.t("err_need_avatar_media", lang))
        if not name:
            raise InputError(i18n.t("err_need_avatar_name", lang))
        if voice and not voice_text:
            raise InputError(i18n.t("err_voice_text", lang))
        with staging(self.settings) as folder:
            media_path = stage_upload(self.settings, folder, upload, require_video=True)
            voice_path = stage_upload(self.settings, folder, voice, require_video=False) if voice else None
            avatar = self.service.create_avatar(
                name,
                media_path,
                principal=principal_of(request),
                voice_audio=voice_path,
                voice_text=voice_text or None,
                uploaded=[folder],
            )
        log.info("avatar %s created from the web UI", avatar.id)
        return (avatar.id, avatar.name, *self.avatar_listing(avatar.id, single, batch, request))

    @user_errors
    def avatar_select(self, ids: list[str], evt: gr.SelectData, request: gr.Request) -> tuple[Any, ...]:
        index = evt.index if isinstance(evt.index, int) else evt.index[0]
        if not ids or index >= len(ids):
            return None, "", ""
        avatar = self.service.get_avatar(ids[index], principal=principal_of(request))
        return avatar.id, self._avatar_details(avatar, language(request)), avatar.name

    @user_errors
    def rename_avatar(
        self,
        avatar_id: str | None,
        name: str | None,
        single: str | None,
        batch: str | None,
        request: gr.Request,
    ) -> tuple[Any, ...]:
        lang = language(request)
        if not avatar_id:
            raise InputError(i18n.t("err_no_avatar_selected", lang))
        name = (name or "").strip()
        if not name:
            raise InputError(i18n.t("err_need_avatar_name", lang))
        avatar = self.service.rename_avatar(avatar_id, name, principal=principal_of(request))
        log.info("avatar %s renamed from the web UI", avatar.id)
        return (avatar.id, avatar.name, *self.avatar_listing(avatar.id, single, batch, request))

    @user_errors
    def delete_avatar(
        self,
        avatar_id: str | None,
        single: str | None,
        batch: str | None,
        request: gr.Request,
    ) -> tuple[Any, ...]:
        lang = language(request)
        if not avatar_id:
            raise InputError(i18n.t("err_no_avatar_selected", lang))
        who = principal_of(request)
        name = self.service.get_avatar(avatar_id, principal=who).name
        self.service.delete_avatar(avatar_id, principal=who)
        log.info("avatar %s deleted from the web UI", avatar_id)
        gr.Info(i18n.t("avatar_deleted", lang, name=name))
        return (None, "", *self.avatar_listing(None, single, batch, request))

    def _avatar_details(self, avatar: Avatar, lang: str) -> str:
        if avatar.is_image:
            length = i18n.t("avatar_photo", lang)
        else:
            length = f"{avatar.duration_s:.1f} s" if avatar.duration_s else "-"
        voice = i18n.t("avatar_voice_yes" if avatar.voice_audio else "avatar_voice_none", lang)
        return i18n.t(
            "avatar_details",
            lang,
            name=avatar.name,
            id=avatar.id,
            status=i18n.t(f"avatar_status_{avatar.status}", lang),
            created=when(avatar.created_at),
            length=length,
            voice=voice,
            error=avatar.error or "-",
        )

    # --- history --------------------------------------------------------------------------------
    @user_errors
    def history(self, page: int, request: gr.Request) -> tuple[Any, ...]:
        lang = language(request)
        who = principal_of(request)
        total = self.visible_count(who)
        pages = max(1, -(-total // HISTORY_PAGE))
        page = min(max(0, int(page or 0)), pages - 1)
        jobs = self.visible_jobs(who, HISTORY_PAGE, page * HISTORY_PAGE)
        gallery = [
            (thumbnail_for(job), f"{i18n.t(f'status_{job.status}', lang)} · {when(job.created_at)}")
            for job in jobs
        ]
        label = i18n.t("history_page", lang, page=page + 1, pages=pages, total=total)
        return page, [job.id for job in jobs], gallery, label

    # The one place the History tab asks which jobs `who` may see. Until the job service takes
    # principal= (the tenancy work), these list every job; connecting them filters the tab.
    def visible_jobs(self, who: Principal, limit: int, offset: int) -> list[Job]:
        return self.service.list_jobs(limit=limit, offset=offset, principal=who)

    def visible_count(self, who: Principal) -> int:
        return self.service.count_jobs(principal=who)

    def history_step(self, page: int, step: int, request: gr.Request) -> tuple[Any, ...]:
        return self.history(int(page or 0) + step, request)

    @user_errors
    def history_select(self, ids: list[str], evt: gr.SelectData, request: gr.Request) -> tuple[Any, ...]:
        lang = language(request)
        index = evt.index if isinstance(evt.index, int) else evt.index[0]
        if not ids or index >= len(ids):
            return None, None, None, ""
        job = self.service.get(ids[index], principal=principal_of(request))
        details = i18n.t(
            "history_details",
            lang,
            id=job.id,
            status=i18n.t(f"status_{job.status}", lang),
            created=when(job.created_at),
            engine=job.engine or "-",
            error=job.error or "-",
        )
        path = result_file(job)
        return job.id, path, path, details

    @user_errors
    def delete_selected(self, job_id: str | None, page: int, request: gr.Request) -> tuple[Any, ...]:
        if not job_id:
            raise InputError(i18n.t("err_no_selection", language(request)))
        job = self.service.get(job_id, principal=principal_of(request))
        if not job.terminal:
            self.service.cancel(job_id, principal=principal_of(request))
        else:
            self.service.delete(job_id, principal=principal_of(request))
        log.info("job %s deleted from the web UI", job_id)
        return (None, None, None, "", *self.history(page, request))

    @user_errors
    def delete_all(self, request: gr.Request) -> tuple[Any, ...]:
        removed = self.service.delete_all(principal=principal_of(request))
        log.info("%d jobs deleted from the web UI", removed)
        gr.Info(i18n.t("history_deleted_all", language(request), count=removed))
        return (None, None, None, "", gr.update(visible=False), *self.history(0, request))


# --------------------------------------------------------------------------------------------------
# layout


class OptionsPanel:
    """The options accordion, built from the option schema.

    Every input has a name: the option's field name, or <prefix>_<part> for each part of a quad or
    point option. Events pass the inputs by these names (`kwargs`), so they are also the Gradio
    API's parameter names, and `fields` maps a handler's values back to SyncOptions fields.
    """

    def __init__(self, t: Translate) -> None:
        specs = option_specs()
        self.names: dict[str, tuple[str, ...]] = {}  # field -> its input names
        self.inputs: dict[str, Component] = {}  # input name -> component
        with gr.Accordion(t("options"), open=False):
            for row in PANEL_ROWS:
                with gr.Row():
                    for name in row:
                        self._add(t, name, specs[name])

    @property
    def kwargs(self) -> dict[str, Component]:
        """Inputs for an event's `inputs_kwargs`, in the schema's field order."""
        return {key: self.inputs[key] for name in option_specs() for key in self.names.get(name, ())}

    def component(self, name: str) -> Component:
        return self.inputs[name]

    def parts(self, name: str) -> list[Component]:
        return [self.inputs[key] for key in self.names[name]]

    def fields(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """{field: value, or a list of part values} from an event's {input name: value}."""
        return {
            name: [values[key] for key in keys] if option_specs()[name].parts else values[keys[0]]
            for name, keys in self.names.items()
        }

    def _add(self, t: Translate, name: str, spec: OptionSpec) -> None:
        if spec.parts:
            prefix = PART_PREFIX.get(name, name)
            keys = tuple(f"{prefix}_{part.lower()}" for part in spec.parts)
            default = option_default(name) or (None,) * len(keys)
            for key, value in zip(keys, default):
                self.inputs[key] = _number(t(key), value, spec, option_type(name))
        else:
            keys = (name,)
            self.inputs[name] = _widget(t, name, spec)
        self.names[name] = keys


def _widget(t: Translate, name: str, spec: OptionSpec) -> Component:
    """One input for a single-valued option; its label and info are the i18n keys <name>, <name>_info."""
    default = option_default(name)
    info = t(f"{name}_info") if f"{name}_info" in i18n.EN else None
    if spec.widget == "choice":
        return gr.Radio(list(spec.choices), value=default, label=t(name), info=info)
    if spec.widget == "check":
        return gr.Checkbox(default, label=t(name), info=info)
    if spec.widget == "number":
        return _number(t(name), default, spec, option_type(name))
    return gr.Textbox(default, label=t(name), info=info, placeholder=t(f"{name}_hint"))


def _number(label: I18nData, value: float | None, spec: OptionSpec, kind: type) -> gr.Number:
    return gr.Number(
        value, label=label, precision=0 if kind is int else None, minimum=spec.minimum, maximum=spec.maximum
    )


def _avatar_picker(t: Translate, elem_id: str) -> gr.Dropdown:
    """Filled with the tenant's ready avatars when the page loads and whenever they change."""
    return gr.Dropdown(
        choices=[("-", "")], value="", label=t("avatar_pick"), info=t("avatar_pick_info"), elem_id=elem_id
    )


def _speech_note(t: Translate, settings: Settings) -> gr.Markdown:
    """The built-in voice is robotic: say so, and where the better ones are configured."""
    if settings.tts_provider == ESPEAK:
        return gr.Markdown(t("speech_robotic"), elem_id="speech-note")
    return gr.Markdown(i18n.t("speech_provider", provider=settings.tts_provider), elem_id="speech-note")


def _voice_choices(settings: Settings) -> list[str]:
    """The provider's known voices (typing another name is allowed: espeak-ng knows many)."""
    voices = list(make_provider(settings).voices())
    if settings.tts_voice and settings.tts_voice not in voices:
        voices.insert(0, settings.tts_voice)
    return voices


def _single_tab(t: Translate, h: Handlers) -> gr.Dropdown:
    with gr.Row():
        with gr.Column():
            with gr.Row():
                avatar = _avatar_picker(t, "single-avatar")
                face = gr.File(
                    file_types=FACE_TYPES,
                    type="filepath",
                    label=t("face"),
                    height=FACE_UPLOAD_HEIGHT,
                    elem_id="single-face",
                )
            audio = gr.Audio(
                sources=["upload", "microphone"], type="filepath", label=t("audio"), elem_id="single-audio"
            )
            text = gr.Textbox(
                label=t("speech_text"),
                placeholder=t("speech_text_hint"),
                lines=SPEECH_LINES,
                elem_id="single-text",
            )
            with gr.Row():
                voice = gr.Dropdown(
                    _voice_choices(h.settings),
                    value=h.settings.tts_voice or None,
                    allow_custom_value=True,
                    label=t("speech_voice"),
                    info=t("speech_voice_info"),
                    elem_id="single-voice",
                )
                hear = gr.Button(t("hear_it"), variant="secondary", elem_id="hear-it")
            heard = gr.Audio(
                label=t("hear_it_audio"), interactive=False, type="numpy", elem_id="hear-it-audio"
            )
            _speech_note(t, h.settings)
            panel = OptionsPanel(t)
            with gr.Row():
                check = gr.Button(t("check_face"), variant="secondary", elem_id="check-face")
                generate = gr.Button(t("generate"), variant="primary", elem_id="generate")
        with gr.Column():
            preview = gr.Image(
                label=t("face_preview"), interactive=False, height=PREVIEW_HEIGHT, elem_id="face-preview"
            )
            face_note = gr.Markdown(elem_id="face-note")
            video = gr.Video(
                label=t("result"), interactive=False, height=PREVIEW_HEIGHT, elem_id="result-video"
            )
            download = gr.File(label=t("download"), interactive=False, elem_id="result-file")
            summary = gr.Markdown(elem_id="result-summary")

    # Gradio injects gr.Request and gr.Progress by signature, and the inputs by name.
    # The inputs added with avatars and text have defaults, so API callers written before them
    # (positional or by name) keep working without passing them.
    def run_generate(
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
        *,
        avatar: str | None = None,
        text: str | None = None,
        voice: str | None = None,
        **values: Any,
    ) -> tuple[str, str, str]:
        return h.generate(
            values.pop("audio"),
            values.pop("face"),
            panel.fields(values),
            request,
            progress,
            avatar=avatar,
            text=text or "",
            voice=voice,
        )

    check.click(h.check_face, [face], [preview, face_note], api_name="check_face")
    preview.select(
        h.pick_point,
        None,
        [panel.component("face_choice"), *panel.parts("face_point")],
        api_visibility="private",
    )
    # An avatar and an uploaded face exclude each other: choosing one clears the other.
    avatar.input(h.avatar_chosen, [avatar], [face, preview, face_note], api_visibility="private")
    face.upload(lambda: "", None, [avatar], api_visibility="private")
    hear.click(h.hear_it, [text, voice, avatar], [heard], api_name="hear_it")
    generate.click(
        run_generate,
        None,
        [video, download, summary],
        api_name="generate",
        # The options keep their places right after audio and face, as before avatars and text
        # existed, so positional gradio_client callers are not broken; the new inputs come last.
        inputs_kwargs={
            "audio": audio,
            "face": face,
            **panel.kwargs,
            "avatar": avatar,
            "text": text,
            "voice": voice,
        },
    )
    return avatar


def _batch_tab(t: Translate, h: Handlers) -> gr.Dropdown:
    batch_id = gr.State(None)
    timer = gr.Timer(BATCH_REFRESH_S, active=False)
    gr.Markdown(t("batch_help"))
    with gr.Row():
        audios = gr.File(
            file_count="multiple", file_types=AUDIO_TYPES, label=t("batch_audio"), elem_id="batch-audio"
        )
        videos = gr.File(
            file_count="multiple", file_types=FACE_TYPES, label=t("batch_videos"), elem_id="batch-videos"
        )
        avatar = _avatar_picker(t, "batch-avatar")
        manifest = gr.File(file_types=MANIFEST_TYPES, label=t("batch_manifest"), elem_id="batch-manifest")
    texts = gr.Textbox(
        label=t("batch_texts"), placeholder=t("batch_texts_hint"), lines=SPEECH_LINES, elem_id="batch-texts"
    )
    panel = OptionsPanel(t)
    run = gr.Button(t("batch_run"), variant="primary", elem_id="batch-run")
    summary = gr.Markdown(elem_id="batch-summary")
    table = gr.Dataframe(label=t("batch_table"), interactive=False, elem_id="batch-table")
    gallery = gr.Gallery(
        label=t("batch_gallery"),
        columns=GALLERY_COLUMNS,
        fit_columns=False,
        height=GALLERY_HEIGHT,
        object_fit="contain",
        elem_id="batch-gallery",
    )
    with gr.Row():
        zip_button = gr.Button(t("batch_zip"), elem_id="batch-zip")
        retry = gr.Button(t("batch_retry"), elem_id="batch-retry")
    zip_file = gr.File(label=t("batch_zip_file"), interactive=False, elem_id="batch-zip-file")
    view = [table, gallery, summary]

    def submit_batch(
        request: gr.Request, *, avatar: str | None = None, texts: str | None = None, **values: Any
    ) -> tuple[Any, ...]:
        return h.submit_batch(
            values.pop("audios"),
            values.pop("videos"),
            values.pop("manifest"),
            panel.fields(values),
            request,
            avatar=avatar,
            texts=texts or "",
        )

    run.click(
        submit_batch,
        None,
        [batch_id, *view, timer],
        api_name="batch",
        inputs_kwargs={  # new inputs last, as for /generate
            "audios": audios,
            "videos": videos,
            "manifest": manifest,
            **panel.kwargs,
            "avatar": avatar,
            "texts": texts,
        },
    )
    timer.tick(h.refresh_batch, [batch_id], [*view, timer], api_visibility="private", show_progress="hidden")
    zip_button.click(h.batch_zip, [batch_id], [zip_file], api_name="batch_zip")
    retry.click(h.retry_batch, [batch_id], [*view, timer], api_name="batch_retry")
    return avatar


def _avatars_tab(t: Translate, h: Handlers, pickers: list[gr.Dropdown]) -> Callable[[Any], None]:
    """The Avatars tab; returns a function that hooks its listing to a trigger (page load, tab
    select), since the pickers it fills live on other tabs."""
    ids = gr.State([])
    selected = gr.State(None)
    timer = gr.Timer(AVATAR_REFRESH_S, active=False)
    gr.Markdown(t("avatars_help"))
    with gr.Row():
        with gr.Column(scale=2):
            upload = gr.File(
                file_types=FACE_TYPES, type="filepath", label=t("avatar_media"), elem_id="avatar-upload"
            )
            name = gr.Textbox(
                label=t("avatar_name"), placeholder=t("avatar_name_hint"), elem_id="avatar-name"
            )
            voice = gr.Audio(
                sources=["upload", "microphone"],
                type="filepath",
                label=t("avatar_voice"),
                elem_id="avatar-voice",
            )
            voice_text = gr.Textbox(
                label=t("avatar_voice_text"),
                placeholder=t("avatar_voice_text_hint"),
                lines=2,
                elem_id="avatar-voice-text",
            )
            create = gr.Button(t("avatar_create"), variant="primary", elem_id="avatar-create")
        with gr.Column(scale=3):
            gallery = gr.Gallery(
                label=t("avatar_gallery"),
                columns=4,
                fit_columns=False,
                height=GALLERY_HEIGHT,
                object_fit="contain",
                allow_preview=False,
                elem_id="avatar-gallery",
            )
            refresh = gr.Button(t("refresh"), size="sm", elem_id="avatar-refresh")
            details = gr.Markdown(elem_id="avatar-details")
            with gr.Row():
                new_name = gr.Textbox(label=t("avatar_new_name"), elem_id="avatar-new-name", scale=3)
                rename = gr.Button(t("avatar_rename"), size="sm", elem_id="avatar-rename", scale=1)
                delete = gr.Button(
                    t("avatar_delete"), variant="stop", size="sm", elem_id="avatar-delete", scale=1
                )
    # The listing refreshes the selected avatar's details too: its status changes while shown.
    listing = [ids, gallery, details, *pickers, timer]
    current = [selected, *pickers]
    changed = [selected, new_name, *listing]
    create.click(
        h.create_avatar, [upload, name, voice, voice_text, *pickers], changed, api_visibility="private"
    )
    gallery.select(h.avatar_select, [ids], [selected, details, new_name], api_visibility="private")
    rename.click(h.rename_avatar, [selected, new_name, *pickers], changed, api_visibility="private")
    delete.click(h.delete_avatar, [selected, *pickers], changed, api_visibility="private")
    refresh.click(h.avatars, current, listing, api_visibility="private")
    timer.tick(h.avatars_tick, current, listing, api_visibility="private", show_progress="hidden")

    def hook(trigger: Any) -> None:
        trigger(h.avatars, current, listing, api_visibility="private", show_progress="hidden")

    return hook


def _history_tab(t: Translate, h: Handlers) -> list[Any]:
    page = gr.State(0)
    ids = gr.State([])
    selected = gr.State(None)
    with gr.Row():
        prev_page = gr.Button(t("history_prev"), size="sm")
        page_label = gr.Markdown(elem_id="history-page")
        next_page = gr.Button(t("history_next"), size="sm")
        refresh = gr.Button(t("refresh"), size="sm", elem_id="history-refresh")
    gallery = gr.Gallery(
        label=t("history_gallery"),
        columns=GALLERY_COLUMNS,
        fit_columns=False,
        height=GALLERY_HEIGHT,
        object_fit="contain",
        allow_preview=False,
        elem_id="history-gallery",
    )
    with gr.Row():
        with gr.Column():
            details = gr.Markdown(elem_id="history-details")
            with gr.Row():
                delete = gr.Button(t("history_delete"), variant="stop", size="sm", elem_id="history-delete")
                delete_all = gr.Button(
                    t("history_delete_all"), variant="stop", size="sm", elem_id="history-delete-all"
                )
            with gr.Row(visible=False) as confirm_row:
                gr.Markdown(t("history_confirm"))
                confirm = gr.Button(
                    t("history_confirm_yes"), variant="stop", size="sm", elem_id="history-confirm-yes"
                )
                cancel = gr.Button(t("history_confirm_no"), size="sm", elem_id="history-confirm-no")
        with gr.Column():
            video = gr.Video(
                label=t("history_preview"), interactive=False, height=PREVIEW_HEIGHT, elem_id="history-video"
            )
            download = gr.File(label=t("download"), interactive=False, elem_id="history-file")
    listing = [page, ids, gallery, page_label]
    refresh.click(h.history, [page], listing, api_visibility="private")
    prev_page.click(_stepper(h, -1), [page], listing, api_visibility="private")
    next_page.click(_stepper(h, 1), [page], listing, api_visibility="private")
    gallery.select(h.history_select, [ids], [selected, video, download, details], api_visibility="private")
    delete.click(
        h.delete_selected,
        [selected, page],
        [selected, video, download, details, *listing],
        api_visibility="private",
    )
    delete_all.click(lambda: gr.update(visible=True), None, [confirm_row], api_visibility="private")
    cancel.click(lambda: gr.update(visible=False), None, [confirm_row], api_visibility="private")
    confirm.click(
        h.delete_all,
        None,
        [selected, video, download, details, confirm_row, *listing],
        api_visibility="private",
    )
    return listing


def _stepper(h: Handlers, step: int) -> Callable[[int, gr.Request], tuple[Any, ...]]:
    def step_page(page: int, request: gr.Request) -> tuple[Any, ...]:
        return h.history_step(page, step, request)

    return step_page


def _system_tab(t: Translate, h: Handlers) -> tuple[gr.Markdown, gr.Textbox]:
    status = gr.Markdown(elem_id="system-status")
    refresh = gr.Button(t("refresh"), size="sm")
    logs = gr.Textbox(
        label=t("system_log"),
        lines=16,
        max_lines=16,
        interactive=False,
        autoscroll=True,
        elem_id="system-log",
    )
    with gr.Accordion(t("system_settings"), open=False):
        gr.JSON(h.settings.describe())
    refresh.click(h.system, None, [status, logs], api_visibility="private")
    return status, logs


def build_blocks(settings: Settings, service: JobService, log_lines: Callable[[int], list[str]]) -> gr.Blocks:
    translator = make_i18n()

    def t(key: str) -> I18nData:
        return translator(i18n.BROWSER_PREFIX + key)

    h = Handlers(settings, service, log_lines)
    demo = gr.Blocks(title="heygem", analytics_enabled=False, delete_cache=(CACHE_SWEEP_S, CACHE_MAX_AGE_S))
    with demo:
        gr.Markdown(t("title"))
        banner = gr.Markdown(t("banner_starting"), elem_id="heygem-banner")
        banner_timer = gr.Timer(BANNER_REFRESH_S)
        with gr.Tabs():
            with gr.Tab(t("tab_single"), id="single") as single_tab:
                single_picker = _single_tab(t, h)
            with gr.Tab(t("tab_batch"), id="batch") as batch_tab:
                batch_picker = _batch_tab(t, h)
            with gr.Tab(t("tab_avatars"), id="avatars", elem_id="avatars-tab") as avatars_tab:
                show_avatars = _avatars_tab(t, h, [single_picker, batch_picker])
            with gr.Tab(t("tab_history"), id="history") as history_tab:
                listing = _history_tab(t, h)
            with gr.Tab(t("tab_system"), id="system") as system_tab:
                system_view = _system_tab(t, h)
        system_timer = gr.Timer(SYSTEM_REFRESH_S)
        for trigger in (banner_timer.tick, demo.load):
            trigger(h.banner, None, [banner, banner_timer], api_visibility="private", show_progress="hidden")
        for trigger in (demo.load, single_tab.select, batch_tab.select, avatars_tab.select):
            show_avatars(trigger)
        history_tab.select(h.history, [listing[0]], listing, api_visibility="private")
        demo.load(h.history, [listing[0]], listing, api_visibility="private", show_progress="hidden")
        system_tab.select(h.system, None, list(system_view), api_visibility="private")
        system_timer.tick(h.system, None, list(system_view), api_visibility="private", show_progress="hidden")
    return demo


def make_i18n() -> gr.I18n:
    return gr.I18n(**i18n.TRANSLATIONS)


def mount_ui(
    settings: Settings,
    service: JobService,
    log_buffer: LogBuffer | None,
    identity: Identity | None = None,
) -> FastAPI:
    """Build the page and mount it at "/" of a FastAPI of its own (server.py puts that at "/").

    Who the caller is comes from the IdentityGate in front of the app (bearer key or login
    session): Gradio's "current user" lookup is replaced by the gate's principal, so
    gr.Request.username is "tenant:role" and a bearer key works for gradio_client too. The
    auth callable only makes Gradio show its login form; the gate answers POST /login."""
    identity = identity if identity is not None else Identity(settings)
    log_lines = log_buffer.tail if log_buffer is not None else (lambda count: [])
    demo = build_blocks(settings, service, log_lines)
    demo.queue(default_concurrency_limit=UI_CONCURRENCY, max_size=settings.queue_size)
    settings.outputs_dir.mkdir(parents=True, exist_ok=True)
    host = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    gr.mount_gradio_app(
        host,
        demo,
        path="/",
        auth=identity.check_login if identity.required else None,
        root_path=settings.root_path or None,
        allowed_paths=[str(settings.outputs_dir.resolve())],
        max_file_size=f"{settings.max_upload_mb}mb",
        show_error=False,
        i18n=make_i18n(),
        footer_links=["api"],
        run_history=False,
        ssr_mode=False,
        mcp_server=False,
        css=CSS,
    )
    _use_gate_identity(host)
    return host


def _use_gate_identity(host: FastAPI) -> None:
    """Point Gradio's current-user dependency at the gate's principal (fail loudly if this
    Gradio no longer has one: the UI would otherwise ignore bearer keys)."""
    from gradio.routes import App

    for route in host.routes:
        app = getattr(route, "app", None)
        if not isinstance(app, App):
            continue
        endpoint = _find_endpoint(app.routes, USER_ROUTE)
        if endpoint is not None:
            app.dependency_overrides[endpoint] = gradio_user
            return
    raise RuntimeError(f"this Gradio has no {USER_ROUTE} route; heygem cannot attach its identity")


def _find_endpoint(routes: Iterable[Any], path: str) -> Callable[..., Any] | None:
    """The endpoint serving `path`, looking inside included routers (FastAPI keeps them apart)."""
    for route in routes:
        if getattr(route, "path", None) == path and callable(getattr(route, "endpoint", None)):
            return route.endpoint  # type: ignore[no-any-return]
        included = getattr(route, "original_router", None)
        children = getattr(route, "routes", None) or getattr(included, "routes", None)
        found = _find_endpoint(children, path) if children else None
        if found is not None:
            return found
    return None
