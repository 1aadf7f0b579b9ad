"""The speech contracts: the provider protocol, the voice sample for cloning, the result."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from heygem.errors import InputError

ESPEAK = "espeak"
OPENAI = "openai"
FISH = "fish"
SPEECH_STAGE = "speech"  # the stage name progress callbacks receive

# (done, total, stage): called after each synthesised piece, like the engine's progress callback.
SpeechProgress = Callable[[int, int, str], None]

# Voice names travel into argv (espeak-ng -v) and JSON; keep them to a harmless alphabet.
VOICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.:+\-]{0,63}$")
MAX_REFERENCE_TEXT = 2000


@dataclass(frozen=True)
class VoiceReference:
    """A recording of the voice to clone and what is said in it.

    `audio` is handed to the speech server as is: a path the server can read (HeyGem's TTS
    container and heygem share a data volume) or an http(s) URL the server downloads.
    """

    audio: str
    text: str

    def __post_init__(self) -> None:
        if not self.audio.strip():
            raise InputError("the reference voice sample has no audio path or URL")
        if not self.text.strip():
            raise InputError("the reference voice sample needs the transcript of its audio")
        if len(self.text) > MAX_REFERENCE_TEXT:
            raise InputError(
                f"the reference transcript is {len(self.text)} characters; the limit is {MAX_REFERENCE_TEXT}"
            )


@dataclass(frozen=True)
class SpeechResult:
    path: Path  # 16-bit mono WAV
    duration_s: float
    sample_rate: int
    pieces: int  # how many pieces the text was split into
    provider: str
    voice: str  # the voice used ("" when the provider chose, e.g. a cloned reference)


class SpeechProvider(Protocol):
    """Turns one piece of text into audio. Splitting and joining are done by the caller."""

    @property
    def name(self) -> str: ...

    def voices(self) -> tuple[str, ...]:
        """Voices this provider is known to offer; the first is its default."""
        ...

    def synthesize(self, text: str, voice: str, reference: VoiceReference | None, out_path: Path) -> Path:
        """Write speech for `text` to out_path (WAV, or other audio ffmpeg decodes); return it.

        Raises heygem.errors.SpeechError (one line) when the provider fails or times out.
        """
        ...


def check_voice(voice: str) -> str:
    """Return the voice name stripped; raise InputError naming it when it is not a plain name."""
    name = voice.strip()
    if not VOICE_NAME.match(name):
        raise InputError(
            f"voice {voice[:40]!r} is not a valid voice name (letters, digits, space, _ . : + -, at most 64)"
        )
    return name
