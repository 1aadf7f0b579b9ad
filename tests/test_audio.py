"""Audio front end: decoding through real ffmpeg, the reference mel, and per-frame windows."""

from __future__ import annotations

import math
import subprocess

import librosa
import numpy as np
import pytest

from heygem.engine import audio
from heygem.errors import AudioTooShortError, InputError, UnsupportedMediaError
from tests import media

# Encoder arguments per container; the decoder must handle all of them.
ENCODINGS = {
    "mp3": ["-c:a", "libmp3lame", "-b:a", "64k"],
    "m4a": ["-c:a", "aac", "-b:a", "64k"],
    "aac": ["-c:a", "aac", "-b:a", "64k", "-f", "adts"],
    "flac": ["-c:a", "flac"],
    "ogg": ["-c:a", "libvorbis", "-q:a", "3"],
    "opus": ["-c:a", "libopus", "-b:a", "32k"],
    "wav": ["-c:a", "pcm_s16le", "-ar", "48000", "-ac", "2"],
}
# Lossy codecs add priming/padding that ffmpeg mostly trims; allow a few ms either side.
DURATION_TOLERANCE_S = 0.03
# Raw ADTS has no gapless info, so the encoder priming (1024+ samples at 22 kHz) stays in.
ADTS_TOLERANCE_S = 0.1


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-y", "-loglevel", "error", *args], check=True)


def independent_mel(wav: np.ndarray, pad_mode: str = "reflect") -> np.ndarray:
    """The reference recipe rebuilt from librosa's STFT and filterbank (the reference's own calls)."""
    x = wav.astype(np.float64)
    emphasized = np.concatenate([x[:1], x[1:] - 0.97 * x[:-1]])
    spec = np.abs(
        librosa.stft(
            emphasized,
            n_fft=800,
            hop_length=200,
            win_length=800,
            window="hann",
            center=True,
            pad_mode=pad_mode,
        )
    )
    db = 20 * np.log10(np.maximum(1e-5, librosa_filterbank() @ spec)) - 20
    return np.clip(8 * (db + 100) / 100 - 4, -4, 4)


def librosa_filterbank() -> np.ndarray:
    """The oracle: librosa's Slaney mel filterbank with the reference's parameters."""
    return librosa.filters.mel(
        sr=16000, n_fft=800, n_mels=80, fmin=55.0, fmax=7600.0, htk=False, norm="slaney", dtype=np.float64
    )


def reference_windows(mel: np.ndarray, fps: float) -> list[np.ndarray]:
    """Section 1.3 of the reference notes, written as a plain loop."""
    chunks, multiplier, i = [], 80.0 / fps, 0
    while True:
        start = int(i * multiplier)
        if start + 16 > mel.shape[1]:
            chunks.append(mel[:, mel.shape[1] - 16 :])
            return chunks
        chunks.append(mel[:, start : start + 16])
        i += 1


@pytest.fixture(scope="module")
def speech(speech_wav) -> np.ndarray:
    return audio.load_audio(speech_wav)


@pytest.fixture(scope="module")
def speech_mel(speech) -> np.ndarray:
    return audio.melspectrogram(speech)


# --- decoding --------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", sorted(ENCODINGS))
def test_every_format_decodes_to_16k_mono(ext, speech_wav, speech, tmp_path):
    encoded = tmp_path / f"speech.{ext}"
    ffmpeg("-i", str(speech_wav), *ENCODINGS[ext], str(encoded))

    wav = audio.load_audio(encoded)

    assert wav.dtype == np.float32 and wav.ndim == 1
    tolerance = ADTS_TOLERANCE_S if ext == "aac" else DURATION_TOLERANCE_S
    assert abs(wav.size - speech.size) / audio.SAMPLE_RATE < tolerance
    # Same speech: loudness within 25% of the wav decode (lossy codecs change the waveform).
    rms, ref_rms = np.sqrt(np.mean(wav**2)), np.sqrt(np.mean(speech**2))
    assert ref_rms > 0.01 and abs(rms - ref_rms) / ref_rms < 0.25


def test_espeak_wav_is_resampled_to_16k(speech_wav, speech):
    source_rate = int(media.probe(speech_wav)["streams"][0]["sample_rate"])
    assert source_rate == 22050
    assert speech.size == pytest.approx(media.duration_of(speech_wav) * 16000, abs=2)


