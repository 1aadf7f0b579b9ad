"""Reading the audio providers return, and joining pieces into one 16-bit mono WAV.

WAV is parsed here (PCM 8/16/24/32-bit, float 32/64-bit, WAVE_FORMAT_EXTENSIBLE, any channel
count) because speech servers stream it: their headers often carry a length of 0 or 0xFFFFFFFF,
which the standard `wave` module does not accept in every form. Anything else (MP3 from a server
that ignored response_format, ADPCM, ...) goes through ffmpeg, which writes WAV back to us.
"""

from __future__ import annotations

import logging
import struct
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from heygem.engine.media.guard import SINGLE_FILE_DEMUXERS
from heygem.errors import SpeechError

log = logging.getLogger("heygem.speech.wav")

Samples = npt.NDArray[np.float32]

RIFF_HEADER_BYTES = 12
CHUNK_HEADER_BYTES = 8
FMT_MIN_BYTES = 16
UNKNOWN_SIZES = (
    0,
    0xFFFFFFFF,
)  # what streaming writers put in a length they do not know yet
FORMAT_PCM = 0x0001
FORMAT_FLOAT = 0x0003
FORMAT_EXTENSIBLE = 0xFFFE
OUTPUT_SAMPLE_WIDTH = 2  # bytes: 16-bit output
INT16_FULL_SCALE = 32767
FFMPEG_TIMEOUT_S = 60.0
FLOAT_TYPES = {32: "<f4", 64: "<f8"}  # little-endian sample types by bit depth
INT_TYPES = {16: "<i2", 32: "<i4"}


@dataclass(frozen=True)
class Audio:
    samples: Samples  # mono, float32 in [-1, 1]
    rate: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.rate


class _NotPlainWav(Exception):
    """Not RIFF/WAVE, or a WAV codec this module does not decode: ffmpeg gets a try."""


def decode_audio(data: bytes, source: str) -> Audio:
    """Decode audio bytes to mono samples; SpeechError naming `source` if they are not audio."""
    try:
        audio = parse_wav(data)
    except _NotPlainWav:
        audio = _decode_with_ffmpeg(data, source)
    if len(audio.samples) == 0:
        raise SpeechError(f"{source} returned audio without any samples")
    return audio


def read_audio(path: Path, source: str) -> Audio:
    return decode_audio(path.read_bytes(), source)


def parse_wav(data: bytes) -> Audio:
    """Decode a RIFF/WAVE file held in memory; _NotPlainWav when it is something else."""
    if len(data) < RIFF_HEADER_BYTES or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise _NotPlainWav("not RIFF/WAVE")
    fmt, pcm = _chunks(data)
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt[:FMT_MIN_BYTES])
    if tag == FORMAT_EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack("<H", fmt[24:26])[0]  # the sub-format GUID starts with the real tag
    if channels < 1 or rate < 1 or bits % 8 or not 8 <= bits <= 64:
        raise _NotPlainWav(f"odd WAV header: {channels} channels, {rate} Hz, {bits} bits")
    frame_bytes = channels * bits // 8
    pcm = pcm[: len(pcm) - len(pcm) % frame_bytes]
    samples = _pcm_to_float(pcm, tag, bits)
    mono = samples.reshape(-1, channels).mean(axis=1, dtype=np.float32)
    return Audio(np.clip(mono, -1.0, 1.0).astype(np.float32), int(rate))


def _chunks(data: bytes) -> tuple[bytes, bytes]:
    """The fmt and data chunk bodies; a data length that is unknown or too long means "to EOF"."""
    fmt: bytes | None = None
    pos = RIFF_HEADER_BYTES
    while pos + CHUNK_HEADER_BYTES <= len(data):
        chunk_id = data[pos : pos + 4]
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        body = pos + CHUNK_HEADER_BYTES
        if chunk_id == b"fmt ":
            fmt = data[body : body + size]
        elif chunk_id == b"data":
            if fmt is None or len(fmt) < FMT_MIN_BYTES:
                raise _NotPlainWav("WAV data before its fmt chunk")
            end = len(data) if size in UNKNOWN_SIZES or body + size > len(data) else body + size
            return fmt, data[body:end]
        pos = body + size + (size & 1)  # chunks are padded to an even length
    raise _NotPlainWav("WAV without fmt and data chunks")


