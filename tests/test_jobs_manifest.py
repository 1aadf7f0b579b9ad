"""Batch manifests: parsing and path rules, server submission, and the CLI's run_manifest."""

from __future__ import annotations

import json
import shutil

import pytest

from heygem.errors import ForbiddenPathError, InputError
from heygem.jobs import files as job_files
from heygem.jobs.manifest import parse_manifest
from heygem.jobs.records import JobStatus
from heygem.jobs.runner import run_manifest
from heygem.jobs.tenancy import LOCAL
from tests import media
from tests.kit import WAIT_S, FakePipeline, Pipelines, running_service


def write_manifest(path, *lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines))
    return path


@pytest.fixture
def project(tmp_path, speech_wav, face_video):
    """A user's folder with media next to the manifest, outside any server root."""
    folder = tmp_path / "project"
    (folder / "media").mkdir(parents=True)
    shutil.copy(speech_wav, folder / "media" / "speech.wav")
    shutil.copy(face_video, folder / "media" / "face.mp4")
    (folder / "media" / "corrupt.mp4").write_bytes(b"\x00garbage" * 256)
    return folder


# --- parsing -------------------------------------------------------------------------------------
def test_relative_paths_resolve_against_the_manifest_folder(project):
    manifest = write_manifest(
        project / "m.jsonl",
        {"audio": "media/speech.wav", "video": "media/face.mp4", "output_name": "first"},
        "",
        {"audio": str(project / "media" / "speech.wav"), "video": "s3://bucket/avatars/face.mp4"},
    )
    items = parse_manifest(manifest, [project])
    assert [item.line for item in items] == [1, 3]
    assert items[0].audio == str((project / "media" / "speech.wav").resolve())
    assert items[0].output_name == "first.mp4"
    assert items[1].video == "s3://bucket/avatars/face.mp4"  # storage checks remote references
    assert items[1].output_name == "0003_face_speech.mp4"
    assert items[0].as_item() == {
        "audio": items[0].audio,
        "video": items[0].video,
        "output_name": "first.mp4",
    }


def test_only_references_written_as_urls_pass_through_unresolved(project):
    manifest = write_manifest(
        project / "m.jsonl",
        {"audio": "http://example.com/a.wav?sig=1", "video": "jar:file:///media/face.mp4"},
    )
    (item,) = parse_manifest(manifest, [project])
    assert item.audio == "http://example.com/a.wav?sig=1"  # storage refuses it when it is fetched
    # Not a URL scheme storage knows how to read: a relative path, held to the manifest's folder.
    assert item.video == str((project / "jar:file:/media/face.mp4").resolve())


def test_an_item_with_a_refused_scheme_fails_alone(settings, project, tmp_path):
    manifest = write_manifest(
        project / "m.jsonl",
        {"audio": "http://example.com/a.wav?sig=secret", "video": "media/face.mp4", "output_name": "bad"},
        {"audio": "media/speech.wav", "video": "media/face.mp4", "output_name": "good"},
    )
    updates = []
    summary = run_manifest(
        settings, manifest, tmp_path / "out", pipeline=FakePipeline(settings), on_progress=updates.append
    )
    assert [r.status for r in summary.results] == ["failed", "succeeded"]
    assert summary.results[0].error == (
        "unsupported reference http://example.com/a.wav?...; use s3://, obs://, https:// or a local path"
    )
    assert next(u.stage for u in updates if u.index == 2) == "fetch"


