"""The Gradio Blocks page: Single, Batch, Avatars, History and System tabs. The only module importing gradio.

A thin adapter over JobService: handlers copy uploads into the inputs folder, submit jobs and poll
them; they never run the model. Static text is translated in the browser (gr.I18n); text made at
run time (progress, status, errors) uses the language of the request's Accept-Language header.
"""

from __future__ import annotations

import contextlib
import functools
import html
import logging
import os
import re
import shutil
import time
import uuid
import wave
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import gradio as gr
import numpy as np
import pandas as pd
from fastapi import FastAPI
from gradio.components import Component
from gradio.i18n import I18nData
from gradio.utils import get_upload_folder as gradio_upload_folder
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
from heygem.jobs.manifest import ref_stem
from heygem.jobs.records import Batch, Job, JobStatus
from heygem.jobs.tenancy import Principal
from heygem.settings import Settings
from heygem.speech import ESPEAK, make_provider
from heygem.storage.paths import free_name, safe_file_name
from heygem.web import batching, eta, i18n, media
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
SECONDS_PER_DAY = 86_400
DATE_CHARS = 16  # "YYYY-MM-DD HH:MM" of a timestamp
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
VIDEO_TYPES = [".mp4", ".mov", ".mkv", ".avi", ".webm"]
FACE_TYPES = [*VIDEO_TYPES, ".png", ".jpg", ".jpeg", ".bmp", ".webp"]
SPEECH_TYPES = [*AUDIO_TYPES, *VIDEO_TYPES]  # a video's sound track is speech as well
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
HISTORY_REFRESH_S = 2.0  # how often History looks again while a listed job is queued or running
HISTORY_SCAN = 500  # newest jobs a History search or filter looks through
CAPTION_NAME_CHARS = 28
DETAIL_TEXT_CHARS = 200
PHONE_WIDTH_PX = 768  # below this the columns stack: Generate scrolls the progress into view
# Read ?job= and ?batch= once at page load: the work this tab follows survives a reload.
READ_URL_JS = """() => {
  const query = new URLSearchParams(window.location.search);
  return [query.get("job") || "", query.get("batch") || ""];
}"""
SCROLL_TO_PROGRESS_JS = f"""() => {{
  if (window.innerWidth < {PHONE_WIDTH_PX}) {{
    document.getElementById("single-status")?.scrollIntoView({{behavior: "smooth", block: "start"}});
  }}
}}"""
# An error note is dismissed by clicking it. Every upload control gets an accessible name of its
# own, from its field's (translated) label, also when Gradio renders it again.
PAGE_JS = """() => {
  document.addEventListener("click", (event) => {
    const note = event.target.closest(".heygem-error");
    if (note) note.remove();
  });
  const name = () => {
    for (const input of document.querySelectorAll("input[type=file]")) {
      const block = input.closest(".block");
      const title = block?.querySelector("[data-testid=block-label], [data-testid=block-info]");
      const label = title?.textContent?.trim();
      if (!label) continue;
      for (const control of [input, input.closest("button")]) {
        if (control && control.getAttribute("aria-label") !== label) {
          control.setAttribute("aria-label", label);
        }
      }
    }
  };
  name();
  new MutationObserver(name).observe(document.body, {childList: true, subtree: true});
}"""
CSS = """
#heygem-banner {border-radius: 8px; padding: 0 12px; background: var(--color-accent-soft);}
.heygem-banner-preview {border-radius: 8px; padding: 0 12px; background: var(--color-accent-soft);}
.heygem-error {border-left: 4px solid var(--error-border-color, #d33); padding: 4px 10px;
  background: var(--error-background-fill, #fee); cursor: pointer; white-space: normal;
  overflow-wrap: anywhere;}
.heygem-note {padding: 4px 10px; overflow-wrap: anywhere;}
#batch-table td, #batch-table span {white-space: normal; overflow-wrap: anywhere;}
#history-gallery .caption-label, #batch-gallery .caption-label {white-space: normal;}
"""
SHORT_SPEECH_S = 1.0  # shorter speech makes a clip too short to judge
SILENT_LEVEL = 0.003  # RMS of samples in [-1, 1]; quieter is silence (or a far-off microphone)
JOB_STATUSES = tuple(str(status) for status in JobStatus)
SKIP = "__heygem_skip__"
CODE_SPAN = re.compile(r"`([^`]+)`")
LOG_TO_END_JS = """() => {
  const area = document.querySelector("#system-log textarea");
  if (area) area.scrollTop = area.scrollHeight;
}"""  # stands for gr.skip() in a note handler's fallback outputs


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
        except Exception as exc:  # noqa: BLE001 - error_text logs the internal ones with their traceback
            lang = language(_request_in(args, kwargs))
            text = error_text(exc, lang, getattr(fn, "__name__", "?"))
            error_class = classify(exc)
            if error_class.fault == Fault.INTERNAL:
                raise gr.Error(text, duration=None, print_exception=False) from None
            title = i18n.t(f"title_{error_class.title}", lang)
            # Gradio 6 shows only the message in its toast: it leads with the (translated) title,
            # and it stays until the user closes it.
            raise gr.Error(text, title=title, duration=None, print_exception=False) from None

    return wrapper


def error_text(exc: BaseException, lang: str, where: str) -> str:
    """The one line a user reads for `exc`, in their language: the error's title, then its
    message (known back-end messages re-worded for the page); internal errors stay in the log."""
    if isinstance(exc, gr.Error):
        return str(exc.message)
    error_class = classify(exc)
    if error_class.fault == Fault.INTERNAL:
        log.error("web UI handler %s failed", where, exc_info=exc)
        return i18n.t("err_internal", lang)
    title = i18n.t(f"title_{error_class.title}", lang)
    return f"{title}: {i18n.backend_message(one_line(exc), lang)}"


