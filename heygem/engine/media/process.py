"""Running ffmpeg and ffprobe: argv-list subprocesses, stderr tails, exact reads from a pipe.

Shared by probe, decode, schedule and encode. A failing tool is reported by its most telling stderr
line, without the generic trailers ffmpeg prints after the real reason.
"""

from __future__ import annotations

import re
import subprocess
import threading
from collections import deque
from pathlib import Path
from typing import IO

from heygem.errors import MediaProcessError

FFMPEG = "ffmpeg"
FFPROBE = "ffprobe"
PROBE_TIMEOUT_S = 60.0
STDERR_TAIL_LINES = 20
STDERR_JOIN_TIMEOUT_S = 5.0
BGR_CHANNELS = 3  # frames travel through the pipes as raw bgr24
# ffmpeg ends many failures with these lines, which hide the real reason printed just before.
GENERIC_TRAILERS = (
    "Error marking filters as finished",
    "Cannot determine format of input stream",
    "Conversion failed!",
    "Nothing was written into output file",
)
_LOG_PREFIX = re.compile(r"^\[[^\]]+ @ 0x[0-9a-fA-F]+\]\s*")


class StderrTail:
    """Drains a process's stderr in a thread (so ffmpeg never blocks on it) and keeps the tail."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._lines: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._thread = threading.Thread(target=self._drain, args=(stream,), daemon=True)
        self._thread.start()

    def _drain(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").strip()
            if line:
                self._lines.append(line)
        stream.close()

    def join(self) -> None:
        self._thread.join(timeout=STDERR_JOIN_TIMEOUT_S)

    def last_line(self) -> str:
        return last_line("\n".join(self._lines))

    def lines(self) -> list[str]:
        return list(self._lines)

    def text(self) -> str:
        return " | ".join(self._lines) or "no error output"


def last_line(text: str) -> str:
    """The most telling stderr line: the last one that is not a generic ffmpeg trailer."""
    lines = [_LOG_PREFIX.sub("", line.strip()) for line in text.strip().splitlines() if line.strip()]
    telling = [line for line in lines if not line.startswith(GENERIC_TRAILERS)]
    return (telling or lines or ["no error output"])[-1]


def stderr_reason(result: subprocess.CompletedProcess[bytes], path: Path) -> str:
    """The telling line of a finished tool's stderr, with the file's path shortened to its name."""
    return strip_path(last_line(result.stderr.decode("utf-8", "replace")), path)


def strip_path(message: str, path: Path) -> str:
    """ffmpeg prefixes errors with the path; the message names the file already."""
    for prefix in (f"{path}: ", f"{path.name}: "):
        message = message.removeprefix(prefix)
    return message.replace(str(path), path.name)


def run(cmd: list[str], timeout: float = PROBE_TIMEOUT_S) -> subprocess.CompletedProcess[bytes]:
    """Run a short tool call to the end, capturing its output; MediaProcessError if it cannot run."""
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise MediaProcessError(f"{cmd[0]} is not installed or not on PATH") from None
    except subprocess.TimeoutExpired:
        raise MediaProcessError(f"{cmd[0]} did not finish within {timeout:.0f} s") from None


def kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def read_exactly(stream: IO[bytes], buffer: bytearray) -> int:
    """Fill `buffer` from `stream`; fewer bytes (the count is returned) only at the end of it."""
    view = memoryview(buffer)
    got = 0
    while got < len(buffer):
        # typeshed's IO[bytes] has no readinto, but every stream passed here (a pipe, a file
        # opened "w+b") is a buffered binary stream that has it.
        n = stream.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got
