"""Retention of the face-track cache: entries unused for the retention period go, hits keep them."""

from __future__ import annotations

import logging
import os
import time

import pytest

from heygem.engine.faces.track import RawDetections, TrackCache
from heygem.jobs import retention
from tests.jobs_support import open_store

DAY_S = 86400.0


@pytest.fixture
def store(settings):
    with open_store(settings) as job_store:
        yield job_store


def _age(path, days: float) -> None:
    then = time.time() - days * DAY_S
    os.utime(path, (then, then))


def test_a_cache_hit_marks_the_entry_as_used(tmp_path):
    cache = TrackCache(tmp_path / "tracks")
    cache.put("avatar", RawDetections(width=4, height=4, faces=[[(0, 0, 2, 2, 0.9)]]))
    _age(cache.path_for("avatar"), 30)
    assert cache.get("avatar") is not None
    assert cache.path_for("avatar").stat().st_mtime > time.time() - 60


def test_retention_prunes_track_cache_entries_unused_for_the_period(settings, store, caplog):
    caplog.set_level(logging.INFO, logger="heygem.jobs.retention")
    settings = settings.replace(retention_days=2.0)
    tracks = settings.track_cache_dir
    cache = TrackCache(tracks)
    raw = RawDetections(width=4, height=4, faces=[[(0, 0, 2, 2, 0.9)]])
    for key in ("forgotten", "active", "new"):
        cache.put(key, raw)
    for key in ("forgotten", "active"):
        _age(cache.path_for(key), 5)
    assert cache.get("active") is not None  # an avatar still in use
    unrelated = settings.cache_dir / "gradio" / "old.json"  # not a face-track entry
    unrelated.parent.mkdir(parents=True)
    unrelated.write_text("{}")
    _age(unrelated, 5)

    report = retention.sweep(store, settings)

    assert report.tracks == [cache.path_for("forgotten")]
    assert sorted(p.name for p in tracks.iterdir()) == ["active.json", "new.json"]
    assert unrelated.exists()
    assert "1 unused face-track cache file(s)" in caplog.text and "forgotten.json" in caplog.text
    assert retention.sweep(store, settings).empty  # nothing else is old


def test_retention_without_a_track_cache_folder_is_fine(settings, store):
    report = retention.sweep(store, settings.replace(retention_days=1.0), now=time.time() + 9 * DAY_S)
    assert report.tracks == [] and report.empty


def test_each_instance_removes_its_own_output_folders_of_jobs_gone_from_the_store(settings, store):
    """In a fleet the sweeping instance deletes the rows and its own files; another instance's
    copies of the same results (its runs, its fetched copies) go in its own local pass."""
    from heygem.jobs.records import NewJob

    settings = settings.replace(retention_days=2.0)
    _, (live,) = store.add([NewJob("a.wav", "v.mp4")], queue_limit=10)
    batch, _ = store.add([NewJob("a.wav", "v.mp4")] * 2, queue_limit=10, as_batch=True)
    outputs = settings.outputs_dir
    gone, recent = "ab" * 16, "cd" * 16  # job ids the store no longer knows
    user_folder = outputs / "team-a"  # a local output prefix, not a job's folder
    for name in (live.id, batch.id, gone, recent, user_folder.name):
        (outputs / name).mkdir(parents=True)
        (outputs / name / "result.mp4").write_bytes(b"mp4")
    for name in (live.id, batch.id, gone, user_folder.name):
        _age(outputs / name, 5)

    removed = retention.sweep_local_outputs(store, settings)

    assert removed == [outputs / gone]
    assert sorted(p.name for p in outputs.iterdir()) == sorted([live.id, batch.id, recent, "team-a"])
    assert retention.sweep_local_outputs(store, settings) == []
