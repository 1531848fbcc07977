"""Prometheus metrics of the gateway, in a registry of the app's own (no global state)."""

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
        self.engine_ready = Gauge("graft_engines_ready", "Engines ready to take traffic", registry=r)
        self.completion_tokens = Counter("graft_completion_tokens_total", "Generated tokens",
                                         ["model"], registry=r)
        self.engine_restarts = Gauge("graft_engine_restarts", "Local engine restarts", registry=r)
