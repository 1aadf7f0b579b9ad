"""The Single tab: one job from speech (audio, a video's sound or text) and a face; it follows the
job in the address (?job=), shows live progress with an ETA, and cancels."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from heygem.engine.api import (
    PREVIEW,
)
from heygem.errors import HeygemError, InputError
from heygem.jobs.records import Job
from heygem.jobs.tenancy import Principal
from heygem.web import eta, i18n, media
from heygem.web.identity import principal_of
from heygem.web.ui.base import HandlerBase
from heygem.web.ui.common import (
    FACE_TYPES,
    FACE_UPLOAD_HEIGHT,
    NEAREST_FACE,
    POLL_S,
    PREVIEW_HEIGHT,
    SCROLL_TO_PROGRESS_JS,
    SHORT_SPEECH_S,
    SILENT_LEVEL,
    SKIP,
    SPEECH_LINES,
    VIDEO_TYPES,
    Translate,
    avatar_picture,
    avatar_reference,
    build_options,
    error_note,
    error_text,
    in_note,
    info_note,
    language,
    named_download,
    stage_upload,
    staging,
    user_errors,
    wav_samples,
)
from heygem.web.ui.widgets import (
    OptionsPanel,
    avatar_picker,
    preview_banner,
    set_url_js,
    speech_provider_note,
    voice_choices,
)

log = logging.getLogger(__name__)


class SingleHandlers(HandlerBase):
    """Check face, check speech, Generate (submit, follow), Cancel, Hear it."""

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
            seconds, level = media.speech_level(Path(audio), self.settings.max_duration_s)
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
            return str(job.output_path), named_download(job, self.settings), self._done_summary(job, lang), ""
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


def build_single_tab(t: Translate, h: SingleHandlers) -> SingleTab:
    banner = preview_banner(t, "single-preview-banner")
    gr.Markdown(
        i18n.t("limits", mb=h.settings.max_upload_mb, seconds=h.settings.max_duration_s),
        elem_id="single-limits",
    )
    with gr.Row():
        with gr.Column():
            with gr.Row():
                avatar = avatar_picker(t, "single-avatar")
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
                    voice_choices(h.settings),
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
            speech_provider_note(t, h.settings)
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
    submitted.then(None, [job], None, js=set_url_js("job", "batch")).then(
        h.follow_job, [job], tab.result, api_visibility="private"
    )
    cancel.click(h.cancel_single, [job], [status], api_visibility="private")
    api_generate.click(
        run_generate, None, [video, download, summary], api_name="generate", inputs_kwargs=inputs_kwargs
    )
    return tab
