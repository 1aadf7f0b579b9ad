"""The GPU path, run on the CPU: fake GPUs (monkeypatched torch.cuda), fake out-of-memory errors,
and the device-side code (S3FD decoding, the generator's input) compared with the CPU reference."""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from heygem.engine.faces import detect
from heygem.engine.model import array_runner, devices, inference
from heygem.engine.model.devices import BatchBackoff, kernels_exist, worker_device
from heygem.errors import ModelError

CUDNN_OOM = "cuDNN error: CUDNN_STATUS_ALLOC_FAILED"


class FakeGpus:
    """torch.cuda as seen on a host with `count` GPUs of one compute capability and a wheel built
    for `arches`. Only the queries device choice makes are faked; nothing runs on them."""

    def __init__(self, monkeypatch, count: int, capability: tuple[int, int], arches: list[str]) -> None:
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "is_available", lambda: True)
        monkeypatch.setattr(cuda, "device_count", lambda: count)
        monkeypatch.setattr(cuda, "current_device", lambda: 0)
        monkeypatch.setattr(cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(cuda, "get_arch_list", lambda: arches)
        monkeypatch.setattr(cuda, "get_device_name", lambda device=None: "Fake GPU")
        # The host has a driver too (any existing file stands in for /dev/nvidia0), or "auto"
        # would settle on the CPU without asking torch.
        monkeypatch.setattr(devices, "NVIDIA_DEVICE_NODE", Path(__file__))


CU126_ARCHES = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]


# --- device choice -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("capability", "arches", "expected"),
    [
        ((7, 0), CU126_ARCHES, True),  # V100 on the cu126 wheel
        ((8, 9), CU126_ARCHES, True),  # L4: sm_86 binaries run on 8.9
        ((12, 0), CU126_ARCHES, False),  # Blackwell: no sm_120 and no PTX
        ((7, 0), ["sm_75", "sm_80", "sm_90"], False),  # V100 on a wheel that dropped Volta
        ((6, 0), ["sm_75"], False),
        ((12, 0), ["sm_90", "compute_90"], True),  # PTX compiles for newer GPUs
        ((7, 5), ["sm_80", "compute_80"], False),  # but never for older ones
    ],
)
def test_kernels_exist_for_a_gpu(capability, arches, expected):
    assert kernels_exist(*capability, arches) is expected


def test_auto_on_a_host_without_an_nvidia_driver_is_the_cpu_without_torch(monkeypatch, tmp_path):
    FakeGpus(monkeypatch, 1, (8, 6), CU126_ARCHES)  # torch would say cuda, but there is no driver
    monkeypatch.setattr(devices, "NVIDIA_DEVICE_NODE", tmp_path / "nvidia0")
    monkeypatch.setattr(devices, "NVIDIA_GPU_LIST", tmp_path / "gpus")
    assert devices.cpu_without_torch("auto") and devices.cpu_without_torch("cpu")
    assert devices.resolve_device("auto") == "cpu"
    (tmp_path / "gpus").mkdir()
    assert devices.cpu_without_torch("auto")  # the driver's folder with no GPU in it
    (tmp_path / "gpus" / "0000:01:00.0").mkdir()
    assert not devices.cpu_without_torch("auto") and not devices.cpu_without_torch("cuda")
    assert devices.resolve_device("auto") == "cuda:0"  # with a driver, torch decides


def test_a_gpu_the_wheel_cannot_drive_falls_back_to_cpu_with_one_line(monkeypatch, caplog):
    FakeGpus(monkeypatch, 1, (6, 1), ["sm_75", "sm_80"])
    with caplog.at_level(logging.WARNING):
        placement = inference.choose_placement("auto", "auto")
    assert placement == inference.Placement(torch.device("cpu"), "fp32")
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1
    assert "compute capability 6.1" in lines[0] and "sm_75 sm_80" in lines[0] and "using cpu" in lines[0]


def test_a_supported_gpu_gets_cuda_and_fp16(monkeypatch):
    FakeGpus(monkeypatch, 2, (8, 6), CU126_ARCHES)
    assert inference.choose_placement("auto", "auto") == inference.Placement(torch.device("cuda:0"), "fp16")
    assert inference.choose_placement("cuda:1", "bf16").device == torch.device("cuda:1")


def test_a_gpu_index_that_does_not_exist_means_cpu(monkeypatch, caplog):
    FakeGpus(monkeypatch, 2, (8, 6), CU126_ARCHES)
    assert devices.resolve_device("cuda:3") == "cpu"
    assert "sees 2 GPU(s)" in caplog.text


