"""Voice cloning with the fish-speech server that HeyGem deployments run (the `heygem-tts`
container, image guiji2025/fish-speech-ziming, usually published on port 18180).

Protocol: POST <url>/v1/invoke with a JSON body (the server's ServeTTSRequest):

    text                the text to speak
    format              "wav" (also "pcm", "mp3")
    reference_audio     the voice sample: a path on the server's file system (HeyGem shares a
                        data volume with it) or an http(s) URL the server downloads; several
                        samples are joined with "|||"
    reference_text      the transcript of each sample, joined with "|||" in the same order
    chunk_length        int 100..300, streaming false, normalize true, max_new_tokens,
                        top_p / repetition_penalty / temperature (floats; the server is strict)

The answer is the WAV file itself. The server needs a reference on every call (it builds its
in-context sample from reference_audio), so this provider refuses to run without one.
"""

from __future__ import annotations

import logging
from pathlib import Path

from heygem.errors import InputError
from heygem.speech.api import FISH, VoiceReference
from heygem.speech.http import base_url, post_json

log = logging.getLogger("heygem.speech.fish")

INVOKE_PATH = "/v1/invoke"
SOURCE = "fish speech server"
REFERENCE_SEPARATOR = "|||"
AUDIO_FORMAT = "wav"
# The server's own defaults; sent explicitly so a server with other defaults behaves the same.
CHUNK_LENGTH = 200
MAX_NEW_TOKENS = 1024
TOP_P = 0.7
REPETITION_PENALTY = 1.2
TEMPERATURE = 0.7


class FishSpeechProvider:
    def __init__(self, url: str, api_key: str, timeout_s: float) -> None:
        self.endpoint = base_url(url, SOURCE) + INVOKE_PATH
        self.api_key = api_key
        self.timeout_s = timeout_s

    @property
    def name(self) -> str:
        return FISH

    def voices(self) -> tuple[str, ...]:
        return ()  # the voice is the reference sample, not a name

    def synthesize(self, text: str, voice: str, reference: VoiceReference | None, out_path: Path) -> Path:
        if voice:
            log.info(
                "the fish provider clones the reference sample; voice %r is ignored",
                voice,
            )
        payload = invoke_payload(text, require_reference(reference))
        response = post_json(
            self.endpoint,
            payload,
            api_key=self.api_key,
            timeout_s=self.timeout_s,
            source=SOURCE,
        )
        out_path.write_bytes(response.body)
        return out_path


def require_reference(reference: VoiceReference | None) -> VoiceReference:
    if reference is None:
        raise InputError(
            "the fish provider clones a voice and needs a reference sample: set "
            "HEYGEM_TTS_REFERENCE_AUDIO and HEYGEM_TTS_REFERENCE_TEXT or give one with the job"
        )
    samples = reference.audio.count(REFERENCE_SEPARATOR)
    transcripts = reference.text.count(REFERENCE_SEPARATOR)
    if samples != transcripts:
        raise InputError(
            f"the reference has {samples + 1} audio sample(s) but {transcripts + 1} "
            f"transcript(s); join both lists with {REFERENCE_SEPARATOR!r} in the same order"
        )
    return reference


def invoke_payload(text: str, reference: VoiceReference) -> dict[str, object]:
    return {
        "text": text,
        "format": AUDIO_FORMAT,
        "reference_audio": reference.audio,
        "reference_text": reference.text,
        "chunk_length": CHUNK_LENGTH,
        "streaming": False,
        "normalize": True,
        "max_new_tokens": MAX_NEW_TOKENS,
        "top_p": TOP_P,
        "repetition_penalty": REPETITION_PENALTY,
        "temperature": TEMPERATURE,
    }
