"""The HTTP speech providers against real HTTP servers on 127.0.0.1 that speak each protocol and
answer with real speech (espeak-ng + ffmpeg), and their failure modes."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from heygem.errors import InputError, SpeechError
from heygem.settings import Settings
from heygem.speech import VoiceReference, synthesize_text
from heygem.speech.fish import FishSpeechProvider
from heygem.speech.openai import OpenAISpeechProvider
from tests.kit import free_port
from tests.speech_support import (
    Received,
    Reply,
    SpeechServer,
    convert,
    read_wav,
    rms,
    speak,
    unknown_length,
    wav_duration,
)

API_KEY = "sk-test-key-123"
OPENAI_RATE = 24000  # what OpenAI's wav output uses
FISH_RATE = 44100  # what fish-speech's decoder produces
AUDIBLE_RMS = 500


class Speaker:
    """Real audio for a server to send: espeak-ng speech of the requested text, converted by
    ffmpeg to the rate and sample format the imitated server uses."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.counter = itertools.count()
        self.durations: list[float] = []

    def wav(self, text: str, rate: int, codec: str, streamed: bool = False) -> bytes:
        n = next(self.counter)
        raw = speak(text, self.folder / f"raw{n}.wav")
        resampled = convert(raw, self.folder / f"rate{n}.wav", "-ar", str(rate))
        self.durations.append(wav_duration(resampled))
        out = convert(resampled, self.folder / f"out{n}.wav", "-c:a", codec)
        data = out.read_bytes()
        return unknown_length(data) if streamed else data


@pytest.fixture
def speaker(tmp_path) -> Speaker:
    folder = tmp_path / "server-audio"
    folder.mkdir()
    return Speaker(folder)


def openai_server(speaker: Speaker) -> SpeechServer:
    """Answers like OpenAI: 24 kHz float WAV with streaming (unknown) lengths."""

    def respond(got: Received) -> Reply:
        if got.path != "/v1/audio/speech":
            return Reply(404, b'{"error": {"message": "no such route"}}', "application/json")
        body = speaker.wav(got.body["input"], OPENAI_RATE, "pcm_f32le", streamed=True)
        return Reply(body=body)

    return SpeechServer(respond)


def fish_server(speaker: Speaker) -> SpeechServer:
    """Answers like HeyGem's fish-speech /v1/invoke: reads each reference sample named in
    reference_audio ("|||"-joined) from disk as the real server does, then sends 44.1 kHz WAV."""

    def respond(got: Received) -> Reply:
        if got.path != "/v1/invoke":
            return Reply(404, b'{"detail": "Not Found"}', "application/json")
        samples = got.body["reference_audio"].split("|||")
        texts = got.body["reference_text"].split("|||")
        if len(samples) != len(texts):
            return Reply(400, b"reference_audio and reference_text is not match", "text/plain")
        for sample in samples:
            if not Path(sample).is_file() or Path(sample).stat().st_size < 200:
                return Reply(400, b"reference_audio is not valid", "text/plain")
        return Reply(body=speaker.wav(got.body["text"], FISH_RATE, "pcm_s16le"))

    return SpeechServer(respond)


def settings_for(tmp_path: Path, provider: str, url: str, **more: object) -> Settings:
    return Settings(data_dir=tmp_path, tts_provider=provider, tts_url=url, **more)


# --- OpenAI-compatible ------------------------------------------------------------------------


def test_openai_protocol_request_and_joined_audio(tmp_path, speaker):
    with openai_server(speaker) as server:
        settings = settings_for(tmp_path, "openai", server.url, tts_api_key=API_KEY, tts_model="tts-1-hd")
        result = synthesize_text(
            "Hello there. How are you today?", tmp_path / "out.wav", settings, voice="nova"
        )
    assert [r.body for r in server.received] == [
        {"model": "tts-1-hd", "voice": "nova", "input": text, "response_format": "wav"}
        for text in ("Hello there.", "How are you today?")
    ]
    for got in server.received:
        assert (got.method, got.path) == ("POST", "/v1/audio/speech")
        assert got.headers["authorization"] == f"Bearer {API_KEY}"
        assert got.headers["content-type"] == "application/json"
    samples, rate, channels, width = read_wav(result.path)
    assert (rate, channels, width) == (OPENAI_RATE, 1, 2)
    assert (result.provider, result.voice, result.pieces) == ("openai", "nova", 2)
    expected = sum(speaker.durations) + round(0.25 * OPENAI_RATE) / OPENAI_RATE
    assert abs(result.duration_s - expected) < 1e-3
    assert rms(samples) > AUDIBLE_RMS


