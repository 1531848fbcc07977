"""Stream multipart uploads straight to disk, enforcing size and count limits as bytes arrive.

Client file names are kept as metadata only; on disk every part gets a random name.
"""

import hashlib
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from adapters_store.durable import make_dirs_durably
from adapters_store.errors import GraftError, Invalid, TooLarge


@dataclass
class ReceivedFile:
    field: str
    filename: str
    content_type: str | None
    path: Path
    size: int = 0
    sha256: str = ""


@dataclass
class _Part:
    headers: dict[str, bytes] = field(default_factory=dict)
    header_name: bytes = b""
    header_value: bytes = b""
    file: ReceivedFile | None = None
    handle: object | None = None
    digest: object | None = None
    value: bytearray = field(default_factory=bytearray)


def multipart_boundary(request: Request) -> bytes | None:
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        return None
    boundary = options.get(b"boundary")
    if not boundary:
        raise Invalid("multipart body without a boundary", code="invalid_multipart")
    return boundary


async def receive_files(request: Request, boundary: bytes, dest: Path, *, field_name: str,
                        max_bytes: int, max_files: int) -> list[ReceivedFile]:
    """Write each `field_name` file part to `dest`; raise 413 the moment a limit is passed.

    Files are fsynced; on any error every file written so far is removed.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise TooLarge(f"upload of {declared} bytes exceeds the limit of {max_bytes} bytes",
                       code="upload_too_large")
    make_dirs_durably(dest)
    files: list[ReceivedFile] = []
    part = _Part()
    total = 0

    def on_header_field(data, start, end):
        part.header_name += data[start:end]

    def on_header_value(data, start, end):
        part.header_value += data[start:end]

    def on_header_end():
        part.headers[part.header_name.decode("latin-1").lower()] = part.header_value
        part.header_name, part.header_value = b"", b""

    def on_headers_finished():
        disposition, options = parse_options_header(part.headers.get("content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        if filename is None:
            return  # a plain form field: ignored
        if name != field_name:
            raise Invalid(f"file parts must use the field name {field_name!r}, got {name!r}",
                          param=name, code="invalid_multipart")
        if len(files) >= max_files:
            # A count rule of the request's shape, as a JSON array's maxItems is: 400, not 413.
            raise Invalid(f"more than {max_files} files in one upload", param=field_name, code="too_many_files")
        content_type = part.headers.get("content-type")
        if b"\x00" in filename or (content_type and b"\x00" in content_type):
            raise Invalid("a file part's name or content type holds a NUL character", param=field_name,
                          code="invalid_multipart")
        received = ReceivedFile(
            field=name,
            filename=os.path.basename(filename.decode("utf-8", "replace").replace("\\", "/")) or "upload",
            content_type=content_type.decode("latin-1") if content_type else None,
            path=dest / f"{uuid.uuid4().hex}.raw",
        )
        files.append(received)
        part.file = received
        part.handle = received.path.open("wb")
        part.digest = hashlib.sha256()

    def on_part_data(data, start, end):
        nonlocal total
        chunk = data[start:end]
        total += len(chunk)
        if total > max_bytes:
            raise TooLarge(f"upload exceeds the limit of {max_bytes} bytes", code="upload_too_large")
        if part.handle is not None:
            part.handle.write(chunk)
            part.digest.update(chunk)
            part.file.size += len(chunk)

    def on_part_end():
        if part.handle is not None:
            part.handle.flush()
            os.fsync(part.handle.fileno())
            part.handle.close()
            part.file.sha256 = part.digest.hexdigest()
        part.headers.clear()
        part.file = part.handle = part.digest = None

    parser = MultipartParser(boundary, {
        "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data, "on_part_end": on_part_end,
    })
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except GraftError:  # ours: a limit was crossed
        _discard(part, files)
        raise
    except Exception as exc:  # the parser's own errors: a malformed body
        _discard(part, files)
        raise Invalid(f"malformed multipart body: {exc}", code="invalid_multipart") from exc
    if part.handle is not None:
        _discard(part, files)
        raise Invalid("multipart body ended in the middle of a file", code="invalid_multipart")
    return files


def _discard(part: _Part, files: list[ReceivedFile]) -> None:
    if part.handle is not None:
        part.handle.close()
    for received in files:
        received.path.unlink(missing_ok=True)
