"""Generator backends: OpenVINO against torch fp32 eager, the converted-model cache, the fallbacks.

The model is the random checkpoint saved in the official format and read by the real loader;
one conversion serves the module (copied where a test needs its own cache folder).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import openvino
import pytest

from heygem.engine.model import backends, load_checkpoint
from heygem.engine.model.array_runner import ArrayRunner
from heygem.engine.model.backends import (
    DRIFT_BOUND,
    MANIFEST_FILE,
    MODEL_FILE,
    OPENVINO,
    TORCH,
    BackendRequest,
    cached_backend,
    select_backend,
)
from heygem.engine.model.inference import GeneratorRunner, choose_placement
from tests.generator_probe import fixture_input

BATCH = 16
BACKEND_LOGGER = "heygem.engine.model.backends"
PROBE = Path(__file__).resolve().parent / "generator_probe.py"
REPEAT_FRAMES = 20  # one full batch of BATCH and a partial last one
OTHER_BATCH = 7  # the same frames split 7 + 7 + 6


@pytest.fixture(scope="module")
def model(checkpoint_file):
    return load_checkpoint(checkpoint_file, "cpu")


STALE_ENTRY = "wav2lip_gan-0123456789abcdef-openvino1.0.0-fp32"  # an older checkpoint's conversion


@pytest.fixture(scope="module")
def first_load(tmp_path_factory, checkpoint_file, model) -> tuple[Path, int]:
    """The module's one conversion, into a cache folder that holds a stale entry: (folder, conversions)."""
    folder = tmp_path_factory.mktemp("converted")
    (folder / STALE_ENTRY).mkdir()
    calls = []
    real = backends._convert
    backends._convert = lambda *args: calls.append(1) or real(*args)
    try:
        backend = select_backend(model, _request(checkpoint_file, folder, backend=OPENVINO))
    finally:
        backends._convert = real
    assert backend.name == OPENVINO
    return folder, len(calls)


@pytest.fixture
def converted(first_load) -> Path:
    return first_load[0]


def _request(
    checkpoint: Path, *cache_dirs: Path, backend: str = "auto", precision: str = "auto"
) -> BackendRequest:
    torch_precision = "fp32" if precision == "auto" else precision
    return BackendRequest(backend, precision, torch_precision, "cpu", checkpoint, cache_dirs)


def _own_cache(converted: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "cache"
    shutil.copytree(converted, folder)
    return folder


def _entry(folder: Path) -> Path:
    (entry,) = [path for path in folder.iterdir() if path.is_dir()]
    return entry


def _recorded_drift(folder: Path) -> dict[str, int]:
    manifest = json.loads((_entry(folder) / MANIFEST_FILE).read_text())
    return manifest.get("drift", {})


def _forget_drift(folder: Path) -> None:
    """Make the entry look like one written before drift was recorded."""
    path = _entry(folder) / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest.pop("drift", None)
    path.write_text(json.dumps(manifest))


def _warnings(caplog) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == BACKEND_LOGGER
    ]


