"""The History tab: the tenant's jobs, searched and filtered, updating while they run; details,
cancel, delete (confirmed), reuse the inputs, reopen the batch."""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder as gradio_upload_folder

from heygem.engine.api import (
    PREVIEW,
)
from heygem.errors import InputError
from heygem.jobs.avatars import AVATAR_PREFIX
from heygem.jobs.records import Job
from heygem.jobs.tenancy import Principal
from heygem.web import i18n, media
from heygem.web.identity import principal_of
from heygem.web.ui.batch import BatchHandlers
from heygem.web.ui.common import (
    CAPTION_NAME_CHARS,
    DATE_CHARS,
    DETAIL_TEXT_CHARS,
    GALLERY_COLUMNS,
    GALLERY_HEIGHT,
    HISTORY_PAGE,
    HISTORY_REFRESH_S,
    HISTORY_SCAN,
    JOB_STATUSES,
    PREVIEW_HEIGHT,
    SECONDS_PER_DAY,
    SKIP,
    Translate,
    download_name,
    in_note,
    info_note,
    language,
    named_download,
    playable_result,
    result_file,
    thumbnail_for,
    when,
)

log = logging.getLogger(__name__)


class HistoryHandlers(BatchHandlers):
    """History's listing and its actions (reopening a batch is the Batch tab's view)."""

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
        return (
            job.id,
            playable_result(job, self.settings),
            named_download(job, self.settings),
            self._details(job, lang),
            "",
        )

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


def build_history_tab(t: Translate, h: HistoryHandlers) -> HistoryTab:
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


def _stepper(h: HistoryHandlers, step: int) -> Callable[..., tuple[Any, ...]]:
    def step_page(page: int, status: str | None, query: str | None, request: gr.Request) -> tuple[Any, ...]:
        return h.history_step(page, step, status, query, request)

    return step_page
