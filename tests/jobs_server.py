"""Test-only: a JobService with FakePipeline in its own process, for kill and drain tests.

    python -m tests.jobs_server        (from the project folder)

Settings come from HEYGEM_* variables as in production (HEYGEM_DATA_DIR, HEYGEM_DRAIN_SECONDS...);
HEYGEM_FAKE_DELAY_S makes each job slow. The process writes <data_dir>/ready once the worker is
ready, appends "<job id>" to <data_dir>/runs.log each time the fake finishes a run (so tests can
count runs across restarts), and on SIGTERM drains like the real server, then exits 0.
"""

from __future__ import annotations

import signal
import sys
import threading

from heygem.cli import configure_logging
from heygem.jobs.service import JobService
from heygem.settings import Settings
from tests.kit import FakePipeline, wait_until

READY_FILE = "ready"
RUN_LOG = "runs.log"
START_TIMEOUT_S = 60.0


def recording_pipeline(settings: Settings) -> FakePipeline:
    return FakePipeline(settings, run_log=settings.data_dir / RUN_LOG)


def main() -> int:
    settings = Settings.load()
    configure_logging(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    service = JobService(settings, pipeline_factory=recording_pipeline)
    service.start()
    try:
        wait_until(lambda: service.readiness()[0] or stop.is_set(), START_TIMEOUT_S, message="the worker")
        (settings.data_dir / READY_FILE).write_text("ready")
        stop.wait()
    finally:
        service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