def test_openai_defaults_no_key_and_a_base_url_that_ends_in_v1(tmp_path, speaker):
    with openai_server(speaker) as server:
        settings = settings_for(tmp_path, "openai", server.url + "/v1/")
        result = synthesize_text("Hi.", tmp_path / "out.wav", settings)
    (got,) = server.received
    assert got.path == "/v1/audio/speech"  # not /v1/v1/audio/speech
    assert "authorization" not in got.headers
    assert got.body["voice"] == "alloy" and got.body["model"] == "tts-1"
    assert result.voice == "alloy"


def test_the_configured_voice_is_used_when_the_job_names_none(tmp_path, speaker):
    with openai_server(speaker) as server:
        settings = settings_for(tmp_path, "openai", server.url, tts_voice="shimmer")
        synthesize_text("Hi.", tmp_path / "out.wav", settings)
    assert server.received[0].body["voice"] == "shimmer"


# --- HeyGem fish-speech ---------------------------------------------------------------------


@pytest.fixture
def reference(tmp_path) -> VoiceReference:
    sample = speak("This is my voice.", tmp_path / "my-voice.wav")
    return VoiceReference(str(sample), "This is my voice.")


def test_fish_invoke_protocol_sends_the_reference_and_gets_cloned_speech(tmp_path, speaker, reference):
    with fish_server(speaker) as server:
        settings = settings_for(tmp_path, "fish", server.url, tts_api_key=API_KEY)
        result = synthesize_text(
            "你好，世界。Nice to meet you!", tmp_path / "out.wav", settings, reference=reference
        )
    assert [r.body for r in server.received] == [
        {
            "text": text,
            "format": "wav",
            "reference_audio": reference.audio,
            "reference_text": reference.text,
            "chunk_length": 200,
            "streaming": False,
            "normalize": True,
            "max_new_tokens": 1024,
            "top_p": 0.7,
            "repetition_penalty": 1.2,
            "temperature": 0.7,
        }
        for text in ("你好，世界。", "Nice to meet you!")
    ]
    assert all(r.path == "/v1/invoke" for r in server.received)
    assert all(r.headers["authorization"] == f"Bearer {API_KEY}" for r in server.received)
    samples, rate, channels, _ = read_wav(result.path)
    assert (rate, channels, result.provider, result.voice) == (FISH_RATE, 1, "fish", "")
    assert abs(result.duration_s - (sum(speaker.durations) + 0.25)) < 1e-3
    assert rms(samples) > AUDIBLE_RMS


def test_fish_uses_the_configured_reference_and_several_samples(tmp_path, speaker, reference):
    second = speak("And this too.", tmp_path / "second.wav")
    with fish_server(speaker) as server:
        settings = settings_for(
            tmp_path,
            "fish",
            server.url,
            tts_reference_audio=f"{reference.audio}|||{second}",
            tts_reference_text=f"{reference.text}|||And this too.",
        )
        synthesize_text("Hello.", tmp_path / "out.wav", settings)
    (got,) = server.received
    assert got.body["reference_audio"] == f"{reference.audio}|||{second}"
    assert got.body["reference_text"] == f"{reference.text}|||And this too."


def test_fish_without_a_reference_is_refused_before_any_request(tmp_path, speaker):
    with fish_server(speaker) as server:
        settings = settings_for(tmp_path, "fish", server.url)
        with pytest.raises(InputError, match="needs a reference sample"):
            synthesize_text("Hello.", tmp_path / "out.wav", settings)
        mismatched = VoiceReference("/a.wav|||/b.wav", "only one transcript")
        with pytest.raises(InputError, match=r"2 audio sample\(s\) but 1 transcript"):
            synthesize_text("Hello.", tmp_path / "out.wav", settings, reference=mismatched)
    assert server.received == []


def test_fish_server_refusing_the_reference_is_reported(tmp_path, speaker):
    with fish_server(speaker) as server:
        settings = settings_for(tmp_path, "fish", server.url)
        missing = VoiceReference(str(tmp_path / "nowhere.wav"), "text")
        with pytest.raises(SpeechError) as caught:
            synthesize_text("Hello.", tmp_path / "out.wav", settings, reference=missing)
    assert str(caught.value) == (
        f"fish speech server: {server.url}/v1/invoke answered HTTP 400: reference_audio is not valid"
    )


# --- failures -------------------------------------------------------------------------------


def fixed(reply: Reply) -> SpeechServer:
    return SpeechServer(lambda got: reply)


def speak_with(tmp_path: Path, url: str, timeout_s: float = 5.0) -> Path:
    out = tmp_path / "out.wav"
    settings = settings_for(tmp_path, "openai", url, tts_api_key=API_KEY, tts_timeout_s=timeout_s)
    synthesize_text("Hello. World.", out, settings)
    return out


