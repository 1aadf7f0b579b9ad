"""Stream HTTP multipart uploads to disk under the inputs folder, enforcing the size limits as bytes arrive.

Starlette's own form parser spools every file to the system temp folder before a handler sees it;
streaming here keeps memory bounded, puts the files where jobs may read them
(Settings.inputs_dir/<uuid>/) and refuses an oversized upload after at most one chunk too many.
Text fields are held in memory, so their number and size are capped too, as they arrive: a
chunked body (no Content-Length) cannot grow them past MAX_TEXT_BYTES in total.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from heygem.errors import InputError, LimitExceededError
from heygem.storage.paths import free_name, safe_file_name

if TYPE_CHECKING:  # a typing-only name in python_multipart
    from python_multipart.multipart import MultipartCallbacks

log = logging.getLogger("heygem.web.uploads")

KB = 1 << 10
MAX_FIELD_BYTES = 64 * KB  # one text field (options JSON, a reference, a name) is small
MAX_TEXT_BYTES = 1 << 20  # every text field of one body together
MAX_TEXT_FIELDS = 32  # text parts of one body (a job form has about six)


@dataclass
class SavedFile:
    field: str  # form field name, e.g. "audio"
    path: Path  # where it was written, under the upload folder
    original_name: str  # the client's file name, reduced to safe characters
    size: int


@dataclass
class UploadedForm:
    folder: Path  # Settings.inputs_dir/<uuid>: delete it when the request fails
    files: dict[str, list[SavedFile]] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)

    def file(self, name: str) -> SavedFile | None:
        found = self.files.get(name) or []
        return found[0] if found else None

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def new_upload_folder(inputs_dir: Path) -> Path:
    folder = inputs_dir / uuid.uuid4().hex
    folder.mkdir(parents=True, exist_ok=False)
    return folder


def boundary_of(content_type: str) -> bytes:
    kind, params = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not params.get(b"boundary"):
        raise InputError("expected a multipart/form-data body with a boundary")
    return params[b"boundary"]


class _PartWriter:
    """MultipartParser callbacks: each file part goes straight to its own file on disk."""

    def __init__(self, folder: Path, max_file_bytes: int, max_files: int) -> None:
        self.form = UploadedForm(folder=folder)
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name = ""
        self._filename: str | None = None
        self._sink: IO[bytes] | None = None
        self._path: Path | None = None
        self._size = 0
        self._text = bytearray()
        self._file_count = 0
        self._field_count = 0
        self._text_total = 0

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
        }

    def _on_part_begin(self) -> None:
        self._headers = {}
        self._name, self._filename, self._sink, self._path = "", None, None, None
        self._size = 0
        self._text = bytearray()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[self._header_field.strip().lower()] = self._header_value.strip()
        self._header_field, self._header_value = b"", b""

    def _on_headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = params.get(b"name", b"").decode("utf-8", "replace")
        if not self._name:
            raise InputError("a multipart part has no field name")
        if b"filename" not in params:
            self._field_count += 1
            if self._field_count > MAX_TEXT_FIELDS:
                raise LimitExceededError(f"too many form fields in one request (at most {MAX_TEXT_FIELDS})")
            return
        self._file_count += 1
        if self._file_count > self.max_files:
            raise LimitExceededError(f"too many files in one request (at most {self.max_files})")
        self._filename = safe_file_name(params[b"filename"].decode("utf-8", "replace"), self._name)
        self._path = free_name(self.form.folder, self._filename)
        self._sink = open(self._path, "xb")  # noqa: SIM115 - closed by _on_part_end / discard

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._size += end - start
        if self._sink is None:
            self._text_total += end - start
            if self._size > MAX_FIELD_BYTES:
                raise LimitExceededError(
                    f"form field {self._name!r} is larger than {MAX_FIELD_BYTES // KB} KB"
                )
            if self._text_total > MAX_TEXT_BYTES:
                raise LimitExceededError(
                    f"the form fields together are larger than {MAX_TEXT_BYTES // KB} KB"
                )
            self._text += data[start:end]
            return
        if self._size > self.max_file_bytes:
            raise LimitExceededError(
                f"{self._filename}: larger than the {self.max_file_bytes // (1 << 20)} MB upload limit"
            )
        self._sink.write(data[start:end])

    def _on_part_end(self) -> None:
        if self._sink is None or self._path is None:
            self.form.fields[self._name] = self._text.decode("utf-8", "replace")
            return
        self._sink.close()
        self._sink = None
        saved = SavedFile(self._name, self._path, self._filename or "file", self._size)
        self.form.files.setdefault(self._name, []).append(saved)

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()


async def receive_multipart(
    chunks: AsyncIterator[bytes],
    content_type: str,
    inputs_dir: Path,
    max_file_bytes: int,
    max_files: int,
) -> UploadedForm:
    """Parse a multipart body from `chunks` into a fresh folder; on any error the folder is removed."""
    boundary = boundary_of(content_type)
    writer = _PartWriter(new_upload_folder(inputs_dir), max_file_bytes, max_files)
    parser = MultipartParser(boundary, writer.callbacks())
    try:
        async for chunk in chunks:
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        writer.close()
        writer.form.discard()
        raise InputError(f"malformed multipart body: {exc}") from None
    except BaseException:
        writer.close()
        writer.form.discard()
        raise
    writer.close()
    return writer.form
