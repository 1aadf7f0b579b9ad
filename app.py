"""Serve the heygem web app and HTTP API: `python app.py [--port 8080 ...]`."""

import sys

from heygem.cli import configure_logging
from heygem.engine.runtime import tune_process
from heygem.settings import Settings


def main() -> int:
    tune_process()
    try:
        settings = Settings.load(argv=sys.argv[1:])
    except ValueError as exc:
        print(f"heygem: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings)
    settings.log_summary()
    from heygem.web.server import serve

    return serve(settings)


if __name__ == "__main__":
    raise SystemExit(main())
