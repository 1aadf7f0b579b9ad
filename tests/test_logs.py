"""Log lines written while a job runs carry its id, whichever module writes them."""

from __future__ import annotations

import io
import logging

from heygem.jobs.joblog import JobIdFilter, job_context, job_logger


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


def test_job_layer_loggers_tag_lines_for_every_handler_once():
    plain_stream = io.StringIO()
    plain = logging.StreamHandler(plain_stream)  # no JobIdFilter, like the web app's log panel
    logger = job_logger("heygem.jobs.test_logs")
    assert job_logger("heygem.jobs.test_logs") is logger
    assert sum(isinstance(f, JobIdFilter) for f in logger.filters) == 1
    tagged_stream = io.StringIO()
    tagged = logging.StreamHandler(tagged_stream)
    tagged.addFilter(JobIdFilter())  # what the entry points install
    for handler in (plain, tagged):
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with job_context("abc123"):
            logger.info("queued")
        logger.info("between jobs")
    finally:
        for handler in (plain, tagged):
            logger.removeHandler(handler)
    expected = ["job abc123: queued", "between jobs"]
    assert plain_stream.getvalue().splitlines() == expected
    assert tagged_stream.getvalue().splitlines() == expected