def _fixture_batches(face_video: Path, speech_wav: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every frame of the fixture video cropped to the generator's face, with its mel window."""
    return fixture_input(face_video, speech_wav)


# -- precision: the default path is held to fp32 eager ------------------------------------------------
def test_default_openvino_path_within_one_grey_level_of_fp32_eager_over_the_fixture_video(
    model, converted, checkpoint_file, face_video, speech_wav
):
    backend = select_backend(model, _request(checkpoint_file, converted))
    core = openvino.Core()
    native_bf16 = "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert backend.name == OPENVINO
    assert backend.precision == ("bf16" if native_bf16 else "fp32")

    windows, crops = _fixture_batches(face_video, speech_wav)
    placement = choose_placement("cpu", "fp32")
    eager = GeneratorRunner(model, placement, BATCH).infer(windows, crops)
    served = GeneratorRunner(model, placement, BATCH, backend).infer(windows, crops)

    assert served.shape == eager.shape == (len(crops), 96, 96, 3) and served.dtype == np.uint8
    drift = np.abs(served.astype(np.int16) - eager.astype(np.int16)).max()
    assert drift <= DRIFT_BOUND
    assert (served != crops).mean() > 0.5  # the network really redrew the faces


def test_explicit_precisions_are_served_and_measured(model, converted, checkpoint_file):
    exact = select_backend(model, _request(checkpoint_file, converted, precision="fp32"))
    fast = select_backend(model, _request(checkpoint_file, converted, precision="bf16"))
    assert (exact.name, exact.precision) == (OPENVINO, "fp32")
    assert exact.drift is not None and exact.drift <= DRIFT_BOUND
    assert fast.name == OPENVINO and fast.drift is not None
    assert f"{fast.drift} grey level" in fast.label
    half = select_backend(model, _request(checkpoint_file, converted, precision="fp16"))
    assert (half.name, half.precision) == (OPENVINO, "fp32")  # fp16 on a CPU is fp32, as with torch


def _probe(checkpoint: Path, cache: Path, video: Path, audio: Path, batch: int) -> dict:
    argv = [sys.executable, str(PROBE), "--checkpoint", str(checkpoint), "--cache-dir", str(cache)]
    argv += ["--video", str(video), "--audio", str(audio), "--precision", "bf16"]
    argv += ["--batch-size", str(batch), "--frames", str(REPEAT_FRAMES)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_bf16_gives_the_same_bytes_in_separate_processes_whatever_the_batch_split(
    model, converted, checkpoint_file, face_video, speech_wav
):
    """Run to run, the bf16 network output is bit-identical: a fresh process and compile each time,
    a full batch then a partial last one, or another split of the same frames (docs/backends.md)."""
    checked = select_backend(
        model, _request(checkpoint_file, converted, precision="bf16")
    )  # records its drift
    first, second = (_probe(checkpoint_file, converted, face_video, speech_wav, BATCH) for _ in range(2))
    assert first["precision"] == checked.precision  # bf16 where the CPU computes it natively
    assert first["batches"] == [BATCH, REPEAT_FRAMES - BATCH]
    assert second == first
    other_split = _probe(checkpoint_file, converted, face_video, speech_wav, OTHER_BATCH)
    assert other_split["batches"] == [OTHER_BATCH, OTHER_BATCH, REPEAT_FRAMES - 2 * OTHER_BATCH]
    assert (other_split["network"], other_split["mouths"]) == (first["network"], first["mouths"])


def test_auto_keeps_fp32_when_bf16_drifts_past_the_bound(
    model, converted, checkpoint_file, monkeypatch, tmp_path
):
    real = backends.grey_drift
    calls: list[int] = []

    def bf16_worse(generated, reference):
        calls.append(1)
        return real(generated, reference) if len(calls) == 1 else DRIFT_BOUND + 5  # the second is bf16

    monkeypatch.setattr(backends, "_openvino_precision", lambda core, requested: "bf16")
    monkeypatch.setattr(backends, "GENERATOR", dataclasses.replace(backends.GENERATOR, drift=bf16_worse))
    cache = _own_cache(converted, tmp_path)  # the bad bf16 drift is recorded in the entry
    backend = select_backend(model, _request(checkpoint_file, cache))
    assert (backend.name, backend.precision) == (OPENVINO, "fp32")
    assert len(calls) == 2
    assert _recorded_drift(cache)["bf16"] == DRIFT_BOUND + 5
    # A later start without torch applies the same policy to what was recorded.
    fast = cached_backend(_request(checkpoint_file, cache))
    assert fast is not None and (fast.name, fast.precision) == (OPENVINO, "fp32")


# -- the cache of converted models --------------------------------------------------------------------
def test_second_load_reuses_the_converted_model(model, converted, checkpoint_file, tmp_path, conversions):
    cache = _own_cache(converted, tmp_path)
    entry = _entry(cache)
    assert entry.name.startswith("wav2lip_gan-") and backends._openvino_version() in entry.name
    stamps = {path.name: path.stat().st_mtime_ns for path in entry.iterdir()}

    for _ in range(2):
        assert select_backend(model, _request(checkpoint_file, cache)).name == OPENVINO

    assert conversions == []
    assert {path.name: path.stat().st_mtime_ns for path in entry.iterdir()} == stamps


# -- the fast start: a verified entry serves without torch ----------------------------------------------
@pytest.mark.parametrize("precision", ["auto", "fp32", "bf16"])
def test_an_entry_without_recorded_drift_goes_the_checked_way_then_serves_without_torch(
    model, converted, checkpoint_file, face_video, speech_wav, tmp_path, precision
):
    cache = _own_cache(converted, tmp_path)
    _forget_drift(cache)
    request = _request(checkpoint_file, cache, precision=precision)
    assert cached_backend(request) is None  # unverified: only the torch-checked path may serve it

    checked = select_backend(model, request)
    recorded = _recorded_drift(cache)
    assert recorded["fp32"] <= DRIFT_BOUND and recorded.get(checked.precision) == checked.drift

    fast = cached_backend(request)
    assert fast is not None
    assert (fast.name, fast.precision, fast.drift) == (checked.name, checked.precision, checked.drift)
    windows, crops = _fixture_batches(face_video, speech_wav)
    served = ArrayRunner(fast.forward, BATCH).infer(windows, crops)
    through_torch_runner = GeneratorRunner(model, choose_placement("cpu", "fp32"), BATCH, checked).infer(
        windows, crops
    )
    assert served.dtype == np.uint8 and served.shape == through_torch_runner.shape
    assert np.abs(served.astype(np.int16) - through_torch_runner.astype(np.int16)).max() <= DRIFT_BOUND
    if fast.precision == "fp32":
        np.testing.assert_array_equal(served, through_torch_runner)


def test_a_precision_never_checked_is_left_to_the_torch_path(converted, checkpoint_file, tmp_path):
    cache = _own_cache(converted, tmp_path)
    path = _entry(cache) / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "drift": {"fp32": 0}}))
    assert cached_backend(_request(checkpoint_file, cache, precision="bf16")) is None
    exact = cached_backend(_request(checkpoint_file, cache, precision="fp32"))
    assert exact is not None and (exact.precision, exact.drift) == ("fp32", 0)


