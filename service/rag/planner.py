"""Resolve `model` to the base model or a domain and build the engine request for it."""

import asyncio
import dataclasses
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from adapters_store import tenancy
from adapters_store.errors import Invalid, NotFound
from indexer import filters
from indexer.registry import NotLoaded
from indexer.search import MAX_K, SearchMode
from service.auth import Principal
from service.domains import DomainRoute, RoutingTable, with_config
from service.errors import invalid_from
from service.rag.plan import GRAFT_FIELDS, Plan, base_plan
from service.rag.prompt import ContextTooLong, Passage, PromptBuilder
from service.rag.retrieval import Hit, Retriever, UnknownCorpus


class RetrievalOverride(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int | None = Field(default=None, ge=0, le=MAX_K)
    mode: SearchMode | None = None
    corpora: list[tenancy.NameRef] | None = Field(default=None, max_length=32)
    min_score: float | None = Field(default=None, allow_inf_nan=False)
    # Narrows what the domain's and the key's filters allow; never widens it.
    filter: filters.JsonFilter | None = None

    @field_validator("filter")
    @classmethod
    def _valid_filter(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        try:
            filters.parse(value)
        except Invalid as exc:
            raise ValueError(exc.message) from None
        return value


class Planner:
    """`threads`: plans that run at once off the event loop. Plans are CPU work (the query
    embedding most of all), so more of them than the cores only share the cores: a burst of
    requests then all finish late together, where a queue served `threads` at a time (one per
    core) finishes the first ones early and the median sooner (bench/gateway.py at c=16).
    A pool of its own also keeps plans from waiting behind other blocking work (file removal,
    key lookups) in the loop's default executor."""

    def __init__(self, base_model: str, routing: RoutingTable, retriever: Retriever,
                 prompts: PromptBuilder, threads: int = 1):
        self.base_model = base_model
        self.routing = routing
        self.retriever = retriever
        self.prompts = prompts
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="graft-plan")
        self._in_threads = 0  # plans queued for or running in the pool now

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def route(self, model: str, principal: Principal | None = None) -> DomainRoute | None:
        """The domain `model` names (None: the base model). `principal`: the API key the request came
        with: `model` is in its tenant's namespace and must be a domain it may call (404 otherwise).
        None: a request from inside the gateway (an evaluation), the name already in full."""
        if model == self.base_model and (principal is None or principal.domains is None):
            return None
        if principal is not None:
            model = principal.full_name(model, param="model", kind="model")
        route = self.routing.get(model)
        if route is None or (principal is not None and not principal.may_call(model)):
            raise NotFound(f"model {model!r} does not exist: name a domain or {self.base_model!r} "
                           "(GET /v1/models lists them)", param="model", code="model_not_found")
        return route

    async def plan(self, kind: str, body: dict[str, Any], *, gateway_idle: bool = False,
                   engine_model: str | None = None, principal: Principal | None = None,
                   config: dict | None = None) -> Plan:
        """Route `body["model"]` (see `route`) and plan the request on that route (see `plan_route`)."""
        return await self.plan_route(kind, body, self.route(body["model"], principal), gateway_idle=gateway_idle,
                                     engine_model=engine_model, principal=principal, config=config)

    async def plan_route(self, kind: str, body: dict[str, Any], route: DomainRoute | None, *,
                         gateway_idle: bool = False, engine_model: str | None = None,
                         principal: Principal | None = None, config: dict | None = None) -> Plan:
        """`route`: what `route` returned for this request. The gateway routes first and holds the
        route's engine model while it plans, so a swap's drain waits for a request being planned.

        `gateway_idle`: the caller has nothing else in flight (no engine request). Then, unless
        another plan is running, this one runs right here on the event loop: there is nothing
        for it to hold up, and the hop to a worker thread and back costs two thread wake-ups,
        1-2 ms of the request's latency on an idle 2-core machine. That holds only while the
        corpora are in memory: a plan that would read an index or a model from disk (seconds)
        goes to a worker thread, as every plan does while other requests are in flight, so the
        loop keeps serving them meanwhile.

        `engine_model` replaces the domain's adapter for this request only (an evaluation of a
        candidate version that is loaded but not routed). `principal`: retrieval applies its metadata
        filter with the domain's and the request's, and `retrieval.corpora` may name only corpora
        it may read.

        `config` replaces the domain's configuration (retrieval settings, system prompt, prompt template,
        demonstrations, max_tokens) for this request only: an evaluation of a candidate configuration."""
        if route is None:
            return base_plan(body, body["model"])
        if engine_model is not None:
            route = dataclasses.replace(route, engine_model=engine_model)
        if config is not None:
            route = with_config(route, config)
        started = time.perf_counter()
        settings = self._retrieval_settings(route, body.get("retrieval"), principal)
        if gateway_idle and not self._in_threads:
            try:
                return self._plan_domain(kind, body, route, settings, started, may_load=False)
            except NotLoaded:
                pass
        # One hop off the event loop for all the rest: SQL, embedding and tokenizing all block.
        self._in_threads += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, functools.partial(self._plan_domain, kind, body, route, settings, started))
        finally:
            self._in_threads -= 1

    def search(self, route: DomainRoute, principal: Principal, query: str, k: int, mode: str,
               requested: dict | None = None) -> list[Hit]:
        """The top `k` chunks of the domain's corpora for `query`, through the filters its retrieval
        applies (the domain's, the key's, and `requested`, which only narrows them): what an agent's
        search tool answers (service/mcp_server.py). Blocks: run it in a thread."""
        settings = self._retrieval_settings(route, {"k": k, "mode": mode, "filter": requested}, principal)
        if not settings["corpora"]:
            return []
        hits, _ = self.retriever.search(settings["corpora"], query, k, mode, filters=settings["filters"])
        return hits

    def _plan_domain(self, kind: str, body: dict[str, Any], route: DomainRoute, settings: dict | None,
                     started: float, may_load: bool = True) -> Plan:
        query = _query_of(kind, body)
        passages, seconds = [], 0.0
        if settings is not None and query and settings["k"] > 0 and settings["corpora"]:
            try:
                # `filters` only when there is one: tests/service/rag/test_planner.py's stand-in
                # retriever does not take the argument yet.
                access = {"filters": settings["filters"]} if any(settings["filters"]) else {}
                hits, seconds = self.retriever.search(settings["corpora"], query, settings["k"],
                                                      settings["mode"], settings["min_score"],
                                                      may_load=may_load, **access)
            except UnknownCorpus as exc:
                exc.param = "retrieval.corpora"  # the request's own field, not a path segment
                raise
            passages = [Passage(h.corpus, h.document_id, h.chunk_id, h.score, h.text, h.metadata)
                        for h in hits]
        payload = {k: v for k, v in body.items() if k not in GRAFT_FIELDS}
        payload["model"] = route.engine_model
        max_tokens = body.get("max_tokens")
        if max_tokens is None and route.max_tokens is not None:  # the domain's default
            max_tokens = payload["max_tokens"] = route.max_tokens
        shape = {"template": route.prompt_template, "demonstrations": route.demonstrations}
        try:
            if kind == "chat":
                payload["messages"], used = self.prompts.build_chat(
                    body["messages"], passages, route.system_prompt, max_tokens, **shape)
            else:
                payload["prompt"], used = self.prompts.build_completion(
                    body["prompt"], passages, route.system_prompt, max_tokens, **shape)
        except ContextTooLong as exc:
            raise Invalid(str(exc), param="messages" if kind == "chat" else "prompt",
                          code="context_length_exceeded") from exc
        citations = [{"index": i + 1, "corpus": p.corpus, "document_id": p.document_id,
                      "chunk_id": p.chunk_id, "score": p.score, "text": p.text, "metadata": p.metadata}
                     for i, p in enumerate(used)]
        return Plan(engine_model=route.engine_model, payload=payload, citations=citations,
                    retrieved=[p.document_id for p in passages],
                    retrieval_s=seconds, plan_s=time.perf_counter() - started)

    def _retrieval_settings(self, route: DomainRoute, override: Any, principal: Principal | None = None
                            ) -> dict | None:
        """k, mode, min_score and corpora (the domain's, overridden by the request's), and
        `filters`: the domain's, the key's and the request's, all applied (the retriever intersects them)."""
        if override is False:
            return None
        settings = {**route.retrieval, "corpora": list(route.corpora)}
        settings.pop("filter", None)  # the domain's is route.filter, below
        settings["filters"] = [route.filter, principal.filter if principal is not None else None]
        if override is None or override is True:
            return settings
        if not isinstance(override, dict):
            raise Invalid("`retrieval` must be false or an object {k, mode, corpora, min_score, filter}",
                          param="retrieval")
        try:
            parsed = RetrievalOverride.model_validate(override)
        except ValidationError as exc:
            raise invalid_from(exc, prefix="retrieval") from exc
        settings["filters"].append(filters.parse(parsed.filter, param="retrieval.filter"))
        settings.update({k: v for k, v in parsed.model_dump(exclude={"filter", "corpora"}).items() if v is not None})
        if parsed.corpora is not None:
            settings["corpora"] = [self._readable(route, principal, c) for c in parsed.corpora]
        return settings

    def _readable(self, route: DomainRoute, principal: Principal | None, corpus: str) -> str:
        """A corpus the request names, in the domain's namespace, if the key may read it."""
        stored = tenancy.within(route.name, corpus, param="retrieval.corpora", kind="corpus")
        if principal is not None and not self.routing.may_read(principal, stored):
            raise NotFound(f"corpus {corpus!r} does not exist", param="retrieval.corpora", code="corpus_not_found")
        return stored


def _query_of(kind: str, body: dict[str, Any]) -> str:
    if kind == "text":
        return body["prompt"]
    for message in reversed(body["messages"]):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # OpenAI content parts
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return content if isinstance(content, str) else ""
    return ""
