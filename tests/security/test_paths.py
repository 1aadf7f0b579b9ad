"""Issue 12, observed items 5, 6, 13-16, 19, 20 and "What it must do" 4 (paths and outputs): each
attack against the job layer and storage, proved refused. Real files, real SQLite."""

from __future__ import annotations

import errno
import shutil
import threading
from pathlib import Path

import pytest

from heygem import storage
from heygem.errors import DiskFullError, ForbiddenPathError, InputError
from heygem.jobs import execute
from heygem.jobs.records import JobStatus
from heygem.jobs.tenancy import LOCAL, Principal
from heygem.settings import Settings
from tests.jobs_support import place_inputs
from tests.kit import WAIT_S, Pipelines, running_service

ALICE = Principal("team-a")


@pytest.fixture
def inputs(settings, speech_wav, face_video):
    return place_inputs(settings, speech_wav, face_video)


def gated():
    return Pipelines(gate=threading.Event())


def staged(settings, name, *sources):
    """An upload folder under inputs/, as the web layer makes one per request."""
    folder = settings.inputs_dir / name
    folder.mkdir(parents=True)
    return folder, [Path(shutil.copy(source, folder / source.name)) for source in sources]


# --- 6: the data folder is never an input or output root -----------------------------------------
def test_the_compat_root_is_not_the_data_folder(settings):
    assert settings.resolved_compat_root == settings.data_dir / "compat"
    assert not settings.compat_enabled
    assert settings.data_dir not in settings.allowed_input_roots
    assert settings.replace(compat_port=8383).compat_enabled


@pytest.mark.parametrize(
    "ref",
    [
        "../heygem.db",
        "../heygem.db-wal",
        "../outputs/x/result.mp4",
        "../cache/tracks/k.json",
        "../models/wav2lip.pth",
        "../jobs/j/r/a.wav",
    ],
)
def test_the_data_folders_own_files_are_never_inputs(settings, inputs, ref):
    target = (settings.inputs_dir / ref).resolve()
    if "heygem.db" not in ref:  # the service makes the real database (and its -wal) itself
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"secret")
    # Even when an operator (or the old compat default) makes the data folder an input root.
    for roots in ((), (settings.data_dir,)):
        widened = settings.replace(input_roots=roots)
        with running_service(widened, gated()) as service:
            with pytest.raises(ForbiddenPathError):
                service.submit(ref, str(inputs.video), principal=LOCAL)
            with pytest.raises(ForbiddenPathError):
                service.submit(str(target), str(inputs.video), principal=LOCAL)
        with pytest.raises(ForbiddenPathError):
            storage.fetch_input(str(target), settings.data_dir / "scratch", widened)


def test_outputs_can_never_be_written_into_the_data_folder(settings, inputs):
    widened = settings.replace(input_roots=(settings.data_dir,))
    with running_service(widened, gated()) as service:
        for prefix in (
            settings.data_dir,
            settings.outputs_dir,
            settings.inputs_dir,
            settings.inputs_dir / "someone",
            settings.outputs_dir / "x",
            settings.data_dir / "cache",
            "outputs",
            "../",
        ):
            with pytest.raises(ForbiddenPathError):
                service.submit(
                    str(inputs.audio), str(inputs.video), output_prefix=str(prefix), principal=LOCAL
                )
    with pytest.raises(ForbiddenPathError):
        storage.publish_output(inputs.video, str(settings.data_dir), widened, name="heygem.db")
    assert inputs.video.exists()


def test_the_compat_folder_inside_the_data_folder_stays_usable(settings, inputs):
    compat = settings.resolved_compat_root
    (compat / "temp").mkdir(parents=True)
    shutil.copy(inputs.audio, compat / "temp" / "a.wav")
    widened = settings.replace(input_roots=(compat,))
    with running_service(widened, gated()) as service:
        job = service.submit(
            str(compat / "temp" / "a.wav"),
            str(inputs.video),
            output_prefix=str(compat / "temp"),
            principal=LOCAL,
        )
    assert job.output_prefix == str((compat / "temp").resolve())


