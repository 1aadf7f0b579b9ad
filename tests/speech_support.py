"""Helpers for the speech tests: real audio from espeak-ng + ffmpeg, a real HTTP server on
127.0.0.1 that speaks a speech protocol, and measurements of the WAV files heygem writes.

Audio is made here with the command-line tools (not with heygem.speech), so the code under test
never produces its own fixtures.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self

import numpy as np

POLL_S = 0.05  # how often serve_forever checks for shutdown: keeps each test's teardown short
SILENCE_LEVEL = 200  # int16 amplitude below which a sample counts as silent (espeak noise floor ~0)


def speak(text: str, path: Path, voice: str = "en") -> Path:
    """espeak-ng speech (22050 Hz mono 16-bit) of `text`, passed on stdin."""
    subprocess.run(
        ["espeak-ng", "-v", voice, "-b", "1", "-w", str(path), "--stdin"],
        input=text.encode(),
        check=True,
        capture_output=True,
    )
    return path


def convert(source: Path, target: Path, *args: str) -> Path:
    """ffmpeg conversion with extra output arguments (e.g. -ar 24000 -c:a pcm_f32le)."""
    subprocess.run(
        [
            "ffmpeg",
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-i",
            str(source),
            *args,
            str(target),
        ],
        check=True,
        capture_output=True,
    )
    return target


def unknown_length(wav: bytes) -> bytes:
    """The WAV with its RIFF and data lengths set to 0xFFFFFFFF, as streaming servers send it."""
    data_at = wav.index(b"data")
    unknown = (0xFFFFFFFF).to_bytes(4, "little")
    return wav[:4] + unknown + wav[8 : data_at + 4] + unknown + wav[data_at + 8 :]


def read_wav(path: Path) -> tuple[np.ndarray, int, int, int]:
    """(int16 samples, rate, channels, sample width) read with the standard wave module."""
    with wave.open(str(path), "rb") as wav:
        frames = wav.readframes(wav.getnframes())
        return (
            np.frombuffer(frames, dtype="<i2"),
            wav.getframerate(),
            wav.getnchannels(),
            wav.getsampwidth(),
        )


def wav_duration(path: Path) -> float:
    with wave.open(str(path), "rb") as wav:
        return wav.getnframes() / wav.getframerate()


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))


def silent_runs(samples: np.ndarray, rate: int) -> list[tuple[float, float]]:
    """(start_s, length_s) of every run of silent samples strictly inside the audio."""
    silent = np.abs(samples.astype(np.int32)) < SILENCE_LEVEL
    changes = np.diff(np.concatenate(([0], silent.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(changes == 1), np.flatnonzero(changes == -1)
    return [
        (start / rate, (end - start) / rate)
        for start, end in zip(starts, ends, strict=True)
        if start > 0 and end < len(samples)
    ]


# --- a speech server ------------------------------------------------------------------------


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: dict


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "audio/wav"
    delay_s: float = 0.0  # sleep before answering
    trickle_s: float = 0.0  # pause between body bytes (a server that never quite finishes)
    headers: dict[str, str] = field(default_factory=dict)


Responder = Callable[[Received], Reply]


class SpeechServer:
    """http.server in a thread on 127.0.0.1; records every request and answers with `respond`."""

    def __init__(self, respond: Responder) -> None:
        self.respond = respond
        self.received: list[Received] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"<not json>": raw.decode(errors="replace")}
                got = Received("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                server.received.append(got)
                server._answer(self, server.respond(got))

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": POLL_S}, daemon=True
        )

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @staticmethod
    def _answer(handler: BaseHTTPRequestHandler, reply: Reply) -> None:
        time.sleep(reply.delay_s)
        try:
            handler.send_response(reply.status)
            handler.send_header("Content-Type", reply.content_type)
            handler.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            if reply.trickle_s:
                for byte in reply.body:
                    handler.wfile.write(bytes([byte]))
                    handler.wfile.flush()
                    time.sleep(reply.trickle_s)
            else:
                handler.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, which is what some tests check
