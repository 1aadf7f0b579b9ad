"""The generator network: weight layout identical to the public checkpoints, shapes, output range."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from heygem.engine.model import Wav2Lip
from heygem.engine.model.wav2lip import FACE_SIZE, MEL_BINS, MEL_STEPS

SPEC = Path(__file__).parent / "spec" / "wav2lip_generator.tsv"
PARAMETERS = 36_298_035
PARAMETER_SPLIT = {
    "face_encoder_blocks": 8_171_056,
    "audio_encoder": 2_812_672,
    "face_decoder_blocks": 25_291_072,
    "output_block": 23_235,
}


@pytest.fixture(scope="module")
def model() -> Wav2Lip:
    torch.manual_seed(0)
    return Wav2Lip().eval()


def shape_text(tensor: torch.Tensor) -> str:
    return "x".join(str(d) for d in tensor.shape) or "scalar"


def test_state_dict_matches_the_official_manifest(model):
    expected = [tuple(line.split("\t")) for line in SPEC.read_text().splitlines() if line]
    actual = [(name, shape_text(t)) for name, t in model.state_dict().items()]
    assert len(expected) == 352
    assert actual == expected


def test_buffers_and_dtypes(model):
    for name, tensor in model.state_dict().items():
        expected = torch.int64 if name.endswith("num_batches_tracked") else torch.float32
        assert tensor.dtype == expected, name


def test_parameter_count(model):
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS
    assert all(p.requires_grad for p in model.parameters())
    for part, count in PARAMETER_SPLIT.items():
        assert sum(p.numel() for p in getattr(model, part).parameters()) == count, part


def test_forward_shape_and_range(model):
    torch.manual_seed(1)
    mel = torch.randn(3, 1, MEL_BINS, MEL_STEPS)
    face = torch.rand(3, 6, FACE_SIZE, FACE_SIZE)
    with torch.inference_mode():
        out = model(mel, face)
    assert out.shape == (3, 3, FACE_SIZE, FACE_SIZE)
    assert out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out.std() > 0  # not a constant image


@pytest.mark.slow  # several passes of the full generator on the CPU
def test_batch_items_are_independent_in_eval_mode(model):
    torch.manual_seed(2)
    mel = torch.randn(3, 1, MEL_BINS, MEL_STEPS)
    face = torch.rand(3, 6, FACE_SIZE, FACE_SIZE)
    with torch.inference_mode():
        batch = model(mel, face)
        single = model(mel[2:3], face[2:3])
    torch.testing.assert_close(batch[2:3], single, atol=1e-5, rtol=1e-4)


@pytest.mark.slow  # several passes of the full generator on the CPU
def test_output_depends_on_audio_and_both_face_halves(model):
    """Gradients reach every input: the audio path and the skip connections are all wired."""
    torch.manual_seed(4)
    mel = torch.randn(1, 1, MEL_BINS, MEL_STEPS, requires_grad=True)
    face = torch.rand(1, 6, FACE_SIZE, FACE_SIZE, requires_grad=True)
    model(mel, face).sum().backward()
    assert mel.grad.abs().sum() > 0
    assert face.grad[:, :3].abs().sum() > 0 and face.grad[:, 3:].abs().sum() > 0
    model.zero_grad(set_to_none=True)


@pytest.mark.slow  # several passes of the full generator on the CPU
def test_time_folded_mode_is_time_major(model):
    torch.manual_seed(3)
    batch, steps = 2, 3
    mel = torch.randn(batch, steps, 1, MEL_BINS, MEL_STEPS)
    face = torch.rand(batch, 6, steps, FACE_SIZE, FACE_SIZE)
    with torch.inference_mode():
        clips = model(mel, face)
        frame = model(mel[1, 2].unsqueeze(0), face[1, :, 2].unsqueeze(0))
    assert clips.shape == (batch, 3, steps, FACE_SIZE, FACE_SIZE)
    torch.testing.assert_close(clips[1, :, 2], frame[0], atol=1e-5, rtol=1e-4)
