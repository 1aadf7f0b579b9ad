"""Checking text and cutting it into pieces a speech provider handles well.

Pieces end at sentence boundaries (Chinese and English punctuation, newlines). A sentence longer
than the piece limit is cut at commas (, ， 、 : ：), then at spaces, then anywhere.
"""

from __future__ import annotations

import unicodedata

from heygem.errors import InputError, LimitExceededError

# '.' is not here: it ends a sentence only before whitespace, a CJK character or the end, so
# "3.14" and "example.com" stay whole.
SENTENCE_ENDS = frozenset("。！？；!?;…\n")
FULL_STOP = "."
# Quotes and brackets that close a sentence stay with it: 他说：“好。” / "Yes."
CLOSERS = frozenset("\"'”’」』）)】》]")
CLAUSE_BREAKS = frozenset(",，、:：")
KEPT_CONTROLS = frozenset("\n\t")
SETTING_MAX_CHARS = "HEYGEM_TTS_MAX_CHARS"


def check_text(text: str, max_chars: int) -> str:
    """Return the text cleaned (control characters removed, ends stripped); InputError if it is
    empty, LimitExceededError if it is longer than max_chars."""
    cleaned = "".join(
        " " if unicodedata.category(ch) == "Cc" and ch not in KEPT_CONTROLS else ch
        for ch in text.replace("\r\n", "\n").replace("\r", "\n")
    ).strip()
    if not any(ch.isalnum() for ch in cleaned):
        raise InputError("the text to speak is empty")
    if len(cleaned) > max_chars:
        raise LimitExceededError(
            f"the text to speak is {len(cleaned)} characters; the limit is {max_chars} ({SETTING_MAX_CHARS})"
        )
    return cleaned


def split_text(text: str, max_piece_chars: int) -> list[str]:
    """Cut text into speakable pieces of at most max_piece_chars characters, in order."""
    if max_piece_chars < 1:
        raise ValueError(f"max_piece_chars must be at least 1, got {max_piece_chars}")
    pieces: list[str] = []
    for sentence in split_sentences(text):
        pieces.extend(_split_long(sentence, max_piece_chars))
    return [piece for piece in pieces if _speakable(piece)]


def split_sentences(text: str) -> list[str]:
    """Sentences with their closing punctuation, stripped; punctuation-only runs are dropped."""
    sentences: list[str] = []
    start = i = 0
    while i < len(text):
        if _ends_sentence(text, i):
            # Marks after a line break belong to the next line, not to this one.
            i = i + 1 if text[i] == "\n" else _skip_trailing_marks(text, i + 1)
            sentences.append(text[start:i])
            start = i
        else:
            i += 1
    sentences.append(text[start:])
    return [s.strip() for s in sentences if _speakable(s)]


def _ends_sentence(text: str, i: int) -> bool:
    ch = text[i]
    if ch in SENTENCE_ENDS:
        return True
    if ch != FULL_STOP:
        return False
    following = text[i + 1] if i + 1 < len(text) else ""
    return following == "" or following.isspace() or is_cjk(following)


def _skip_trailing_marks(text: str, i: int) -> int:
    """Index after the run of terminators and closers that follows a sentence end ("?!", "。”")."""
    while (
        i < len(text)
        and text[i] != "\n"
        and (text[i] in SENTENCE_ENDS or text[i] == FULL_STOP or text[i] in CLOSERS)
    ):
        i += 1
    return i


def _split_long(sentence: str, limit: int) -> list[str]:
    if len(sentence) <= limit:
        return [sentence]
    packed: list[str] = []
    current = ""
    for clause in _clauses(sentence):
        for part in _hard_split(clause, limit):
            if current and len(current) + len(part) > limit:
                packed.append(current)
                current = part
            else:
                current += part
    packed.append(current)
    return [p.strip() for p in packed if p.strip()]


def _clauses(sentence: str) -> list[str]:
    clauses: list[str] = []
    start = 0
    for i, ch in enumerate(sentence):
        if ch in CLAUSE_BREAKS:
            clauses.append(sentence[start : i + 1])
            start = i + 1
    clauses.append(sentence[start:])
    return [c for c in clauses if c]


def _hard_split(text: str, limit: int) -> list[str]:
    """Cut at the last space before the limit (English words stay whole), else at the limit."""
    parts: list[str] = []
    while len(text.strip()) > limit:
        text = text.lstrip()
        cut = text.rfind(" ", 0, limit + 1)
        if cut <= limit // 2:
            cut = limit
        parts.append(text[:cut])
        text = text[cut:]
    parts.append(text)
    return parts


def _speakable(piece: str) -> bool:
    return any(ch.isalnum() for ch in piece)


def is_cjk(ch: str) -> bool:
    """A Chinese, Japanese or Korean letter (wide and alphanumeric; full-width punctuation is not)."""
    return unicodedata.east_asian_width(ch) in ("W", "F") and ch.isalnum()
