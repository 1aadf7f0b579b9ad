"""`python -m heygem` as a user runs it: a real subprocess, real files, exit codes and messages.

Failures must end in exit code 1 and ONE stderr line "heygem: error: ..." that names the problem,
never a traceback. Settings come from HEYGEM_* variables and flags, and flags win.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from heygem.errors import DOWNLOAD_COMMAND
from heygem.settings import Settings
from tests import e2e_media as em
from tests import media

pytestmark = pytest.mark.slow  # `python -m heygem` subprocesses, most of them on the real engine

PROJECT = Path(__file__).resolve().parent.parent
CLI_TIMEOUT_S = 300


def heygem(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HEYGEM_")}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "heygem", *map(str, args)],
        cwd=PROJECT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *names: str) -> str:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("heygem: error: ")
    for name in names:
        assert name in lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def short_speech(work, speech_wav) -> Path:
    return em.cut_audio(speech_wav, work / "speech-0.4s.wav", 0.4)


@pytest.fixture
def folders(tmp_path) -> dict[str, Path]:
    """A data folder and an empty models folder, as flags for one run."""
    models = tmp_path / "models"
    models.mkdir()
    return {"data": tmp_path / "data", "models": models}


def folder_flags(folders: dict[str, Path]) -> list[str]:
    return ["--data-dir", str(folders["data"]), "--models-dir", str(folders["models"])]


# --------------------------------------------------------------------------------------------------
# generate: engine choice, still image, precision, flags over environment


def test_without_weights_generate_uses_preview_and_says_so(short_speech, face_image, folders, tmp_path):
    output = tmp_path / "still.mp4"
    env = {"HEYGEM_DATA_DIR": str(folders["data"]), "HEYGEM_MODELS_DIR": str(folders["models"])}
    proc = heygem(
        "generate",
        "--audio",
        short_speech,
        "--video",
        face_image,
        "--output",
        output,
        "--fps",
        "30",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "engine preview" in proc.stdout
    assert f"no Wav2Lip weights at {folders['models'] / 'wav2lip_gan.pth'}" in proc.stdout
    assert DOWNLOAD_COMMAND in proc.stdout
    assert "\r" not in proc.stderr and "frame/s" not in proc.stderr  # no bars when not a terminal
    assert media.stream_types(output) == ["video", "audio"]
    assert em.frame_rate(output) == Fraction(30)
    assert abs(media.duration_of(output) - media.duration_of(short_speech)) <= 1 / 30 + 1e-3


def test_flags_win_over_environment_bf16_wav2lip(
    short_speech, face_video, folders, checkpoint_file, tmp_path
):
    media.install_checkpoint(checkpoint_file, folders["models"])
    output = tmp_path / "bf16.mp4"
    env = {"HEYGEM_ENGINE": "preview", "HEYGEM_PRECISION": "fp32"}
    proc = heygem(
        "generate",
        "--audio",
        short_speech,
        "--video",
        face_video,
        "--output",
        output,
        *folder_flags(folders),
        "--engine",
        "wav2lip",
        "--precision",
        "bf16",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "engine wav2lip" in proc.stdout
    assert "on cpu bf16" in proc.stdout
    kinds = {s["codec_type"]: s for s in media.probe(output)["streams"]}
    assert kinds["video"]["codec_name"] == "h264" and "audio" in kinds
    assert int(kinds["video"]["nb_frames"]) == 10


def test_generate_on_the_neural_engine_never_imports_librosa(
    short_speech, face_video, folders, checkpoint_file, tmp_path
):
    """The mel is numpy: librosa (seconds and 100+ MiB to import) stays off the generate path."""
    media.install_checkpoint(checkpoint_file, folders["models"])
    output = tmp_path / "nolibrosa.mp4"
    proc = heygem(
        "generate", "--audio", short_speech, "--video", face_video, "--output", output,
        *folder_flags(folders), "--engine", "wav2lip", env={"PYTHONPROFILEIMPORTTIME": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    imported = _imported_modules(proc)
    assert "heygem.engine.audio" in imported and "heygem.engine.model.array_runner" in imported
    assert not {name for name in imported if name.split(".")[0] == "librosa"}
    assert media.stream_types(output) == ["video", "audio"]


def _imported_modules(proc: subprocess.CompletedProcess) -> set[str]:
    """The modules a run imported, from its PYTHONPROFILEIMPORTTIME report on stderr."""
    return {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}


@pytest.mark.slow
@pytest.mark.parametrize("detector", ["haar", "s3fd"])
def test_generate_with_a_checked_openvino_cache_never_imports_torch(
    short_speech, face_video, checkpoint_file, random_s3fd, tmp_path, detector
):
    """The first start converts and checks against torch, recording the drift; the next one
    runs OpenVINO without torch or the torch model, and renders the same frames. With S3FD
    weights (no box: S3FD finds the face) the detector is converted, checked and served so too."""
    models = tmp_path / "models"  # not install_checkpoint: its shared cache may hold a checked entry
    models.mkdir()
    shutil.copy(checkpoint_file, models / checkpoint_file.name)
    if detector == "s3fd":
        shutil.copy(random_s3fd, models / "s3fd.pth")
    outputs, imported, logs = [], [], []
    for run in ("checked", "fast"):
        outputs.append(tmp_path / f"{run}.mp4")
        proc = heygem(
            "generate", "--audio", short_speech, "--video", face_video, "--output", outputs[-1],
            "--data-dir", tmp_path / "data", "--models-dir", models, "--engine", "wav2lip",
            "--precision", "fp32", env={"PYTHONPROFILEIMPORTTIME": "1", "HEYGEM_BACKEND": "openvino"},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        logs.append(proc.stdout + proc.stderr)
        assert "on cpu fp32" in logs[-1]  # the engine line names the precision used
        imported.append({name.split(".")[0] for name in _imported_modules(proc)})
    assert "torch" in imported[0] and "openvino" in imported[0]
    assert "torch" not in imported[1] and "openvino" in imported[1]
    assert f"face detector: {detector} (" in logs[1]
    if detector == "s3fd":
        assert "openvino fp32" in logs[1]
        assert len(list((models / "backend-cache").iterdir())) == 2  # one entry per network
    np.testing.assert_array_equal(media.read_frames(outputs[0]), media.read_frames(outputs[1]))


def test_requested_wav2lip_without_weights_names_path_and_command(
    short_speech, face_video, folders, tmp_path
):
    proc = heygem(
        "generate",
        "--audio",
        short_speech,
        "--video",
        face_video,
        "--output",
        tmp_path / "o.mp4",
        *folder_flags(folders),
        "--engine",
        "wav2lip",
    )
    assert_one_line_error(proc, str(folders["models"] / "wav2lip_gan.pth"), DOWNLOAD_COMMAND)
    assert not (tmp_path / "o.mp4").exists()


# --------------------------------------------------------------------------------------------------
# bad input


@pytest.fixture(scope="module")
def bad_files(work, face_video) -> dict[str, Path]:
    corrupt = work / "corrupt.mp4"
    corrupt.write_bytes(os.urandom(64 * 1024))
    text = work / "notes.mp4"
    text.write_text("these are meeting notes, not a video\n" * 20)
    silent = work / "video-only.mp4"
    em.ffmpeg("-i", str(face_video), "-an", "-c", "copy", str(silent))
    noface = em.write_frames(work / "noface.mp4", em.no_face_frames(10), 256, 256, 25)
    return {"corrupt": corrupt, "text": text, "silent": silent, "noface": noface}


@pytest.mark.parametrize(
    ("case", "names"),
    [
        ("corrupt video", ["corrupt.mp4"]),
        ("text renamed .mp4", ["notes.mp4"]),
        ("audio file without audio", ["video-only.mp4", "no audio stream"]),
        ("missing video", ["missing.mp4", "not found"]),
        ("missing audio", ["missing.wav", "not found"]),
        ("video without a face", ["noface.mp4", "no face"]),
    ],
)
def test_bad_input_fails_with_one_line(case, names, bad_files, short_speech, face_video, folders, tmp_path):
    audio, video = short_speech, face_video
    if case == "corrupt video":
        video = bad_files["corrupt"]
    elif case == "text renamed .mp4":
        video = bad_files["text"]
    elif case == "audio file without audio":
        audio = bad_files["silent"]
    elif case == "missing video":
        video = tmp_path / "missing.mp4"
    elif case == "missing audio":
        audio = tmp_path / "missing.wav"
    else:
        video = bad_files["noface"]
    output = tmp_path / "out.mp4"
    proc = heygem("generate", "--audio", audio, "--video", video, "--output", output, *folder_flags(folders))
    assert_one_line_error(proc, *names)
    assert not output.exists()
    assert not list(tmp_path.glob(".out.mp4*")), "a partial output was left behind"


# --------------------------------------------------------------------------------------------------
# models and settings


def test_models_status_lists_generator_and_detector(folders, checkpoint_file):
    proc = heygem("models", "status", *folder_flags(folders))
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    assert "missing" in rows["generator"]
    assert str(folders["models"] / "wav2lip_gan.pth") in rows["generator"]
    assert "missing" in rows["detector"] and str(folders["models"] / "s3fd.pth") in rows["detector"]

    media.install_checkpoint(checkpoint_file, folders["models"])
    proc = heygem("models", "status", *folder_flags(folders))
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    assert "present" in rows["generator"] and "missing" in rows["detector"]


def test_models_folder_from_environment_and_flag_wins(folders, checkpoint_file, tmp_path):
    media.install_checkpoint(checkpoint_file, folders["models"])
    env = {"HEYGEM_MODELS_DIR": str(folders["models"]), "HEYGEM_DATA_DIR": str(folders["data"])}
    from_env = heygem("models", "status", env=env)
    assert str(folders["models"]) in from_env.stdout and "present" in from_env.stdout
    other = tmp_path / "other-models"
    other.mkdir()
    from_flag = heygem("models", "status", "--models-dir", other, env=env)
    assert str(other / "wav2lip_gan.pth") in from_flag.stdout
    assert "present" not in from_flag.stdout


def test_models_verify_loads_the_checkpoint(folders, checkpoint_file):
    media.install_checkpoint(checkpoint_file, folders["models"])
    proc = heygem("models", "verify", *folder_flags(folders))
    assert proc.returncode == 0, proc.stderr
    checkpoint = folders["models"] / "wav2lip_gan.pth"
    assert f"ok: {checkpoint} loads into the Wav2Lip generator" in proc.stdout
    backend = re.search(
        r"ok: generator backend openvino (bf16|fp32), (\d+) grey level\(s\) from fp32 eager", proc.stdout
    )
    assert backend is not None, proc.stdout
    assert int(backend.group(2)) <= 1
    assert "ok: face detector haar (" in proc.stdout  # no S3FD weights installed


def test_models_verify_reports_the_torch_autocast_drift(folders, checkpoint_file):
    media.install_checkpoint(checkpoint_file, folders["models"])
    proc = heygem("models", "verify", *folder_flags(folders), "--backend", "torch", "--precision", "bf16")
    assert proc.returncode == 0, proc.stderr
    assert re.search(
        r"ok: generator backend torch bf16, \d+ grey level\(s\) from fp32 eager on cpu", proc.stdout
    )


def test_models_verify_without_weights_fails_with_one_line(folders):
    proc = heygem("models", "verify", *folder_flags(folders))
    assert_one_line_error(proc, str(folders["models"] / "wav2lip_gan.pth"), DOWNLOAD_COMMAND)


def test_settings_environment_then_flags():
    env = {"HEYGEM_BATCH_SIZE": "4", "HEYGEM_DEVICE": "cpu", "HEYGEM_PRECISION": "bf16"}
    assert Settings.load(environ={}).batch_size == 0  # auto: the engine picks by device
    from_env = Settings.load(environ=env)
    assert (from_env.batch_size, from_env.device, from_env.precision) == (4, "cpu", "bf16")
    flags = Settings.load(environ=env, argv=["--batch-size", "2", "--precision", "fp32"])
    assert (flags.batch_size, flags.device, flags.precision) == (2, "cpu", "fp32")


def test_bad_setting_is_a_usage_error(folders):
    proc = heygem("models", "status", *folder_flags(folders), env={"HEYGEM_BATCH_SIZE": "lots"})
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("heygem: error: HEYGEM_BATCH_SIZE")
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------------------------------
# per-job flags, generated from the option schema


def parsed_options(*flags: str, settings: Settings | None = None):
    from heygem.cli import _build_parser, _sync_options

    args, rest = _build_parser().parse_known_args(
        ["generate", "--audio", "a.wav", "--video", "v.mp4", "--output", "o.mp4", *flags]
    )
    assert rest == []
    return _sync_options(args, settings or Settings.load(environ={}))


def test_without_flags_the_options_are_the_schema_defaults():
    from heygem.engine.api import SyncOptions

    preview = Settings.load(environ={}, argv=["--engine", "preview"])
    assert parsed_options(settings=preview) == SyncOptions(engine="preview")


def test_todays_flag_spellings_still_work():
    options = parsed_options(
        "--box",
        "10",
        "90",
        "20",
        "80",
        "--pads",
        "1",
        "2",
        "3",
        "4",
        "--no-smooth",
        "--blend",
        "rect",
        "--fps",
        "30",
        "--duration-policy",
        "pingpong",
        "--watermark",
        "AI",
    )
    assert options.box == (10, 90, 20, 80) and options.pads == (1, 2, 3, 4)
    assert options.smooth is False and options.blend == "rect" and options.fps == 30.0
    assert options.duration_policy == "pingpong" and options.watermark == "AI"


def test_face_point_alone_means_the_nearest_face_and_new_flags_parse():
    assert parsed_options("--face-point", "120", "80").face_choice == "nearest"
    assert parsed_options("--face-point", "120", "80").face_point == (120, 80)
    chosen = parsed_options("--face-point", "1", "2", "--face-choice", "largest", "--smooth-window", "9")
    assert (chosen.face_choice, chosen.smooth_window) == ("largest", 9)


def test_a_bad_option_value_is_one_line(short_speech, face_image, folders, tmp_path):
    proc = heygem(
        "generate",
        "--audio",
        short_speech,
        "--video",
        face_image,
        "--output",
        tmp_path / "o.mp4",
        *folder_flags(folders),
        "--fps",
        "0",
    )
    assert_one_line_error(proc, "fps must be between 1 and 120")


# --------------------------------------------------------------------------------------------------
# keys: API keys and UI users


def test_keys_add_prints_the_key_once_and_stores_only_its_hash(tmp_path):
    import hashlib
    import stat

    keys = tmp_path / "conf" / "api-keys"
    first = heygem("keys", "add", "acme", "--file", keys)
    second = heygem("keys", "add", "ops", "--role", "admin", env={"HEYGEM_API_KEYS_FILE": str(keys)})
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    key = first.stdout.strip()
    assert len(first.stdout.splitlines()) == 1 and len(key) >= 40  # stdout: the key alone
    assert "only time" in first.stderr and key not in first.stderr
    text = keys.read_text()
    assert key not in text and second.stdout.strip() not in text
    assert text.splitlines() == [
        f"acme user {hashlib.sha256(key.encode()).hexdigest()}",
        f"ops admin {hashlib.sha256(second.stdout.strip().encode()).hexdigest()}",
    ]
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600


def test_keys_add_user_reads_the_password_from_stdin(tmp_path):
    from heygem.web.identity import parse_users, verify_password

    users = tmp_path / "users"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HEYGEM_")}
    added = subprocess.run(
        [sys.executable, "-m", "heygem", "keys", "add-user", "ann", "acme", "--file", str(users)],
        cwd=PROJECT,
        env=environ,
        input="correct horse\n",
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    (entry,) = parse_users(users.read_text(), "users")
    assert (entry.username, entry.principal.tenant, entry.principal.role) == ("ann", "acme", "user")
    assert "correct horse" not in users.read_text()
    assert verify_password("correct horse", entry.password_hash)
    assert not verify_password("correct horse!", entry.password_hash)


def test_keys_errors_are_one_line(tmp_path):
    assert_one_line_error(heygem("keys", "add", "acme"), "HEYGEM_API_KEYS_FILE")
    assert_one_line_error(heygem("keys", "add", "bad/tenant", "--file", tmp_path / "k"), "bad/tenant")
    assert not (tmp_path / "k").exists()
