"""Turn a document upload request into job items whose raw bytes are already durable on disk."""

import hashlib
import uuid
from pathlib import Path

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapters_store.durable import make_dirs_durably, write_bytes_durably
from adapters_store.errors import Invalid, Unsupported
from adapters_store.models import JobItem
from indexer.extract import KINDS, detect_kind
from service.errors import invalid_from
from service.http_body import read_json_object
from service.settings import Settings
from service.uploads import receive_files

MAX_FILES = 1000


class JsonDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(default=None, min_length=1, max_length=512)
    text: str = Field(min_length=1)
    metadata: dict = Field(default_factory=dict)


class JsonDocuments(BaseModel):
    model_config = ConfigDict(extra="forbid")
    documents: list[JsonDocument] = Field(min_length=1, max_length=100_000)


async def items_from_multipart(request: Request, boundary: bytes, dest: Path,
                               settings: Settings) -> list[JobItem]:
    files = await receive_files(request, boundary, dest, field_name="files",
                                max_bytes=settings.max_upload_bytes, max_files=MAX_FILES)
    if not files:
        raise Invalid("no files in the upload: use the repeatable multipart field `files`",
                      param="files", code="no_files")
    items = []
    for received in files:
        kind = detect_kind(received.filename, received.content_type)
        if kind is None:
            for other in files:
                other.path.unlink(missing_ok=True)
            raise Unsupported(f"{received.filename!r} ({received.content_type or 'no content type'}) "
                              f"is not a supported type: {', '.join(KINDS)}", param="files")
        items.append(JobItem(filename=received.filename, content_type=received.content_type, kind=kind,
                             item_metadata={"filename": received.filename,
                                            "content_type": received.content_type},
                             raw_path=str(received.path), bytes=received.size, sha256=received.sha256))
    return items


async def items_from_json(request: Request, dest: Path, settings: Settings) -> list[JobItem]:
    body = await read_json_object(request, settings.max_upload_bytes)
    try:
        documents = JsonDocuments.model_validate(body).documents
    except ValidationError as exc:
        raise invalid_from(exc) from exc
    make_dirs_durably(dest)
    items = []
    for document in documents:
        data = document.text.encode()
        path = dest / f"{uuid.uuid4().hex}.raw"
        write_bytes_durably(path, data)
        items.append(JobItem(filename=document.id or "", external_id=document.id, content_type="text/plain",
                             kind="txt", item_metadata=document.metadata, raw_path=str(path),
                             bytes=len(data), sha256=hashlib.sha256(data).hexdigest()))
    return items
