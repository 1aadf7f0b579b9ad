"""Log lines written while a job runs carry its id, whichever module writes them."""

from __future__ import annotations

import io
import logging

from heygem.jobs.joblog import JobIdFilter, job_context


def _capture() -> tuple[logging.Logger, io.StringIO, logging.Handler]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(JobIdFilter())
    logger = logging.getLogger("heygem.engine.pipeline.test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger, stream, handler


def test_engine_lines_inside_a_job_carry_its_id_and_lines_outside_do_not():
    logger, stream, handler = _capture()
    try:
        with job_context("abc123"):
            logger.info("wrote %s", "out.mp4")
            logger.info("job abc123: already tagged")
        logger.info("between jobs")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines == ["job abc123: wrote out.mp4", "job abc123: already tagged", "between jobs"]
