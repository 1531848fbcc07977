"""Turn a client's completion request into what goes to the engine: model name, payload, citations."""

from dataclasses import dataclass, field
from typing import Any

from adapters_store.errors import Invalid

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


def validate_request(kind: str, body: dict[str, Any]) -> None:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise Invalid("`model` is required: a domain name or the base model", param="model")
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise Invalid("`messages` must be a non-empty list", param="messages")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise Invalid(f"messages[{i}] must be an object with a `role`",
                              param=f"messages[{i}]")
            if message.get("role") not in ("system", "user", "assistant", "tool", "developer"):
                raise Invalid(f"messages[{i}].role {message.get('role')!r} is not a valid role",
                              param=f"messages[{i}].role")
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise Invalid("`prompt` must be a non-empty string", param="prompt")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise Invalid("`stream` must be a boolean", param="stream")


def base_plan(body: dict[str, Any], engine_model: str) -> Plan:
    payload = {k: v for k, v in body.items() if k not in GRAFT_FIELDS}
    payload["model"] = engine_model
    return Plan(engine_model=engine_model, payload=payload)
