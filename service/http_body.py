"""Reading requests: NUL characters refused in URLs, a size limit enforced while streaming, and JSON read the same way on
every route whatever Content-Type the client sent (curl -d sends a form type), strictly
(adapters_store.strict_json: no NaN, no integer past 64 bits, no nesting past 64 levels).

A route never gives FastAPI a body parameter (FastAPI would read the body before the key check),
so each route declares its body here for the OpenAPI document: `json_body(Model)` does it for a
JSON body read into a model, `request_body(...)` for a route that reads its body itself.
service/openapi.py turns the declaration into the route's requestBody.
"""

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from adapters_store import strict_json
from adapters_store.errors import Invalid, TooLarge
from service.errors import error_response, invalid_from

Model = TypeVar("Model", bound=BaseModel)
Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


@dataclass(frozen=True)
class BodyDoc:
    """A route's request body as the OpenAPI document shows it: a JSON object validated by `json`,
    and/or multipart/form-data whose repeatable file field is `files` (at most `max_files` parts,
    each one of `file_types` when given)."""
    json: type[BaseModel] | None = None
    files: str | None = None
    max_files: int | None = None
    file_types: tuple[str, ...] = ()
    description: str | None = None


BODY_DOC = "__graft_body__"  # the attribute that carries a BodyDoc on an endpoint or dependency


def request_body(*, json: type[BaseModel] | None = None, files: str | None = None, max_files: int | None = None,
                 file_types: tuple[str, ...] = (), description: str | None = None
                 ) -> Callable[[Endpoint], Endpoint]:
    """Declare the body of an endpoint that reads it itself (multipart uploads, completions)."""
    doc = BodyDoc(json, files, max_files, tuple(file_types), description)

    def declare(endpoint: Endpoint) -> Endpoint:
        setattr(endpoint, BODY_DOC, doc)
        return endpoint

    return declare


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


def integral_numbers_as_ints(value: Any) -> Any:
    """JSON has one number type: `2.0` is the integer 2 (JSON Schema's `integer` says so too), so a
    body whose fields are typed reads it as one, and an integer field takes it (strict validation
    takes no float there); a float field takes an int anyway."""
    if isinstance(value, float):
        return int(value) if value.is_integer() and strict_json.MIN_INT <= value <= strict_json.MAX_INT else value
    if isinstance(value, dict):
        return {key: integral_numbers_as_ints(item) for key, item in value.items()}
    if isinstance(value, list):
        return [integral_numbers_as_ints(item) for item in value]
    return value


def json_body(model: type[Model]) -> Callable[[Request], Coroutine[Any, Any, Model]]:
    """A dependency that reads the body as JSON and validates it into `model`. List it after the
    route's key check: the body is read only for a caller the route lets in.

    Validation is strict, as the schema is: a number field takes a number (not `true`, not "5")."""

    async def read(request: Request) -> Model:
        body = await read_json_object(request, request.app.state.graft.settings.max_request_bytes)
        try:
            return model.model_validate(integral_numbers_as_ints(body), strict=True)
        except ValidationError as exc:
            raise invalid_from(exc) from exc

    read.__name__ = f"json_body_{model.__name__}"
    setattr(read, BODY_DOC, BodyDoc(json=model))
    return read


class RefuseNul:
    """ASGI middleware: a URL whose path or query decodes to a NUL character is answered before any
    route sees it. No resource is named with one (404 for a path); a query value with one is 400.
    (PostgreSQL's text cannot hold NUL; JSON bodies are refused by strict_json, file names by uploads.)"""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            if "\x00" in scope.get("path", ""):
                return await error_response(404, "no resource has a NUL character in its path",
                                            code="not_found")(scope, receive, send)
            if b"%00" in scope.get("query_string", b"") or b"\x00" in scope.get("query_string", b""):
                return await error_response(400, "a query parameter holds a NUL character (%00)",
                                            code="invalid_parameter")(scope, receive, send)
        await self.app(scope, receive, send)
