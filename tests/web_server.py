"""Test-only launcher: `python tests/web_server.py [--port N ...]` serves the real app on FakePipeline.

Settings come from HEYGEM_* variables and flags like app.py; subprocess tests (browser, cold start)
run this so that the engine is not the subject. HEYGEM_FAKE_DELAY_S makes every job take a while;
HEYGEM_FAKE_LOAD_GATE=<file> keeps the "model" loading until that file exists (see tests/kit.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, the project folder is not on sys.path: put it there before importing from it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from heygem.cli import configure_logging  # noqa: E402
from heygem.settings import Settings  # noqa: E402
from heygem.web.server import serve  # noqa: E402
from tests.kit import FakePipeline  # noqa: E402


def main() -> int:
    settings = Settings.load(argv=sys.argv[1:])
    configure_logging(settings)
    return serve(settings, pipeline_factory=FakePipeline)


if __name__ == "__main__":
    raise SystemExit(main())
