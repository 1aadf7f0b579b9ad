"""`python -m heygem batch MANIFEST.jsonl --output-dir DIR`: a manifest run in this process.

No server and no database: items run one after another through one pipeline, each result is
moved into DIR atomically under its output_name, and an item whose output already exists is
skipped, so running the same command again resumes an interrupted batch. One item's failure is
recorded and the others carry on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from heygem.engine.api import Engine, ProgressCallback, SyncOptions
from heygem.errors import HeygemError, InputError
from heygem.jobs import files
from heygem.jobs.avatars import RunFace, avatar_id_of, face_for_run
from heygem.jobs.execute import RunRequest, default_engine, run_one
from heygem.jobs.manifest import ManifestItem, parse_manifest
from heygem.jobs.options import options_dict, sync_options
from heygem.jobs.records import DEFAULT_TENANT, JobStatus, Outcome
from heygem.jobs.store import POSTGRES_SCHEMES, open_store
from heygem.settings import Settings

log = logging.getLogger("heygem.jobs.runner")

ItemStatus = Literal["succeeded", "skipped", "failed"]


@dataclass(frozen=True)
class ItemResult:
    item: ManifestItem
    output: Path  # where the result is (or would have been)
    status: ItemStatus
    error: str | None = None
    engine: str | None = None
    seconds: float = 0.0

    def describe(self) -> str:
        """One line for the CLI's summary."""
        text = f"line {self.item.line} ({self.item.output_name}): {self.status}"
        return f"{text}: {self.error}" if self.error else text


@dataclass(frozen=True)
class ManifestProgress:
    index: int  # 1-based item number
    count: int  # items in the manifest
    item: ManifestItem
    # "fetch" while the inputs are read, then the engine's stage, then "skipped" / "succeeded" /
    # "failed" at the end
    stage: str
    done: int  # the engine's own (done, total) for this stage, e.g. frames
    total: int
    result: ItemResult | None = None  # set once the item has finished, been skipped or failed

    @property
    def fraction(self) -> float:
        """0-1 within the current stage."""
        return min(1.0, self.done / self.total) if self.total else 0.0


@dataclass
class ManifestSummary:
    manifest: Path
    output_dir: Path
    results: list[ItemResult] = field(default_factory=list)

    def _with(self, status: ItemStatus) -> list[ItemResult]:
        return [result for result in self.results if result.status == status]

    @property
    def succeeded(self) -> list[ItemResult]:
        return self._with("succeeded")

    @property
    def skipped(self) -> list[ItemResult]:
        return self._with("skipped")

    @property
    def failed(self) -> list[ItemResult]:
        return self._with("failed")

    @property
    def ok(self) -> bool:
        """True when no item failed: the CLI's exit code follows this."""
        return not self.failed

    def describe(self) -> str:
        """The counts on one line, then one line per failed item."""
        counts = (
            f"{len(self.results)} item(s): {len(self.succeeded)} succeeded, "
            f"{len(self.skipped)} skipped (output exists), {len(self.failed)} failed"
        )
        return "\n".join([counts, *(f"  {result.describe()}" for result in self.failed)])


ProgressHandler = Callable[[ManifestProgress], None]


def run_manifest(
    settings: Settings,
    manifest: Path,
    output_dir: Path,
    options: Mapping[str, Any] | SyncOptions | None = None,
    *,
    pipeline: Engine | None = None,
    on_progress: ProgressHandler | None = None,
) -> ManifestSummary:
    """Run every item of a JSONL manifest into output_dir; see the module docstring.

    Local paths may lie in the manifest's folder, output_dir or Settings.allowed_input_roots.
    Raises InputError/ForbiddenPathError (naming the line) for a bad manifest before any work,
    and ModelError when the engine cannot load; item failures only show in the summary.
    """
    manifest = Path(manifest).resolve()
    output_dir = Path(output_dir).expanduser().resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    roots = (manifest.parent, output_dir, *settings.allowed_input_roots)
    items = parse_manifest(manifest, roots)
    sync = sync_options(options_dict(options))
    _sweep_temp(output_dir)
    summary = ManifestSummary(manifest, output_dir)
    if pipeline is None and any(not (output_dir / i.output_name).is_file() for i in items):
        pipeline = default_engine(settings)
    if pipeline is not None:
        pipeline.load()
    report = on_progress or (lambda update: None)
    for index, item in enumerate(items, start=1):
        target = output_dir / item.output_name
        if target.is_file():
            result = ItemResult(item, target, "skipped")
        else:
            assert pipeline is not None  # built above, since this item has no output yet
            callback = _item_progress(report, index, len(items), item)
            result = _run_item(item, target, pipeline, sync, settings, callback)
        summary.results.append(result)
        report(ManifestProgress(index, len(items), item, result.status, 1, 1, result))
    log.info("manifest %s: %s", manifest.name, summary.describe())
    return summary


def _item_progress(report: ProgressHandler, index: int, count: int, item: ManifestItem) -> ProgressCallback:
    def on_progress(done: int, total: int, stage: str) -> None:
        report(ManifestProgress(index, count, item, stage, done, total))

    return on_progress


def _run_item(
    item: ManifestItem,
    target: Path,
    pipeline: Engine,
    options: SyncOptions,
    settings: Settings,
    on_progress: ProgressCallback,
) -> ItemResult:
    started = time.monotonic()
    scratch = target.parent / files.temp_name()
    scratch.mkdir()
    label = f"manifest line {item.line}"
    try:
        avatar = _avatar_face(item.video, settings)
        request = RunRequest(
            audio=item.audio,
            video=item.video,
            options=options,
            target=target,
            scratch=scratch,
            local_checked=True,
            label=label,
            text=item.text,
            voice=item.voice,
            reference=avatar.reference if avatar else None,
            face=avatar.face if avatar else None,
        )
        outcome = run_one(pipeline, request, settings, on_progress=on_progress)
    except HeygemError as exc:
        outcome = Outcome(JobStatus.FAILED, error=str(exc))
    finally:
        files.remove_tree(scratch)
    seconds = time.monotonic() - started
    # Without a stop callback run_one always ends in an outcome.
    assert outcome is not None
    if outcome.status == JobStatus.SUCCEEDED:
        log.info("%s: wrote %s", label, target)
        return ItemResult(item, target, "succeeded", engine=outcome.engine, seconds=seconds)
    log.warning("%s: failed: %s", label, outcome.error)
    return ItemResult(item, target, "failed", error=outcome.error, seconds=seconds)


def _avatar_face(ref: str, settings: Settings) -> RunFace | None:
    """An "avatar:<id>" line reads the service's avatars (the single-user tenant's) from the job
    database in the data folder; None for any other reference."""
    if avatar_id_of(ref) is None:
        return None
    shared = settings.database_url.lower().startswith(POSTGRES_SCHEMES)
    if not shared and not settings.database_path.is_file():
        raise InputError(f"{ref}: there are no avatars in {settings.data_dir} (no job database)")
    store = open_store(settings)
    store.open()
    try:
        return face_for_run(store, settings, ref, DEFAULT_TENANT)
    finally:
        store.close()


def _sweep_temp(output_dir: Path) -> None:
    """Remove what an interrupted earlier run left (only our own temporary names)."""
    for entry in output_dir.glob(files.TEMP_PREFIX + "*"):
        if entry.is_dir():
            files.remove_tree(entry)
        else:
            entry.unlink(missing_ok=True)
        log.info("removed %s left by an interrupted run", entry)
