"""The Batch tab: many jobs at once (pairs, lines of text, a manifest); items fail alone; the
batch follows the address (?batch=), with its table, gallery, ZIP and Retry failed."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from heygem.engine.api import (
    PREVIEW,
)
from heygem.errors import HeygemError, InputError, LimitExceededError
from heygem.jobs.records import Batch
from heygem.web import batching, i18n
from heygem.web.identity import principal_of
from heygem.web.ui.base import HandlerBase
from heygem.web.ui.common import (
    BATCH_REFRESH_S,
    FACE_TYPES,
    GALLERY_COLUMNS,
    GALLERY_HEIGHT,
    MANIFEST_TYPES,
    SKIP,
    SPEECH_LINES,
    SPEECH_TYPES,
    Translate,
    avatar_reference,
    build_options,
    error_note,
    in_note,
    language,
    named_download,
    pair_texts,
    stage_upload,
    staging,
)
from heygem.web.ui.widgets import OptionsPanel, avatar_picker, preview_banner, set_url_js

log = logging.getLogger(__name__)


class BatchHandlers(HandlerBase):
    """Run, follow, reopen, ZIP and retry a batch."""

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
        downloads = ((named_download(item, self.settings), item.result_name) for item in batch.succeeded)
        gallery = [(path, name) for path, name in downloads if path]
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


@dataclass
class BatchTab:
    batch: gr.Textbox
    view: list[Any]  # table, gallery, summary
    timer: gr.Timer
    note: gr.Markdown
    avatar: gr.Dropdown
    banner: gr.Markdown


def build_batch_tab(t: Translate, h: BatchHandlers) -> BatchTab:
    batch_id = gr.Textbox(visible="hidden", elem_id="batch-id")
    timer = gr.Timer(BATCH_REFRESH_S, active=False)
    banner = preview_banner(t, "batch-preview-banner")
    gr.Markdown(t("batch_help"))
    gr.Markdown(i18n.t("limits", mb=h.settings.max_upload_mb, seconds=h.settings.max_duration_s))
    with gr.Row():
        audios = gr.File(
            file_count="multiple", file_types=SPEECH_TYPES, label=t("batch_audio"), elem_id="batch-audio"
        )
        videos = gr.File(
            file_count="multiple", file_types=FACE_TYPES, label=t("batch_videos"), elem_id="batch-videos"
        )
        avatar = avatar_picker(t, "batch-avatar")
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
    submitted.then(None, [batch_id], None, js=set_url_js("batch", "job"))
    timer.tick(h.refresh_batch, [batch_id], [*view, timer], api_visibility="private", show_progress="hidden")
    zip_button.click(h.batch_zip, [batch_id], [zip_file, note], api_name="batch_zip")
    retry.click(h.retry_batch, [batch_id], [*view, timer, note], api_name="batch_retry")
    return BatchTab(batch_id, view, timer, note, avatar, banner)
