"""Turn a client's completion request into what goes to the engine: model name, payload, citations."""

from dataclasses import dataclass, field
from typing import Any

# Fields graft adds to the OpenAI request and must not forward to vLLM.
GRAFT_FIELDS = ("retrieval",)


@dataclass
class Plan:
    engine_model: str  # base model name or `adapter@version`
    payload: dict[str, Any]
    citations: list[dict[str, Any]] = field(default_factory=list)
    retrieved: list[str] = field(default_factory=list)  # document id of each hit, in rank order
    retrieval_s: float = 0.0  # corpus lookup, search and hydration
    plan_s: float = 0.0  # all of planning: retrieval and prompt building


def base_plan(body: dict[str, Any], engine_model: str) -> Plan:
    payload = {k: v for k, v in body.items() if k not in GRAFT_FIELDS}
    payload["model"] = engine_model
    return Plan(engine_model=engine_model, payload=payload)
