"""OpenAI-compatible speech servers: POST <url>/v1/audio/speech.

Request: JSON {model, voice, input, response_format: "wav"}, with "Authorization: Bearer <key>"
when a key is set. Response: the audio bytes. Many self-hosted servers speak this protocol
(OpenAI itself, and local servers that imitate it), each with its own voice names; any plain
voice name is passed through.
"""

from __future__ import annotations

import logging
import urllib.parse
from pathlib import Path

from heygem.speech.api import OPENAI, VoiceReference
from heygem.speech.http import base_url, post_json

log = logging.getLogger("heygem.speech.openai")

SPEECH_PATH = "/v1/audio/speech"
VERSION_PREFIX = "/v1"
RESPONSE_FORMAT = "wav"
SOURCE = "openai speech server"
# OpenAI's own voices; the first is the default. Compatible servers accept their own names too.
VOICES = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "nova",
    "onyx",
    "sage",
    "shimmer",
)


class OpenAISpeechProvider:
    def __init__(self, url: str, model: str, api_key: str, timeout_s: float) -> None:
        self.endpoint = speech_endpoint(base_url(url, SOURCE))
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s

    @property
    def name(self) -> str:
        return OPENAI

    def voices(self) -> tuple[str, ...]:
        return VOICES

    def synthesize(self, text: str, voice: str, reference: VoiceReference | None, out_path: Path) -> Path:
        if reference is not None:
            log.info("the OpenAI speech protocol cannot clone a voice; the reference is ignored")
        payload: dict[str, object] = {
            "model": self.model,
            "voice": voice or VOICES[0],
            "input": text,
            "response_format": RESPONSE_FORMAT,
        }
        response = post_json(
            self.endpoint,
            payload,
            api_key=self.api_key,
            timeout_s=self.timeout_s,
            source=SOURCE,
        )
        out_path.write_bytes(response.body)
        return out_path


def speech_endpoint(base: str) -> str:
    """<base>/v1/audio/speech; a base that already ends in /v1 (as OpenAI's does) is not doubled."""
    path = urllib.parse.urlsplit(base).path
    if path.endswith(VERSION_PREFIX):
        return base + SPEECH_PATH.removeprefix(VERSION_PREFIX)
    return base + SPEECH_PATH
