"""Job file layout helpers: atomic moves (also across file systems) and scratch clean-up."""

from __future__ import annotations

import errno
import os

from heygem.jobs import files as job_files


def test_move_atomic_within_one_file_system(tmp_path):
    source = tmp_path / "scratch" / "out.mp4"
    source.parent.mkdir()
    source.write_bytes(b"video" * 1000)
    dest = job_files.move_atomic(source, tmp_path / "outputs" / "job" / "result.mp4")
    assert dest.read_bytes() == b"video" * 1000 and not source.exists()


def test_move_atomic_across_file_systems_stages_beside_the_target(tmp_path, monkeypatch):
    source = tmp_path / "out.mp4"
    source.write_bytes(b"video" * 1000)
    dest = tmp_path / "outputs" / "result.mp4"
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        calls.append((os.fspath(src), os.fspath(dst)))
        if len(calls) == 1:  # the direct rename: pretend the folders are on different devices
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_replace(src, dst)

    monkeypatch.setattr(job_files.os, "replace", replace)
    job_files.move_atomic(source, dest)
    assert dest.read_bytes() == b"video" * 1000 and not source.exists()
    staged = os.path.basename(calls[1][0])
    assert staged.startswith(job_files.TEMP_PREFIX) and calls[1][1] == str(dest)
    assert [p.name for p in dest.parent.iterdir()] == ["result.mp4"]


def test_remove_scratch_keeps_a_sibling_run(settings):
    first = job_files.scratch_dir(settings, "job", "run1")
    second = job_files.scratch_dir(settings, "job", "run2")
    for folder in (first, second):
        folder.mkdir(parents=True)
        (folder / "input.wav").write_bytes(b"x")
    job_files.remove_scratch(first)
    assert not first.exists() and second.exists()
    job_files.remove_scratch(second)
    assert not second.parent.exists()