@pytest.mark.parametrize(
    ("line", "error", "message"),
    [
        (
            {"audio": "../../etc/passwd", "video": "media/face.mp4"},
            ForbiddenPathError,
            r"^manifest line 2: \.\./\.\./etc/passwd is outside the allowed input folders$",
        ),
        (
            {"audio": "/etc/passwd", "video": "media/face.mp4"},
            ForbiddenPathError,
            r"^manifest line 2: /etc/passwd is outside the allowed input folders$",
        ),
        (
            {"audio": "media/speech.wav", "video": "media/face.mp4", "output_name": "x/y.mp4"},
            ForbiddenPathError,
            r"^manifest line 2: output_name 'x/y.mp4' must be a plain file name",
        ),
        (
            {"audio": "media/speech.wav", "video": "media/face.mp4", "output_name": "..\\evil"},
            ForbiddenPathError,
            "^manifest line 2: output_name",
        ),
        ({"audio": "media/speech.wav"}, InputError, "^manifest line 2: 'video' is missing"),
        (
            {"audio": "media/speech.wav", "video": "media/face.mp4", "vidoe": "x"},
            InputError,
            "^manifest line 2: unknown key",
        ),
        ("{not json", InputError, r"^manifest line 2: not valid JSON"),
        ('["a", "b"]', InputError, "^manifest line 2: expected an object"),
        (
            {"audio": "media/speech.wav", "video": "media/face.mp4", "output_name": "ok"},
            InputError,
            "^manifest line 2: output_name 'ok.mp4' is already used on line 1",
        ),
    ],
)
def test_bad_lines_are_rejected_naming_the_line(project, line, error, message):
    good = {"audio": "media/speech.wav", "video": "media/face.mp4", "output_name": "ok"}
    manifest = write_manifest(project / "m.jsonl", good, line)
    with pytest.raises(error, match=message):
        parse_manifest(manifest, [project])


def test_symlink_out_of_the_roots_is_rejected(project, tmp_path):
    (tmp_path / "secret.wav").write_bytes(b"x")
    (project / "media" / "link.wav").symlink_to(tmp_path / "secret.wav")
    manifest = write_manifest(project / "m.jsonl", {"audio": "media/link.wav", "video": "media/face.mp4"})
    with pytest.raises(ForbiddenPathError, match="^manifest line 1: media/link.wav is outside"):
        parse_manifest(manifest, [project])


def test_empty_or_missing_manifest(project):
    with pytest.raises(InputError, match="no items"):
        parse_manifest(write_manifest(project / "empty.jsonl", "", "  "), [project])
    with pytest.raises(InputError, match="manifest not found"):
        parse_manifest(project / "nope.jsonl", [project])


def test_a_manifest_submitted_to_the_server_uses_the_server_roots(settings, project):
    folder = settings.inputs_dir / "upload"
    shutil.copytree(project / "media", folder / "media")
    manifest = write_manifest(
        folder / "batch.jsonl",
        {"audio": "media/speech.wav", "video": "media/face.mp4", "output_name": "a"},
        {"audio": "media/speech.wav", "video": "media/corrupt.mp4", "output_name": "b"},
    )
    outside = write_manifest(project / "m.jsonl", {"audio": "media/speech.wav", "video": "media/face.mp4"})
    with pytest.raises(ForbiddenPathError):  # the user's folder is not a server root
        parse_manifest(outside, settings.allowed_input_roots)
    items = parse_manifest(manifest, settings.allowed_input_roots)
    with running_service(settings, Pipelines()) as service:
        batch = service.submit_batch([item.as_item() for item in items], principal=LOCAL, uploaded=[folder])
        results = [service.wait(item.id, WAIT_S, principal=LOCAL) for item in batch.items]
    assert [job.status for job in results] == [JobStatus.SUCCEEDED, JobStatus.FAILED]
    assert results[0].output_path.name == "a.mp4"


