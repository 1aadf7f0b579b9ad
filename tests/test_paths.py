from __future__ import annotations

import os

import pytest

from heygem.errors import ForbiddenPathError, InputError
from heygem.storage.paths import MAX_OUTPUT_NAME, resolve_under, safe_output_name


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
    [("clip", "clip.mp4"), ("clip.mp4", "clip.mp4"), ("Clip.MP4", "Clip.MP4"), ("a.mov", "a.mov.mp4"),
     ("说话 1", "说话 1.mp4")],
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
