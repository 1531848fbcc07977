"""The OpenAPI document (/openapi.json): FastAPI's own, completed with what FastAPI cannot see.

- Request bodies. Routes read their bodies themselves, after the key check (service/http_body.py),
  so FastAPI sees none; the body each route declares there (`json_body(Model)`, `request_body(...)`)
  becomes its requestBody here: the model's JSON schema, and multipart/form-data for file uploads.
- Errors. Every operation lists each error status it can answer with, all in the one error shape
  (`service.errors.ErrorResponse`), by one rule below (`_error_statuses`); FastAPI's 422 goes, since
  invalid input is 400 on every route.
- Auth. Routes behind a key check carry the bearer security scheme and say which scope they need.
- Strict JSON. Bodies are read by adapters_store.strict_json, so their schemas say what it takes:
  integers within 64 bits, and any free-form value (an extra completion field, document metadata)
  is a JSON value under the same rule (`JsonValue`).
"""

import copy
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_flat_dependant
from fastapi.routing import APIRoute
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue, models_json_schema
from pydantic_core import core_schema

from adapters_store.errors import Conflict, Forbidden, Invalid, NotFound, TooLarge, Unauthenticated, Unsupported
from adapters_store.strict_json import MAX_INT, MIN_INT
from service.errors import ERROR_TABLE, INTERNAL_ERROR, ErrorResponse, error_statuses
from service.http_body import BODY_DOC, BodyDoc
from service.state import admin_principal, inference_principal

COMPONENTS = "#/components/schemas/{model}"
JSON_VALUE_REF = {"$ref": COMPONENTS.format(model="JsonValue")}
JSON_VALUE = {
    "description": "Any JSON value; integers within 64 bits (as everywhere in a body), nesting at most 64 deep",
    "anyOf": [{"type": "string"}, {"type": "boolean"}, {"type": "null"}, {"type": "number"},
              {"type": "array", "items": JSON_VALUE_REF},
              {"type": "object", "additionalProperties": JSON_VALUE_REF}]}
SECURITY_SCHEME = "bearer"
SCOPES = {admin_principal: "admin", inference_principal: "inference"}

