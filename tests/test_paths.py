from __future__ import annotations

import os

import pytest

from heygem.errors import ForbiddenPathError, InputError
from heygem.storage.paths import (
    MAX_OUTPUT_NAME,
    free_name,
    resolve_under,
    safe_file_name,
    safe_output_name,
)


@pytest.fixture
def roots(tmp_path):
    allowed = tmp_path / "allowed"
    (allowed / "sub").mkdir(parents=True)
    (allowed / "sub" / "clip.mp4").write_bytes(b"x")
    other = tmp_path / "other"
    other.mkdir()
    (other / "secret.txt").write_text("no")
    return allowed, other


def test_relative_path_resolves_against_base(roots):
    allowed, _ = roots
    found = resolve_under("sub/clip.mp4", [allowed], base=allowed)
    assert found == (allowed / "sub" / "clip.mp4").resolve()


def test_absolute_path_inside_a_root_is_accepted(roots):
    allowed, _ = roots
    assert resolve_under(allowed / "sub" / "clip.mp4", [allowed]) == (allowed / "sub" / "clip.mp4").resolve()


@pytest.mark.parametrize("path", ["../other/secret.txt", "sub/../../other/secret.txt", "../../etc/passwd"])
def test_dotdot_escape_is_refused(roots, path):
    allowed, _ = roots
    with pytest.raises(ForbiddenPathError, match="outside the allowed input folders"):
        resolve_under(path, [allowed], base=allowed)


def test_absolute_path_outside_roots_is_refused(roots):
    allowed, _ = roots
    with pytest.raises(ForbiddenPathError, match="/etc/passwd is outside"):
        resolve_under("/etc/passwd", [allowed])


def test_symlink_escape_is_refused(roots):
    allowed, other = roots
    os.symlink(other / "secret.txt", allowed / "link.txt")
    with pytest.raises(ForbiddenPathError):
        resolve_under("link.txt", [allowed], base=allowed)


def test_sibling_folder_with_common_prefix_is_refused(tmp_path):
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs-evil").mkdir()
    with pytest.raises(ForbiddenPathError):
        resolve_under(tmp_path / "inputs-evil" / "x.mp4", [tmp_path / "inputs"])


def test_second_root_is_honoured(roots):
    allowed, other = roots
    assert resolve_under(other / "secret.txt", [allowed, other]) == (other / "secret.txt").resolve()


@pytest.mark.parametrize("path", ["", "   "])
def test_empty_path_is_an_input_error(roots, path):
    with pytest.raises(InputError, match="empty path"):
        resolve_under(path, [roots[0]])


def test_nul_byte_is_refused(roots):
    with pytest.raises(ForbiddenPathError):
        resolve_under("a\x00b", [roots[0]], base=roots[0])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("clip", "clip.mp4"),
        ("clip.mp4", "clip.mp4"),
        ("Clip.MP4", "Clip.MP4"),
        ("a.mov", "a.mov.mp4"),
        ("说话 1", "说话 1.mp4"),
    ],
)
def test_safe_output_name_accepts_plain_names(name, expected):
    assert safe_output_name(name) == expected


@pytest.mark.parametrize(
    ("name", "error", "message"),
    [
        ("a/b.mp4", ForbiddenPathError, "without '/'"),
        ("..\\b.mp4", ForbiddenPathError, "without '/'"),
        ("../b", ForbiddenPathError, "without '/'"),
        ("..", ForbiddenPathError, "'..'"),
        ("", InputError, "empty"),
        (".hidden.mp4", InputError, "must not start with '.'"),
        ("a\nb.mp4", InputError, "control characters"),
        ("x" * (MAX_OUTPUT_NAME + 1), InputError, "limit is 200"),
        (" padded.mp4", InputError, "spaces"),
    ],
)
def test_safe_output_name_refuses(name, error, message):
    with pytest.raises(error, match=message):
        safe_output_name(name)


# --- names made from someone else's (uploads, object keys, URLs) ---------------------------------
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("speech.wav", "speech.wav"),
        ("my clip (1).mp4", "my_clip_1.mp4"),
        ("C:\\Users\\ann\\face.png", "face.png"),
        ("folder/sub/face.png", "face.png"),
        ("../../etc/passwd", "passwd"),
        (".hidden.wav", "hidden.wav"),
        ("说话.wav", "file.wav"),
        ("__.__", "file"),
        ("a.b c", "a.b_c"),
        ("", "file"),
    ],
)
def test_safe_file_name_keeps_a_plain_last_segment(name, expected):
    assert safe_file_name(name) == expected


def test_safe_file_name_uses_the_fallback_and_keeps_the_extension_when_shortening():
    assert safe_file_name("???", fallback="audio") == "audio"
    long = safe_file_name("x" * 500 + ".wav")
    assert (len(long), long[-5:]) == (MAX_OUTPUT_NAME, "x.wav")


def test_free_name_numbers_from_two_and_keeps_the_suffix(tmp_path):
    assert free_name(tmp_path, "face.mp4") == tmp_path / "face.mp4"
    (tmp_path / "face.mp4").write_bytes(b"1")
    (tmp_path / "input").write_bytes(b"1")
    assert free_name(tmp_path, "face.mp4") == tmp_path / "face-2.mp4"
    assert free_name(tmp_path, "input") == tmp_path / "input-2"
    (tmp_path / "face-2.mp4").write_bytes(b"2")
    assert free_name(tmp_path, "face.mp4") == tmp_path / "face-3.mp4"