def test_stereo_44k_tone_is_mixed_down_and_resampled(tmp_path):
    path = media.make_tone(tmp_path / "tone.wav", seconds=1.5, rate=44100, channels=2)

    wav = audio.load_audio(path)

    assert wav.size == 24000
    spectrum = np.abs(np.fft.rfft(wav))
    assert np.argmax(spectrum) * audio.SAMPLE_RATE / wav.size == pytest.approx(440, abs=1)
    assert np.abs(wav).max() == pytest.approx(0.125, abs=0.01)  # ffmpeg's sine is 1/8 scale


def test_audio_track_of_a_video_is_decoded(speech_wav, speech, tmp_path):
    video = tmp_path / "talk.mp4"
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=64x64:rate=25:duration=7",
        "-i",
        str(speech_wav),
        "-map",
        "0:v",
        "-map",
        "1:a",
        "-c:v",
        "libx264",
        "-c:a",
        "aac",
        str(video),
    )

    wav = audio.load_audio(video)

    assert abs(wav.size - speech.size) / audio.SAMPLE_RATE < DURATION_TOLERANCE_S


def test_text_file_named_mp3_is_rejected(tmp_path):
    fake = tmp_path / "song.mp3"
    fake.write_text("this is not an mp3 at all\n" * 20)

    with pytest.raises(UnsupportedMediaError, match="song.mp3"):
        audio.load_audio(fake)


def test_video_without_audio_is_rejected(face_video):
    with pytest.raises(UnsupportedMediaError, match=f"{face_video.name} has no audio stream"):
        audio.load_audio(face_video)


def test_missing_file_is_rejected(tmp_path):
    with pytest.raises(UnsupportedMediaError, match="nope.wav"):
        audio.load_audio(tmp_path / "nope.wav")


def test_empty_audio_is_rejected(tmp_path):
    empty = tmp_path / "empty.wav"
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "0", str(empty))

    with pytest.raises(UnsupportedMediaError, match="empty.wav.*no samples"):
        audio.load_audio(empty)


def test_errors_are_one_line(tmp_path):
    fake = tmp_path / "clip.m4a"
    fake.write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(UnsupportedMediaError) as info:
        audio.load_audio(fake)
    assert "\n" not in str(info.value) and "clip.m4a" in str(info.value)


# --- mel spectrogram --------------------------------------------------------------------------


def test_mel_matches_independent_computation(speech, speech_mel):
    expected = independent_mel(speech)

    assert speech_mel.dtype == np.float32
    assert speech_mel.shape == expected.shape
    np.testing.assert_allclose(speech_mel, expected, atol=1e-5)


def test_filterbank_equals_librosas():
    np.testing.assert_allclose(audio.mel_basis(), librosa_filterbank(), rtol=1e-9, atol=1e-12)
    assert audio.mel_basis().shape == (80, 401)


def test_mel_with_librosa_as_the_oracle_on_noise_and_tones():
    """The whole numpy mel against librosa's STFT and filterbank on signals with every band lit."""
    rng = np.random.default_rng(7)
    t = np.arange(40000) / 16000
    tones = sum(np.sin(2 * np.pi * f * t) for f in (60, 440, 1000, 3100, 7500)) / 5
    for wav in (rng.normal(0, 0.2, 40000), tones, rng.normal(0, 1e-4, 40000)):
        wav = wav.astype(np.float32)
        np.testing.assert_allclose(audio.melspectrogram(wav), independent_mel(wav), atol=1e-5)


def test_mel_range_and_extremes(speech_mel):
    assert speech_mel.min() == -4.0  # the pauses hit the floor
    assert speech_mel.max() <= 4.0 and speech_mel.max() > 0


