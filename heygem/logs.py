"""Logging set-up for the entry points (app.py, cli.py). Library code only calls getLogger."""

from __future__ import annotations

import contextlib
import logging
import sys
from contextvars import ContextVar
from typing import Iterator

from heygem.settings import Settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

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
    """Prefixes the current job's id, unless the line already names it (job-layer loggers do)."""

    def filter(self, record: logging.LogRecord) -> bool:
        job_id = _current_job.get()
        prefix = f"job {job_id}: "
        if job_id and isinstance(record.msg, str) and not record.msg.startswith(prefix):
            record.msg = prefix + record.msg
        return True


def configure_logging(settings: Settings) -> None:
    """Send heygem's logs to stdout (what containers collect), and to a file when one is set."""
    root = logging.getLogger()
    root.handlers.clear()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if settings.log_file is not None:
        settings.log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(settings.log_file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler.addFilter(JobIdFilter())
        root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
