"""`/mcp`: graft's domains as Model Context Protocol tools and its documents as resources, over the
protocol's streamable HTTP transport (the official `mcp` SDK's low-level server; no protocol code here).

Every HTTP request to /mcp is authenticated by graft's own key check (service/auth.py) before the
SDK sees it, so each tool call runs as the key that sent it; a session is bound to the key that
opened it (another key's session id is answered 404 Session not found). The tools answer through
the functions the REST routes use: the planner's routing (tenancy, a key's domains), the
retriever's filters (the domain's, the key's, the request's), the rate limiter, and the
completion path (service/completion.py). Bad arguments answer a tool error whose message is the
REST 4xx's message; an unknown tool or resource is a JSON-RPC error.
"""

import asyncio
import json
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote, unquote

import mcp_types as types
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError
from starlette.requests import Request

from adapters_store import corpus_repo, strict_json
from adapters_store.errors import GraftError, Invalid, NotFound
from indexer import filters
from service.auth import Principal, hash_key
from service.completion import complete
from service.completion_request import validate_completion
from service.engine.client import EngineError, EngineUnavailable
from service.errors import error_body, invalid_from, status_of
from service.routes.corpora import SearchRequest
from service.routes.resolve import readable_corpus
from service.state import GatewayState

RESOURCE_PREFIX = "graft://corpora/"
RESOURCE_TEMPLATE = RESOURCE_PREFIX + "{corpus}/documents/{document_id}"
RESOURCE_NOT_FOUND = -32002  # the MCP specification's code for a resource that does not exist


class SearchArgs(SearchRequest):
    """`search`: REST search's body (query, k, mode, filter) and the domain whose corpora it searches."""
    domain: StrictStr = Field(min_length=1, description="a domain list_domains names")


class AskArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    domain: StrictStr = Field(min_length=1, description="a domain list_domains names")
    question: StrictStr = Field(min_length=1, max_length=32_768)
    max_tokens: StrictInt | None = Field(default=None, ge=1, description="at most this many tokens in the answer")


class NoArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


def document_uri(corpus: str, document_id: str | None) -> str:
    return f"{RESOURCE_PREFIX}{quote(corpus, safe='')}/documents/{quote(document_id or '', safe='')}"


def resource_path(uri: str) -> tuple[str, str]:
    """(corpus, document id) of a document's URI; Invalid for any other URI."""
    corpus, sep, document_id = uri.removeprefix(RESOURCE_PREFIX).partition("/documents/")
    if not uri.startswith(RESOURCE_PREFIX) or not sep or not corpus or not document_id or "/" in corpus:
        raise Invalid(f"resource URI must look like {RESOURCE_TEMPLATE}", param="uri")
    return unquote(corpus), unquote(document_id)


def _principal(ctx) -> Principal:
    return ctx.request.scope["graft.principal"]


def _state(ctx) -> GatewayState:
    return ctx.request.app.state.graft


def _arguments(model: type[BaseModel], arguments: dict[str, Any] | None) -> Any:
    """The arguments checked as a REST body is: strict JSON (no NUL, no number past 64 bits),
    strict types, the same messages."""
    try:
        checked = strict_json.loads(json.dumps(arguments or {}))
    except ValueError as exc:
        raise Invalid(f"arguments are not valid JSON for graft: {exc}", code="invalid_json") from exc
    try:
        return model.model_validate(checked, strict=True)
    except ValidationError as exc:
        raise invalid_from(exc) from exc


async def _search(state: GatewayState, principal: Principal, arguments: dict | None) -> dict:
    args: SearchArgs = _arguments(SearchArgs, arguments)
    await state.limiter.count_request(principal)  # as REST search: against requests_per_minute
    route = state.planner.route(args.domain, principal)
    if route is None:
        raise Invalid(f"{args.domain!r} is the base model, which has no corpora: name a domain", param="domain")
    requested = filters.parse(args.filter, param="filter")
    hits = await asyncio.to_thread(state.planner.search, route, principal, args.query, args.k, args.mode,
                                   requested.as_dict() if requested is not None else None)
    return {"hits": [{**hit.as_dict(), "uri": document_uri(hit.corpus, hit.document_id)} for hit in hits]}


async def _ask(state: GatewayState, principal: Principal, arguments: dict | None) -> dict:
    args: AskArgs = _arguments(AskArgs, arguments)
    # Greedy: a tool answers the same question the same way (an agent may ask again and compare).
    body = {"model": args.domain, "messages": [{"role": "user", "content": args.question}], "temperature": 0}
    if args.max_tokens is not None:
        body["max_tokens"] = args.max_tokens
    if state.planner.route(args.domain, principal) is None:
        raise Invalid(f"{args.domain!r} is the base model: name a domain", param="domain")
    async with state.limiter.admit(principal) as admission:  # 429 past the key's or tenant's limits
        answer = await complete("chat", validate_completion("chat", body), state, principal, admission)
    result = answer.result
    citations = [{**c, "uri": document_uri(c["corpus"], c["document_id"])} for c in result["citations"]]
    return {"answer": result["choices"][0]["message"]["content"], "citations": citations,
            "model": result["model"], "adapter": result["adapter"], "usage": result.get("usage")}


async def _list_domains(state: GatewayState, principal: Principal, arguments: dict | None) -> dict:
    _arguments(NoArgs, arguments)
    return {"domains": [{"name": r.name, "description": r.description, "corpora": list(r.corpora)}
                        for r in state.routing.all() if principal.may_call(r.name)]}


TOOLS = {"search": _search, "ask": _ask, "list_domains": _list_domains}


