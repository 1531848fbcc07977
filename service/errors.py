"""The one error table and the one error shape: {"error": {"message", "type", "param", "code"}}.

Lower layers raise the domain exceptions of `adapters_store.errors`; this module alone decides
which HTTP status and error type each one answers with. Invalid input is 400 on every route,
whether a handler or request-body validation finds it.
"""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from adapters_store.errors import (
    Conflict,
    Forbidden,
    GraftError,
    Invalid,
    NotFound,
    RateLimited,
    TooLarge,
    Unauthenticated,
    Unavailable,
    Unsupported,
)
from service.engine.client import EngineError, EngineUnavailable

log = logging.getLogger(__name__)

# exception class → (HTTP status, OpenAI-style error type)
ERROR_TABLE: dict[type[GraftError], tuple[int, str]] = {
    Invalid: (400, "invalid_request_error"),
    Unauthenticated: (401, "authentication_error"),
    Forbidden: (403, "permission_error"),
    NotFound: (404, "not_found_error"),
    Conflict: (409, "conflict_error"),
    TooLarge: (413, "request_too_large"),
    Unsupported: (415, "unsupported_media_type"),
    RateLimited: (429, "rate_limit_error"),
    Unavailable: (503, "service_unavailable"),
}
_TYPE_OF_STATUS = {status: error_type for status, error_type in ERROR_TABLE.values()}
# The catch-all's answer (an unexpected exception), in the same shape.
INTERNAL_ERROR = (500, "internal_error")


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """The one error shape every route answers with, OpenAI-style: documented for every error status."""
    model_config = ConfigDict(extra="forbid")
    error: ErrorDetail


def error_statuses() -> dict[int, str]:
    """Every status the error table can answer with, and its error type (the OpenAPI document
    lists these, so a class added to the table is documented too)."""
    return {**{status: error_type for status, error_type in ERROR_TABLE.values()},
            INTERNAL_ERROR[0]: INTERNAL_ERROR[1]}


def status_of(exc: GraftError) -> tuple[int, str]:
    for cls in type(exc).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return INTERNAL_ERROR


def error_body(status_code: int, message: str, param: str | None = None,
               code: str | None = None, error_type: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type or _TYPE_OF_STATUS.get(status_code, "error"),
                      "param": param, "code": code}}


def error_response(status_code: int, message: str, *, param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None,
                   error_type: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status_code, message, param, code, error_type),
                        status_code=status_code, headers=headers)


def invalid_from(exc: ValidationError, prefix: str = "") -> Invalid:
    """The first problem pydantic found, as an Invalid naming the field as OpenAI does (`a.b[0].c`)."""
    first = exc.errors()[0] if exc.errors() else {}
    param = prefix
    for part in first.get("loc", ()):
        if isinstance(part, int):
            param += f"[{part}]"
        elif part not in ("body", "query", "path"):
            param += f".{part}" if param else str(part)
    message = first.get("msg", "invalid request")
    return Invalid(f"{param}: {message}" if param else message, param=param or None)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route takes on this request's path."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GraftError)
    async def _graft_error(_: Request, exc: GraftError):
        status, error_type = status_of(exc)
        headers = {}
        if exc.retry_after_s is not None:
            headers["Retry-After"] = str(exc.retry_after_s)
        if isinstance(exc, Unauthenticated):
            headers["WWW-Authenticate"] = "Bearer"
        return error_response(status, exc.message, param=exc.param, code=exc.code,
                              headers=headers or None, error_type=error_type)

    @app.exception_handler(EngineUnavailable)
    async def _engine_unavailable(_: Request, exc: EngineUnavailable):
        return error_response(503, exc.message, code="engine_unavailable",
                              headers={"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(EngineError)
    async def _engine_error(_: Request, exc: EngineError):  # the engine's own status, relayed
        return error_response(exc.status_code, exc.message, code="engine_error")

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return await _graft_error(request, invalid_from(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:  # Starlette's Allow names the first route of the path only
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        return error_response(exc.status_code, str(exc.detail), headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        # Starlette re-raises the error after this answer, and uvicorn then closes the connection:
        # say so, or a keep-alive client sends its next request into a closed socket.
        return error_response(INTERNAL_ERROR[0], "internal error", error_type=INTERNAL_ERROR[1],
                              headers={"Connection": "close"})
