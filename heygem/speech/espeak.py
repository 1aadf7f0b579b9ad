"""The built-in provider: espeak-ng, offline, installed with the Debian package `espeak-ng`.

Robotic but always there, so text-to-video works on a fresh machine with nothing configured.
The text goes in on stdin, never on the command line: it cannot become an option or a shell word.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

from heygem.errors import InputError, SpeechError
from heygem.speech.api import ESPEAK, VoiceReference
from heygem.speech.text import is_cjk

log = logging.getLogger("heygem.speech.espeak")

PROGRAM = "espeak-ng"
AUTO = "auto"  # Mandarin when the text has CJK characters, else English
MANDARIN = "cmn"  # reads Latin letters in mixed text as English
ENGLISH = "en"
VOICES = (AUTO, MANDARIN, ENGLISH, "en-us", "en-gb", "yue", "ja")
UTF8_INPUT = "1"  # espeak-ng -b 1: the input is UTF-8
NO_SUCH_VOICE = "voice does not exist"
STDERR_TAIL = 200


class EspeakProvider:
    """Synthesises with the espeak-ng command; one process per piece."""

    def __init__(self, timeout_s: float, program: str = PROGRAM) -> None:
        self.timeout_s = timeout_s
        self.program = program

    @property
    def name(self) -> str:
        return ESPEAK

    def voices(self) -> tuple[str, ...]:
        return VOICES

    def synthesize(self, text: str, voice: str, reference: VoiceReference | None, out_path: Path) -> Path:
        if reference is not None:
            log.info("espeak-ng cannot clone a voice; the reference sample is ignored")
        chosen = resolve_voice(text, voice)
        executable = shutil.which(self.program)
        if executable is None:
            raise SpeechError(f"{self.program} is not installed (Debian: apt-get install espeak-ng)")
        argv = [
            executable,
            "-v",
            chosen,
            "-b",
            UTF8_INPUT,
            "-w",
            str(out_path),
            "--stdin",
        ]
        try:
            done = subprocess.run(
                argv,
                check=False,
                input=text.encode("utf-8"),
                capture_output=True,
                timeout=self.timeout_s,
            )
        except subprocess.TimeoutExpired:
            raise SpeechError(
                f"{self.program} took longer than {self.timeout_s:g} s (HEYGEM_TTS_TIMEOUT_S)"
            ) from None
        if done.returncode != 0 or not out_path.is_file():
            raise _failure(self.program, chosen, done.stderr)
        return out_path


def resolve_voice(text: str, voice: str) -> str:
    """The espeak-ng voice for this text: the named one, or cmn/en chosen from the script."""
    if voice and voice != AUTO:
        return voice
    return MANDARIN if any(is_cjk(ch) for ch in text) else ENGLISH


def _failure(program: str, voice: str, stderr: bytes) -> Exception:
    message = " ".join(stderr.decode("utf-8", errors="replace").split())[-STDERR_TAIL:]
    if NO_SUCH_VOICE in message:
        return InputError(
            f"{program} has no voice {voice!r}; try one of {', '.join(VOICES)} (espeak-ng --voices lists all)"
        )
    return SpeechError(f"{program} failed for voice {voice!r}: {message or 'no output'}")
