"""The job layer's light modules stay light: reading a Job record or building a JobService loads
neither object storage's client (boto3) nor the engine's heavy libraries (cv2, torch)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("boto3", "botocore", "cv2", "torch")


def _loaded_after_import(module: str) -> list[str]:
    # A fresh interpreter: this test process has long imported everything.
    code = (
        f"import json, sys, {module}; print(json.dumps([name for name in {HEAVY!r} if name in sys.modules]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(result.stdout)


@pytest.mark.parametrize(
    "module",
    [
        "heygem.jobs",
        "heygem.jobs.records",
        "heygem.jobs.service",
        "heygem.storage.paths",
    ],
)
def test_importing_does_not_load_heavy_libraries(module):
    assert _loaded_after_import(module) == []


def test_the_package_still_offers_the_old_names_lazily():
    import heygem.jobs
    from heygem.jobs.records import JobStatus
    from heygem.jobs.service import JobService

    assert heygem.jobs.JobService is JobService
    assert heygem.jobs.JobStatus is JobStatus
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        heygem.jobs.Nothing  # noqa: B018
