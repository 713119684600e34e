"""Multipart uploads streamed to temporary files, with the per-file limit applied as bytes
arrive.

Starlette's form parser would keep each file (spooled) until the handler reads it, and the
handler then read it whole into memory before the size check: a 1.5 GB upload took the
server from 0.5 to 2 GB. Here each file part is written, 64 KB at a time, to a temporary file
in the data folder's ``tmp/`` (hashed on the way, so storing it is a rename); a part that
passes ``max_file_bytes`` is cut off, its file deleted and the rest of its bytes discarded
unread into memory; the response is the usual JSON with 413 for it. Every temporary file is
removed when the request ends, whatever happened (:meth:`ParsedUpload.cleanup`).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from xraytriage.errors import StorageFull, TooLarge, UploadError
from xraytriage.serving.storage import BlobStore, StorageMonitor, is_storage_error

MAX_FIELD_BYTES = 64 * 1024


@dataclass
class FilePart:
    """One uploaded file: on disk at ``path`` (None when refused while streaming)."""

    filename: str
    path: Path | None = None
    size: int = 0
    digest: str = ""
    error: str | None = None
    status: int = 0


@dataclass
class ParsedUpload:
    files: list[FilePart] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)

    def cleanup(self) -> None:
        """Remove every temporary file still there (stored ones were already moved)."""
        for part in self.files:
            if part.path is not None:
                part.path.unlink(missing_ok=True)


class _Receiver:
    """python-multipart callbacks: headers, then data into a file (or a small field buffer)."""

    def __init__(
        self, store: BlobStore, storage: StorageMonitor, max_file_bytes: int, max_files: int
    ) -> None:
        self.store = store
        self.storage = storage
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self.result = ParsedUpload()
        self._headers: dict[bytes, bytes] = {}
        self._field_name = b""
        self._value = b""
        self._part: FilePart | None = None
        self._fh = None
        self._hash = None
        self._field: bytearray | None = None
        self._field_key = ""

    # header callbacks
    def on_part_begin(self) -> None:
        self._headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._field_name.lower()] = self._value
        self._field_name, self._value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        if filename is None:
            self._field, self._field_key = bytearray(), name
            return
        if len(self.result.files) >= self.max_files:
            raise UploadError(
                413, f"more than {self.max_files} files in one request; the limit is {self.max_files}"
            )
        part = FilePart(filename.decode("utf-8", "replace"))
        self.result.files.append(part)
        self._part, self._hash = part, hashlib.sha256()
        try:
            self.storage.refuse_if_full()
            part.path = self.store.temp_file()
            self._fh = open(part.path, "wb")  # noqa: SIM115 - closed in on_part_end / close
        except OSError as exc:
            self._refuse(part, exc)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._field is not None:
            self._field += data[start:end]
            if len(self._field) > MAX_FIELD_BYTES:
                raise UploadError(413, f"form field {self._field_key!r} is over {MAX_FIELD_BYTES:,} bytes")
            return
        part = self._part
        if part is None or part.error is not None:
            return  # a refused part: its remaining bytes are read and dropped
        part.size += end - start
        if part.size > self.max_file_bytes:
            part.error = f"file is over the limit of {self.max_file_bytes:,} bytes (upload stopped there)"
            part.status = 413
            self._close(delete=True)
            return
        chunk = data[start:end]
        self._hash.update(chunk)
        try:
            self._fh.write(chunk)
        except OSError as exc:
            self._refuse(part, exc)

    def on_part_end(self) -> None:
        if self._field is not None:
            self.result.fields[self._field_key] = self._field.decode("utf-8", "replace")
            self._field = None
            return
        part = self._part
        if part is not None and part.error is None:
            part.digest = self._hash.hexdigest()
            try:
                self._fh.close()
            except OSError as exc:
                self._refuse(part, exc)
        self._fh, self._part = None, None

    def _refuse(self, part: FilePart, exc: OSError) -> None:
        if not is_storage_error(exc):
            raise exc
        self.storage.note(exc)
        part.status = 507
        part.error = (
            exc.strerror
            if isinstance(exc, StorageFull)
            else f"the server's storage is full ({exc.strerror or exc}): nothing was stored; try again later"
        )
        self._close(delete=True)

    def _close(self, delete: bool) -> None:
        self.close()
        if delete and self._part is not None and self._part.path is not None:
            self._part.path.unlink(missing_ok=True)
            self._part.path = None

    def close(self) -> None:
        """After an error: close the open file (``ParsedUpload.cleanup`` removes them)."""
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None


async def receive_upload(
    request: Request, store: BlobStore, storage: StorageMonitor, max_file_bytes: int, max_files: int
) -> ParsedUpload:
    """Stream a ``multipart/form-data`` body into temporary files. The caller must call
    ``cleanup()`` on the result (also when this raises: see :func:`streamed_upload`)."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in options:
        raise UploadError(
            422, "no files in the request: send them as multipart/form-data in the 'files' field"
        )
    receiver = _Receiver(store, storage, max_file_bytes, max_files)
    callbacks = {
        name: getattr(receiver, name)
        for name in (
            "on_part_begin",
            "on_part_data",
            "on_part_end",
            "on_header_field",
            "on_header_value",
            "on_header_end",
            "on_headers_finished",
        )
    }
    parser = MultipartParser(options[b"boundary"], callbacks)  # type: ignore[arg-type]
    request.state.upload = receiver.result  # so that the caller can clean up after an exception
    try:
        async for chunk in request.stream():
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except (UploadError, TooLarge, OSError):  # TooLarge: the body limit's middleware answers
        raise
    except Exception as exc:  # the multipart parser's own errors
        raise UploadError(400, f"malformed multipart body: {exc}") from None
    finally:
        receiver.close()
    return receiver.result