@pytest.mark.parametrize("samples", [3000, 3199, 3200, 16000, 63814])
def test_mel_frame_count(samples):
    rng = np.random.default_rng(samples)
    mel = audio.melspectrogram(rng.normal(0, 0.1, samples).astype(np.float32))
    assert mel.shape == (80, 1 + samples // 200)


def test_reflect_padding_is_used():
    sweep = librosa.chirp(fmin=100, fmax=6000, sr=16000, duration=1.0).astype(np.float32)
    ours = audio.melspectrogram(sweep)
    zero_padded = independent_mel(sweep, pad_mode="constant")

    np.testing.assert_allclose(ours, independent_mel(sweep, pad_mode="reflect"), atol=1e-5)
    edge_gap = np.abs(ours[:, [0, 1, -2, -1]] - zero_padded[:, [0, 1, -2, -1]]).max()
    middle_gap = np.abs(ours[:, 2:-2] - zero_padded[:, 2:-2]).max()
    assert edge_gap > 0.05 and middle_gap < 1e-5


def test_preemphasis_starts_from_zero_state():
    y = audio.preemphasis(np.array([1.0, 1.0, 0.5], dtype=np.float32))
    np.testing.assert_allclose(y, [1.0, 0.03, 0.5 - 0.97])


def test_digital_silence_is_the_floor():
    mel = audio.melspectrogram(np.zeros(16000, dtype=np.float32))
    assert np.isfinite(mel).all() and (mel == -4.0).all()


def test_nan_samples_raise_input_error():
    wav = np.zeros(8000, dtype=np.float32)
    wav[100] = np.nan
    with pytest.raises(InputError, match="NaN"):
        audio.melspectrogram(wav)


# --- windows ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fps", "starts"),
    [
        (25, [0, 3, 6, 9, 12, 16, 19, 22]),
        (30, [0, 2, 5, 8, 10, 13, 16, 18]),
        (24, [0, 3, 6, 10, 13, 16, 20, 23]),
        (50, [0, 1, 3, 4, 6, 8, 9, 11]),
    ],
)
def test_window_starts_match_reference_examples(fps, starts):
    assert audio.window_starts(400, fps)[:8].tolist() == starts


def test_25fps_starts_are_the_exact_rational_floor():
    starts = audio.window_starts(100_000, 25.0)
    count = audio.reference_window_count(100_000, 25.0) - 1
    assert starts[:count].tolist() == [16 * i // 5 for i in range(count)]


def test_320_mel_frames_at_25fps_give_97_reference_windows():
    mel = np.random.default_rng(0).normal(size=(80, 320)).astype(np.float32)

    assert audio.reference_window_count(320, 25) == 97
    chunks = audio.mel_chunks(mel, 25, frames=97)
    assert chunks.shape == (97, 80, 16)
    np.testing.assert_array_equal(chunks[95], mel[:, 304:320])
    np.testing.assert_array_equal(chunks[96], mel[:, 304:320])  # final window: the last 16 columns


def test_measured_clip_length_gives_320_mel_frames():
    mel = audio.melspectrogram(np.full(63814, 0.01, dtype=np.float32))
    assert mel.shape[1] == 320


@pytest.mark.parametrize("fps", [25.0, 30.0, 24.0, 50.0, 29.97, 12.5, 60.0])
def test_first_windows_equal_the_reference(speech_mel, fps):
    expected = reference_windows(speech_mel, fps)
    chunks = audio.mel_chunks(speech_mel, fps)

    assert chunks.shape[0] >= len(expected)
    for i, window in enumerate(expected):
        np.testing.assert_array_equal(chunks[i], window)


@pytest.mark.parametrize("fps", [25.0, 30.0, 24.0, 29.97, 60.0])
def test_windows_cover_the_whole_audio(speech, speech_mel, fps):
    windows = audio.audio_windows(speech, fps)
    reference_count = len(reference_windows(speech_mel, fps))

    assert windows.shape == (math.ceil(speech.size / 16000 * fps), 80, 16)
    assert windows.shape[0] > reference_count  # the reference stops short of the audio's end
    for extra in windows[reference_count:]:
        np.testing.assert_array_equal(extra, speech_mel[:, -16:])


def test_frames_for_audio_is_ceil_of_duration():
    assert audio.frames_for_audio(32000, 25) == 50
    assert audio.frames_for_audio(32001, 25) == 51
    assert audio.frames_for_audio(63814, 25) == 100
    assert audio.frames_for_audio(16000 * 10, 29.97) == 300


def test_explicit_frame_count_pads_and_truncates(speech_mel):
    reference = reference_windows(speech_mel, 25)
    longer = audio.mel_chunks(speech_mel, 25, frames=len(reference) + 40)
    shorter = audio.mel_chunks(speech_mel, 25, frames=10)

    assert longer.shape[0] == len(reference) + 40
    np.testing.assert_array_equal(longer[-1], speech_mel[:, -16:])
    assert shorter.shape == (10, 80, 16)
    np.testing.assert_array_equal(shorter[9], reference[9])


def test_audio_shorter_than_one_window_is_rejected():
    too_short = np.full(1600, 0.1, dtype=np.float32)  # 0.1 s -> 9 mel frames
    with pytest.raises(AudioTooShortError, match=r"audio is 0\.10 s; at least 0\.2 s is needed"):
        audio.audio_windows(too_short, 25)


def test_shortest_usable_audio_gives_one_full_window():
    windows = audio.audio_windows(np.full(3000, 0.1, dtype=np.float32), 25)  # exactly 16 mel frames
    assert windows.shape == (5, 80, 16)
