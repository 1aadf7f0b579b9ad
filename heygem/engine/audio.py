"""Audio front end: decode anything ffmpeg reads to 16 kHz mono, the Wav2Lip mel, per-frame windows.

The mel follows the reference recipe exactly (docs: wav2lip-reference section 1.2): pre-emphasis,
a centred STFT with *reflect* padding, Slaney mel, dB, normalised and clipped to [-4, 4]. The
windowing follows section 1.3 for the frames the reference produces and then keeps going with the
final window so that the video covers the whole audio. No torch here.
"""

from __future__ import annotations

import logging
import math
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import IO

import numpy as np
from numpy.typing import NDArray

from heygem.engine.media.guard import input_args, refusal, too_long
from heygem.engine.media.process import StderrTail, kill
from heygem.errors import AudioTooShortError, InputError, MediaProcessError, UnsupportedMediaError

log = logging.getLogger("heygem.engine.audio")

SAMPLE_RATE = 16000  # Hz the model's mel was trained on
N_FFT = 800  # 50 ms analysis window -> 401 frequency bins
HOP = 200  # 12.5 ms hop -> 80 mel frames per second
WIN = 800  # window length equals N_FFT, so the window is not zero-padded
N_MELS = 80
FMIN = 55.0  # Hz
FMAX = 7600.0  # Hz
PREEMPHASIS = 0.97
MIN_LEVEL_DB = -100.0  # sets the amplitude floor (1e-5) and the normalisation range
REF_LEVEL_DB = 20.0
MAX_ABS = 4.0  # normalised mel lies in [-MAX_ABS, MAX_ABS]
MEL_STEP = 16  # mel frames per model window (0.2 s)
MEL_FPS = SAMPLE_RATE // HOP  # 80 mel frames per second

AMP_FLOOR = 10.0 ** (MIN_LEVEL_DB / 20.0)
# STFT frames processed at once: bounds memory for long audio (a 10 min clip has 48 000 frames).
STFT_BLOCK_FRAMES = 4096
# ffmpeg messages that mean "this file is not usable audio" rather than "ffmpeg broke".
INPUT_PROBLEM_MARKERS = (
    "invalid data found",
    "could not find codec parameters",
    "does not contain any stream",
    "matches no streams",
    "no such file",
    "unknown format",
    "end of file",
    "invalid argument",
    "moov atom not found",
    "header missing",
    "failed to read",
)
NO_AUDIO_MARKER = "matches no streams"
SAMPLE_BYTES = 4  # ffmpeg writes float32 samples
READ_CHUNK_BYTES = SAMPLE_RATE * SAMPLE_BYTES  # one second of decoded audio per read

Samples = NDArray[np.float32]  # mono audio at SAMPLE_RATE
Mel = NDArray[np.float32]  # (N_MELS, frames) normalised log-mel, or (frames, N_MELS, MEL_STEP) windows
Float64s = NDArray[np.float64]  # intermediate results, computed in float64 like the reference


# --- decoding --------------------------------------------------------------------------------


def load_audio(path: str | Path, max_duration_s: float | None = None) -> Samples:
    """Decode the first audio stream of any file ffmpeg reads to float32 mono at SAMPLE_RATE.

    Only that one file is read (no playlists or lists naming other files: guard.input_args).
    Raises UnsupportedMediaError for a missing file, a file that is not media, a file without
    an audio stream or an empty one; MediaProcessError when ffmpeg fails for another reason;
    LimitExceededError as soon as the decoded audio passes `max_duration_s`, whatever the header
    says, so a long stream is never held in memory whole.
    """
    path = Path(path)
    if not path.exists():
        raise UnsupportedMediaError(f"audio file not found: {path}")
    if not path.is_file():
        raise UnsupportedMediaError(f"{path} is not a file")
    raw = _run_ffmpeg_decode(path, max_duration_s)
    wav = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if wav.size == 0:
        raise UnsupportedMediaError(f"{path.name}: the audio stream has no samples")
    log.debug("decoded %s: %d samples (%.2f s)", path, wav.size, wav.size / SAMPLE_RATE)
    return wav


def _decode_command(path: Path) -> list[str]:
    return [
        "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error",
        *input_args(path),
        "-map", "0:a:0", "-vn", "-sn", "-dn",
        "-f", "f32le", "-acodec", "pcm_f32le", "-ac", "1", "-ar", str(SAMPLE_RATE),
        "-",
    ]  # fmt: skip


