"""A batch as one download: the successful videos plus summary.csv and summary.json of every item."""

from __future__ import annotations

import csv
import io
import json
import logging
import zipfile
from pathlib import Path
from typing import Any

from heygem import storage
from heygem.jobs import files, fleetfiles
from heygem.jobs.manifest import shown_ref
from heygem.jobs.records import Batch
from heygem.settings import Settings

log = logging.getLogger("heygem.jobs.archive")

SUMMARY_FIELDS = (
    "index",
    "id",
    "status",
    "output_name",
    "audio",
    "video",
    "error",
    "engine",
    "attempts",
    "seconds",
    "frames_without_face",
    "output_url",
)


def zip_name(batch_id: str) -> str:
    return f"heygem-batch-{batch_id[:8]}.zip"


def summary_rows(batch: Batch) -> list[dict[str, Any]]:
    return [
        {
            "index": item.item_index,
            "id": item.id,
            "status": item.status.value,
            "output_name": item.result_name,
            "audio": shown_ref(item.audio),
            "video": shown_ref(item.video),
            "error": item.error or "",
            "engine": item.engine or "",
            "attempts": item.attempts,
            "seconds": round(item.seconds, 2) if item.seconds is not None else "",
            "frames_without_face": item.frames_without_face if item.frames_without_face is not None else "",
            "output_url": item.output_url or "",
        }
        for item in batch.items
    ]


def build_zip(batch: Batch, settings: Settings) -> Path:
    """Write the batch's ZIP (replacing an older one atomically) and return its path."""
    folder = files.output_dir(settings, batch.id)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / zip_name(batch.id)
    staging = folder / files.temp_name(".zip")
    rows = summary_rows(batch)
    try:
        with zipfile.ZipFile(staging, "w") as archive:
            for item in batch.items:
                video = fleetfiles.local_result(item, settings)
                if video is not None:
                    # mp4 is already compressed: store it as is.
                    archive.write(video, item.result_name, compress_type=zipfile.ZIP_STORED)
            archive.writestr("summary.csv", _csv(rows), compress_type=zipfile.ZIP_DEFLATED)
            archive.writestr(
                "summary.json",
                json.dumps({"batch": batch.id, "status": batch.status, "items": rows}, indent=2),
                compress_type=zipfile.ZIP_DEFLATED,
            )
        files.move_atomic(staging, target)
    except OSError as exc:
        if storage.is_disk_full(exc):
            raise storage.disk_full_error() from None
        raise
    finally:
        staging.unlink(missing_ok=True)
    log.info("batch %s: ZIP with %d video(s) at %s", batch.id, len(batch.succeeded), target)
    return target


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
