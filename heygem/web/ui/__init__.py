"""The Gradio Blocks page: Single, Batch, Avatars, History and System tabs. The only package
importing gradio (with web.i18n).

A thin adapter over JobService: handlers copy uploads into the inputs folder, submit jobs and
follow them; they never run the model. Static text is translated in the browser (gr.I18n); text
made at run time (progress, status, errors) uses the language of the request's Accept-Language
header. One module per tab (its handlers and its layout), what they share in `common` and
`widgets`, and the page that joins them in `page`.
"""

from heygem.web.ui.common import build_options, download_name, named_download, pair_texts, user_errors
from heygem.web.ui.page import Handlers, build_blocks, make_i18n, mount_ui
from heygem.web.ui.widgets import OptionsPanel

__all__ = [
    "Handlers",
    "OptionsPanel",
    "build_blocks",
    "build_options",
    "download_name",
    "make_i18n",
    "mount_ui",
    "named_download",
    "pair_texts",
    "user_errors",
]
