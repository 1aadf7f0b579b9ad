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
import time
from pathlib import Path

from heygem.cli import configure_logging
from heygem.jobs.service import JobService
from heygem.settings import Settings
from tests.fakes import FakePipeline

READY_FILE = "ready"
RUN_LOG = "runs.log"
READY_POLL_S = 0.05


class RecordingPipeline(FakePipeline):
    def run(self, audio, face, output, options=None, on_progress=None):
        result = super().run(audio, face, output, options, on_progress)
        # The output lives in <data_dir>/jobs/<job id>/<run>/: the grandparent names the job.
        job_id = Path(output).parent.parent.name
        with open(self.settings.data_dir / RUN_LOG, "a", encoding="utf-8") as log:
            log.write(job_id + "\n")
        return result


def main() -> int:
    settings = Settings.load()
    configure_logging(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    service = JobService(settings, pipeline_factory=RecordingPipeline)
    service.start()
    while not service.readiness()[0] and not stop.is_set():
        time.sleep(READY_POLL_S)
    (settings.data_dir / READY_FILE).write_text("ready")
    stop.wait()
    service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
