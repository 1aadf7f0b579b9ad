"""The job a thread is working on, so every log line it writes carries the job id.

Engine code knows nothing of jobs; the filter installed on the entry points' handlers adds the id.
The job layer's own loggers (job_logger) carry the filter themselves, so their lines name the job
in every handler, also those no entry point configured (the web app's log panel, pytest's caplog).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar

# The job a thread is working on, so engine lines (which know nothing of jobs) carry its id too.
_current_job: ContextVar[str | None] = ContextVar("heygem_current_job", default=None)


@contextlib.contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Tag every log line this thread writes inside the block with `job <id>: `."""
    token = _current_job.set(job_id)
    try:
        yield
    finally:
        _current_job.reset(token)


class JobIdFilter(logging.Filter):
    """Prefixes the current job's id, unless the line already starts with it (a job_logger's own
    filter put it there before the line reached the handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        job_id = _current_job.get()
        prefix = f"job {job_id}: "
        if job_id and isinstance(record.msg, str) and not record.msg.startswith(prefix):
            record.msg = prefix + record.msg
        return True


def job_logger(name: str) -> logging.Logger:
    """logging.getLogger(name) with a JobIdFilter of its own (added once)."""
    logger = logging.getLogger(name)
    if not any(isinstance(existing, JobIdFilter) for existing in logger.filters):
        logger.addFilter(JobIdFilter())
    return logger
