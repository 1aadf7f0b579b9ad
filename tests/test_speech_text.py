"""Text checks and sentence splitting for text-to-speech, and the speech settings."""

from __future__ import annotations

import re

import pytest

from heygem.errors import InputError, LimitExceededError
from heygem.settings import Settings
from heygem.speech import VoiceReference, check_text, check_voice, split_sentences, split_text


def test_chinese_splits_after_each_sentence_mark_and_keeps_it():
    text = "今天天气很好。我们去公园吧！你觉得呢？好的；走吧"
    assert split_sentences(text) == [
        "今天天气很好。",
        "我们去公园吧！",
        "你觉得呢？",
        "好的；",
        "走吧",
    ]


def test_english_splits_at_full_stops_but_not_inside_numbers_or_names():
    text = "Hello there. Pi is 3.14 today! Is it? Visit example.com now.\nNew line"
    assert split_sentences(text) == [
        "Hello there.",
        "Pi is 3.14 today!",
        "Is it?",
        "Visit example.com now.",
        "New line",
    ]


def test_mixed_text_keeps_closing_quotes_and_runs_of_marks_together():
    text = "他说：“好。”然后走了。我爱Python.It works?! Really…… Yes"
    assert split_sentences(text) == [
        "他说：“好。”",
        "然后走了。",
        "我爱Python.It works?!",
        "Really……",
        "Yes",
    ]


def test_a_full_stop_before_a_chinese_character_ends_the_sentence():
    assert split_sentences("I like it.我也喜欢。") == ["I like it.", "我也喜欢。"]


def test_newlines_end_sentences_and_blank_or_punctuation_only_runs_are_dropped():
    assert split_sentences("first line\n\n  \nsecond line\n。。。\n!!") == [
        "first line",
        "second line",
    ]


def test_short_sentences_are_pieces_as_they_are():
    assert split_text("One. Two? 三。", max_piece_chars=50) == ["One.", "Two?", "三。"]


def test_a_long_chinese_sentence_is_cut_at_commas_within_the_limit():
    clause = "我们今天讨论的问题非常重要，"
    sentence = clause * 20 + "结束。"
    pieces = split_text(sentence, max_piece_chars=60)
    assert len(pieces) > 1
    assert all(len(p) <= 60 for p in pieces)
    assert "".join(pieces) == sentence  # nothing lost, order kept
    assert all(p.endswith("，") for p in pieces[:-1])  # cut right after a comma


def test_a_long_english_sentence_is_cut_at_commas_then_spaces_keeping_words_whole():
    words = " ".join(f"word{i}" for i in range(80))
    sentence = f"First part, {words}, last part."
    pieces = split_text(sentence, max_piece_chars=50)
    assert all(len(p) <= 50 for p in pieces)
    assert " ".join(pieces).split() == sentence.split()  # every word intact, in order
    assert pieces[0] == "First part,"  # packed up to the comma, the word run did not fit


def test_text_without_any_break_is_cut_hard_at_the_limit():
    text = "字" * 250
    pieces = split_text(text, max_piece_chars=100)
    assert [len(p) for p in pieces] == [100, 100, 50]


def test_enumerated_short_clauses_are_packed_up_to_the_limit():
    sentence = "、".join(["苹果"] * 40) + "。"
    pieces = split_text(sentence, max_piece_chars=30)
    assert all(len(p) <= 30 for p in pieces)
    assert all(len(p) >= 27 for p in pieces[:-1])  # packed, not one clause per piece
    assert "".join(pieces) == sentence


def test_check_text_cleans_and_rejects_empty_text():
    assert check_text("  hi\r\nthere\x00\x07 ", max_chars=100) == "hi\nthere"
    for empty in ("", "   \n\t", "。！？...", "\x00\x01"):
        with pytest.raises(InputError, match="text to speak is empty"):
            check_text(empty, max_chars=100)


def test_check_text_rejects_text_over_the_limit_naming_the_setting():
    with pytest.raises(LimitExceededError) as caught:
        check_text("a" * 101, max_chars=100)
    message = str(caught.value)
    assert "101 characters" in message and "limit is 100" in message
    assert "HEYGEM_TTS_MAX_CHARS" in message and "\n" not in message
    assert check_text("a" * 100, max_chars=100) == "a" * 100


def test_voice_names_are_plain_words():
    assert check_voice(" alloy ") == "alloy"
    assert check_voice("en-us") == "en-us"
    for bad in ("", "-v", "a;rm -rf /", "x" * 65, "voice\nname"):
        with pytest.raises(InputError, match="not a valid voice name"):
            check_voice(bad)


def test_voice_reference_needs_audio_and_transcript():
    assert VoiceReference("/data/me.wav", "你好").text == "你好"
    with pytest.raises(InputError, match="no audio"):
        VoiceReference(" ", "text")
    with pytest.raises(InputError, match="transcript"):
        VoiceReference("/data/me.wav", "")


# --- settings -------------------------------------------------------------------------------


def test_speech_settings_default_to_the_offline_provider():
    settings = Settings()
    assert settings.tts_provider == "espeak"
    assert settings.tts_url == ""
    assert settings.tts_max_chars >= 1000
    assert settings.tts_pause_s == 0.25


def test_speech_settings_load_from_the_environment():
    settings = Settings.load(
        {
            "HEYGEM_TTS_PROVIDER": "openai",
            "HEYGEM_TTS_URL": "http://tts.local:8000",
            "HEYGEM_TTS_API_KEY": "sk-secret",
            "HEYGEM_TTS_TIMEOUT_S": "12.5",
            "HEYGEM_TTS_MAX_CHARS": "500",
        },
        [],
    )
    assert (settings.tts_provider, settings.tts_url) == ("openai", "http://tts.local:8000")
    assert settings.tts_timeout_s == 12.5 and settings.tts_max_chars == 500


def test_the_speech_api_key_is_masked_when_settings_are_shown():
    settings = Settings(tts_provider="openai", tts_url="http://x", tts_api_key="sk-secret")
    shown = settings.describe()
    assert shown["tts_api_key"] == "***"
    assert "sk-secret" not in " ".join(shown.values())


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"tts_provider": "festival"}, "tts_provider must be one of espeak, openai, fish"),
        ({"tts_provider": "openai"}, "needs tts_url"),
        ({"tts_provider": "fish", "tts_url": "ftp://host"}, "must start with http:// or https://"),
        ({"tts_url": "file:///etc/passwd"}, "must start with http:// or https://"),
        ({"tts_max_chars": 0}, "tts_max_chars must be at least 1"),
        ({"tts_timeout_s": 0.0}, "tts_timeout_s must be positive"),
        ({"tts_reference_audio": "/data/me.wav"}, "set both or neither"),
    ],
)
def test_bad_speech_settings_are_refused_with_one_line(changes, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        Settings().replace(**changes)
