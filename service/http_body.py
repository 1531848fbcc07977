"""Reading request bodies: a size limit enforced while streaming, and JSON read the same way on
every route whatever Content-Type the client sent (curl -d sends a form type), strictly
(adapters_store.strict_json: no NaN, no integer past 64 bits, no nesting past 64 levels)."""

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from adapters_store import strict_json
from adapters_store.errors import Invalid, TooLarge
from service.errors import invalid_from

Model = TypeVar("Model", bound=BaseModel)


async def read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes",
                       code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body exceeds the limit of {limit} bytes", code="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    raw = await read_limited(request, limit)
    if not raw:
        raise Invalid("request body is empty; expected a JSON object", code="invalid_json")
    try:
        body = strict_json.loads(raw)
    except ValueError as exc:
        raise Invalid(f"request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise Invalid("request body must be a JSON object", code="invalid_json")
    return body


def json_body(model: type[Model]) -> Callable[[Request], Coroutine[Any, Any, Model]]:
    """A dependency that reads the body as JSON and validates it into `model`. List it after the
    route's key check: the body is read only for a caller the route lets in."""

    async def read(request: Request) -> Model:
        body = await read_json_object(request, request.app.state.graft.settings.max_request_bytes)
        try:
            return model.model_validate(body)
        except ValidationError as exc:
            raise invalid_from(exc) from exc

    read.__name__ = f"json_body_{model.__name__}"
    return read