# --- 5 and 15: uploads belong to the request that staged them ----------------------------------
def test_another_requests_upload_is_not_an_input(settings, speech_wav, face_video):
    theirs, (their_audio, their_video) = staged(settings, "a" * 32, speech_wav, face_video)
    mine, (my_audio, my_video) = staged(settings, "b" * 32, speech_wav, face_video)
    with running_service(settings, gated()) as service:
        with pytest.raises(ForbiddenPathError, match="belongs to another upload"):
            service.submit(str(their_audio), str(my_video), principal=ALICE, uploaded=[mine])
        with pytest.raises(ForbiddenPathError, match="belongs to another upload"):
            service.submit(f"{'a' * 32}/speech.wav", str(my_video), principal=ALICE)
        with pytest.raises(ForbiddenPathError, match="item 1: .*belongs to another upload"):
            service.submit_batch(
                [{"audio": str(my_audio), "video": str(their_video)}], principal=ALICE, uploaded=[mine]
            )
        job = service.submit(str(my_audio), str(my_video), principal=ALICE, uploaded=[mine])
        assert job.uploads == (str(mine.resolve()),)
    with pytest.raises(InputError, match="inputs folder"):
        with running_service(settings, gated()) as service:
            service.submit(str(my_audio), str(my_video), principal=ALICE, uploaded=[settings.data_dir])


def test_deleting_a_job_keeps_files_it_only_referenced(settings, inputs, speech_wav, face_video):
    upload, (audio, _video) = staged(settings, "c" * 32, speech_wav, face_video)
    with running_service(settings, Pipelines()) as service:
        referencing = service.submit(str(inputs.audio), str(inputs.video), principal=LOCAL)
        uploading = service.submit(str(audio), str(inputs.video), principal=LOCAL, uploaded=[upload])
        for job in (referencing, uploading):
            service.wait(job.id, WAIT_S, principal=LOCAL)
            service.delete(job.id, principal=LOCAL)
    assert inputs.audio.exists() and inputs.video.exists()  # the operator's files
    assert not upload.exists()  # what the job uploaded (its whole folder) went with it


def test_a_replayed_submit_removes_its_newly_staged_upload(settings, speech_wav, face_video):
    first, (audio1, video1) = staged(settings, "d" * 32, speech_wav, face_video)
    second, (audio2, video2) = staged(settings, "e" * 32, speech_wav, face_video)
    with running_service(settings, gated()) as service:
        job = service.submit(str(audio1), str(video1), principal=ALICE, idempotency_key="k", uploaded=[first])
        again = service.submit(
            str(audio2), str(video2), principal=ALICE, idempotency_key="k", uploaded=[second]
        )
    assert again.id == job.id
    assert not second.exists()
    assert audio1.exists() and video1.exists()


# --- 5: a local output_prefix never overwrites --------------------------------------------------
def test_a_local_output_prefix_never_replaces_an_existing_file(settings, inputs, tmp_path):
    mount = tmp_path / "mount"
    mount.mkdir()
    victim = mount / "clip.mp4"
    victim.write_bytes(b"someone else's video")
    settings = settings.replace(input_roots=(mount,))
    with running_service(settings, Pipelines()) as service:
        jobs = [
            service.submit(
                str(inputs.audio),
                str(inputs.video),
                output_prefix=str(mount),
                output_name="clip",
                principal=LOCAL,
            )
            for _ in range(2)
        ]
        done = [service.wait(job.id, WAIT_S, principal=LOCAL) for job in jobs]
    assert victim.read_bytes() == b"someone else's video"
    assert [job.status for job in done] == [JobStatus.SUCCEEDED] * 2
    assert sorted(Path(job.output_url).name for job in done) == ["clip-2.mp4", "clip-3.mp4"]
    assert sorted(p.name for p in mount.iterdir()) == ["clip-2.mp4", "clip-3.mp4", "clip.mp4"]


# --- 13 and 20: job JSON and errors without server paths or URL queries ---------------------------
def test_job_json_shows_paths_relative_to_the_data_folder_and_urls_without_queries(settings, inputs):
    url = "https://media.example/clip.wav?X-Amz-Signature=secret&X-Amz-Credential=me"
    settings = settings.replace(url_allowlist=("https://media.example/",))
    with running_service(settings, gated()) as service:
        job = service.submit(url, str(inputs.video), principal=LOCAL)
    view = job.to_dict(settings.data_dir)
    assert view["audio"] == "https://media.example/clip.wav"
    assert view["video"] == "inputs/face.mp4"
    assert "secret" not in str(view) and str(settings.data_dir) not in str(view)
    assert "secret" not in str(job.to_dict())  # the query goes even without data_dir