@pytest.mark.parametrize(("capability", "expected"), [((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_bf16_only_from_compute_capability_8(monkeypatch, capability, expected):
    FakeGpus(monkeypatch, 1, capability, ["sm_75", "sm_80", "sm_90"])
    assert inference.choose_placement("cuda", "bf16").precision == expected


def test_the_cpu_path_is_unchanged():
    assert inference.choose_placement("auto", "auto") == inference.Placement(torch.device("cpu"), "fp32")
    assert inference.choose_placement("cpu", "bf16").precision == "bf16"
    assert inference.choose_placement("cpu", "fp16").precision == "fp32"


def test_the_batch_size_setting_0_means_a_bigger_batch_on_cuda(settings):
    cpu = inference.Placement(torch.device("cpu"), "fp32")
    gpu = inference.Placement(torch.device("cuda:0"), "fp16")
    assert (inference.auto_batch_size(cpu), inference.auto_batch_size(gpu)) == (32, 64)
    assert inference.auto_batch_size(gpu, 8) == 8  # a set value always wins
    assert settings.replace(batch_size=0).batch_size == 0
    with pytest.raises(ValueError, match="batch_size must be 0"):
        settings.replace(batch_size=-1)


def test_workers_spread_over_the_gpus(monkeypatch):
    FakeGpus(monkeypatch, 2, (8, 6), CU126_ARCHES)
    assert [worker_device("auto", i, 4) for i in range(4)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert [worker_device("cuda", i, 3) for i in range(3)] == ["cuda:0", "cuda:1", "cuda:0"]
    assert worker_device("cuda:1", 0, 4) == "cuda:1"  # an explicit GPU is kept
    assert worker_device("cpu", 3, 4) == "cpu"
    assert worker_device("auto", 0, 1) == "auto"  # one worker: nothing to spread


def test_each_worker_builds_its_engine_on_its_own_gpu(monkeypatch, settings):
    from heygem.jobs.worker import Worker

    FakeGpus(monkeypatch, 2, (8, 6), CU126_ARCHES)
    seen: list[str] = []

    def factory(worker_settings):
        seen.append(worker_settings.device)
        return object()

    configured = settings.replace(workers=3, worker_isolation="thread", device="auto")
    for index in range(3):
        worker = Worker(
            index, configured, None, factory, wake=None, stopping=None, cancels=set(), on_finish=print
        )
        worker._build_engine()
    assert seen == ["cuda:0", "cuda:1", "cuda:0"]


# --- out-of-memory back-off ----------------------------------------------------------------------


class Blob:
    """Stands for the tensors a failed forward pass allocated."""


def test_backoff_halves_on_cudnn_and_cublas_errors_and_remembers_the_size():
    calls: list[tuple[int, int]] = []
    alive: list[weakref.ref[Blob]] = []

    def forward(start: int, stop: int) -> list[int]:
        # The previous failed attempt's allocations must be gone before the retry runs.
        assert all(ref() is None for ref in alive), "retried while the failed batch was still alive"
        calls.append((start, stop))
        if stop - start > 4:
            blob = Blob()
            alive.append(weakref.ref(blob))
            message = CUDNN_OOM if len(calls) == 1 else "CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"
            raise RuntimeError(message)
        return list(range(start, stop))

    backoff = BatchBackoff(16, "testing")
    results = backoff.run(10, forward)
    assert [i for batch in results for i in batch] == list(range(10))
    assert calls[:3] == [(0, 10), (0, 8), (0, 4)]
    assert backoff.size == 4
    calls.clear()
    backoff.run(6, forward)
    assert calls == [(0, 4), (4, 6)]  # started at the size that worked: no halving again


def test_backoff_passes_other_errors_through_and_gives_up_at_one():
    def broken(start: int, stop: int) -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(RuntimeError, match="illegal memory access"):
        BatchBackoff(4, "testing").run(4, broken)

    def always_oom(start: int, stop: int) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(ModelError, match="^GPU out of memory testing even one at a time"):
        BatchBackoff(4, "testing").run(4, always_oom)


def test_shared_backoff_keeps_what_one_job_learned_for_the_next():
    first = devices.shared_backoff("generating faces", "cuda:7", 64)
    first.size = 16
    assert devices.shared_backoff("generating faces", "cuda:7", 64).size == 16
    assert devices.shared_backoff("generating faces", "cuda:6", 64).size == 64


class OomAbove(torch.nn.Module):
    """A generator stand-in: fails like cuDNN above `limit` faces, else returns the face's top half."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.sizes: list[int] = []

    def forward(self, mels: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(faces))
        if len(faces) > self.limit:
            raise RuntimeError(CUDNN_OOM)
        return faces[:, 3:] * (mels.mean() * 0 + 1)


def test_generator_runner_backs_off_and_keeps_every_face_in_order():
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (11, 96, 96, 3), np.uint8)
    mels = rng.standard_normal((11, 80, 16)).astype(np.float32)
    model = OomAbove(limit=3)
    runner = inference.GeneratorRunner(model, inference.Placement(torch.device("cpu"), "fp32"), 8)
    out = runner.infer(mels, faces)
    np.testing.assert_array_equal(out, faces)  # truncation of x/255*255 is exact for these pixels
    assert model.sizes[:3] == [8, 4, 2] and runner.backoff.size == 2


def test_the_gpu_input_is_built_like_the_cpu_one():
    faces = np.random.default_rng(2).integers(0, 256, (3, 96, 96, 3), np.uint8)
    on_device = inference.device_network_input(torch.from_numpy(faces))
    assert on_device.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(on_device.numpy(), array_runner.network_input(faces))


def test_padding_repeats_the_last_item_to_one_shape():
    items = np.arange(6).reshape(3, 2)
    longer = devices.padded(items, 5)
    assert longer.shape == (5, 2) and (longer[:3] == items).all() and (longer[3:] == items[-1]).all()
    assert len(devices.padded(items, 2)) == 3  # never cut


# --- S3FD decoding -------------------------------------------------------------------------------


def synthetic_outputs(frames: int, side: int, seed: int) -> list[torch.Tensor]:
    """S3FD's six (class logits, offsets) pairs for `frames` frames of side x side: background
    almost everywhere, a few clusters of confident anchors, offsets like a trained network's."""
    rng = np.random.default_rng(seed)
    outputs = []
    for level in range(6):
        size = side // 2 ** (level + 2)
        logits = np.zeros((frames, 2, size, size), np.float32)
        logits[:, 1] = rng.normal(-5, 1.5, (frames, size, size))
        for frame in range(frames):
            for _ in range(rng.integers(0, 3)):
                y, x = rng.integers(0, size, 2)
                patch = logits[frame, 1, max(0, y - 1) : y + 2, max(0, x - 1) : x + 2]
                patch[...] = rng.normal(2.5, 1.5, patch.shape)
        offsets = rng.normal(0, 0.8, (frames, 4, size, size)).astype(np.float32)
        outputs += [torch.from_numpy(logits), torch.from_numpy(offsets)]
    return outputs


def face_alignment_boxes(outputs: list[torch.Tensor], threshold: float) -> list[np.ndarray]:
    """The reference way: face_alignment's decoder and NMS, then the score threshold."""
    from face_alignment.detection.sfd.bbox import nms
    from face_alignment.detection.sfd.detect import get_predictions

    olist = [o.clone() for o in outputs]
    for i in range(len(olist) // 2):
        olist[2 * i] = torch.softmax(olist[2 * i], dim=1)
    candidates = get_predictions([o.numpy() for o in olist], len(outputs[0]))
    kept = []
    for frame in range(len(outputs[0])):
        rows = candidates[frame] if len(candidates[frame]) else np.zeros((0, 5))
        rows = rows[nms(rows, detect.S3FD_NMS_IOU)] if len(rows) else rows
        kept.append(np.array([r[:5] for r in rows if r[4] > threshold]).reshape(-1, 5))
    return kept


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_device_decoding_and_nms_match_face_alignment(seed):
    outputs = synthetic_outputs(3, 256, seed)
    table = detect.s3fd_candidates(outputs, 0.5).numpy()
    expected = face_alignment_boxes(outputs, 0.5)
    assert sum(len(e) for e in expected) > 0, "the synthetic frames should hold some faces"
    for frame, reference in enumerate(expected):
        ours = detect.greedy_nms(table[frame])
        np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-3)


def test_fp16_network_outputs_decode_like_fp32():
    outputs = synthetic_outputs(2, 128, 5)
    full = detect.s3fd_candidates(outputs, 0.5).numpy()
    half = detect.s3fd_candidates([o.half() for o in outputs], 0.5).numpy()
    assert np.isfinite(half).all()
    for frame in range(2):
        a, b = detect.greedy_nms(full[frame]), detect.greedy_nms(half[frame])
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=2e-2, atol=1.5)


def test_s3fd_detector_matches_face_alignment_end_to_end_and_survives_fake_oom(random_s3fd):
    from face_alignment.detection.sfd.bbox import nms
    from face_alignment.detection.sfd.detect import batch_detect

    detector = detect.S3FDDetector(random_s3fd, "cpu", threshold=0.5)
    frames = [np.random.default_rng(i).integers(0, 256, (64, 96, 3), np.uint8) for i in range(3)]
    ours = detector.detect(frames)
    batch = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)
    with torch.inference_mode():
        candidates = batch_detect(detector._net, batch, device="cpu")
    for frame, found in enumerate(ours):
        rows = candidates[frame]
        rows = rows[nms(rows, detect.S3FD_NMS_IOU)]
        reference = [r for r in rows if r[4] > 0.5]
        # Random weights score thousands of anchors above 0.5, more than the per-frame candidate
        # table holds (the synthetic tests above compare whole results); the best box, which NMS
        # always keeps first, must still agree.
        assert len(found) > 0 and len(reference) > 0
        best = found[0]
        np.testing.assert_allclose(
            [best.x1, best.y1, best.x2, best.y2, best.score], reference[0][:5], rtol=1e-4, atol=1e-2
        )

    real_net = detector._net
    sizes: list[int] = []

    def oom_above_one(x: torch.Tensor) -> list[torch.Tensor]:
        sizes.append(len(x))
        if len(x) > 1:
            raise RuntimeError(CUDNN_OOM)
        return real_net(x)

    detector._net = oom_above_one
    again = detector.detect(frames)
    assert sizes[0] == 3 and sizes[-1] == 1 and again == ours  # halved until one frame fits


# --- bench/gpu_check.py --------------------------------------------------------------------------

GPU_CHECK = Path(__file__).resolve().parent.parent / "bench" / "gpu_check.py"


def test_gpu_check_without_a_gpu_says_so_in_one_line_and_fails():
    result = subprocess.run(
        [sys.executable, str(GPU_CHECK)], capture_output=True, text=True, timeout=120, cwd=GPU_CHECK.parent
    )
    assert result.returncode == 1
    expected = f"gpu_check: no CUDA GPU visible to torch {torch.__version__} (built for CUDA none)"
    assert result.stdout.splitlines() == [f"{expected}; run this on a GPU host"]
    assert result.stderr == ""


def test_gpu_check_names_a_gpu_the_wheel_cannot_drive(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check", GPU_CHECK)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    FakeGpus(monkeypatch, 1, (12, 0), CU126_ARCHES)
    reason = gpu_check.no_gpu_reason()
    assert reason.startswith("gpu_check: GPU 0 (Fake GPU, compute capability 12.0) is not supported")
    FakeGpus(monkeypatch, 1, (8, 0), CU126_ARCHES)
    assert gpu_check.no_gpu_reason() is None


def test_nan_scores_neither_count_nor_crowd_out_real_candidates():
    outputs = synthetic_outputs(1, 256, 0)
    expected = detect.greedy_nms(detect.s3fd_candidates(outputs, 0.5).numpy()[0])
    assert len(expected) > 0
    poisoned = [o.clone() for o in outputs]
    low = poisoned[0][:, 1] < 0  # background anchors of the finest level: thousands of them
    poisoned[0][:, 1][low] = float("nan")
    got = detect.greedy_nms(detect.s3fd_candidates(poisoned, 0.5).numpy()[0])
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_s3fd_half_precision_runs_convolutions_in_fp16_under_autocast(random_s3fd):
    detector = detect.S3FDDetector(random_s3fd, "cpu")
    detector._half = True  # what CUDA gets; CPU autocast runs the same fp16 convolutions
    seen: list[torch.dtype] = []
    detector._net.conv1_1.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    frames = [np.random.default_rng(7).integers(0, 256, (64, 64, 3), np.uint8)] * 2
    found = detector.detect(frames)
    assert seen == [torch.float16]
    assert len(found) == 2 and found[0] == found[1]
    assert all(np.isfinite([d.x1, d.y1, d.x2, d.y2, d.score]).all() for d in found[0])


def test_each_gpu_call_runs_under_its_own_device():
    runner = inference.GeneratorRunner(
        torch.nn.Identity(), inference.Placement(torch.device("cuda:1"), "fp16"), batch_size=4
    )
    context = runner._device_context()
    assert isinstance(context, torch.cuda.device) and context.idx == 1
