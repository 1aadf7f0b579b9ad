"""The converted-model cache next to the weights: planted or damaged entries, links out of the folder.

Whoever can write the models folder can replace the weights too, so the cache trusts the folder;
what it must not do is delete outside it, or serve an entry it cannot read.
"""

from __future__ import annotations

import json
import logging

import pytest

from heygem.engine.model.backends import MANIFEST_FILE, MODEL_FILE, ConvertedModelCache

VERSION = "2026.4.1"
STALE = "wav2lip_gan-0000000000000000-openvino1.0-fp32"


class RefusingCore:
    """Stands in for openvino.Core: records what it was asked to read, reads nothing."""

    def __init__(self) -> None:
        self.read: list[str] = []

    def read_model(self, path: str) -> object:
        self.read.append(path)
        raise RuntimeError("not an IR file")


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "models" / "wav2lip_gan.pth"
    path.parent.mkdir()
    path.write_bytes(b"weights")
    return path


@pytest.fixture
def cache_dir(checkpoint):
    return checkpoint.parent / "backend-cache"


def _planted_entry(cache: ConvertedModelCache, cache_dir, sizes: dict[str, int]):
    entry = cache_dir / cache.entry_name
    entry.mkdir(parents=True)
    (entry / MODEL_FILE).write_text("<net/>")
    (entry / MANIFEST_FILE).write_text(json.dumps({"sizes": sizes}))
    return entry


def test_pruning_stale_entries_never_follows_a_link_out_of_the_cache(checkpoint, cache_dir, tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the cache's")
    cache_dir.mkdir()
    link = cache_dir / "wav2lip_gan-1111111111111111-openvino1.0-fp32"  # named like a stale entry
    link.symlink_to(outside, target_is_directory=True)
    (cache_dir / STALE).mkdir()  # a real stale entry

    ConvertedModelCache(checkpoint, (cache_dir,), VERSION)._prune_stale(cache_dir)

    assert (outside / "keep.txt").read_text() == "not the cache's"
    assert not (cache_dir / STALE).exists()


def test_an_entry_whose_files_do_not_match_its_manifest_is_never_read(checkpoint, cache_dir, caplog):
    cache = ConvertedModelCache(checkpoint, (cache_dir,), VERSION)
    entry = _planted_entry(cache, cache_dir, {MODEL_FILE: 10_000, "model.bin": 10_000})
    core = RefusingCore()
    with caplog.at_level(logging.WARNING, logger="heygem.engine.model.backends"):
        assert cache.load(core) is None
    assert core.read == []  # the size check stops it before the runtime parses anything
    assert not entry.exists()
    (message,) = [r.getMessage() for r in caplog.records]
    assert "unreadable" in message and "converting again" in message and "\n" not in message


def test_an_entry_the_runtime_cannot_parse_is_discarded_not_fatal(checkpoint, cache_dir):
    cache = ConvertedModelCache(checkpoint, (cache_dir,), VERSION)
    entry = _planted_entry(cache, cache_dir, {MODEL_FILE: len("<net/>")})
    core = RefusingCore()
    assert cache.load(core) is None
    assert core.read == [str(entry / MODEL_FILE)] and not entry.exists()


def test_a_strange_version_text_still_names_one_folder_inside_the_cache(checkpoint, cache_dir):
    cache = ConvertedModelCache(checkpoint, (cache_dir,), "../../etc 2026/4")
    assert (cache_dir / cache.entry_name).parent == cache_dir and "/" not in cache.entry_name
    assert cache.entry_name.startswith("wav2lip_gan-") and cache.entry_name.endswith("-fp32")


@pytest.mark.parametrize(
    "drift",
    [
        {"fp32": "0", "bf16": 0.5},  # not whole numbers
        {"fp32": -1},  # a drift below zero
        {"fp32": 10**9},  # more than any grey level
        {"fp32": True},  # a bool is an int to Python, not a measurement
        {"fp16": 0, "../fp32": 0},  # precisions the check never measures
        ["fp32", 0],  # not a mapping at all
    ],
)
def test_a_forged_drift_record_never_counts_as_checked(checkpoint, cache_dir, drift):
    """Recorded drift lets a start skip the torch check; anything but a real measurement is ignored."""
    cache = ConvertedModelCache(checkpoint, (cache_dir,), VERSION)
    entry = _planted_entry(cache, cache_dir, {MODEL_FILE: len("<net/>")})
    manifest = json.loads((entry / MANIFEST_FILE).read_text())
    (entry / MANIFEST_FILE).write_text(json.dumps({**manifest, "drift": drift}))
    assert cache.drifts() == {}


def test_a_recorded_entry_whose_files_changed_is_still_never_read(checkpoint, cache_dir, caplog):
    cache = ConvertedModelCache(checkpoint, (cache_dir,), VERSION)
    entry = _planted_entry(cache, cache_dir, {MODEL_FILE: 10_000})
    (entry / MANIFEST_FILE).write_text(json.dumps({"sizes": {MODEL_FILE: 10_000}, "drift": {"fp32": 0}}))
    assert cache.drifts() == {"fp32": 0}
    core = RefusingCore()
    assert cache.load(core) is None
    assert core.read == [] and not entry.exists()


def test_an_entry_that_is_a_link_elsewhere_is_never_read(checkpoint, cache_dir, tmp_path):
    """A link named like the entry could point at any IR on the machine: it is not an entry."""
    cache = ConvertedModelCache(checkpoint, (cache_dir,), VERSION, "s3fd")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / MODEL_FILE).write_text("<net/>")
    (elsewhere / MANIFEST_FILE).write_text(json.dumps({"sizes": {MODEL_FILE: 6}, "drift": {"fp32": 0}}))
    cache_dir.mkdir()
    (cache_dir / cache.entry_name).symlink_to(elsewhere, target_is_directory=True)
    core = RefusingCore()
    assert cache.entry is None and cache.drifts() == {} and cache.load(core) is None
    assert core.read == [] and (elsewhere / MODEL_FILE).exists()


