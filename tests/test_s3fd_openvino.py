"""S3FD on OpenVINO: the numpy decode against the torch decode, the converted detector against the
torch detector, the cache of converted models, the torch-free start, the fallbacks to torch.

The network has random weights of the exact architecture (tests/conftest.py random_s3fd): its
boxes mean nothing, so what is compared is the decoded anchors and candidate tables. One
conversion serves the module; tests that damage the cache copy it first.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from heygem.engine.faces import detect, s3fd
from heygem.engine.faces.detect import OpenVinoS3FD, S3FDDetector
from heygem.engine.model.backends import MANIFEST_FILE, OPENVINO
from heygem.settings import Settings
from tests.test_gpu_path import synthetic_outputs

BACKEND_LOGGER = "heygem.engine.model.backends"
FRAME_SHAPE = (72, 96, 3)  # small: every level still has anchors
PROJECT = Path(__file__).resolve().parent.parent


def _frames(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, FRAME_SHAPE, np.uint8) for _ in range(count)]


def _settings(weights: Path, data_dir: Path, **changes: object) -> Settings:
    return Settings(data_dir=data_dir, detector_weights=weights, device="cpu", warmup=False).replace(
        **changes
    )


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _entry(weights: Path) -> Path:
    (entry,) = [path for path in (weights.parent / "backend-cache").iterdir() if path.is_dir()]
    return entry


# -- the numpy decode is the torch decode ------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_numpy_decode_gives_the_torch_decode_candidate_table(seed):
    outputs = synthetic_outputs(3, 256, seed)
    on_torch = detect.s3fd_candidates(outputs, 0.5).numpy()
    in_numpy = s3fd.candidate_table([o.numpy() for o in outputs], 0.5)
    assert in_numpy.shape == on_torch.shape
    np.testing.assert_allclose(in_numpy, on_torch, rtol=1e-5, atol=1e-3)
    kept = [s3fd.greedy_nms(table) for table in in_numpy]
    assert sum(len(k) for k in kept) > 0  # the frames hold faces, so the tables are not trivially equal
    for ours, theirs in zip(kept, on_torch):
        np.testing.assert_allclose(ours, s3fd.greedy_nms(theirs), rtol=1e-5, atol=1e-3)


def test_numpy_decode_matches_torch_on_saturated_scores_from_the_network(random_s3fd):
    """Random weights score thousands of anchors at exactly 1.0: equal scores must pick the same
    candidates in the same order on both paths."""
    net = S3FDDetector(random_s3fd, "cpu").torch_module
    with torch.inference_mode():
        outputs = net(torch.from_numpy(s3fd.network_input(np.stack(_frames(2)))))
    on_torch = detect.s3fd_candidates(outputs, 0.5).numpy()
    in_numpy = s3fd.candidate_table([o.numpy() for o in outputs], 0.5)
    assert in_numpy.shape == on_torch.shape
    np.testing.assert_allclose(in_numpy, on_torch, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("shape", [FRAME_SHAPE, (20, 31, 3), (8, 200, 3)])
def test_the_numpy_input_is_the_torch_input(shape):
    frames = np.random.default_rng(1).integers(0, 256, (2, *shape), np.uint8)
    on_torch = detect._s3fd_input(torch.from_numpy(frames)).numpy()
    in_numpy = s3fd.network_input(frames)
    np.testing.assert_array_equal(in_numpy, on_torch)
    assert min(in_numpy.shape[2:]) >= s3fd.S3FD_MIN_SIDE


def test_a_region_smaller_than_the_network_takes_is_searched_not_an_error(random_s3fd):
    """A tiny face's neighbourhood (sparse detection searches near the last faces) is padded:
    the network's fourth pooling cannot take fewer than 32 rows or columns."""
    detector = S3FDDetector(random_s3fd, "cpu")
    tiny = [np.random.default_rng(2).integers(0, 256, (20, 24, 3), np.uint8)]
    found = detector.detect(tiny)
    assert len(found) == 1 and all(np.isfinite([d.x1, d.y1, d.x2, d.y2]).all() for d in found[0])