def test_an_unsound_or_foreign_request_is_never_served_from_the_entry(converted, checkpoint_file, tmp_path):
    cache = _own_cache(converted, tmp_path)
    path = _entry(cache) / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "drift": {"fp32": DRIFT_BOUND + 1, "bf16": 0}}))
    assert cached_backend(_request(checkpoint_file, cache)) is None  # fp32 itself drifted: rebuild via torch
    assert cached_backend(_request(checkpoint_file, cache, backend=TORCH)) is None
    gpu = BackendRequest("auto", "auto", "fp16", "cuda", checkpoint_file, (cache,))
    assert cached_backend(gpu) is None


def test_first_load_converts_once_writes_a_whole_entry_and_drops_the_stale_one(first_load):
    folder, conversions = first_load
    assert conversions == 1
    assert [path.name for path in folder.iterdir()] == [_entry(folder).name]  # no scratch, no stale entry
    assert {MODEL_FILE, MANIFEST_FILE, "model.bin"} <= {path.name for path in _entry(folder).iterdir()}


@pytest.mark.parametrize("damage", ["truncated", "garbage weights"])
def test_a_damaged_cache_entry_is_rebuilt_not_fatal(
    model, converted, checkpoint_file, tmp_path, conversions, caplog, damage
):
    cache = _own_cache(converted, tmp_path)
    weights = _entry(cache) / "model.bin"
    data = weights.read_bytes()
    if damage == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    else:  # same size, so only the check against torch can tell
        weights.write_bytes(np.random.default_rng(1).bytes(len(data)))

    with caplog.at_level(logging.INFO, logger=BACKEND_LOGGER):
        backend = select_backend(model, _request(checkpoint_file, cache))

    assert backend.name == OPENVINO and backend.drift is not None and backend.drift <= DRIFT_BOUND
    assert len(conversions) == 1
    assert len(_warnings(caplog)) == 1 and "converting again" in _warnings(caplog)[0]
    assert weights.read_bytes() == (_entry(converted) / "model.bin").read_bytes()  # rebuilt in place


def test_an_unwritable_cache_still_serves_openvino(model, checkpoint_file, tmp_path, conversions, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.INFO, logger=BACKEND_LOGGER):
        backend = select_backend(model, _request(checkpoint_file, blocker / "cache"))
    assert backend.name == OPENVINO and len(conversions) == 1
    assert _warnings(caplog) == [
        "no writable cache folder for the converted model; it is converted at every start"
    ]


# -- fallbacks: torch with one warning, never a failed job -----------------------------------------
def test_openvino_that_does_not_import_falls_back_to_torch_with_one_warning(
    model, checkpoint_file, tmp_path, monkeypatch, caplog
):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    with caplog.at_level(logging.INFO, logger=BACKEND_LOGGER):
        named = select_backend(model, _request(checkpoint_file, tmp_path, backend=OPENVINO))
    assert (named.name, named.forward) == (TORCH, None)
    assert len(_warnings(caplog)) == 1 and "openvino is not installed" in _warnings(caplog)[0]

    caplog.clear()
    with caplog.at_level(logging.INFO, logger=BACKEND_LOGGER):
        auto = select_backend(model, _request(checkpoint_file, tmp_path))
    assert auto.name == TORCH and _warnings(caplog) == []  # auto without openvino is not a fault


def test_a_broken_runtime_falls_back_to_torch_with_one_warning(
    model, checkpoint_file, tmp_path, monkeypatch, caplog
):
    def broken_core():
        raise RuntimeError("Cannot load library 'libopenvino_intel_cpu_plugin.so'\nmore detail")

    monkeypatch.setattr(openvino, "Core", broken_core)
    with caplog.at_level(logging.INFO, logger=BACKEND_LOGGER):
        backend = select_backend(model, _request(checkpoint_file, tmp_path))
    assert (backend.name, backend.precision, backend.drift) == (
        TORCH,
        "fp32",
        0,
    )  # fp32 eager is the reference
    assert _warnings(caplog) == [
        "backend openvino unavailable for the generator"
        " (Cannot load library 'libopenvino_intel_cpu_plugin.so'); using torch"
    ]


def test_openvino_on_a_gpu_device_gives_torch_and_one_warning(model, checkpoint_file, tmp_path, caplog):
    request = BackendRequest(OPENVINO, "auto", "fp16", "cuda", checkpoint_file, (tmp_path,))
    with caplog.at_level(logging.INFO, logger=BACKEND_LOGGER):
        backend = select_backend(model, request)
    assert (backend.name, backend.precision) == (TORCH, "fp16")
    assert _warnings(caplog) == [
        "backend openvino runs on the CPU only; using torch on cuda for the generator"
    ]
    assert not any(tmp_path.iterdir())  # nothing converted


def test_torch_requested_never_touches_openvino(model, checkpoint_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    backend = select_backend(model, _request(checkpoint_file, tmp_path, backend=TORCH, precision="bf16"))
    assert (backend.name, backend.precision, backend.forward) == (TORCH, "bf16", None)
    assert backend.drift is not None and f"{backend.drift} grey level" in backend.label  # autocast, measured