def test_error_text_in_job_json_names_no_server_path(settings, inputs):
    with running_service(settings, Pipelines()) as service:
        job = service.submit(str(inputs.audio), str(inputs.corrupt), principal=LOCAL)
        done = service.wait(job.id, WAIT_S, principal=LOCAL)
    view = done.to_dict(settings.data_dir)
    assert done.status == JobStatus.FAILED
    assert str(settings.data_dir) not in str(view) and "corrupt.mp4" in view["error"]


# --- 14: the URL allow-list sees decoded paths without dot segments -----------------------------
@pytest.mark.parametrize(
    "url",
    [
        "https://allowed.example/media/../private/x.wav",
        "https://allowed.example/media/%2e%2e/private/x.wav",
        "https://allowed.example/media/%2E%2E%2Fprivate/x.wav",
        "https://allowed.example/media/./../private/x.wav",
        "https://allowed.example/media/..%5Cprivate/x.wav",
        "https://allowed.example/media%2F..%2Fprivate/x.wav",
    ],
)
def test_dot_segments_do_not_pass_the_url_allow_list(settings, url):
    settings = settings.replace(url_allowlist=("https://allowed.example/media/",))
    with pytest.raises(ForbiddenPathError):
        storage.check_reference(url, settings)


def test_the_allow_list_still_admits_its_own_urls(settings):
    settings = settings.replace(url_allowlist=("https://allowed.example/media/",))
    storage.check_reference("https://allowed.example/media/a%20b.wav?sig=1", settings)
    storage.check_reference("https://allowed.example/media/deep/x..y.wav", settings)
    with pytest.raises(ForbiddenPathError):
        storage.check_reference("https://allowed.example/mediafake/x.wav", settings)


# --- 16: OS errors on paths are one-line input errors ---------------------------------------------
@pytest.mark.parametrize("ref", ["a" * 5000, "x/" * 2500 + "a.wav", "inputs-file\udcff.wav"])
def test_os_errors_on_paths_become_one_line_input_errors(settings, inputs, ref):
    with running_service(settings, gated()) as service:
        with pytest.raises(InputError) as refused:
            service.submit(ref, str(inputs.video), principal=LOCAL)
    message = str(refused.value)
    assert "\n" not in message and len(message) < 400


def test_an_overlong_absolute_path_is_refused_without_a_traceback(settings, inputs):
    ref = str(settings.inputs_dir / ("b" * 5000))
    with running_service(settings, gated()) as service:
        with pytest.raises(InputError, match="File name too long|cannot use the path") as refused:
            service.submit(ref, str(inputs.video), principal=LOCAL)
    assert len(str(refused.value)) < 400


# --- 20: a full disk is its own error and names no path ---------------------------------------
def _write_to_full_device(source, destination, length=0):
    """Copy into /dev/full instead: a real ENOSPC from the kernel."""
    with open("/dev/full", "wb") as full:
        full.write(source.read(1024))
        full.flush()


def test_a_full_disk_while_publishing_is_a_disk_full_error(settings, inputs, tmp_path, monkeypatch):
    mount = tmp_path / "mount"
    mount.mkdir()
    settings = settings.replace(input_roots=(mount,))
    monkeypatch.setattr(storage.shutil, "copyfileobj", _write_to_full_device)
    with pytest.raises(DiskFullError) as full:
        storage.publish_output(inputs.video, str(mount), settings, name="out.mp4")
    assert "/" not in str(full.value)
    assert list(mount.iterdir()) == []  # the partial file is gone


def test_a_full_disk_in_a_run_fails_the_job_with_the_disk_full_message(settings, tmp_path):
    try:
        with open("/dev/full", "wb") as full:
            full.write(b"x")
            full.flush()
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
        outcome = execute._failure(
            exc,
            None,
            execute.RunRequest(
                audio="a", video="v", options={}, target=tmp_path / "t.mp4", scratch=tmp_path, job_id="j"
            ),
        )
    assert outcome.status == JobStatus.FAILED
    assert outcome.error == storage.DISK_FULL_MESSAGE


def test_settings_default_compat_root_is_documented_in_its_comment():
    assert Settings().resolved_compat_root.name == "compat"
