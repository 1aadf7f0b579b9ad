"""The whole page: every tab's handlers as one object, the Blocks, and mounting it behind the
identity gate."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import gradio as gr
from fastapi import FastAPI
from gradio.i18n import I18nData

from heygem.jobs.api import JobService
from heygem.settings import Settings
from heygem.web import i18n
from heygem.web.identity import Identity, gradio_user
from heygem.web.ui.avatars import AvatarHandlers, build_avatars_tab
from heygem.web.ui.batch import build_batch_tab
from heygem.web.ui.common import (
    BANNER_REFRESH_S,
    CACHE_MAX_AGE_S,
    CACHE_SWEEP_S,
    CSS,
    LOG_TO_END_JS,
    PAGE_JS,
    READ_URL_JS,
    SYSTEM_REFRESH_S,
    UI_CONCURRENCY,
    USER_ROUTE,
)
from heygem.web.ui.history import HistoryHandlers, build_history_tab
from heygem.web.ui.single import SingleHandlers, build_single_tab
from heygem.web.ui.system import SystemHandlers, build_system_tab
from heygem.web.ui.widgets import set_url_js

if TYPE_CHECKING:
    from heygem.web.server import LogBuffer


class Handlers(SystemHandlers, SingleHandlers, HistoryHandlers, AvatarHandlers):
    """Everything the page does, as plain methods over the settings and the job service."""


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
                single = build_single_tab(t, h)
            with gr.Tab(t("tab_batch"), id="batch") as batch_tab:
                batch = build_batch_tab(t, h)
            with gr.Tab(t("tab_avatars"), id="avatars", elem_id="avatars-tab") as avatars_tab:
                show_avatars = build_avatars_tab(t, h, [single.avatar, batch.avatar])
            with gr.Tab(t("tab_history"), id="history") as history_tab:
                history = build_history_tab(t, h)
            with gr.Tab(t("tab_system"), id="system") as system_tab:
                system_view = build_system_tab(t, h)
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
        ).then(None, [batch.batch], None, js=set_url_js("batch", "job"))
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
