"""Inputs more than one tab builds: the options panel, the avatar picker, speech notes, the
preview-engine banner and the address (?job=, ?batch=) script."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gradio as gr
from gradio.components import Component
from gradio.i18n import I18nData

from heygem.engine.api import (
    OptionSpec,
    option_default,
    option_specs,
    option_type,
)
from heygem.settings import Settings
from heygem.speech import ESPEAK, make_provider
from heygem.web import i18n
from heygem.web.ui.common import PANEL_ROWS, PART_PREFIX, Translate


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


def avatar_picker(t: Translate, elem_id: str) -> gr.Dropdown:
    """Filled with the tenant's ready avatars when the page loads and whenever they change."""
    return gr.Dropdown(
        choices=[("-", "")], value="", label=t("avatar_pick"), info=t("avatar_pick_info"), elem_id=elem_id
    )


def speech_provider_note(t: Translate, settings: Settings) -> gr.Markdown:
    """The built-in voice is robotic: say so, and where the better ones are configured."""
    if settings.tts_provider == ESPEAK:
        return gr.Markdown(t("speech_robotic"), elem_id="speech-note")
    return gr.Markdown(i18n.t("speech_provider", provider=settings.tts_provider), elem_id="speech-note")


def voice_choices(settings: Settings) -> list[str]:
    """The provider's known voices (typing another name is allowed: espeak-ng knows many)."""
    voices = list(make_provider(settings).voices())
    if settings.tts_voice and settings.tts_voice not in voices:
        voices.insert(0, settings.tts_voice)
    return voices


def set_url_js(key: str, other: str) -> str:
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


def preview_banner(t: Translate, elem_id: str) -> gr.Markdown:
    """Shown while the weight-free preview engine runs (the page load and banner timer decide)."""
    return gr.Markdown(
        t("preview_banner"), visible=False, elem_id=elem_id, elem_classes="heygem-banner-preview"
    )
