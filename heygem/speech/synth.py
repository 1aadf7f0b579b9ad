"""Text in, one WAV out: check the text, cut it into pieces, synthesise each, join with pauses."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from heygem.settings import Settings
from heygem.speech.api import (
    ESPEAK,
    FISH,
    OPENAI,
    SPEECH_STAGE,
    SpeechProgress,
    SpeechProvider,
    SpeechResult,
    VoiceReference,
    check_voice,
)
from heygem.speech.espeak import EspeakProvider, resolve_voice
from heygem.speech.fish import FishSpeechProvider
from heygem.speech.openai import OpenAISpeechProvider
from heygem.speech.text import check_text, split_text
from heygem.speech.wav import Audio, join, read_audio, write_wav

log = logging.getLogger("heygem.speech.synth")

PROVIDERS = (ESPEAK, OPENAI, FISH)
PIECE_NAME = "piece-{:04d}.audio"


def make_provider(settings: Settings) -> SpeechProvider:
    """The provider Settings.tts_provider names, configured from the settings."""
    if settings.tts_provider == OPENAI:
        return OpenAISpeechProvider(
            settings.tts_url,
            settings.tts_model,
            settings.tts_api_key,
            settings.tts_timeout_s,
        )
    if settings.tts_provider == FISH:
        return FishSpeechProvider(settings.tts_url, settings.tts_api_key, settings.tts_timeout_s)
    if settings.tts_provider == ESPEAK:
        return EspeakProvider(settings.tts_timeout_s)
    raise ValueError(f"tts_provider must be one of {', '.join(PROVIDERS)}")


def default_reference(settings: Settings) -> VoiceReference | None:
    """The configured voice sample (HEYGEM_TTS_REFERENCE_AUDIO/_TEXT), or None when unset."""
    if not settings.tts_reference_audio:
        return None
    return VoiceReference(settings.tts_reference_audio, settings.tts_reference_text)


def synthesize_text(
    text: str,
    out_path: Path,
    settings: Settings,
    *,
    voice: str | None = None,
    reference: VoiceReference | None = None,
    provider: SpeechProvider | None = None,
    on_progress: SpeechProgress | None = None,
) -> SpeechResult:
    """Speak `text` into out_path (16-bit mono WAV) and describe the result.

    voice and reference default to the settings; provider defaults to make_provider(settings).
    Raises InputError (empty text, unknown voice), LimitExceededError (text too long) or
    SpeechError (the provider failed); out_path is only written when every piece succeeded.
    """
    cleaned = check_text(text, settings.tts_max_chars)
    pieces = split_text(cleaned, settings.tts_piece_chars)
    provider = provider or make_provider(settings)
    chosen = _voice(voice, settings, provider)
    if provider.name == ESPEAK:
        chosen = resolve_voice(cleaned, chosen)  # once for the whole text: one voice throughout
    reference = reference or default_reference(settings)
    log.info(
        "speech: %d characters in %d piece(s) with %s%s",
        len(cleaned),
        len(pieces),
        provider.name,
        f" voice {chosen}" if chosen else "",
    )
    audio = join(
        _speak_pieces(pieces, chosen, reference, provider, out_path, on_progress),
        settings.tts_pause_s,
    )
    _write_atomically(audio, out_path)
    return SpeechResult(out_path, audio.duration_s, audio.rate, len(pieces), provider.name, chosen)


def _voice(voice: str | None, settings: Settings, provider: SpeechProvider) -> str:
    offered = provider.voices()
    name = (voice or "").strip() or settings.tts_voice.strip() or (offered[0] if offered else "")
    return check_voice(name) if name else ""


def _speak_pieces(
    pieces: list[str],
    voice: str,
    reference: VoiceReference | None,
    provider: SpeechProvider,
    out_path: Path,
    on_progress: SpeechProgress | None,
) -> list[Audio]:
    source = f"{provider.name} speech"
    audios: list[Audio] = []
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".speech-", dir=out_path.parent) as scratch:
        for index, piece in enumerate(pieces):
            written = provider.synthesize(piece, voice, reference, Path(scratch) / PIECE_NAME.format(index))
            audios.append(read_audio(written, source))
            if on_progress is not None:
                on_progress(index + 1, len(pieces), SPEECH_STAGE)
    return audios


def _write_atomically(audio: Audio, out_path: Path) -> None:
    partial = out_path.with_name(out_path.name + ".part")
    try:
        write_wav(audio, partial)
        os.replace(partial, out_path)
    finally:
        partial.unlink(missing_ok=True)
