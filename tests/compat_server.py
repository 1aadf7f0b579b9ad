"""Test-only launcher: `python tests/compat_server.py` serves the HeyGem-compatible API alone.

It wires what heygem/web/server.py wires for HEYGEM_COMPAT_PORT (one JobService built with
compat_service_settings, the compat app on its own port via start_compat_server, SIGTERM drains
the service, then stops that server), without the web UI, so the live client test runs against
the real engine before and independently of the main server's wiring. Settings come from HEYGEM_*
variables like app.py; the port is HEYGEM_COMPAT_PORT, or HEYGEM_PORT when that is 0.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from heygem.jobs import JobService  # noqa: E402
from heygem.logs import configure_logging  # noqa: E402
from heygem.settings import Settings  # noqa: E402
from heygem.web.compat import compat_service_settings, start_compat_server  # noqa: E402


def main() -> int:
    settings = Settings.load(argv=sys.argv[1:])
    if not settings.compat_port:
        settings = settings.replace(compat_port=settings.port)
    configure_logging(settings)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda received, frame: stop.set())
    service = JobService(compat_service_settings(settings))  # the real LipSyncPipeline
    service.start()
    try:
        server = start_compat_server(service, settings)
    except OSError as exc:
        print(f"compat_server: {exc}", file=sys.stderr)
        service.stop(0)
        return 1
    stop.wait()
    service.stop(settings.drain_seconds)
    if server is not None:
        server.stop()
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
