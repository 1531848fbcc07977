"""Resolve `model` to the base model or a domain and build the engine request for it."""

from typing import Any

from service.errors import ApiError
from service.rag.plan import Plan, base_plan
from service.settings import Settings


class Planner:
    def __init__(self, settings: Settings):
        self.settings = settings

    async def plan(self, kind: str, body: dict[str, Any]) -> Plan:
        model = body["model"]
        if model == self.settings.base_model_name:
            return base_plan(body, model)
        raise ApiError(404, f"model {model!r} does not exist: name a domain or "
                       f"{self.settings.base_model_name!r} (GET /v1/models lists them)",
                       param="model", code="model_not_found")