# --- run_manifest (the CLI's batch command) ------------------------------------------------------
def test_run_manifest_isolates_failures_and_resumes(settings, project, tmp_path):
    manifest = write_manifest(
        project / "m.jsonl",
        {"audio": "media/speech.wav", "video": "media/face.mp4", "output_name": "one"},
        {"audio": "media/speech.wav", "video": "media/corrupt.mp4", "output_name": "two"},
        {"audio": "media/speech.wav", "video": "media/face.mp4"},
    )
    out = tmp_path / "out"
    pipeline = FakePipeline(settings)
    updates = []
    summary = run_manifest(settings, manifest, out, pipeline=pipeline, on_progress=updates.append)

    assert [r.status for r in summary.results] == ["succeeded", "failed", "succeeded"]
    assert not summary.ok
    assert [r.describe() for r in summary.failed] == [
        "line 2 (two.mp4): failed: corrupt.mp4: no video stream that ffmpeg can read"
    ]
    assert sorted(p.name for p in out.iterdir()) == ["0003_face_speech.mp4", "one.mp4"]
    assert sorted(media.stream_types(out / "one.mp4")) == ["audio", "video"]
    finals = [u for u in updates if u.result is not None]
    assert [(u.index, u.count, u.stage) for u in finals] == [
        (1, 3, "succeeded"),
        (2, 3, "failed"),
        (3, 3, "succeeded"),
    ]
    assert any(u.stage == "synthesize" and 0 < u.fraction < 1 for u in updates)

    again = run_manifest(settings, manifest, out, pipeline=pipeline)
    assert [r.status for r in again.results] == ["skipped", "failed", "skipped"]
    assert again.describe().splitlines() == [
        "3 item(s): 0 succeeded, 2 skipped (output exists), 1 failed",
        "  line 2 (two.mp4): failed: corrupt.mp4: no video stream that ffmpeg can read",
    ]
    assert len(pipeline.runs) == 4  # three in the first run, only the failed item in the second

    shutil.copy(project / "media" / "face.mp4", project / "media" / "corrupt.mp4")
    fixed = run_manifest(settings, manifest, out, pipeline=pipeline)
    assert fixed.ok and [r.status for r in fixed.results] == ["skipped", "succeeded", "skipped"]
    assert fixed.describe() == "3 item(s): 1 succeeded, 2 skipped (output exists), 0 failed"


def test_run_manifest_never_leaves_a_partial_output(settings, project, tmp_path):
    class Interrupted(FakePipeline):
        def run(self, audio, face, output, options=None, on_progress=None):
            output.write_bytes(b"half a video")
            raise RuntimeError("power cut")

    manifest = write_manifest(project / "m.jsonl", {"audio": "media/speech.wav", "video": "media/face.mp4"})
    out = tmp_path / "out"
    out.mkdir()
    (out / job_files.temp_name()).mkdir()  # left by an earlier killed run
    summary = run_manifest(settings, manifest, out, pipeline=Interrupted(settings))
    assert summary.results[0].error == "internal error: RuntimeError: power cut"
    assert list(out.iterdir()) == []


def test_run_manifest_rejects_paths_outside_before_any_work(settings, project, tmp_path):
    (tmp_path / "elsewhere.wav").write_bytes(b"x")
    manifest = write_manifest(
        project / "m.jsonl",
        {"audio": "media/speech.wav", "video": "media/face.mp4"},
        {"audio": "../elsewhere.wav", "video": "media/face.mp4"},
    )
    pipeline = FakePipeline(settings)
    with pytest.raises(ForbiddenPathError, match="^manifest line 2: ../elsewhere.wav is outside"):
        run_manifest(settings, manifest, tmp_path / "out", pipeline=pipeline)
    assert pipeline.runs == [] and not pipeline.loaded


def test_run_manifest_rejects_bad_options(settings, project, tmp_path):
    manifest = write_manifest(project / "m.jsonl", {"audio": "media/speech.wav", "video": "media/face.mp4"})
    with pytest.raises(InputError, match="unknown option"):
        run_manifest(
            settings, manifest, tmp_path / "out", options={"bogus": 1}, pipeline=FakePipeline(settings)
        )


def test_shown_references_drop_url_queries():
    from heygem.jobs.manifest import shown_ref

    assert (
        shown_ref("https://cdn.example.com/a.wav?X-Amz-Signature=secret") == "https://cdn.example.com/a.wav"
    )
    assert shown_ref("/data/inputs/what?.wav") == "/data/inputs/what?.wav"
