"""Prometheus metrics of the gateway, in a registry of the app's own (no global state)."""

import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.limits import tenant_label


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("graft_http_requests_total", "HTTP requests",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("graft_http_request_seconds", "HTTP request latency",
                                 ["method", "route"], registry=r)
        self.retrieval_latency = Histogram("graft_retrieval_seconds", "Retrieval time per request",
                                           registry=r, buckets=(.001, .002, .005, .01, .02, .05, .1, .5))
        self.plan_latency = Histogram("graft_plan_seconds", "Planning time per request: retrieval "
                                      "and prompt building", registry=r,
                                      buckets=(.001, .002, .005, .01, .015, .02, .05, .1, .5))
        self.engine_ready = Gauge("graft_engines_ready", "Engines ready to take traffic", registry=r)
        self.completion_tokens = Counter("graft_completion_tokens_total", "Generated tokens",
                                         ["model"], registry=r)
        self.engine_restarts = Gauge("graft_engine_restarts", "Local engine restarts", registry=r)
        # Per tenant (service/limits.py): `tenant` is the tenant's name, "" for global keys and open mode.
        self.tenant_requests = Counter("graft_requests_total", "Requests with a valid key, per tenant",
                                       ["tenant", "route", "status"], registry=r)
        self.rate_limited = Counter("graft_rate_limited_total", "Requests refused by a limit: `limit` is "
                                    "requests_per_minute, tokens_per_minute or concurrent, `whose` key or tenant",
                                    ["tenant", "limit", "whose"], registry=r)
        self.in_flight = Gauge("graft_requests_in_flight", "Completion requests in flight, per tenant",
                               ["tenant"], registry=r)
        self.generated_tokens = Counter("graft_generated_tokens_total", "Generated tokens, per tenant",
                                        ["tenant"], registry=r)



class RequestMetrics:
    """ASGI middleware: count and time requests per route template (raw paths would explode
    with ids). Plain ASGI, so streaming responses and client disconnects pass through untouched."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            state = getattr(scope["app"].state, "graft", None)
            if state is not None:
                route = getattr(scope.get("route"), "path", "unmatched")
                state.metrics.requests.labels(scope["method"], route, str(status)).inc()
                state.metrics.latency.labels(scope["method"], route).observe(time.perf_counter() - started)
                principal = scope.get("state", {}).get("principal")  # set by a route's key check
                if principal is not None:
                    state.metrics.tenant_requests.labels(tenant_label(principal), route, str(status)).inc()
