"""Durable job layer between the web app / API / CLI and the engine.

The contract is heygem.jobs.api (the JobService protocol and EngineFactory). Import what you use
from its module: records (Job, Batch, JobStatus: plain data), service (JobService), store,
manifest, runner (the CLI's manifest runner), execute (one run). This package imports nothing by
itself, so reading a Job record does not load SQLite, boto3 or the engine.
"""

from __future__ import annotations

import importlib
from typing import Any

# Names older callers import from the package, and the module that defines each.
_MOVED = {
    "JobService": "service",
    "Job": "records",
    "Batch": "records",
    "JobStatus": "records",
    "JobStore": "store",
    "SQLiteJobStore": "store",
    "ManifestItem": "manifest",
    "parse_manifest": "manifest",
    "run_manifest": "runner",
    "ManifestProgress": "runner",
    "ManifestSummary": "runner",
    "ItemResult": "runner",
}


def __getattr__(name: str) -> Any:
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module 'heygem.jobs' has no attribute {name!r}")
    return getattr(importlib.import_module(f"heygem.jobs.{module}"), name)
