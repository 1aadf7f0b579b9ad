"""Text-to-speech behind a small provider interface, so a job can carry text instead of audio.

    from heygem.speech import synthesize_text
    result = synthesize_text("你好。Hello!", out_dir / "speech.wav", settings)

Providers (Settings.tts_provider): espeak (built in, offline), openai (any OpenAI-compatible
/v1/audio/speech server), fish (voice cloning with HeyGem's fish-speech /v1/invoke server).
See docs/speech.md.
"""

from __future__ import annotations

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
from heygem.speech.synth import (
    PROVIDERS,
    default_reference,
    make_provider,
    synthesize_text,
)
from heygem.speech.text import check_text, split_sentences, split_text

__all__ = [
    "ESPEAK",
    "FISH",
    "OPENAI",
    "PROVIDERS",
    "SPEECH_STAGE",
    "SpeechProgress",
    "SpeechProvider",
    "SpeechResult",
    "VoiceReference",
    "check_text",
    "check_voice",
    "default_reference",
    "make_provider",
    "split_sentences",
    "split_text",
    "synthesize_text",
]