def test_nan_scores_in_numpy_neither_count_nor_crowd_out_candidates():
    outputs = [o.numpy() for o in synthetic_outputs(1, 256, 0)]
    expected = s3fd.greedy_nms(s3fd.candidate_table(outputs, 0.5)[0])
    poisoned = [o.copy() for o in outputs]
    poisoned[0][:, 1][poisoned[0][:, 1] < 0] = np.nan
    got = s3fd.greedy_nms(s3fd.candidate_table(poisoned, 0.5)[0])
    assert len(expected) > 0
    np.testing.assert_allclose(got, expected, rtol=1e-5)


# -- the converted detector --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def converted(tmp_path_factory, random_s3fd) -> tuple[Path, Path]:
    """The module's one conversion, through create_detector as a job would: (weights, data dir)."""
    models = tmp_path_factory.mktemp("s3fd-models")
    weights = models / "s3fd.pth"
    shutil.copy(random_s3fd, weights)
    data_dir = tmp_path_factory.mktemp("s3fd-data")
    chosen = detect.create_detector(_settings(weights, data_dir, backend=OPENVINO))
    assert isinstance(chosen.inner, OpenVinoS3FD)
    return weights, data_dir


def _own_copy(converted: tuple[Path, Path], tmp_path: Path) -> Path:
    weights, _ = converted
    models = tmp_path / "models"
    shutil.copytree(weights.parent, models)
    return models / weights.name


