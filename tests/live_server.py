"""Start the real server in a subprocess on a free 127.0.0.1 port, for browser and client tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
FAKE_LAUNCHER = PROJECT / "tests" / "web_server.py"
REAL_LAUNCHER = PROJECT / "app.py"
POLL_S = 0.1
STOP_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_status(url: str, timeout: float = 2.0) -> int:
    """Status code of a GET, or 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


class LiveServer:
    """One server process; `started_at` is taken just before the process is spawned."""

    def __init__(self, data_dir: Path, *, launcher: Path = FAKE_LAUNCHER, env: dict | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir / "server.log"
        environment = dict(os.environ, PYTHONUNBUFFERED="1", HEYGEM_DATA_DIR=str(data_dir),
                           HEYGEM_HOST="127.0.0.1", HEYGEM_PORT=str(self.port))
        environment.update(env or {})
        data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, str(launcher), *args], cwd=PROJECT, env=environment,
            stdout=self._log, stderr=subprocess.STDOUT,
        )

    def wait_for(self, path: str, status: int, timeout: float) -> float:
        """Seconds since spawn when `path` first answered `status`; AssertionError past timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()}")
            if http_status(self.url + path) == status:
                return time.monotonic() - self.started_at
            time.sleep(POLL_S)
        raise AssertionError(f"{path} did not answer {status} within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> int:
        """SIGTERM (the drain path), then kill if it hangs; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def stop_cleanly(self) -> None:
        """Stop through the drain path and require exit code 0; the log is printed for pytest,
        which shows it only when a test failed."""
        code = self.stop()
        print(self.log())
        assert code == 0, f"server exited with {code}"