def error_note(text: str) -> str:
    """A persistent error beside the control that failed (click to dismiss)."""
    return f'<div class="heygem-error" role="alert">⚠️ {_note_html(text)}</div>'


def info_note(text: str) -> str:
    return f'<div class="heygem-note" role="status">{_note_html(text)}</div>'


def _note_html(text: str) -> str:
    """Escaped text; `ids` (as the translations write them) become <code>."""
    return CODE_SPAN.sub(r"<code>\1</code>", html.escape(text))


def in_note(*fallback: Any) -> Callable[[Callable[P, R]], Callable[P, Any]]:
    """Errors go to the handler's last output, a note by its control, and the other outputs get
    `fallback` (SKIP keeps what they show): a failed action never blanks the work on the page."""

    def decorate(fn: Callable[P, R]) -> Callable[P, Any]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - error_text logs the internal ones with their traceback
                lang = language(_request_in(args, kwargs))
                text = error_text(exc, lang, getattr(fn, "__name__", "?"))
                kept = tuple(gr.skip() if value == SKIP else value for value in fallback)
                return (*kept, error_note(text)) if kept else error_note(text)

        return wrapper

    return decorate


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


def download_name(job: Job) -> str:
    """What a result is saved as: its output name, or its inputs' names (face, then speech)."""
    if job.output_name:
        return job.output_name
    speech = ref_stem(job.audio) if job.audio else "text"
    return f"{ref_stem(job.video)}_{speech}.mp4"