@pytest.mark.parametrize("planted", ["link", "unlisted"])
def test_an_entry_holding_a_file_its_manifest_does_not_vouch_for_is_never_read(
    checkpoint, cache_dir, tmp_path, planted
):
    cache = ConvertedModelCache(checkpoint, (cache_dir,), VERSION, "s3fd")
    entry = _planted_entry(cache, cache_dir, {MODEL_FILE: len("<net/>"), "model.bin": 4})
    outside = tmp_path / "weights-of-someone-else.bin"
    outside.write_bytes(b"1234")
    if planted == "link":  # the right size, but read from outside the cache
        (entry / "model.bin").symlink_to(outside)
    else:
        (entry / "model.bin").write_bytes(b"1234")
        (entry / "extra.bin").write_bytes(b"x")  # something the converter never wrote
    core = RefusingCore()
    assert cache.load(core) is None
    assert core.read == [] and not entry.exists() and outside.read_bytes() == b"1234"


def test_two_networks_whose_weights_share_a_name_never_prune_each_other(tmp_path):
    shared_cache = tmp_path / "cache"
    generator_weights = tmp_path / "a" / "model.pth"
    detector_weights = tmp_path / "b" / "model.pth"
    for path, data in ((generator_weights, b"generator"), (detector_weights, b"detector")):
        path.parent.mkdir()
        path.write_bytes(data)
    generator = ConvertedModelCache(generator_weights, (shared_cache,), VERSION)
    detector = ConvertedModelCache(detector_weights, (shared_cache,), VERSION, "s3fd")
    assert generator.entry_name != detector.entry_name
    for cache in (generator, detector):
        (shared_cache / cache.entry_name).mkdir(parents=True)
    generator._prune_stale(shared_cache)
    detector._prune_stale(shared_cache)
    assert (shared_cache / generator.entry_name).is_dir() and (shared_cache / detector.entry_name).is_dir()