DESCRIPTIONS = {
    400: "Invalid input: a bad field, name or parameter, or a malformed body",
    401: "No API key, or an unknown or revoked one",
    403: "The key's scope does not allow this route",
    404: "What the path or the body names does not exist",
    409: "Well formed, but in conflict with the current state",
    413: "The body, an upload or a file count is past its limit",
    415: "A media type or file kind graft does not take",
    429: "Too many requests for this key; retry after Retry-After seconds",
    500: "Internal error; the connection is closed after it",
    503: "A dependency (an engine, the database, the base model's files) is not available now",
}
HEADERS = {
    401: {"WWW-Authenticate": {"description": "Bearer", "required": True, "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "seconds", "schema": {"type": "string"}}},
    503: {"Retry-After": {"description": "seconds", "schema": {"type": "string"}}},
}


class StrictJsonSchema(GenerateJsonSchema):
    """A body model's JSON schema as strict JSON reads the body: free-form values (Any, a plain
    dict's values, a model's extra fields) are JsonValue; `_within_int64` then bounds the numbers."""

    def any_schema(self, schema: core_schema.AnySchema) -> JsonSchemaValue:
        return dict(JSON_VALUE_REF)

    def dict_schema(self, schema: core_schema.DictSchema) -> JsonSchemaValue:
        json_schema = super().dict_schema(schema)
        if json_schema.get("propertyNames") == JSON_VALUE_REF:  # keys of a plain dict: any string
            del json_schema["propertyNames"]
        return json_schema

    def model_schema(self, schema: core_schema.ModelSchema) -> JsonSchemaValue:
        json_schema = super().model_schema(schema)
        if json_schema.get("additionalProperties") is True:
            json_schema["additionalProperties"] = dict(JSON_VALUE_REF)
        return json_schema


def _within_int64(node: Any) -> None:
    """Bound every number of a body's schema to the range strict JSON reads integers in (a number
    written without a fraction past it is refused; JSON Schema cannot tell 1e30 from 10**30)."""
    if isinstance(node, dict):
        types = node.get("type")
        if types in ("integer", "number") or isinstance(types, list) and {"integer", "number"} & set(types):
            if "exclusiveMinimum" not in node:
                node["minimum"] = max(node.get("minimum", MIN_INT), MIN_INT)
            if "exclusiveMaximum" not in node:
                node["maximum"] = min(node.get("maximum", MAX_INT), MAX_INT)
        for value in node.values():
            _within_int64(value)
    elif isinstance(node, list):
        for value in node:
            _within_int64(value)


def _status(cls: type) -> int:
    return ERROR_TABLE[cls][0]


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route decorator: error statuses a route answers itself, outside the
    error table (e.g. /readyz's 503), in the one error shape."""
    return {status: {"model": ErrorResponse, "description": DESCRIPTIONS.get(status, "Error")}
            for status in statuses}


def install_openapi(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete(generate(), [r for r in app.routes if isinstance(r, APIRoute)])
        return app.openapi_schema

    app.openapi = openapi


def complete(schema: dict[str, Any], routes: list[APIRoute]) -> dict[str, Any]:
    components = schema.setdefault("components", {})
    bodies = [(route, declared_body(route)) for route in routes if route.include_in_schema]
    models = [ErrorResponse, *dict.fromkeys(doc.json for _, doc in bodies if doc and doc.json)]
    refs, definitions = models_json_schema([(m, "validation") for m in models], ref_template=COMPONENTS,
                                           schema_generator=StrictJsonSchema)
    schemas = components.setdefault("schemas", {})
    definitions = copy.deepcopy({"JsonValue": JSON_VALUE, **definitions.get("$defs", {})})  # shared dicts in it
    _within_int64(definitions)
    for name, definition in definitions.items():
        if schemas.setdefault(name, definition) != definition:
            raise RuntimeError(f"two different schemas named {name!r} in the OpenAPI document")
    error_ref = refs[(ErrorResponse, "validation")]
    components.setdefault("securitySchemes", {})[SECURITY_SCHEME] = {
        "type": "http", "scheme": "bearer",
        "description": "An API key, scope `inference` or `admin`: `Authorization: Bearer <key>`"}

    for route, doc in bodies:
        scope = _scope(route)
        for method in route.methods:
            operation = schema["paths"][route.path_format][method.lower()]
            if doc is not None:
                operation["requestBody"] = _request_body(doc, refs)
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status in sorted(_error_statuses(route, method, scope, doc)):
                entry = responses.setdefault(str(status), {"description": DESCRIPTIONS.get(status, "Error")})
                entry["content"] = {"application/json": {"schema": error_ref}}
                if status in HEADERS:
                    entry.setdefault("headers", HEADERS[status])
            if scope is not None:
                operation["security"] = [{SECURITY_SCHEME: []}]
                note = f"Needs a key of scope `{scope}`."
                operation["description"] = f"{operation['description']}\n\n{note}" \
                    if operation.get("description") else note
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return schema


def _calls(dependant: Dependant) -> Iterator[Any]:
    yield dependant.call
    for dependency in dependant.dependencies:
        yield from _calls(dependency)


def declared_body(route: APIRoute) -> BodyDoc | None:
    """The body a route declares (service/http_body.py), on its endpoint or one of its dependencies."""
    docs = [getattr(call, BODY_DOC) for call in _calls(route.dependant) if hasattr(call, BODY_DOC)]
    if len(docs) > 1:
        raise RuntimeError(f"{route.path}: more than one body declared")
    return docs[0] if docs else None


def _scope(route: APIRoute) -> str | None:
    scopes = {SCOPES[call] for call in _calls(route.dependant) if call in SCOPES}
    return "admin" if "admin" in scopes else next(iter(scopes), None)


def _error_statuses(route: APIRoute, method: str, scope: str | None, doc: BodyDoc | None) -> set[int]:
    """The error statuses an operation can answer with: the catch-all 500 everywhere; behind a key,
    401, 403, 400, 503 and any status of the table not placed below; 404 where a path or a body
    names something; 409 on writes; 413 with a body; 415 with file uploads."""
    if scope is None:
        return {INTERNAL_ERROR[0]}
    names_something = bool(get_flat_dependant(route.dependant).path_params) or doc is not None
    placed = {
        _status(NotFound): names_something,
        _status(Conflict): method != "GET",
        _status(TooLarge): doc is not None,
        _status(Unsupported): doc is not None and doc.files is not None,
        _status(Unauthenticated): True,
        _status(Forbidden): True,
        _status(Invalid): True,
    }
    return {status for status in error_statuses() if placed.get(status, True)}


def _request_body(doc: BodyDoc, refs: dict) -> dict[str, Any]:
    content: dict[str, Any] = {}
    if doc.json is not None:
        content["application/json"] = {"schema": refs[(doc.json, "validation")]}
    if doc.files is not None:
        files: dict[str, Any] = {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1}
        if doc.max_files is not None:
            files["maxItems"] = doc.max_files
        media: dict[str, Any] = {"schema": {"type": "object", "properties": {doc.files: files},
                                            "required": [doc.files]}}
        if doc.file_types:
            media["encoding"] = {doc.files: {"contentType": ", ".join(doc.file_types)}}
        content["multipart/form-data"] = media
    body: dict[str, Any] = {"required": True, "content": content}
    if doc.description:
        body["description"] = doc.description
    return body

