"""Reading provider audio, joining pieces with pauses, and the built-in espeak-ng provider (real)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from heygem.errors import InputError, LimitExceededError, SpeechError
from heygem.settings import Settings
from heygem.speech import synthesize_text
from heygem.speech.espeak import EspeakProvider
from heygem.speech.wav import Audio, decode_audio, join, parse_wav, read_audio
from tests.speech_support import (
    convert,
    read_wav,
    rms,
    silent_runs,
    speak,
    unknown_length,
    wav_duration,
)

ESPEAK_RATE = 22050
AUDIBLE_RMS = 500  # int16 RMS of espeak speech is in the thousands; silence is 0


@pytest.fixture(scope="module")
def hello_wav(tmp_path_factory) -> Path:
    return speak("Hello, this is a test.", tmp_path_factory.mktemp("speech") / "hello.wav")


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path)


# --- reading audio --------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["pcm_u8", "pcm_s16le", "pcm_s24le", "pcm_s32le", "pcm_f32le", "pcm_f64le"])
def test_every_plain_wav_sample_format_decodes_to_the_same_speech(hello_wav, tmp_path, codec):
    reference, rate, _, _ = read_wav(hello_wav)
    converted = convert(hello_wav, tmp_path / f"{codec}.wav", "-c:a", codec)
    audio = parse_wav(converted.read_bytes())
    assert audio.rate == rate and len(audio.samples) == len(reference)
    tolerance = 0.01 if codec == "pcm_u8" else 1e-4  # 8-bit keeps only 256 levels
    assert np.max(np.abs(audio.samples - reference / 32768.0)) < tolerance


def test_stereo_and_extensible_wav_are_mixed_down_to_mono(hello_wav, tmp_path):
    # Speech on the left, silence on the right: the mono mix is the speech at half level.
    stereo = convert(
        hello_wav, tmp_path / "stereo.wav", "-af", "pan=stereo|c0=c0|c1=0*c0", "-c:a", "pcm_s24le"
    )
    assert int.from_bytes(stereo.read_bytes()[20:22], "little") == 0xFFFE  # WAVE_FORMAT_EXTENSIBLE
    audio = parse_wav(stereo.read_bytes())
    reference, rate, _, _ = read_wav(hello_wav)
    assert audio.rate == rate and len(audio.samples) == len(reference)
    assert np.max(np.abs(audio.samples - reference / 65536.0)) < 1e-3


def test_streamed_wav_with_unknown_lengths_reads_to_the_end(hello_wav):
    streamed = unknown_length(hello_wav.read_bytes())
    audio = parse_wav(streamed)
    assert abs(audio.duration_s - wav_duration(hello_wav)) < 1e-3


def test_other_audio_formats_are_decoded_with_ffmpeg(hello_wav, tmp_path):
    mp3 = convert(hello_wav, tmp_path / "hello.mp3", "-c:a", "libmp3lame", "-b:a", "64k")
    audio = read_audio(mp3, "test server")
    assert abs(audio.duration_s - wav_duration(hello_wav)) < 0.1  # mp3 pads a few ms
    assert np.sqrt(np.mean(audio.samples**2)) * 32768 > AUDIBLE_RMS


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        (b'{"error": "quota exceeded"}', "quota exceeded"),
        (b"<html><body>Bad gateway</body></html>", "Bad gateway"),
        (b"", "an empty body"),
        (b"RIFF\x10\x00\x00\x00WAVEjunk", "RIFF"),
    ],
)
def test_a_body_that_is_not_audio_gives_one_line_naming_the_source(body, shown):
    with pytest.raises(SpeechError) as caught:
        decode_audio(body, "test server")
    message = str(caught.value)
    assert message.startswith("test server returned no audio") and shown in message
    assert "\n" not in message


def test_a_playlist_from_the_speech_server_opens_no_other_file(hello_wav, tmp_path):
    # A hostile speech server answers with a playlist naming a file on this host. The format
    # whitelist refuses the playlist itself (ffmpeg 5.1's HLS defaults also refuse file segments
    # read through a pipe; this keeps it refused if those defaults change).
    playlist = (
        f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile://{hello_wav}\n#EXT-X-ENDLIST\n"
    ).encode()
    with pytest.raises(SpeechError) as info:
        decode_audio(playlist, "hostile server")
    assert "hostile server" in str(info.value)


def test_a_wav_without_samples_is_an_error(hello_wav):
    header_only = hello_wav.read_bytes()
    data_at = header_only.index(b"data")
    empty = header_only[: data_at + 4] + (0).to_bytes(4, "little")
    with pytest.raises(SpeechError, match="without any samples"):
        decode_audio(empty[:4] + (len(empty) - 8).to_bytes(4, "little") + empty[8:], "srv")


def test_join_puts_the_pause_between_pieces_and_resamples_to_the_first_rate():
    tone = np.sin(np.linspace(0, 200 * np.pi, 16000)).astype(np.float32) * 0.5
    first = Audio(tone, 16000)  # 1 s
    second = Audio(np.repeat(tone, 3), 48000)  # 1 s at another rate
    joined = join([first, second, first], pause_s=0.25)
    assert joined.rate == 16000
    assert len(joined.samples) == 3 * 16000 + 2 * 4000
    assert not np.any(joined.samples[16000:20000])  # the first pause is exact silence
    assert np.abs(joined.samples[20000:36000]).max() > 0.4  # the resampled piece is audible


# --- espeak-ng, for real --------------------------------------------------------------------


def test_english_text_becomes_audible_16_bit_mono_speech(settings, tmp_path):
    result = synthesize_text("Hello world. This is heygem speaking.", tmp_path / "en.wav", settings)
    samples, rate, channels, width = read_wav(result.path)
    assert (rate, channels, width) == (ESPEAK_RATE, 1, 2)
    assert result.provider == "espeak" and result.voice == "en" and result.pieces == 2
    assert 1.5 < result.duration_s < 6.0
    assert abs(wav_duration(result.path) - result.duration_s) < 1e-3
    assert rms(samples) > AUDIBLE_RMS


def test_chinese_text_is_spoken_with_the_mandarin_voice(settings, tmp_path):
    result = synthesize_text("你好，世界。今天天气很好！", tmp_path / "zh.wav", settings)
    samples, _rate, _, _ = read_wav(result.path)
    assert result.voice == "cmn" and result.pieces == 2
    assert 1.5 < result.duration_s < 8.0
    assert rms(samples) > AUDIBLE_RMS


def test_mixed_text_uses_one_voice_throughout(settings, tmp_path):
    result = synthesize_text("Hello! 你好。", tmp_path / "mixed.wav", settings)
    assert result.voice == "cmn"  # espeak-ng's cmn reads the Latin words as English


def test_a_named_voice_wins_and_an_unknown_one_is_refused(settings, tmp_path):
    result = synthesize_text("Hello.", tmp_path / "gb.wav", settings, voice="en-gb")
    assert result.voice == "en-gb"
    with pytest.raises(InputError, match="no voice 'xx-nothing'"):
        synthesize_text("Hello.", tmp_path / "bad.wav", settings, voice="xx-nothing")
    assert not (tmp_path / "bad.wav").exists()


def test_text_that_looks_like_options_is_spoken_not_obeyed(settings, tmp_path):
    out = tmp_path / "dash.wav"
    result = synthesize_text("-w /tmp/evil.wav --help -v xx", out, settings)
    samples, _, _, _ = read_wav(out)
    assert result.duration_s > 1.0 and rms(samples) > AUDIBLE_RMS
    assert not Path("/tmp/evil.wav").exists()


def test_pieces_are_joined_with_the_configured_pause(settings, tmp_path):
    text = "First sentence here. Second sentence here. Third sentence here."
    with_pause = synthesize_text(text, tmp_path / "pause.wav", settings)
    without = synthesize_text(text, tmp_path / "none.wav", settings.replace(tts_pause_s=0.0))
    assert with_pause.pieces == 3
    gaps = with_pause.pieces - 1
    added = round(0.25 * ESPEAK_RATE) * gaps / ESPEAK_RATE
    assert abs((with_pause.duration_s - without.duration_s) - added) < 1e-6
    samples, rate, _, _ = read_wav(with_pause.path)
    long_silences = [run for run in silent_runs(samples, rate) if run[1] >= 0.25]
    assert len(long_silences) >= gaps  # the pauses are really silent


def test_progress_is_reported_once_per_piece(settings, tmp_path):
    calls = []
    synthesize_text("One. Two. Three.", tmp_path / "p.wav", settings, on_progress=lambda *a: calls.append(a))
    assert calls == [(1, 3, "speech"), (2, 3, "speech"), (3, 3, "speech")]


def test_long_text_is_refused_before_any_synthesis(settings, tmp_path):
    small = settings.replace(tts_max_chars=20)
    with pytest.raises(LimitExceededError, match="limit is 20"):
        synthesize_text("This sentence is longer than twenty.", tmp_path / "x.wav", small)
    with pytest.raises(InputError, match="empty"):
        synthesize_text("  。  ", tmp_path / "x.wav", settings)
    assert not any(tmp_path.iterdir())


def test_a_hanging_espeak_is_killed_at_the_timeout(tmp_path):
    slow = tmp_path / "slow-espeak"
    slow.write_text("#!/bin/sh\nsleep 30\n")
    slow.chmod(0o755)
    provider = EspeakProvider(timeout_s=0.3, program=str(slow))
    with pytest.raises(SpeechError, match=r"longer than 0.3 s \(HEYGEM_TTS_TIMEOUT_S\)"):
        provider.synthesize("Hello.", "en", None, tmp_path / "out.wav")


def test_a_missing_espeak_is_named(tmp_path):
    provider = EspeakProvider(timeout_s=5, program=str(tmp_path / "no-such-espeak"))
    with pytest.raises(SpeechError, match="not installed"):
        provider.synthesize("Hello.", "en", None, tmp_path / "out.wav")


def test_a_failed_piece_leaves_no_output_and_no_scratch_files(settings, tmp_path):
    out = tmp_path / "out" / "speech.wav"

    class FailsOnSecond(EspeakProvider):
        def synthesize(self, text, voice, reference, out_path):
            if "Second" in text:
                raise SpeechError("espeak broke")
            return super().synthesize(text, voice, reference, out_path)

    with pytest.raises(SpeechError, match="espeak broke"):
        synthesize_text("First. Second.", out, settings, provider=FailsOnSecond(5.0))
    assert os.listdir(out.parent) == []
