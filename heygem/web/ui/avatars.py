"""The Avatars tab: saved presenters, made once and picked on the Single and Batch tabs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

from heygem.errors import InputError
from heygem.jobs.avatars import PREPARING, READY, Avatar
from heygem.web import i18n
from heygem.web.identity import principal_of
from heygem.web.ui.base import HandlerBase
from heygem.web.ui.common import (
    AVATAR_LISTING,
    AVATAR_REFRESH_S,
    FACE_TYPES,
    GALLERY_HEIGHT,
    SKIP,
    Translate,
    avatar_caption,
    avatar_picture,
    in_note,
    info_note,
    language,
    picker_update,
    stage_upload,
    staging,
    when,
)

log = logging.getLogger(__name__)


class AvatarHandlers(HandlerBase):
    """Create, list, select, rename and delete avatars."""

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
            picker_update(ready, single, lang),
            picker_update(ready, batch, lang),
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
        avatar_id = _selected(avatar_id, lang)
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
        avatar_id = _selected(avatar_id, lang)
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


def build_avatars_tab(t: Translate, h: AvatarHandlers, pickers: list[gr.Dropdown]) -> Callable[[Any], None]:
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


def _selected(avatar_id: str | None, lang: str) -> str:
    """The avatar a rename or delete acts on; a one-line error when none is selected."""
    if not avatar_id:
        raise InputError(i18n.t("err_no_avatar_selected", lang))
    return avatar_id