def failure(tmp_path: Path, reply: Reply, timeout_s: float = 5.0) -> tuple[str, SpeechServer]:
    """The SpeechError message speaking against a server that always answers `reply`."""
    with fixed(reply) as server, pytest.raises(SpeechError) as caught:
        speak_with(tmp_path, server.url, timeout_s)
    assert not (tmp_path / "out.wav").exists()
    return str(caught.value), server


def test_a_server_error_is_one_line_with_the_status_and_the_server_message(tmp_path):
    body = b'{"error": {"message": "model overloaded,\\n try later", "type": "server"}}'
    message, server = failure(tmp_path, Reply(500, body, "application/json"))
    assert message == (
        f"openai speech server: {server.url}/v1/audio/speech answered HTTP 500: model overloaded, try later"
    )
    assert len(server.received) == 1  # stopped at the first failed piece


def test_a_refused_key_is_named_but_never_shown(tmp_path):
    message, _ = failure(tmp_path, Reply(401, b'{"detail": "Invalid token"}', "application/json"))
    assert "HTTP 401 (check HEYGEM_TTS_API_KEY): Invalid token" in message
    assert API_KEY not in message


def test_a_server_that_does_not_answer_in_time_times_out(tmp_path):
    with fixed(Reply(delay_s=3.0)) as server:
        started = time.monotonic()
        with pytest.raises(SpeechError, match=r"within 0.3 s \(HEYGEM_TTS_TIMEOUT_S\)"):
            speak_with(tmp_path, server.url, timeout_s=0.3)
        assert time.monotonic() - started < 1.5


def test_a_server_that_trickles_its_answer_is_cut_off_at_the_deadline(tmp_path):
    with fixed(Reply(body=b"RIFF" + bytes(200), trickle_s=0.05)) as server:
        started = time.monotonic()
        with pytest.raises(SpeechError, match="no complete answer"):
            speak_with(tmp_path, server.url, timeout_s=0.5)
        assert time.monotonic() - started < 1.5  # the whole body would take 10 s


def test_a_body_that_is_not_audio_is_an_error(tmp_path):
    message, _ = failure(tmp_path, Reply(200, b'{"status": "queued"}', "application/json"))
    assert message == ('openai speech returned no audio (20 bytes starting \'{"status": "queued"}\')')


def test_a_server_that_is_not_running_is_named(tmp_path):
    port = free_port()
    with pytest.raises(SpeechError) as caught:
        speak_with(tmp_path, f"http://127.0.0.1:{port}")
    message = str(caught.value)
    assert message.startswith(f"openai speech server: cannot reach http://127.0.0.1:{port}/v1/audio/speech: ")
    assert "refused" in message.lower() and "\n" not in message


def test_a_redirect_to_another_host_is_not_followed_and_the_key_stays_home(tmp_path, speaker):
    with openai_server(speaker) as elsewhere:
        target = f"http://localhost:{elsewhere.port}/v1/audio/speech"
        message, _ = failure(tmp_path, Reply(307, b"", headers={"Location": target}))
    assert "redirects (HTTP 307) to another server" in message
    assert elsewhere.received == []


def test_a_same_host_redirect_that_keeps_the_post_is_followed(tmp_path, speaker):
    real = openai_server(speaker)

    def respond(got: Received) -> Reply:
        if got.path == "/v1/audio/speech":
            return Reply(308, b"", headers={"Location": "/tts/v1/audio/speech"})
        return real.respond(Received(got.method, "/v1/audio/speech", got.headers, got.body))

    with SpeechServer(respond) as server:
        out = speak_with(tmp_path, server.url)
    assert [r.path for r in server.received] == [
        "/v1/audio/speech",
        "/tts/v1/audio/speech",
        "/v1/audio/speech",
        "/tts/v1/audio/speech",
    ]
    assert all(r.headers["authorization"] == f"Bearer {API_KEY}" for r in server.received)
    assert server.received[1].body["input"] == "Hello."
    assert wav_duration(out) > 0.5


def test_a_redirect_that_would_turn_the_post_into_a_get_is_an_error(tmp_path):
    message, server = failure(tmp_path, Reply(302, b"", headers={"Location": "/elsewhere"}))
    assert "answered HTTP 302" in message
    assert len(server.received) == 1


@pytest.mark.parametrize("url", ["ftp://host", "http://", "http://host/?q=1", "localhost:8000"])
def test_providers_refuse_urls_that_are_not_plain_http(url):
    with pytest.raises(SpeechError, match="HEYGEM_TTS_URL must"):
        OpenAISpeechProvider(url, "tts-1", "", 5.0)
    with pytest.raises(SpeechError, match="HEYGEM_TTS_URL must"):
        FishSpeechProvider(url, "", 5.0)
