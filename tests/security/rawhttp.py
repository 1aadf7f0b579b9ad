"""A raw HTTP/1.1 client for attack tests: it sends a body piece by piece, stops as soon as the
server answers, and reports how many body bytes it got to send. http.client cannot do that."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

RECV_BYTES = 65536
IO_TIMEOUT_S = 30.0


@dataclass
class Answer:
    status: int  # 0 when the connection closed without an answer
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    sent: int = 0  # body bytes written before the server answered or closed


def multipart(boundary: str, parts: Iterable[tuple[str, str | None, bytes]]) -> Iterator[bytes]:
    """Parts (name, filename or None, content) as multipart/form-data pieces, one per part."""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        if filename is not None:
            head += "Content-Type: application/octet-stream\r\n"
        yield head.encode() + b"\r\n" + content + b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def in_pieces(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """The same bytes cut into pieces of at most `size`, as a slow streaming client sends them."""
    for chunk in chunks:
        for start in range(0, len(chunk), size):
            yield chunk[start : start + size]


def request(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str],
    body: Iterable[bytes] = (),
    *,
    chunked: bool = False,
    source_ip: str = "127.0.0.1",
) -> Answer:
    """Send the request (chunked when asked), piece by piece; read the answer when it comes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT_S, source_address=(source_ip, 0))
    try:
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
        if chunked:
            lines.append("Transfer-Encoding: chunked")
        lines += [f"{k}: {v}" for k, v in headers.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        sent = 0
        for piece in body:
            if _answered(sock):
                break
            frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked and piece else piece
            try:
                sock.sendall(frame)
            except OSError:  # reset: the server stopped reading
                break
            sent += len(piece)
        else:
            try:
                sock.sendall(b"0\r\n\r\n" if chunked else b"")
            except OSError:
                pass
        answer = _read_answer(sock)
        answer.sent = sent
        return answer
    finally:
        sock.close()


def _answered(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


def _read_answer(sock: socket.socket) -> Answer:
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(RECV_BYTES)
            if not chunk:
                return Answer(0)
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = sock.recv(RECV_BYTES)
            if not chunk:
                break
            rest += chunk
    except OSError:
        return Answer(0)
    return Answer(int(status_line.split()[1]), headers, rest[:length] if length else rest)