def _tools(domains: list[str]) -> list[types.Tool]:
    """The tools as `domains` (what the key may call) make them: each domain argument lists them."""
    def schema(model: type[BaseModel]) -> dict:
        shape = model.model_json_schema()
        if "domain" in shape.get("properties", {}):
            shape["properties"]["domain"]["enum"] = domains
        return shape

    read_only = types.ToolAnnotations(read_only_hint=True, open_world_hint=False)
    return [
        types.Tool(name="search", input_schema=schema(SearchArgs), annotations=read_only,
                   description="Search a domain's documents: the passages that best match `query`, each "
                               "with its document id, chunk id, score, text, metadata and resource URI."),
        types.Tool(name="ask", input_schema=schema(AskArgs), annotations=read_only,
                   description="Ask a domain a question: its model answers from the domain's documents, "
                               "with the passages it was given as numbered citations."),
        types.Tool(name="list_domains", input_schema=schema(NoArgs), annotations=read_only,
                   description="The domains this key may search and ask, with what each one knows."),
    ]


async def _on_list_tools(ctx, params) -> types.ListToolsResult:
    state, principal = _state(ctx), _principal(ctx)
    return types.ListToolsResult(tools=_tools([r.name for r in state.routing.all() if principal.may_call(r.name)]))


async def _on_call_tool(ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
    tool = TOOLS.get(params.name)
    if tool is None:
        raise MCPError(types.INVALID_PARAMS, f"unknown tool {params.name[:100]!r}: the tools are {', '.join(TOOLS)}")
    try:
        result = await tool(_state(ctx), _principal(ctx), params.arguments)
    except (GraftError, EngineError) as exc:
        error = _error_body(exc)
        return types.CallToolResult(content=[types.TextContent(text=error["error"]["message"])],
                                    structured_content=error, is_error=True)
    return types.CallToolResult(content=[types.TextContent(text=json.dumps(result))], structured_content=result)


async def _on_list_resource_templates(ctx, params) -> types.ListResourceTemplatesResult:
    return types.ListResourceTemplatesResult(resource_templates=[types.ResourceTemplate(
        name="document", uri_template=RESOURCE_TEMPLATE, mime_type="text/plain",
        description="A document's text (the URIs that search hits and ask citations carry)")])


async def _on_list_resources(ctx, params) -> types.ListResourcesResult:
    return types.ListResourcesResult(resources=[])  # documents are reached through their URIs, not listed


async def _on_read_resource(ctx, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
    state, principal = _state(ctx), _principal(ctx)
    try:
        corpus, document_id = resource_path(str(params.uri))
        strict_json.loads(json.dumps([corpus, document_id]))  # no NUL: PostgreSQL cannot hold one
        corpus = readable_corpus(state, principal, corpus, param="uri")  # as REST search
        text = await asyncio.to_thread(_document_text, state, principal, corpus, document_id)
    except ValueError as exc:
        raise MCPError(types.INVALID_PARAMS, f"resource URI is not valid: {exc}") from exc
    except GraftError as exc:
        error = _error_body(exc)
        code = RESOURCE_NOT_FOUND if isinstance(exc, NotFound) else types.INVALID_PARAMS
        raise MCPError(code, error["error"]["message"], data=error) from exc
    return types.ReadResourceResult(contents=[types.TextResourceContents(uri=params.uri, mime_type="text/plain",
                                                                         text=text)])


def _document_text(state: GatewayState, principal: Principal, corpus: str, document_id: str) -> str:
    with state.sessions() as session:
        stored = corpus_repo.get_corpus(session, corpus)
        document = corpus_repo.get_document(session, stored, document_id,
                                            principal.filter.matches if principal.filter is not None else None)
        return corpus_repo.document_text(session, document)


def _error_body(exc: GraftError | EngineError) -> dict:
    """The REST error body of `exc` (service/errors.py's table), with its HTTP status."""
    if isinstance(exc, EngineError):
        code = "engine_unavailable" if isinstance(exc, EngineUnavailable) else "engine_error"
        status = 503 if isinstance(exc, EngineUnavailable) else exc.status_code
        return {**error_body(status, exc.message, code=code), "status": status}
    status, error_type = status_of(exc)
    return {**error_body(status, exc.message, exc.param, exc.code, error_type), "status": status}


class McpEndpoint:
    """The ASGI app at /mcp: graft's key check, then the SDK's streamable HTTP session manager.
    `run()` must be entered (the gateway's lifespan does) before it serves."""

    def __init__(self, max_request_bytes: int):
        server = Server("graft", version="0.1.0",
                        instructions="graft: search and ask governed knowledge domains; list_domains first.",
                        # Mcp-Param header checks would list the tools without a key: nothing to check.
                        get_tool_input_schema=lambda name: None,
                        on_list_tools=_on_list_tools, on_call_tool=_on_call_tool,
                        on_list_resources=_on_list_resources,
                        on_list_resource_templates=_on_list_resource_templates,
                        on_read_resource=_on_read_resource)
        self.manager = StreamableHTTPSessionManager(app=server, json_response=True,
                                                    max_request_body_size=max_request_bytes)

    @asynccontextmanager
    async def run(self):
        async with self.manager.run():
            yield

    async def __call__(self, scope, receive, send):
        request = Request(scope, receive)
        # Raises Unauthenticated/Forbidden: the gateway's error handlers answer in graft's error shape.
        principal = await request.app.state.graft.auth.authenticate(request, "inference")
        scope["graft.principal"] = principal
        # The SDK binds a session to the credential that opened it: the key, by its hash.
        identity = hash_key(request.headers.get("authorization", ""))
        scope["user"] = AuthenticatedUser(AccessToken(token="", client_id=identity, scopes=[principal.scope]))
        await self.manager.handle_request(scope, receive, send)
