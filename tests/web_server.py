"""Test-only launcher: `python tests/web_server.py [--port N ...]` serves the real app on the fake pipeline.

Settings come from HEYGEM_* variables and flags like app.py; subprocess tests (browser, cold start)
run this so that the engine is not the subject. HEYGEM_FAKE_DELAY_S makes every job take a while;
HEYGEM_FAKE_LOAD_GATE=<file> keeps the "model" loading until that file exists.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from heygem.cli import configure_logging  # noqa: E402
from heygem.settings import Settings  # noqa: E402
from heygem.web.server import serve  # noqa: E402
from tests.fakes import FakePipeline  # noqa: E402

LOAD_GATE_ENV = "HEYGEM_FAKE_LOAD_GATE"
GATE_POLL_S = 0.1


class GatedFakePipeline(FakePipeline):
    """A fake whose load() lasts until the gate file appears, like a slow model load."""

    def load(self) -> None:
        gate = os.environ.get(LOAD_GATE_ENV)
        while gate and not Path(gate).exists():
            time.sleep(GATE_POLL_S)
        super().load()


def main() -> int:
    settings = Settings.load(argv=sys.argv[1:])
    configure_logging(settings)
    return serve(settings, pipeline_factory=GatedFakePipeline)


if __name__ == "__main__":
    raise SystemExit(main())