def _pcm_to_float(pcm: bytes, tag: int, bits: int) -> Samples:
    if tag == FORMAT_FLOAT and bits in (32, 64):
        return np.frombuffer(pcm, dtype=FLOAT_TYPES[bits]).astype(np.float32)
    if tag != FORMAT_PCM:
        raise _NotPlainWav(f"WAV codec 0x{tag:04x}")
    if bits == 8:  # 8-bit WAV is unsigned
        return (np.frombuffer(pcm, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    if bits == 24:
        raw = np.frombuffer(pcm, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        value = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        value = np.where(value >= 1 << 23, value - (1 << 24), value)
        return (value / float(1 << 23)).astype(np.float32)
    if bits in (16, 32):
        samples: Samples = np.frombuffer(pcm, dtype=INT_TYPES[bits]).astype(np.float32)
        samples /= np.float32(1 << (bits - 1))
        return samples
    raise _NotPlainWav(f"{bits}-bit PCM")


def _decode_with_ffmpeg(data: bytes, source: str) -> Audio:
    argv = [
        "ffmpeg",
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        # A speech server's answer is one stream: no playlist may make ffmpeg open other files.
        "-protocol_whitelist",
        "pipe",
        "-format_whitelist",
        ",".join(SINGLE_FILE_DEMUXERS),
        "-i",
        "pipe:0",
        "-vn",
        "-ac",
        "1",
        "-c:a",
        "pcm_s16le",
        "-f",
        "wav",
        "pipe:1",
    ]
    try:
        done = subprocess.run(argv, check=False, input=data, capture_output=True, timeout=FFMPEG_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SpeechError(f"{source} returned audio ffmpeg could not decode in time") from None
    except FileNotFoundError:
        raise SpeechError(f"{source} returned non-WAV audio and ffmpeg is not installed") from None
    if done.returncode != 0 or not done.stdout:
        raise SpeechError(f"{source} returned no audio ({describe_bytes(data)})")
    try:
        return parse_wav(done.stdout)
    except _NotPlainWav as exc:
        raise SpeechError(f"{source} returned audio ffmpeg could not convert: {exc}") from None


def describe_bytes(data: bytes) -> str:
    """A short, one-line, printable description of a body that was not audio."""
    if not data:
        return "an empty body"
    text = data[:80].decode("utf-8", errors="replace")
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return f"{len(data)} bytes starting {text!r}"


def resample(audio: Audio, rate: int) -> Audio:
    """Linear-interpolation resampling: enough for speech pieces, which share one rate anyway."""
    if audio.rate == rate:
        return audio
    count = max(1, round(len(audio.samples) * rate / audio.rate))
    positions = np.arange(count, dtype=np.float64) * (audio.rate / rate)
    source = np.arange(len(audio.samples), dtype=np.float64)
    return Audio(np.interp(positions, source, audio.samples).astype(np.float32), rate)


def join(pieces: list[Audio], pause_s: float) -> Audio:
    """Pieces in order at the first piece's rate, with pause_s of silence between them."""
    if not pieces:
        raise ValueError("nothing to join")
    rate = pieces[0].rate
    gap = np.zeros(round(pause_s * rate), dtype=np.float32)
    parts: list[Samples] = []
    for i, piece in enumerate(pieces):
        if i:
            parts.append(gap)
        parts.append(resample(piece, rate).samples)
    return Audio(np.concatenate(parts), rate)


def write_wav(audio: Audio, path: Path) -> Path:
    """16-bit mono PCM WAV."""
    pcm = np.round(np.clip(audio.samples, -1.0, 1.0) * INT16_FULL_SCALE).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(OUTPUT_SAMPLE_WIDTH)
        out.setframerate(audio.rate)
        out.writeframes(pcm.tobytes())
    return path