@pytest.mark.slow
def test_openvino_detector_finds_what_the_torch_detector_finds_within_a_pixel(converted):
    weights, data_dir = converted
    served = detect.create_detector(_settings(weights, data_dir, precision="fp32")).inner
    assert isinstance(served, OpenVinoS3FD) and served.backend.precision == "fp32"
    reference = S3FDDetector(weights, "cpu")
    frames = _frames(2, seed=5)

    batch = s3fd.network_input(np.stack(frames))
    with torch.inference_mode():
        torch_outputs = [o.numpy() for o in reference.torch_module(torch.from_numpy(batch))]
    ov_boxes, ov_scores = s3fd.anchor_boxes(served.backend.forward(batch))
    torch_boxes, torch_scores = s3fd.anchor_boxes(torch_outputs)
    assert np.abs(ov_boxes - torch_boxes).max() <= 1.0  # every anchor of every frame, in pixels
    assert np.abs(ov_scores - torch_scores).max() <= 1e-3

    assert detect.detector_label(served).startswith("s3fd on openvino fp32, ")
    assert detect.detector_label(reference) == "s3fd on torch cpu"
    tiny = [np.random.default_rng(2).integers(0, 256, (20, 24, 3), np.uint8)]
    assert len(served.detect(tiny)[0]) == len(reference.detect(tiny)[0])  # padded alike, no error
    ours, theirs = served.detect(frames), reference.detect(frames)
    for found, expected in zip(ours, theirs):
        assert len(found) > 0 and abs(len(found) - len(expected)) <= max(2, len(expected) // 20)
        best, best_expected = found[0], expected[0]
        np.testing.assert_allclose(
            [best.x1, best.y1, best.x2, best.y2],
            [best_expected.x1, best_expected.y1, best_expected.x2, best_expected.y2],
            atol=1.0,
        )


@pytest.mark.slow
def test_the_check_is_recorded_and_a_second_load_converts_nothing(converted, tmp_path, conversions):
    weights = _own_copy(converted, tmp_path)
    entry = _entry(weights)
    assert entry.name.startswith("s3fd-") and "-s3fd-openvino" in entry.name
    manifest = json.loads((entry / MANIFEST_FILE).read_text())
    assert manifest["network"] == "s3fd" and manifest["drift"]["fp32"] <= detect.S3FD_DRIFT_BOUND
    stamps = {path.name: path.stat().st_mtime_ns for path in entry.iterdir()}

    for backend in ("auto", OPENVINO):
        chosen = detect.create_detector(_settings(weights, tmp_path / "data", backend=backend))
        assert isinstance(chosen.inner, OpenVinoS3FD)
    manifest.pop("drift")
    (entry / MANIFEST_FILE).write_text(json.dumps(manifest))  # unrecorded: the torch-checked way
    rechecked = detect.create_detector(_settings(weights, tmp_path / "data", precision="fp32"))
    assert isinstance(rechecked.inner, OpenVinoS3FD)
    assert conversions == []
    assert json.loads((entry / MANIFEST_FILE).read_text())["drift"]["fp32"] <= detect.S3FD_DRIFT_BOUND
    assert (entry / "model.bin").stat().st_mtime_ns == stamps["model.bin"]


@pytest.mark.slow
def test_a_warm_cache_starts_the_detector_without_torch(converted):
    weights, data_dir = converted
    program = (
        "import sys\n"
        "from pathlib import Path\n"
        "import numpy as np\n"
        "from heygem.engine.faces.detect import create_detector\n"
        "from heygem.settings import Settings\n"
        "settings = Settings(data_dir=Path(sys.argv[2]), detector_weights=Path(sys.argv[1]), device='auto')\n"
        "detector = create_detector(settings)\n"
        "faces = detector.detect([np.random.default_rng(0).integers(0, 256, (72, 96, 3), np.uint8)])\n"
        "print(type(detector.inner).__name__, len(faces[0]) > 0, 'torch' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", program, str(weights), str(data_dir)],
        capture_output=True, text=True, timeout=120, cwd=PROJECT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["OpenVinoS3FD", "True", "False"]


# -- fallbacks: torch with one warning ----------------------------------------------------------------
@pytest.mark.slow
def test_a_damaged_entry_is_rebuilt_and_still_serves(converted, tmp_path, conversions, caplog):
    weights = _own_copy(converted, tmp_path)
    entry = _entry(weights)
    model_bin = entry / "model.bin"
    original = model_bin.read_bytes()
    model_bin.write_bytes(np.random.default_rng(1).bytes(len(original)))  # same size: only the check sees it
    # The fast start trusts a recorded check (the cache trusts its folder, see tests/security);
    # an entry without one goes through the check against torch, which must catch the damage.
    manifest = json.loads((entry / MANIFEST_FILE).read_text())
    (entry / MANIFEST_FILE).write_text(json.dumps({k: v for k, v in manifest.items() if k != "drift"}))
    with caplog.at_level(logging.INFO):
        chosen = detect.create_detector(_settings(weights, tmp_path / "data", precision="fp32"))
    assert isinstance(chosen.inner, OpenVinoS3FD)
    assert len(conversions) == 1
    (warning,) = _warnings(caplog)
    assert warning.startswith("cached openvino model") and warning.endswith("; converting again")
    assert model_bin.read_bytes() == original


@pytest.mark.slow
def test_a_conversion_that_drifts_leaves_torch_serving_with_one_warning(
    converted, tmp_path, conversions, monkeypatch, caplog
):
    weights = _own_copy(converted, tmp_path)
    shutil.rmtree(_entry(weights))
    monkeypatch.setattr(detect, "s3fd_drift", lambda outputs, reference: detect.S3FD_WORST_DRIFT)
    with caplog.at_level(logging.INFO):
        chosen = detect.create_detector(_settings(weights, tmp_path / "data"))
    assert isinstance(chosen.inner, S3FDDetector)
    assert len(conversions) == 1
    assert _warnings(caplog) == [
        "backend openvino unavailable for the s3fd (the converted model drifts more than 1 pixel(s)"
        " from torch); using torch"
    ]
    assert chosen.detect(_frames(1))[0]  # torch still finds the (random) faces


def test_torch_asked_or_openvino_missing_gives_the_torch_detector(random_s3fd, tmp_path, monkeypatch, caplog):
    weights = tmp_path / "models" / "s3fd.pth"
    weights.parent.mkdir()
    shutil.copy(random_s3fd, weights)
    asked = detect.create_detector(_settings(weights, tmp_path / "data", backend="torch"))
    assert isinstance(asked.inner, S3FDDetector)
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    with caplog.at_level(logging.INFO):
        auto = detect.create_detector(_settings(weights, tmp_path / "data"))
    assert isinstance(auto.inner, S3FDDetector) and _warnings(caplog) == []  # auto without openvino: no fault
    assert not (weights.parent / "backend-cache").exists()


def test_the_shared_detector_is_one_per_backend(random_s3fd, tmp_path, monkeypatch):
    made: list[str] = []
    monkeypatch.setattr(detect, "_shared", {})
    monkeypatch.setattr(
        detect, "create_detector", lambda settings, device=None: made.append(settings.backend)
    )
    settings = _settings(random_s3fd, tmp_path / "data", backend="torch", detect_batch_size=3)
    detect.shared_detector(settings)
    detect.shared_detector(settings)
    detect.shared_detector(settings.replace(backend=OPENVINO))
    assert made == ["torch", OPENVINO]
