"""Loading generator weights through the real loader: formats accepted, and bad files named."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from heygem.engine.hashing import sha256_of
from heygem.engine.model import Wav2Lip, load_checkpoint
from heygem.engine.model.checkpoint import DOWNLOAD_COMMAND, verify_file
from heygem.errors import ModelError, WeightsMissingError
from tests import media


@pytest.fixture
def scratch(tmp_path) -> Path:
    """A folder for 145 MB checkpoints that is emptied right after the test."""
    folder = tmp_path / "weights"
    folder.mkdir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def saved_state(checkpoint_file) -> dict[str, torch.Tensor]:
    """The tensors in the official-format fixture, names without `module.`."""
    raw = torch.load(checkpoint_file, map_location="cpu", weights_only=True)["state_dict"]
    assert all(name.startswith("module.") for name in raw)
    return {name.removeprefix("module."): tensor for name, tensor in raw.items()}


def assert_weights_equal(model: Wav2Lip, state: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert list(loaded) == list(state)
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name


def save(path: Path, state: dict, wrap: bool = True, **kwargs) -> Path:
    payload = {"state_dict": state, "optimizer": None, "global_step": 3000, "global_epoch": 7}
    torch.save(payload if wrap else state, path, **kwargs)
    return path


def error_text(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text
    return text


# --- formats that must load -------------------------------------------------------------------


def test_official_format_with_module_prefix(checkpoint_file, saved_state):
    model = load_checkpoint(checkpoint_file)
    assert not model.training
    assert next(model.parameters()).device.type == "cpu"
    assert_weights_equal(model, saved_state)


def test_unprefixed_checkpoint(scratch, saved_state):
    model = load_checkpoint(save(scratch / "plain.pth", saved_state))
    assert_weights_equal(model, saved_state)


def test_bare_state_dict(scratch, saved_state):
    model = load_checkpoint(save(scratch / "bare.pth", saved_state, wrap=False))
    assert_weights_equal(model, saved_state)


def test_module_is_removed_anywhere_in_the_name(scratch, saved_state):
    doubled = {f"module.module.{name}": tensor for name, tensor in saved_state.items()}
    model = load_checkpoint(save(scratch / "double.pth", doubled))
    assert_weights_equal(model, saved_state)


def test_checkpoint_without_batchnorm_counters(scratch, saved_state):
    old = {k: v for k, v in saved_state.items() if not k.endswith("num_batches_tracked")}
    assert len(old) == 352 - 50

    model = load_checkpoint(save(scratch / "old.pth", old))

    for name, tensor in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            assert tensor.item() == 0 and tensor.dtype == torch.int64
        else:
            assert torch.equal(tensor, old[name]), name


def test_legacy_non_zip_format(scratch, saved_state):
    path = save(scratch / "legacy.pth", saved_state, _use_new_zipfile_serialization=False)
    assert path.read_bytes()[:2] != b"PK"

    assert_weights_equal(load_checkpoint(path), saved_state)


def test_checkpoint_with_adam_state_loads(scratch, saved_state):
    """The public files carry the optimizer state; weights_only loading must accept it."""
    # Adam over one block has the same structure as over all; the file stays small.
    block = Wav2Lip().output_block
    optimizer = torch.optim.Adam(block.parameters(), lr=1e-4)
    for parameter in block.parameters():
        parameter.grad = torch.full_like(parameter, 1e-3)  # gives Adam its exp_avg/exp_avg_sq state
    optimizer.step()
    path = scratch / "with_adam.pth"
    torch.save(
        {"state_dict": saved_state, "optimizer": optimizer.state_dict(), "global_step": 1, "global_epoch": 0},
        path,
    )

    assert_weights_equal(load_checkpoint(path), saved_state)


def test_half_precision_weights_are_widened(scratch, saved_state):
    half = {k: v.half() if v.is_floating_point() else v for k, v in saved_state.items()}
    model = load_checkpoint(save(scratch / "half.pth", half))
    weight = model.state_dict()["output_block.1.weight"]
    assert weight.dtype == torch.float32
    torch.testing.assert_close(weight, saved_state["output_block.1.weight"], atol=1e-3, rtol=1e-3)


# --- files that must be refused ---------------------------------------------------------------


def test_missing_file_names_path_and_command(tmp_path):
    path = tmp_path / "models" / "wav2lip_gan.pth"
    with pytest.raises(WeightsMissingError) as info:
        load_checkpoint(path)
    text = error_text(info)
    assert str(path) in text and DOWNLOAD_COMMAND in text
    assert DOWNLOAD_COMMAND == "python -m heygem models download"


def test_truncated_file(checkpoint_file, scratch):
    path = scratch / "cut.pth"
    data = checkpoint_file.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelError, match="truncated or corrupt") as info:
        load_checkpoint(path)
    assert str(path) in error_text(info)


def test_truncated_legacy_file(scratch, saved_state):
    path = save(scratch / "legacy.pth", saved_state, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated or corrupt") as info:
        load_checkpoint(path)
    assert str(path) in error_text(info)


def test_text_file(tmp_path):
    path = tmp_path / "wav2lip_gan.pth"
    path.write_text("<html>404 Not Found</html>\n")
    with pytest.raises(ModelError, match="not a PyTorch weights file") as info:
        load_checkpoint(path)
    assert str(path) in error_text(info)


class Payload:
    """Arbitrary objects are what weights_only refuses (they could run code when unpickled)."""


def test_pickle_with_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "extra": Payload()}, path)
    with pytest.raises(ModelError, match="refuses") as info:
        load_checkpoint(path)
    assert str(path) in error_text(info)


def test_wrong_shapes(scratch, saved_state):
    state = dict(saved_state)
    state["output_block.1.weight"] = torch.zeros(4, 32, 1, 1)
    path = save(scratch / "shape.pth", state)
    with pytest.raises(ModelError) as info:
        load_checkpoint(path)
    text = error_text(info)
    assert str(path) in text
    assert "output_block.1.weight has shape 4x32x1x1, expected 3x32x1x1" in text


def test_missing_keys(scratch, saved_state):
    state = {k: v for k, v in saved_state.items() if not k.startswith("audio_encoder.12.")}
    path = save(scratch / "partial.pth", state)
    with pytest.raises(ModelError) as info:
        load_checkpoint(path)
    text = error_text(info)
    assert str(path) in text and "6 missing keys" in text  # 7 minus the optional counter
    assert "audio_encoder.12.conv_block.0.weight" in text


def test_unexpected_keys_from_another_network(scratch, saved_state):
    state = dict(saved_state)
    state["face_encoder.0.conv_block.0.weight"] = torch.zeros(32, 15, 7, 7)  # a SyncNet name
    path = save(scratch / "mixed.pth", state)
    with pytest.raises(ModelError, match="1 unexpected keys \\(face_encoder.0.conv_block.0.weight\\)"):
        load_checkpoint(path)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(ModelError, match="is not a checkpoint"):
        load_checkpoint(path)


def test_nan_weights_are_refused(scratch, saved_state):
    state = dict(saved_state)
    state["output_block.1.bias"] = torch.tensor([0.0, float("nan"), 0.0])
    with pytest.raises(ModelError, match="output_block.1.bias contains NaN"):
        load_checkpoint(save(scratch / "nan.pth", state))


# --- hashing ----------------------------------------------------------------------------------


def test_sha256_matches_hashlib(checkpoint_file):
    assert sha256_of(checkpoint_file) == hashlib.sha256(checkpoint_file.read_bytes()).hexdigest()


def test_verify_file(tmp_path):
    path = tmp_path / "small.bin"
    path.write_bytes(b"heygem")
    digest = hashlib.sha256(b"heygem").hexdigest()

    verify_file(path, digest.upper())
    with pytest.raises(ModelError, match="small.bin has SHA-256") as info:
        verify_file(path, "0" * 64)
    assert digest in error_text(info)


@pytest.mark.slow  # builds and writes a full-size random checkpoint
def test_fixture_helper_writes_unprefixed_files(scratch):
    path = media.save_random_checkpoint(scratch / "plain.pth", seed=1, prefix="")
    raw = torch.load(path, weights_only=True)["state_dict"]
    assert not any(name.startswith("module.") for name in raw)
    assert_weights_equal(load_checkpoint(path), raw)
