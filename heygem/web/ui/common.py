"""What the page's parts share: constants, the error notes, staging uploads, options from the
panel, result files and their download names. No layout and no handlers."""

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
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import gradio as gr
import numpy as np
from gradio.i18n import I18nData
from PIL import Image

from heygem.engine.api import (
    FaceChoice,
    OptionSpec,
    option_default,
    option_specs,
    option_type,
)
from heygem.errors import HeygemError, InputError, LimitExceededError
from heygem.jobs import fleetfiles
from heygem.jobs.avatars import AVATAR_PREFIX, Avatar
from heygem.jobs.manifest import ref_stem
from heygem.jobs.records import Job, JobStatus
from heygem.settings import Settings
from heygem.storage.paths import free_name, safe_file_name
from heygem.web import i18n, media
from heygem.web.http import Fault, classify, one_line

log = logging.getLogger(__name__)


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


def language(request: gr.Request | None) -> str:
    header = request.headers.get("accept-language", "") if request is not None else ""
    return i18n.pick_language(header)


def request_in(args: tuple[object, ...], kwargs: dict[str, object]) -> gr.Request | None:
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
            lang = language(request_in(args, kwargs))
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
                lang = language(request_in(args, kwargs))
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
    """The result if this instance has it (listings: nothing is fetched for a tile)."""
    if str(job.status) == "succeeded" and job.output_path is not None and job.output_path.exists():
        return str(job.output_path)
    return None


def playable_result(job: Job, settings: Settings) -> str | None:
    """The result to play or download here: this instance's file, or (a fleet: another instance
    made it) a copy of the published object fetched once."""
    path = fleetfiles.local_result(job, settings)
    return str(path) if path is not None else None


def download_name(job: Job) -> str:
    """What a result is saved as: its output name, or its inputs' names (face, then speech)."""
    if job.output_name:
        return job.output_name
    speech = ref_stem(job.audio) if job.audio else "text"
    return f"{ref_stem(job.video)}_{speech}.mp4"


def named_download(job: Job, settings: Settings) -> str | None:
    """The result under its download name: a hard link beside it in the job's own output folder
    (deleting the job removes both); the result itself when linking is impossible."""
    path = playable_result(job, settings)
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


def picker_update(ready: list[tuple[str, str]], current: str | None, lang: str) -> dict[str, Any]:
    """An avatar picker's choices (none, then the ready avatars by name), keeping the current
    choice while it is still there."""
    ids = {avatar_id for _, avatar_id in ready}
    choices = [(i18n.t("avatar_none", lang), ""), *ready]
    return gr.update(choices=choices, value=current if current in ids else "")


def avatar_caption(avatar: Avatar, lang: str) -> str:
    return f"{avatar.name} · {i18n.t(f'avatar_status_{avatar.status}', lang)}"