def named_download(job: Job) -> str | None:
    """The result under its download name: a hard link beside it in the job's own output folder
    (deleting the job removes both); the result itself when linking is impossible."""
    path = result_file(job)
    if path is None:
        return None
    result = Path(path)
    named = result.with_name(download_name(job))
    if named == result or named.exists():
        return str(named)
    try:
        os.link(result, named)
    except OSError as exc:
        log.info("job %s: download keeps its own name: %s", job.id, exc)
        return str(result)
    return str(named)


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
        """The "model is loading" notice, its timer (stopped once the engine is ready), and the
        Single and Batch tabs' preview-engine banners, shown once the ready engine is the preview."""
        ready, reason = self.service.readiness()
        if ready:
            status = self.service.engine_status()
            preview = gr.update(visible=status is not None and status.engine == PREVIEW)
            return gr.update(value="", visible=False), gr.Timer(active=False), preview, preview
        text = i18n.t("banner_loading", language(request), reason=reason)
        return gr.update(value=text, visible=True), gr.Timer(active=True), gr.skip(), gr.skip()

    def system(self, request: gr.Request) -> tuple[str, str]:
        lang = language(request)
        ready, reason = self.service.readiness()
        status = self.service.engine_status()
        lines = [f"### {i18n.t('system_engine', lang)}"]
        if status is None:
            lines.append(i18n.t("system_loading", lang, reason=reason))
        else:
            for key in ("engine", "reason", "checkpoint", "detector", "device", "device_name"):
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
        """The /check_face API: the first frame with the face box drawn, and a sentence."""
        return self._face_check(face, language(request))

    @in_note(SKIP)
    def check_face_noted(self, face: str | None, request: gr.Request) -> tuple[Any, str]:
        """Check face, and the automatic check on upload: a problem is a note by the picture,
        and the picture shown before stays."""
        return self._face_check(face, language(request))

    def _face_check(self, face: str | None, lang: str) -> tuple[np.ndarray, str]:
        from heygem.engine import pipeline

        if not face:
            raise InputError(i18n.t("err_need_face", lang))
        media.check_duration(Path(face), self.settings.max_duration_s, "the video", require_video=True)
        image, box = pipeline.preview_face(self.settings, Path(face))  # box drawn, (x1, y1, x2, y2)
        if box is None:
            return image, i18n.t("face_none", lang)
        x1, y1, x2, y2 = (int(v) for v in box)
        return image, i18n.t("face_found", lang, w=x2 - x1, h=y2 - y1, x=x1, y=y1)

    def check_speech(self, audio: str | None, request: gr.Request) -> str:
        """Before Generate: the speech's length, and a warning when it is very short or silent."""
        if not audio:
            return ""
        lang = language(request)
        try:
            seconds, level = media.speech_level(Path(audio))
        except Exception as exc:  # noqa: BLE001 - error_text logs the internal ones with their traceback
            return error_note(error_text(exc, lang, "check_speech"))
        if seconds < SHORT_SPEECH_S:
            return error_note(i18n.t("note_speech_short", lang, seconds=seconds))
        if level < SILENT_LEVEL:
            return error_note(i18n.t("note_speech_silent", lang))
        return info_note(i18n.t("note_speech_ok", lang, seconds=seconds))

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
        """The /generate API: submit one job as the Single tab does, and wait for it."""
        lang = language(request)
        who = principal_of(request)
        job = self._submit_single(audio, face, fields, request, avatar=avatar, text=text, voice=voice)
        job = self._wait(job, progress, lang, who)
        if str(job.status) != "succeeded":
            title = i18n.t("title_failed", lang)
            reason = job.error or i18n.t(f"status_{job.status}", lang)
            raise gr.Error(f"{title}: {reason}", title=title, print_exception=False)
        return str(job.output_path), str(job.output_path), self._done_summary(job, lang)

    def _done_summary(self, job: Job, lang: str) -> str:
        summary = i18n.t(
            "done_summary",
            lang,
            id=job.id,
            engine=job.engine or "-",
            seconds=f"{job.seconds or 0:.1f}",
            noface=job.frames_without_face or 0,
        )
        if job.engine == PREVIEW:
            summary += f"  \n⚠️ *{i18n.t('preview_label', lang)}*"
        return summary

    @in_note("")
    def submit_single(
        self,
        audio: str | None,
        face: str | None,
        fields: Mapping[str, Any],
        request: gr.Request,
        *,
        avatar: str | None = None,
        text: str | None = None,
        voice: str | None = None,
        speech_video: str | None = None,
    ) -> tuple[str, str]:
        """The Generate button: submit, and hand the job id on (to the URL and to follow_job).
        The speech may be a video's sound track (`speech_video`) instead of an audio file."""
        if audio and speech_video:
            raise InputError(i18n.t("err_two_speeches", language(request)))
        audio = audio or speech_video
        job = self._submit_single(audio, face, fields, request, avatar=avatar, text=text, voice=voice)
        return job.id, info_note(i18n.t("note_submitted", language(request), id=job.id))

    def _submit_single(
        self,
        audio: str | None,
        face: str | None,
        fields: Mapping[str, Any],
        request: gr.Request,
        *,
        avatar: str | None,
        text: str | None,
        voice: str | None,
    ) -> Job:
        """Submit one job; `fields` are the panel's values. The speech is the audio or the typed
        text (one of them); the face is the upload or the picked avatar."""
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
        return job

    @in_note(SKIP, SKIP, SKIP)
    def follow_job(
        self,
        job_id: str | None,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - how Gradio injects its progress
    ) -> tuple[Any, ...]:
        """Show a job's live progress, then its result (video, named download, summary, note).
        After a reload the page calls this with the id from ?job=; another tenant's id is "not
        found", like a deleted one."""
        if not job_id:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        lang = language(request)
        who = principal_of(request)
        try:
            job = self.service.get(job_id, principal=who)
        except HeygemError:
            return gr.skip(), gr.skip(), gr.skip(), error_note(i18n.t("note_not_found", lang))
        job = self._wait(job, progress, lang, who)
        if str(job.status) == "succeeded" and job.output_path is not None:
            return str(job.output_path), named_download(job), self._done_summary(job, lang), ""
        if str(job.status) == "cancelled":
            return gr.skip(), gr.skip(), gr.skip(), info_note(i18n.t("note_cancelled", lang, id=job.id))
        reason = i18n.backend_message(job.error or i18n.t(f"status_{job.status}", lang), lang)
        return (
            gr.skip(),
            gr.skip(),
            gr.skip(),
            error_note(i18n.t("note_failed", lang, id=job.id, reason=reason)),
        )

    @in_note()
    def cancel_single(self, job_id: str | None, request: gr.Request) -> str:
        """The Single tab's Cancel: a real cancel of the job the tab follows (it stays in History
        as cancelled; follow_job then reports it)."""
        lang = language(request)
        if not job_id:
            return info_note(i18n.t("note_no_job", lang))
        job = self.service.get(job_id, principal=principal_of(request))
        if job.terminal:
            return info_note(i18n.t("note_no_job", lang))
        self.service.cancel(job_id, principal=principal_of(request))
        log.info("job %s cancelled from the web UI", job_id)
        return info_note(i18n.t("note_cancelling", lang, id=job_id))

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
        speech_s = eta.speech_seconds(job) if not job.terminal else None
        fps = eta.recent_fps(self.visible_jobs(who, eta.RECENT_JOBS, 0)) if not job.terminal else None
        while not job.terminal:
            left = eta.render_seconds(job, speech_s, fps)
            if str(job.status) == "queued":
                depth = self.service.queue_depth()
                desc = i18n.t("progress_queued", lang, ahead=depth)
                if left is not None:
                    # The jobs ahead are assumed to be as long as this one: their speech is unread.
                    ahead = max(depth - 1, 0)
                    desc = i18n.t("eta_queued", lang, ahead=ahead, seconds=round(left * ahead))
                progress(0.0, desc=desc)
            else:
                desc = i18n.t(f"stage_{job.stage}", lang, default=job.stage or "")
                if left is not None:
                    desc += f" · {i18n.t('eta', lang, seconds=max(1, round(left)))}"
                progress(float(job.progress), desc=desc)
            time.sleep(POLL_S)
            job = self.service.get(job.id, principal=who)
        return job

    # --- batch ----------------------------------------------------------------------------------
    @in_note(SKIP, SKIP, SKIP, SKIP, SKIP)
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
            audio_paths = self._stage_items(folder, audios, require_video=False)
            faces = [str(path) for path in self._stage_items(folder, videos, require_video=True)]
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
        return (batch.id, *self._batch_view(batch, lang), gr.Timer(active=True), "")

    def _stage_items(self, folder: Path, paths: list[str] | None, *, require_video: bool) -> list[Path]:
        """A batch's uploads, each within the size and duration limits. A file that cannot be
        read at all is staged anyway: its item fails alone, with the reason, and the rest run."""
        staged = []
        for path in paths or []:
            try:
                staged.append(stage_upload(self.settings, folder, path, require_video=require_video))
            except LimitExceededError:
                raise
            except HeygemError as exc:
                log.info("batch upload %s is unreadable; its item will fail: %s", Path(path).name, exc)
                staged.append(stage_upload(self.settings, folder, path, require_video=None))
        return staged

    @in_note(SKIP, SKIP, SKIP, SKIP, SKIP)
    def open_batch(self, batch_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        """Show a batch (from ?batch= after a reload, or from History) on the Batch tab, live:
        table, gallery, summary, timer, the tab switch, and a note."""
        if not batch_id:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        lang = language(request)
        try:
            batch = self.service.get_batch(batch_id, principal=principal_of(request))
        except HeygemError:
            return (gr.skip(),) * 5 + (error_note(i18n.t("note_batch_not_found", lang)),)
        return (
            *self._batch_view(batch, lang),
            gr.Timer(active=not batch.finished),
            gr.Tabs(selected="batch"),
            "",
        )

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
        return gr.update(value=None, visible=False), [], ""

    def _batch_columns(self, lang: str) -> list[str]:
        keys = ("col_item", "col_audio", "col_video", "col_output", "col_status", "col_progress", "col_error")
        return [i18n.t(key, lang) for key in keys]

    def _batch_view(self, batch: Batch, lang: str) -> tuple[Any, list[Any], str]:
        """The items table (shown once there is a batch), the gallery of finished videos (each
        plays and downloads as its mp4) and the summary."""
        rows = [
            [
                (item.item_index or 0) + 1,
                Path(item.audio).name if item.audio else i18n.t("speech_text", lang),
                Path(item.video).name,
                item.result_name,
                i18n.t(f"status_{item.status}", lang),
                f"{item.progress * 100:.0f}%",
                i18n.backend_message(item.error, lang) if item.error else "",
            ]
            for item in batch.items
        ]
        gallery = [(named_download(item), item.result_name) for item in batch.succeeded if result_file(item)]
        summary = i18n.t(
            "batch_summary",
            lang,
            id=batch.id,
            done=len(batch.succeeded),
            failed=len(batch.failed),
            total=len(batch.items),
        )
        if any(item.engine == PREVIEW for item in batch.succeeded):
            summary += f"  \n⚠️ *{i18n.t('preview_label', lang)}*"
        table = pd.DataFrame(rows, columns=self._batch_columns(lang))
        return gr.update(value=table, visible=True), gallery, summary

    @in_note(SKIP)
    def batch_zip(self, batch_id: str | None, request: gr.Request) -> tuple[str, str]:
        if not batch_id:
            raise InputError(i18n.t("err_no_batch", language(request)))
        return str(self.service.batch_zip(batch_id, principal=principal_of(request))), ""

    @in_note(SKIP, SKIP, SKIP, SKIP)
    def retry_batch(self, batch_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        lang = language(request)
        if not batch_id:
            raise InputError(i18n.t("err_no_batch", lang))
        batch = self.service.retry_failed(batch_id, principal=principal_of(request))
        return (*self._batch_view(batch, lang), gr.Timer(active=True), "")

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

    def avatars(
        self,
        selected: str | None,
        single: str | None,
        batch: str | None,
        request: gr.Request,
    ) -> tuple[Any, ...]:
        """Page load, tab select and Refresh: like the timer tick, a failure keeps what is shown."""
        return self.avatars_tick(selected, single, batch, request)

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

    @in_note(SKIP, SKIP, SKIP, SKIP, SKIP, SKIP, SKIP, SKIP)
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
        return (avatar.id, avatar.name, *self.avatar_listing(avatar.id, single, batch, request), "")

    @in_note(SKIP, SKIP, SKIP)
    def avatar_select(self, ids: list[str], evt: gr.SelectData, request: gr.Request) -> tuple[Any, ...]:
        index = evt.index if isinstance(evt.index, int) else evt.index[0]
        if not ids or index >= len(ids):
            return None, "", "", ""
        avatar = self.service.get_avatar(ids[index], principal=principal_of(request))
        return avatar.id, self._avatar_details(avatar, language(request)), avatar.name, ""

    @in_note(SKIP, SKIP, SKIP, SKIP, SKIP, SKIP, SKIP, SKIP)
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
        return (avatar.id, avatar.name, *self.avatar_listing(avatar.id, single, batch, request), "")

    @in_note(SKIP, SKIP, SKIP, SKIP, SKIP, SKIP, SKIP, SKIP)
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
        note = info_note(i18n.t("avatar_deleted", lang, name=name))
        return (None, "", *self.avatar_listing(None, single, batch, request), note)

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
    @in_note(SKIP, SKIP, SKIP, SKIP, SKIP)
    def history(
        self, page: int, status: str | None, query: str | None, request: gr.Request
    ) -> tuple[Any, ...]:
        """One page of the tenant's jobs, filtered by status and a text search: page, ids,
        gallery, page label, the refresh timer (on while a listed job is queued or running), note."""
        lang = language(request)
        who = principal_of(request)
        status, query = status or "", (query or "").strip().lower()
        matched = self._filtered(who, status, query) if status or query else None
        total = len(matched) if matched is not None else self.visible_count(who)
        pages = max(1, -(-total // HISTORY_PAGE))
        page = min(max(0, int(page or 0)), pages - 1)
        if matched is None:
            shown = self.visible_jobs(who, HISTORY_PAGE, page * HISTORY_PAGE)
        else:
            shown = matched[page * HISTORY_PAGE : (page + 1) * HISTORY_PAGE]
        gallery = [(thumbnail_for(job), self._caption(job, lang)) for job in shown]
        label = i18n.t("history_page", lang, page=page + 1, pages=pages, total=total)
        live = any(not job.terminal for job in shown)
        return page, [job.id for job in shown], gallery, label, gr.Timer(active=live), ""

    def _filtered(self, who: Principal, status: str, query: str) -> list[Job]:
        """The newest HISTORY_SCAN jobs with this status whose names, inputs or text hold `query`."""
        return [
            job
            for job in self.visible_jobs(who, HISTORY_SCAN, 0)
            if (not status or str(job.status) == status) and (not query or query in searchable(job))
        ]

    def history_tick(
        self, page: int, status: str | None, query: str | None, request: gr.Request
    ) -> tuple[Any, ...]:
        """Timer tick: never raises, so one bad moment does not stop the live list."""
        try:
            return self.history(page, status, query, request)  # type: ignore[no-any-return]
        except Exception:
            log.exception("refreshing the history failed; trying again")
            return (gr.skip(),) * 4 + (gr.Timer(active=True), gr.skip())

    def _caption(self, job: Job, lang: str) -> str:
        """A tile's caption: output name, status, inputs, length, engine, batch and expiry."""
        parts = [download_name(job)[:CAPTION_NAME_CHARS], i18n.t(f"status_{job.status}", lang)]
        parts.append(inputs_text(job))
        length = media.clip_seconds(job.output_path) if result_file(job) and job.output_path else None
        if length is not None:
            parts.append(f"{length:.1f} s")
        if job.engine:
            parts.append(job.engine)
        if job.batch_id:
            parts.append(f"batch {job.batch_id[:8]}")
        expiry = self._expiry(job, lang)
        if expiry:
            parts.append(expiry)
        return " · ".join(parts)

    def _expiry(self, job: Job, lang: str) -> str:
        """When retention deletes the job (days after it finished); "" while it runs."""
        if job.finished_at is None:
            return ""
        if self.settings.retention_days <= 0:
            return i18n.t("history_kept", lang)
        expires = job.finished_at + self.settings.retention_days * SECONDS_PER_DAY
        return i18n.t("history_expires", lang, date=when(expires)[:DATE_CHARS])

    # The one place the History tab asks which jobs `who` may see.
    def visible_jobs(self, who: Principal, limit: int, offset: int) -> list[Job]:
        return self.service.list_jobs(limit=limit, offset=offset, principal=who)

    def visible_count(self, who: Principal) -> int:
        return self.service.count_jobs(principal=who)

    def history_step(
        self, page: int, step: int, status: str | None, query: str | None, request: gr.Request
    ) -> tuple[Any, ...]:
        return self.history(int(page or 0) + step, status, query, request)  # type: ignore[no-any-return]

    @in_note(SKIP, SKIP, SKIP, SKIP)
    def history_select(self, ids: list[str], evt: gr.SelectData, request: gr.Request) -> tuple[Any, ...]:
        """The picked job: id, its video, its named download, its details (inputs, options,
        batch, expiry), and a cleared note."""
        lang = language(request)
        index = evt.index if isinstance(evt.index, int) else evt.index[0]
        if not ids or index >= len(ids):
            return None, None, None, "", ""
        job = self.service.get(ids[index], principal=principal_of(request))
        return job.id, result_file(job), named_download(job), self._details(job, lang), ""

    def _details(self, job: Job, lang: str) -> str:
        lines = [
            i18n.t(
                "history_details",
                lang,
                id=job.id,
                status=i18n.t(f"status_{job.status}", lang),
                created=when(job.created_at),
                engine=job.engine or "-",
                error=i18n.backend_message(job.error, lang) if job.error else "-",
            ),
            i18n.t(
                "history_inputs",
                lang,
                audio=Path(job.audio).name if job.audio else "-",
                video=Path(job.video).name,
                text=(job.text or "-")[:DETAIL_TEXT_CHARS],
                options=", ".join(f"{key}={value}" for key, value in sorted(job.options.items())) or "-",
            ),
        ]
        if job.batch_id:
            lines.append(i18n.t("history_batch", lang, batch=job.batch_id, item=(job.item_index or 0) + 1))
        expiry = self._expiry(job, lang)
        if expiry:
            lines.append(i18n.t("history_expiry", lang, date=expiry))
        if job.engine == PREVIEW:
            lines.append(f"⚠️ *{i18n.t('preview_label', lang)}*")
        return "  \n".join(lines)

    @in_note(SKIP, SKIP, SKIP, SKIP, SKIP)
    def cancel_selected(
        self, job_id: str | None, page: int, status: str | None, query: str | None, request: gr.Request
    ) -> tuple[Any, ...]:
        """History's Cancel: a real cancel; the job stays listed, as cancelled."""
        lang = language(request)
        if not job_id:
            raise InputError(i18n.t("err_no_selection", lang))
        job = self.service.get(job_id, principal=principal_of(request))
        if job.terminal:
            return (*self.history(page, status, query, request)[:-1], info_note(i18n.t("note_no_job", lang)))
        self.service.cancel(job_id, principal=principal_of(request))
        log.info("job %s cancelled from the History tab", job_id)
        listing = self.history(page, status, query, request)[:-1]
        return (*listing, info_note(i18n.t("note_cancelling", lang, id=job_id)))

    @in_note(SKIP, SKIP)
    def ask_delete(self, job_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        """Delete selected: first ask, naming the job (the confirm row and its text)."""
        lang = language(request)
        if not job_id:
            raise InputError(i18n.t("err_no_selection", lang))
        return gr.update(visible=True), i18n.t("history_confirm_one", lang, id=job_id), ""

    @in_note(SKIP, SKIP, SKIP, SKIP, SKIP, SKIP, SKIP, SKIP, SKIP, SKIP)
    def delete_selected(
        self, job_id: str | None, page: int, status: str | None, query: str | None, request: gr.Request
    ) -> tuple[Any, ...]:
        """Delete the confirmed job (a running one is cancelled first), report it and clear the
        selection: selected, video, download, details, confirm row, listing, note."""
        lang = language(request)
        if not job_id:
            raise InputError(i18n.t("err_no_selection", lang))
        self.service.delete(job_id, principal=principal_of(request))
        log.info("job %s deleted from the web UI", job_id)
        listing = self.history(page, status, query, request)[:-1]
        note = info_note(i18n.t("history_deleted", lang, id=job_id))
        return (None, None, None, "", gr.update(visible=False), *listing, note)

    @in_note(SKIP, SKIP, SKIP, SKIP, SKIP, SKIP, SKIP, SKIP, SKIP, SKIP)
    def delete_all(self, status: str | None, query: str | None, request: gr.Request) -> tuple[Any, ...]:
        lang = language(request)
        removed = self.service.delete_all(principal=principal_of(request))
        log.info("%d jobs deleted from the web UI", removed)
        listing = self.history(0, status, query, request)[:-1]
        note = info_note(i18n.t("history_deleted_all", lang, count=removed))
        return (None, None, None, "", gr.update(visible=False), *listing, note)

    @in_note(SKIP, SKIP, SKIP, SKIP, SKIP, SKIP)
    def open_job_batch(self, job_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        """History's "Open its batch": the Batch tab follows the selected job's batch (batch id,
        table, gallery, summary, timer, tab switch), then the note."""
        lang = language(request)
        if not job_id:
            raise InputError(i18n.t("err_no_selection", lang))
        job = self.service.get(job_id, principal=principal_of(request))
        if not job.batch_id:
            raise InputError(i18n.t("err_not_batch", lang))
        opened = self.open_batch(job.batch_id, request)
        return (job.batch_id, *opened)

    @in_note(SKIP, SKIP, SKIP, SKIP, SKIP, SKIP, SKIP)
    def reuse_inputs(self, job_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        """Put the selected job's inputs on the Single tab: tab switch, text, voice, avatar, audio,
        face, the Single tab's note, and History's note."""
        lang = language(request)
        if not job_id:
            raise InputError(i18n.t("err_no_selection", lang))
        job = self.service.get(job_id, principal=principal_of(request))
        avatar = job.video[len(AVATAR_PREFIX) :] if job.video.startswith(AVATAR_PREFIX) else ""
        audio = reusable_copy(job.audio) if job.audio else None
        face = None if avatar else reusable_copy(job.video)
        missing = (job.audio and audio is None) or (not avatar and face is None)
        note = i18n.t("reuse_missing" if missing else "reused", lang, id=job.id)
        return (
            gr.Tabs(selected="single"),
            job.text or "",
            job.voice or gr.skip(),
            avatar,
            audio,
            face,
            info_note(note),
            "",
        )


def searchable(job: Job) -> str:
    """What a History search looks in: id, output name, input names, text, status, engine, batch."""
    fields = (
        job.id,
        download_name(job),
        job.audio,
        job.video,
        job.text,
        str(job.status),
        job.engine,
        job.batch_id,
    )
    return " ".join(field for field in fields if field).lower()


def inputs_text(job: Job) -> str:
    speech = Path(job.audio).name if job.audio else f"“{(job.text or '')[:CAPTION_NAME_CHARS]}”"
    return f"{speech} + {Path(job.video).name}"


def reusable_copy(ref: str) -> str | None:
    """A copy of a job's local input in Gradio's cache folder (swept with the rest of it), so the
    page may show it; None when the file is gone or remote. The job was read through the
    tenant's own principal first."""
    source = Path(ref)
    if not source.is_file():
        return None
    folder = Path(gradio_upload_folder()) / uuid.uuid4().hex
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.name
    shutil.copyfile(source, target)
    return str(target)


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
        # Values stay the API's words; the labels are translated where a translation exists.
        labels = [
            (t(f"option_{choice}") if f"option_{choice}" in i18n.EN else choice, choice)
            for choice in spec.choices
        ]
        return gr.Radio(labels, value=default, label=t(name), info=info)
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


@dataclass
class SingleTab:
    """The Single tab's parts that other tabs and the page load write to."""

    job: gr.Textbox
    status: gr.Markdown
    video: gr.Video
    download: gr.File
    summary: gr.Markdown
    avatar: gr.Dropdown
    audio: gr.Audio
    face: gr.File
    text: gr.Textbox
    voice: gr.Dropdown
    banner: gr.Markdown

    @property
    def result(self) -> list[Any]:
        return [self.video, self.download, self.summary, self.status]


@dataclass
class BatchTab:
    batch: gr.Textbox
    view: list[Any]  # table, gallery, summary
    timer: gr.Timer
    note: gr.Markdown
    avatar: gr.Dropdown
    banner: gr.Markdown


def _set_url_js(key: str, other: str) -> str:
    """Put the id this tab now follows in the address (?job= or ?batch=), so a reload returns."""
    return f"""(value) => {{
  if (value) {{
    const url = new URL(window.location.href);
    url.searchParams.set("{key}", value);
    url.searchParams.delete("{other}");
    window.history.replaceState(null, "", url);
  }}
  return [];
}}"""


def _preview_banner(t: Translate, elem_id: str) -> gr.Markdown:
    """Shown while the weight-free preview engine runs (the page load and banner timer decide)."""
    return gr.Markdown(
        t("preview_banner"), visible=False, elem_id=elem_id, elem_classes="heygem-banner-preview"
    )


def _single_tab(t: Translate, h: Handlers) -> SingleTab:
    banner = _preview_banner(t, "single-preview-banner")
    gr.Markdown(
        i18n.t("limits", mb=h.settings.max_upload_mb, seconds=h.settings.max_duration_s),
        elem_id="single-limits",
    )
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
            speech_video = gr.File(
                file_types=VIDEO_TYPES,
                type="filepath",
                label=t("speech_video"),
                height=FACE_UPLOAD_HEIGHT,
                elem_id="single-speech-video",
            )
            speech_note = gr.Markdown(elem_id="speech-check")
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
                cancel = gr.Button(t("cancel_job"), variant="stop", elem_id="single-cancel")
            # The /generate API (submit and wait, as before): the button itself follows the job.
            api_generate = gr.Button(visible=False, elem_id="generate-api")
        with gr.Column():
            status = gr.Markdown(elem_id="single-status")
            preview = gr.Image(
                label=t("face_preview"), interactive=False, height=PREVIEW_HEIGHT, elem_id="face-preview"
            )
            face_note = gr.Markdown(elem_id="face-note")
            video = gr.Video(
                label=t("result"), interactive=False, height=PREVIEW_HEIGHT, elem_id="result-video"
            )
            download = gr.File(label=t("download"), interactive=False, elem_id="result-file")
            summary = gr.Markdown(elem_id="result-summary")
    job = gr.Textbox(visible="hidden", elem_id="single-job")
    inputs_kwargs: dict[str, Any] = {  # options right after audio and face, new inputs last (see /generate)
        "audio": audio,
        "face": face,
        **panel.kwargs,
        "avatar": avatar,
        "text": text,
        "voice": voice,
    }

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

    def submit(
        request: gr.Request,
        *,
        avatar: str | None = None,
        text: str | None = None,
        voice: str | None = None,
        speech_video: str | None = None,
        **values: Any,
    ) -> tuple[str, str]:
        return h.submit_single(  # type: ignore[no-any-return]
            values.pop("audio"),
            values.pop("face"),
            panel.fields(values),
            request,
            avatar=avatar,
            text=text,
            voice=voice,
            speech_video=speech_video,
        )

    tab = SingleTab(job, status, video, download, summary, avatar, audio, face, text, voice, banner)
    check.click(h.check_face_noted, [face], [preview, face_note], api_visibility="private")
    api_check = gr.Button(visible=False, elem_id="check-face-api")  # the /check_face API, as before
    api_check.click(h.check_face, [face], [preview, face_note], api_name="check_face")
    # The face is checked as soon as it is uploaded, and the speech as soon as it is given.
    face.upload(h.check_face_noted, [face], [preview, face_note], api_visibility="private")
    for speech in (audio, speech_video):
        speech.change(
            h.check_speech, [speech], [speech_note], api_visibility="private", show_progress="hidden"
        )
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
    generate.click(None, js=SCROLL_TO_PROGRESS_JS)
    submitted = generate.click(
        submit,
        None,
        [job, status],
        api_visibility="private",
        inputs_kwargs={**inputs_kwargs, "speech_video": speech_video},
    )
    submitted.then(None, [job], None, js=_set_url_js("job", "batch")).then(
        h.follow_job, [job], tab.result, api_visibility="private"
    )
    cancel.click(h.cancel_single, [job], [status], api_visibility="private")
    api_generate.click(
        run_generate, None, [video, download, summary], api_name="generate", inputs_kwargs=inputs_kwargs
    )
    return tab


def _batch_tab(t: Translate, h: Handlers) -> BatchTab:
    batch_id = gr.Textbox(visible="hidden", elem_id="batch-id")
    timer = gr.Timer(BATCH_REFRESH_S, active=False)
    banner = _preview_banner(t, "batch-preview-banner")
    gr.Markdown(t("batch_help"))
    gr.Markdown(i18n.t("limits", mb=h.settings.max_upload_mb, seconds=h.settings.max_duration_s))
    with gr.Row():
        audios = gr.File(
            file_count="multiple", file_types=SPEECH_TYPES, label=t("batch_audio"), elem_id="batch-audio"
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
    note = gr.Markdown(elem_id="batch-note")
    summary = gr.Markdown(elem_id="batch-summary")
    # Hidden until there is a batch: an empty table would show made-up headers.
    table = gr.Dataframe(
        label=t("batch_table"), interactive=False, wrap=True, visible=False, elem_id="batch-table"
    )
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
        return h.submit_batch(  # type: ignore[no-any-return]
            values.pop("audios"),
            values.pop("videos"),
            values.pop("manifest"),
            panel.fields(values),
            request,
            avatar=avatar,
            texts=texts or "",
        )

    submitted = run.click(
        submit_batch,
        None,
        [batch_id, *view, timer, note],
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
    submitted.then(None, [batch_id], None, js=_set_url_js("batch", "job"))
    timer.tick(h.refresh_batch, [batch_id], [*view, timer], api_visibility="private", show_progress="hidden")
    zip_button.click(h.batch_zip, [batch_id], [zip_file, note], api_name="batch_zip")
    retry.click(h.retry_batch, [batch_id], [*view, timer, note], api_name="batch_retry")
    return BatchTab(batch_id, view, timer, note, avatar, banner)


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
            note = gr.Markdown(elem_id="avatar-note")
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
    changed = [selected, new_name, *listing, note]
    create.click(
        h.create_avatar, [upload, name, voice, voice_text, *pickers], changed, api_visibility="private"
    )
    gallery.select(h.avatar_select, [ids], [selected, details, new_name, note], api_visibility="private")
    rename.click(h.rename_avatar, [selected, new_name, *pickers], changed, api_visibility="private")
    delete.click(h.delete_avatar, [selected, *pickers], changed, api_visibility="private")
    refresh.click(h.avatars, current, listing, api_visibility="private")
    timer.tick(h.avatars_tick, current, listing, api_visibility="private", show_progress="hidden")

    def hook(trigger: Any) -> None:
        trigger(h.avatars, current, listing, api_visibility="private", show_progress="hidden")

    return hook


@dataclass
class HistoryTab:
    filters: list[Any]  # page, status, search: the inputs of every listing
    listing: list[Any]  # page, ids, gallery, page label, refresh timer
    note: gr.Markdown
    selected: gr.State
    open_batch: gr.Button
    reuse: gr.Button


def _status_filter(t: Translate) -> gr.Radio:
    choices = [(t("status_all"), ""), *((t(f"status_{status}"), status) for status in JOB_STATUSES)]
    return gr.Radio(choices, value="", label=t("history_status"), elem_id="history-status")


def _history_tab(t: Translate, h: Handlers) -> HistoryTab:
    page = gr.State(0)
    ids = gr.State([])
    selected = gr.State(None)
    timer = gr.Timer(HISTORY_REFRESH_S, active=False)
    with gr.Row():
        search = gr.Textbox(label=t("history_search"), elem_id="history-search", scale=2)
        status = _status_filter(t)
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
    note = gr.Markdown(elem_id="history-note")
    with gr.Row():
        with gr.Column():
            details = gr.Markdown(elem_id="history-details")
            with gr.Row():
                cancel_job = gr.Button(t("history_cancel"), size="sm", elem_id="history-cancel")
                reuse = gr.Button(t("history_reuse"), size="sm", elem_id="history-reuse")
                open_batch = gr.Button(t("history_open_batch"), size="sm", elem_id="history-open-batch")
            with gr.Row():
                delete = gr.Button(t("history_delete"), variant="stop", size="sm", elem_id="history-delete")
                delete_all = gr.Button(
                    t("history_delete_all"), variant="stop", size="sm", elem_id="history-delete-all"
                )
            with gr.Row(visible=False) as confirm_one_row:
                confirm_one_text = gr.Markdown(elem_id="history-confirm-one-text")
                confirm_one = gr.Button(
                    t("history_confirm_yes_one"), variant="stop", size="sm", elem_id="history-confirm-one-yes"
                )
                keep_one = gr.Button(t("history_confirm_no"), size="sm", elem_id="history-confirm-one-no")
            with gr.Row(visible=False) as confirm_row:
                gr.Markdown(t("history_confirm"))
                confirm = gr.Button(
                    t("history_confirm_yes"), variant="stop", size="sm", elem_id="history-confirm-yes"
                )
                keep = gr.Button(t("history_confirm_no"), size="sm", elem_id="history-confirm-no")
        with gr.Column():
            video = gr.Video(
                label=t("history_preview"), interactive=False, height=PREVIEW_HEIGHT, elem_id="history-video"
            )
            download = gr.File(label=t("download"), interactive=False, elem_id="history-file")
    filters = [page, status, search]
    listing = [page, ids, gallery, page_label, timer]
    shown = [*listing, note]
    cleared = [selected, video, download, details]
    private: dict[str, Any] = {"api_visibility": "private"}
    refresh.click(h.history, filters, shown, **private)
    search.submit(h.history, filters, shown, **private)
    status.change(h.history, filters, shown, **private)
    timer.tick(h.history_tick, filters, shown, show_progress="hidden", **private)
    prev_page.click(_stepper(h, -1), filters, shown, **private)
    next_page.click(_stepper(h, 1), filters, shown, **private)
    gallery.select(h.history_select, [ids], [*cleared, note], **private)
    cancel_job.click(h.cancel_selected, [selected, *filters], shown, **private)
    delete.click(h.ask_delete, [selected], [confirm_one_row, confirm_one_text, note], **private)
    keep_one.click(lambda: gr.update(visible=False), None, [confirm_one_row], **private)
    confirm_one.click(h.delete_selected, [selected, *filters], [*cleared, confirm_one_row, *shown], **private)
    delete_all.click(lambda: gr.update(visible=True), None, [confirm_row], **private)
    keep.click(lambda: gr.update(visible=False), None, [confirm_row], **private)
    confirm.click(h.delete_all, filters[1:], [*cleared, confirm_row, *shown], **private)
    return HistoryTab(filters, listing, note, selected, open_batch, reuse)


def _stepper(h: Handlers, step: int) -> Callable[..., tuple[Any, ...]]:
    def step_page(page: int, status: str | None, query: str | None, request: gr.Request) -> tuple[Any, ...]:
        return h.history_step(page, step, status, query, request)

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
    refresh.click(h.system, None, [status, logs], api_visibility="private").then(None, js=LOG_TO_END_JS)
    return status, logs


def build_blocks(settings: Settings, service: JobService, log_lines: Callable[[int], list[str]]) -> gr.Blocks:
    translator = make_i18n()

    def t(key: str) -> I18nData:
        return translator(i18n.BROWSER_PREFIX + key)

    h = Handlers(settings, service, log_lines)
    demo = gr.Blocks(title="heygem", analytics_enabled=False, delete_cache=(CACHE_SWEEP_S, CACHE_MAX_AGE_S))
    with demo:
        gr.Markdown(t("title"))
        gr.Markdown(f"[{i18n.t('api_docs')}](docs)", elem_id="api-docs-link")
        banner = gr.Markdown(t("banner_starting"), elem_id="heygem-banner")
        banner_timer = gr.Timer(BANNER_REFRESH_S)
        with gr.Tabs() as tabs:
            with gr.Tab(t("tab_single"), id="single") as single_tab:
                single = _single_tab(t, h)
            with gr.Tab(t("tab_batch"), id="batch") as batch_tab:
                batch = _batch_tab(t, h)
            with gr.Tab(t("tab_avatars"), id="avatars", elem_id="avatars-tab") as avatars_tab:
                show_avatars = _avatars_tab(t, h, [single.avatar, batch.avatar])
            with gr.Tab(t("tab_history"), id="history") as history_tab:
                history = _history_tab(t, h)
            with gr.Tab(t("tab_system"), id="system") as system_tab:
                system_view = _system_tab(t, h)
        system_timer = gr.Timer(SYSTEM_REFRESH_S)
        banners = [banner, banner_timer, single.banner, batch.banner]
        for trigger in (banner_timer.tick, demo.load):
            trigger(h.banner, None, banners, api_visibility="private", show_progress="hidden")
        for trigger in (demo.load, single_tab.select, batch_tab.select, avatars_tab.select):
            show_avatars(trigger)
        shown = [*history.listing, history.note]
        history_tab.select(h.history, history.filters, shown, api_visibility="private")
        demo.load(h.history, history.filters, shown, api_visibility="private", show_progress="hidden")
        system_tab.select(h.system, None, list(system_view), api_visibility="private").then(
            None, js=LOG_TO_END_JS
        )
        system_timer.tick(h.system, None, list(system_view), api_visibility="private", show_progress="hidden")
        read = demo.load(None, None, [single.job, batch.batch], js=READ_URL_JS)
        read.then(h.follow_job, [single.job], single.result, api_visibility="private")
        batch_view = [*batch.view, batch.timer, tabs, batch.note]
        read.then(h.open_batch, [batch.batch], batch_view, api_visibility="private")
        history.open_batch.click(
            h.open_job_batch,
            [history.selected],
            [batch.batch, *batch_view[:-1], history.note],
            api_visibility="private",
        ).then(None, [batch.batch], None, js=_set_url_js("batch", "job"))
        history.reuse.click(
            h.reuse_inputs,
            [history.selected],
            [
                tabs,
                single.text,
                single.voice,
                single.avatar,
                single.audio,
                single.face,
                single.status,
                history.note,
            ],
            api_visibility="private",
        )
        demo.load(None, js=PAGE_JS)
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
        footer_links=[],  # "Use via API" is a link to /docs on the page instead
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
