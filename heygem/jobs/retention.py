"""Retention: delete finished jobs, their files, stale uploads and unused face-track cache
entries older than retention_days. Avatars (<data_dir>/avatars/) and their face tracks are
never swept: they stay until deleted."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from heygem.jobs import files, fleetfiles
from heygem.jobs.store import JobStore
from heygem.settings import Settings

log = logging.getLogger("heygem.jobs.retention")

RETENTION_LOCK = "retention"  # JobStore.exclusive() name: one instance of a fleet sweeps at a time

SECONDS_PER_DAY = 86400.0
# How long an expired job's tombstone (id, tenant, date) is kept, so that its id answers
# "expired" (410) rather than "not found"; then the id is simply unknown.
TOMBSTONE_DAYS = 90.0
# Under Settings.cache_dir: where the pipeline's TrackCache keeps one <key>.json per video (named
# here rather than imported, so retention does not load the engine's modules).
TRACK_CACHE_PATTERN = "*.json"
# Job and batch ids are uuid4 hex: only folders named so are ever taken for a job's leftovers.
OWNER_FOLDER = re.compile(r"[0-9a-f]{32}")


@dataclass
class SweepReport:
    jobs: list[str] = field(default_factory=list)  # ids of deleted jobs
    batches: list[str] = field(default_factory=list)  # ids of deleted batches
    inputs: list[Path] = field(default_factory=list)  # deleted upload files
    tracks: list[Path] = field(default_factory=list)  # deleted face-track cache entries

    @property
    def empty(self) -> bool:
        return not (self.jobs or self.batches or self.inputs or self.tracks)


def enabled(settings: Settings) -> bool:
    return settings.retention_days > 0 and settings.retention_interval_s > 0


def sweep(store: JobStore, settings: Settings, now: float | None = None) -> SweepReport:
    """One pass: jobs finished before the cutoff (rows, scratch, outputs) and old uploads."""
    now = time.time() if now is None else now
    cutoff = now - settings.retention_days * SECONDS_PER_DAY
    report = SweepReport()
    old = store.finished_before(cutoff)
    expired = store.expire([job.id for job in old], now)
    remote = {ref for ref in store.references(active_only=False) if "://" in ref} if expired else set()
    for job in expired:
        files.remove_job_files(settings, job.id)
        fleetfiles.remove_job_objects(settings, job.id, job.uploads, remote)
        report.jobs.append(job.id)
    for batch_id in store.delete_empty_batches(expired_at=now):
        files.remove_tree(files.output_dir(settings, batch_id))
        report.batches.append(batch_id)
    store.prune_tombstones(now - TOMBSTONE_DAYS * SECONDS_PER_DAY)
    report.inputs = _sweep_inputs(store, settings, cutoff)
    report.tracks = _sweep_track_cache(settings, cutoff, store.avatar_track_keys())
    if not report.empty:
        log.info(
            "retention (older than %g days): removed %d job(s) %s, %d batch(es) %s, %d upload(s) %s,"
            " %d unused face-track cache file(s) %s",
            settings.retention_days,
            len(report.jobs),
            report.jobs,
            len(report.batches),
            report.batches,
            len(report.inputs),
            [str(p) for p in report.inputs],
            len(report.tracks),
            [p.name for p in report.tracks],
        )
    return report


def _sweep_inputs(store: JobStore, settings: Settings, cutoff: float) -> list[Path]:
    """Uploads not touched since the cutoff and not used by a queued or running job."""
    root = settings.inputs_dir
    if not root.is_dir():
        return []
    in_use = {_canonical(ref) for ref in store.references(active_only=True)}
    removed = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()):
        if path.name.startswith("."):
            continue  # .gitkeep and the like; temporaries are swept at start-up
        if path.lstat().st_mtime >= cutoff or _canonical(str(path)) in in_use:
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    _remove_empty_folders(root)
    return removed


def _sweep_track_cache(settings: Settings, cutoff: float, keep: set[str]) -> list[Path]:
    """Face-track entries neither written nor read since the cutoff (a cache hit touches mtime;
    atime counts too where the file system keeps it), except the avatars' (`keep`: cache keys),
    which stay as long as their avatar."""
    folder = settings.track_cache_dir
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.glob(TRACK_CACHE_PATTERN)):
        if path.stem in keep:
            continue
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue  # replaced or removed meanwhile
        if max(stat.st_mtime, stat.st_atime) >= cutoff:
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def sweep_local_outputs(store: JobStore, settings: Settings, now: float | None = None) -> list[Path]:
    """This instance's own output folders whose job or batch is gone and which nobody touched
    since the cutoff. In a fleet the instance that sweeps (under the lock) removes only its own
    files; every other instance removes its copies of the same results here."""
    root = settings.outputs_dir
    if not root.is_dir():
        return []
    cutoff = (time.time() if now is None else now) - settings.retention_days * SECONDS_PER_DAY
    known: set[str] | None = None
    removed = []
    for folder in sorted(root.iterdir()):
        if not folder.is_dir() or folder.is_symlink() or not OWNER_FOLDER.fullmatch(folder.name):
            continue
        if folder.stat().st_mtime >= cutoff:
            continue
        known = store.all_job_ids() if known is None else known
        if folder.name in known or store.get_batch(folder.name) is not None:
            continue
        files.remove_tree(folder)
        removed.append(folder)
    if removed:
        log.info("retention: removed %d output folder(s) of jobs gone from the store", len(removed))
    return removed


def _remove_empty_folders(root: Path) -> None:
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty


def _canonical(ref: str) -> str:
    return os.path.realpath(ref) if "://" not in ref else ref


class RetentionTask(threading.Thread):
    """Runs `sweep` at start and then every retention_interval_s until stopped."""

    def __init__(self, store: JobStore, settings: Settings, stopping: threading.Event) -> None:
        super().__init__(name="heygem-retention", daemon=True)
        self.store = store
        self.settings = settings
        self._stopping = stopping

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.sweep_once()
                sweep_local_outputs(self.store, self.settings)
            except Exception:
                log.exception("retention sweep failed; trying again next interval")
            self._stopping.wait(self.settings.retention_interval_s)

    def sweep_once(self) -> SweepReport | None:
        """One sweep, unless another instance sharing the store is sweeping (None then)."""
        with self.store.exclusive(RETENTION_LOCK) as mine:
            if not mine:
                log.info("retention: another instance is sweeping; skipping this round")
                return None
            return sweep(self.store, self.settings)
