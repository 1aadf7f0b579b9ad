"""Where a job's files go, and how they appear and disappear safely.

    <data_dir>/jobs/<job id>/<run>/    scratch: fetched inputs, the pipeline's output under a
                                       temporary name; removed when the run ends
    <outputs_dir>/<job id>/<name>.mp4  the finished result, moved in atomically
    <outputs_dir>/<batch id>/          a batch's ZIP

Temporary files carry TEMP_PREFIX and a random part, so no two runs share a name and a start-up
sweep can find what a killed process left behind.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from heygem.settings import Settings

log = logging.getLogger("heygem.jobs.files")

TEMP_PREFIX = ".heygem-tmp-"
SCRATCH_FOLDER = "jobs"
# How the web layer names one request's upload folder under inputs/ (uuid4().hex): such folders
# belong to the request that made them; other folders in inputs/ are the operator's.
UPLOAD_FOLDER_NAME = re.compile(r"^[0-9a-f]{32}$")
# A shared data folder: temporary files younger than this may be another instance's work.
SHARED_TEMP_KEEP_S = 3600.0


def scratch_root(settings: Settings) -> Path:
    return settings.data_dir / SCRATCH_FOLDER


def scratch_dir(settings: Settings, job_id: str, token: str) -> Path:
    """One folder per run: a run handed back at drain cannot touch its successor's files."""
    return scratch_root(settings) / job_id / token


def output_dir(settings: Settings, owner_id: str) -> Path:
    """Folder of one job's result or one batch's ZIP."""
    return settings.outputs_dir / owner_id


def temp_name(suffix: str = "") -> str:
    return f"{TEMP_PREFIX}{uuid.uuid4().hex}{suffix}"


def ensure_folders(settings: Settings) -> None:
    for folder in (settings.data_dir, settings.inputs_dir, settings.outputs_dir, scratch_root(settings)):
        folder.mkdir(parents=True, exist_ok=True)


def move_atomic(source: Path, dest: Path) -> Path:
    """Move `source` to `dest` so that `dest` is either absent or complete, never half-written."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        # Different file systems: copy under a temporary name beside dest, then rename.
        staging = dest.with_name(temp_name(dest.suffix))
        try:
            shutil.copyfile(source, staging)
            os.replace(staging, dest)
        finally:
            staging.unlink(missing_ok=True)
        source.unlink(missing_ok=True)
    return dest


def remove_tree(path: Path) -> bool:
    """Delete a folder if it exists; True when something was removed."""
    if not path.exists():
        return False
    shutil.rmtree(path, ignore_errors=True)
    return True


def remove_scratch(folder: Path) -> None:
    """Remove a run's scratch folder, and the job's folder above it once that is empty."""
    remove_tree(folder)
    try:
        folder.parent.rmdir()
    except OSError:
        pass  # another run of the same job still has files there


def remove_job_files(settings: Settings, job_id: str) -> None:
    remove_tree(scratch_root(settings) / job_id)
    remove_tree(output_dir(settings, job_id))


def upload_folder_of(settings: Settings, path: Path) -> Path | None:
    """The upload folder (<inputs>/<32 hex>/) a resolved path lies in, or None."""
    inputs = settings.inputs_dir.expanduser().resolve()
    if not path.is_relative_to(inputs) or path == inputs:
        return None
    top = inputs / path.relative_to(inputs).parts[0]
    if top == path or not UPLOAD_FOLDER_NAME.match(top.name):
        return None
    return top


def remove_upload_folder(settings: Settings, folder: Path) -> bool:
    """Remove an upload's folder (<inputs_dir>/<name>/) once it is empty; True when removed.

    Only folders directly in the inputs folder: never inputs itself, deeper folders, or a folder
    that is or lies in one of HEYGEM_INPUT_ROOTS (unless that root holds the whole inputs folder).
    """
    inputs_root = settings.inputs_dir.resolve()
    folder = folder.resolve()
    if folder.parent != inputs_root:
        return False
    for root in (Path(r).expanduser().resolve() for r in settings.input_roots):
        if folder.is_relative_to(root) and not inputs_root.is_relative_to(root):
            return False
    try:
        folder.rmdir()
    except OSError:
        return False  # not empty: another job's upload, or files a user placed there
    log.info("removed empty upload folder %s", folder)
    return True


def sweep_stale(
    settings: Settings, still_running: Callable[[str], bool] = lambda job_id: False
) -> list[Path]:
    """At start-up, before any worker runs: remove every scratch folder and temporary file.

    In a data folder shared by a fleet, other instances are working in it: the scratch folders of
    jobs still running (still_running(job id)) stay, and so do temporary files younger than
    SHARED_TEMP_KEEP_S (an upload or a move in progress elsewhere).
    """
    removed: list[Path] = []
    root = scratch_root(settings)
    if root.is_dir():
        for entry in root.iterdir():
            if still_running(entry.name):
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    younger_kept = SHARED_TEMP_KEEP_S if settings.shared_data_dir else None
    for folder in (settings.outputs_dir, settings.inputs_dir):
        removed.extend(_remove_temp_files(folder, younger_kept))
    if removed:
        log.info("removed %d stale temporary file(s) or folder(s) from an earlier run", len(removed))
    return removed


def _remove_temp_files(folder: Path, younger_kept: float | None = None) -> list[Path]:
    if not folder.is_dir():
        return []
    stale = sorted(folder.rglob(TEMP_PREFIX + "*"), reverse=True)
    if younger_kept is not None:
        cutoff = time.time() - younger_kept
        stale = [path for path in stale if _mtime(path) < cutoff]
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except FileNotFoundError:
        return float("inf")  # gone meanwhile: nothing to remove