def _run_ffmpeg_decode(path: Path, max_duration_s: float | None) -> bytes:
    try:
        proc = subprocess.Popen(
            _decode_command(path), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
    except FileNotFoundError:
        raise MediaProcessError("ffmpeg is not installed or not on PATH") from None
    # Both pipes exist: they were requested just above.
    assert proc.stdout is not None and proc.stderr is not None
    tail = StderrTail(proc.stderr)
    try:
        raw = _read_limited(proc.stdout, path, max_duration_s)
        code = proc.wait()
    finally:
        kill(proc)
        proc.stdout.close()
        tail.join()
    if code == 0:
        return raw
    raise _decode_error(path, "\n".join(tail.lines()))


def _read_limited(stream: IO[bytes], path: Path, max_duration_s: float | None) -> bytes:
    """Everything ffmpeg writes, refusing (LimitExceededError) once it passes the duration limit."""
    limit = None if max_duration_s is None else int(max_duration_s * SAMPLE_RATE) * SAMPLE_BYTES
    chunks: list[bytes] = []
    size = 0
    while chunk := stream.read(READ_CHUNK_BYTES):
        size += len(chunk)
        if limit is not None and size > limit:
            raise too_long(path.name, max_duration_s or 0.0)
        chunks.append(chunk)
    return b"".join(chunks)


def _decode_error(path: Path, stderr: str) -> Exception:
    refused = refusal(stderr, path.name)
    if refused is not None:
        return refused
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    lowered = stderr.lower()
    if NO_AUDIO_MARKER in lowered:
        return UnsupportedMediaError(f"{path.name} has no audio stream")
    tail = _useful_tail(lines, path)
    if any(marker in lowered for marker in INPUT_PROBLEM_MARKERS):
        return UnsupportedMediaError(f"{path.name} is not audio or video ffmpeg can decode ({tail})")
    return MediaProcessError(f"ffmpeg failed decoding {path.name}: {tail}")


def _useful_tail(lines: list[str], path: Path) -> str:
    """The last stderr line, without the path ffmpeg prefixes (the message names the file already)."""
    if not lines:
        return "no error output"
    last = lines[-1]
    prefix = f"{path}: "
    return last[len(prefix) :] if last.startswith(prefix) else last


# --- mel spectrogram --------------------------------------------------------------------------


def melspectrogram(wav: NDArray[np.floating]) -> Mel:
    """The reference's normalised log-mel of 16 kHz audio: shape (N_MELS, 1 + len(wav) // HOP).

    Computed in float64 (as the reference is under modern librosa) and returned as float32.
    """
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise InputError(f"audio must be one channel, got an array of shape {wav.shape}")
    if wav.size == 0:
        raise AudioTooShortError("audio is 0.00 s; at least 0.2 s is needed")
    emphasized = preemphasis(wav)
    padded = np.pad(emphasized, N_FFT // 2, mode="reflect")
    num_frames = 1 + wav.size // HOP
    out = np.empty((N_MELS, num_frames), dtype=np.float32)
    for start in range(0, num_frames, STFT_BLOCK_FRAMES):
        stop = min(start + STFT_BLOCK_FRAMES, num_frames)
        out[:, start:stop] = _normalize(_amp_to_db(_mel_block(padded, start, stop)) - REF_LEVEL_DB)
    if np.isnan(out).any():
        raise InputError("the audio produced an invalid spectrogram (NaN); is it corrupt?")
    return out


def preemphasis(wav: NDArray[np.floating]) -> Float64s:
    """y[n] = x[n] - 0.97 x[n-1] with a zero initial state, in float64."""
    x = wav.astype(np.float64)
    y = x.copy()
    y[1:] -= PREEMPHASIS * x[:-1]
    return y


def _mel_block(padded: Float64s, start: int, stop: int) -> Float64s:
    """Mel amplitudes of STFT frames [start, stop): frame t covers padded[HOP*t : HOP*t + N_FFT]."""
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[start * HOP : stop * HOP : HOP]
    spectrum = np.abs(np.fft.rfft(frames * hann_window(), n=N_FFT, axis=1))
    return mel_basis() @ spectrum.T


def _amp_to_db(amp: Float64s) -> Float64s:
    db: Float64s = 20.0 * np.log10(np.maximum(AMP_FLOOR, amp))  # numpy's ufunc stubs give Any
    return db


def _normalize(db: Float64s) -> Float64s:
    scaled = 2 * MAX_ABS * (db - MIN_LEVEL_DB) / (-MIN_LEVEL_DB) - MAX_ABS
    return np.clip(scaled, -MAX_ABS, MAX_ABS)


@lru_cache(maxsize=1)
def hann_window() -> Float64s:
    """Periodic Hann window of WIN samples (the STFT convention, not the symmetric one)."""
    n = np.arange(WIN, dtype=np.float64)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / WIN)


@lru_cache(maxsize=1)
def mel_basis() -> Float64s:
    """Slaney-scale, Slaney-normalised filterbank, (N_MELS, N_FFT // 2 + 1). Built once.

    Written in numpy rather than taken from librosa: importing librosa costs seconds and over
    100 MiB per process, for a matrix that is a few lines of arithmetic (tests/test_audio.py
    holds librosa's filterbank as the oracle).
    """
    edges = _mel_to_hz(np.linspace(_hz_to_mel(FMIN), _hz_to_mel(FMAX), N_MELS + 2))
    bins = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    widths = np.diff(edges)
    # Each filter is a triangle from edges[i] up to edges[i+1] and down to edges[i+2].
    rising = (bins[None, :] - edges[:-2, None]) / widths[:-1, None]
    falling = (edges[2:, None] - bins[None, :]) / widths[1:, None]
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    # Slaney's area normalisation: every filter integrates to the same value over frequency.
    basis: Float64s = triangles * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    basis.setflags(write=False)
    return basis


# Slaney's mel scale: linear below SLANEY_BREAK_HZ, logarithmic above.
SLANEY_HZ_PER_MEL = 200.0 / 3.0
SLANEY_BREAK_HZ = 1000.0
SLANEY_BREAK_MEL = SLANEY_BREAK_HZ / SLANEY_HZ_PER_MEL
SLANEY_LOG_STEP = math.log(6.4) / 27.0  # 27 mels per factor 6.4 in frequency


def _hz_to_mel(hz: float) -> float:
    if hz < SLANEY_BREAK_HZ:
        return hz / SLANEY_HZ_PER_MEL
    return SLANEY_BREAK_MEL + math.log(hz / SLANEY_BREAK_HZ) / SLANEY_LOG_STEP


def _mel_to_hz(mels: Float64s) -> Float64s:
    linear = mels * SLANEY_HZ_PER_MEL
    logarithmic = SLANEY_BREAK_HZ * np.exp(SLANEY_LOG_STEP * (mels - SLANEY_BREAK_MEL))
    hz: Float64s = np.where(mels >= SLANEY_BREAK_MEL, logarithmic, linear)
    return hz


# --- per-frame windows ------------------------------------------------------------------------


def frames_for_audio(num_samples: int, fps: float) -> int:
    """Video frames needed to cover num_samples of 16 kHz audio: ceil(duration * fps)."""
    if fps <= 0:
        raise InputError(f"fps must be positive, got {fps}")
    # The tolerance keeps exact multiples (2 s at 25 fps = 50) from rounding up through float error.
    return max(0, math.ceil(num_samples * fps / SAMPLE_RATE - 1e-9))


def reference_window_count(num_mel_frames: int, fps: float) -> int:
    """How many windows the reference cuts: K full-stride windows plus one final window."""
    step = MEL_FPS / fps
    count = 0
    while int(count * step) + MEL_STEP <= num_mel_frames:
        count += 1
    return count + 1


def window_starts(num_mel_frames: int, fps: float, frames: int | None = None) -> NDArray[np.int64]:
    """Start column of the MEL_STEP-wide mel window for each video frame.

    The first windows are exactly the reference's: start int(i * (80 / fps)) while the window
    fits, then the last MEL_STEP columns once. frames=None gives just those (the reference's
    count); a larger `frames` repeats the final window, a smaller one truncates.
    """
    if fps <= 0:
        raise InputError(f"fps must be positive, got {fps}")
    if num_mel_frames < MEL_STEP:
        seconds = max(0, num_mel_frames - 1) * HOP / SAMPLE_RATE
        raise AudioTooShortError(f"audio is {seconds:.2f} s; at least 0.2 s is needed")
    ref_count = reference_window_count(num_mel_frames, fps)
    total = ref_count if frames is None else frames
    step = MEL_FPS / fps  # the reference multiplies by this float, so do the same for parity
    starts = np.full(total, num_mel_frames - MEL_STEP, dtype=np.int64)
    full = min(ref_count - 1, total)
    starts[:full] = [int(i * step) for i in range(full)]
    return starts


def mel_chunks(mel: Mel, fps: float, frames: int | None = None) -> Mel:
    """Cut the mel into one (N_MELS, MEL_STEP) window per video frame: (frames, 80, 16) float32.

    frames=None covers the span the mel describes, ceil(T_mel * fps / 80) frames (never fewer than
    the reference's count); pass frames_for_audio(len(wav), fps) for the exact audio duration.
    """
    if mel.ndim != 2 or mel.shape[0] != N_MELS:
        raise InputError(f"expected a ({N_MELS}, T) mel spectrogram, got shape {mel.shape}")
    num_mel_frames = mel.shape[1]
    if frames is None and num_mel_frames >= MEL_STEP:
        frames = max(
            reference_window_count(num_mel_frames, fps),
            math.ceil(num_mel_frames * fps / MEL_FPS - 1e-9),
        )
    starts = window_starts(num_mel_frames, fps, frames)
    columns = starts[:, None] + np.arange(MEL_STEP)[None, :]
    return np.ascontiguousarray(mel[:, columns].transpose(1, 0, 2), dtype=np.float32)


def audio_windows(wav: Samples, fps: float) -> Mel:
    """Mel windows for every video frame of the audio's full duration: (ceil(dur*fps), 80, 16)."""
    return mel_chunks(melspectrogram(wav), fps, frames_for_audio(len(wav), fps))


__all__ = [
    "SAMPLE_RATE", "N_FFT", "HOP", "WIN", "N_MELS", "FMIN", "FMAX", "PREEMPHASIS",
    "MIN_LEVEL_DB", "REF_LEVEL_DB", "MAX_ABS", "MEL_STEP", "MEL_FPS",
    "load_audio", "melspectrogram", "preemphasis", "mel_basis", "hann_window",
    "frames_for_audio", "reference_window_count", "window_starts", "mel_chunks", "audio_windows",
]  # fmt: skip
