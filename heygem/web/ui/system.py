"""The System tab and the banners over the page: engine, queue, the service log (admins)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from heygem.engine.api import (
    PREVIEW,
)
from heygem.jobs.tenancy import Principal
from heygem.web import i18n
from heygem.web.identity import principal_of
from heygem.web.ui.base import HandlerBase
from heygem.web.ui.common import LOG_LINES, LOG_TO_END_JS, Translate, language


class SystemHandlers(HandlerBase):
    """The loading and preview-engine banners and the System tab."""

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


def build_system_tab(t: Translate, h: SystemHandlers) -> tuple[gr.Markdown, gr.Textbox]:
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
