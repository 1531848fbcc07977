"""`graft ray deploy|status|down`: the fleet's two Serve applications on the cluster at GRAFT_RAY_ADDRESS."""

import ipaddress
from dataclasses import dataclass
from typing import Any

import ray
from ray import serve

from service.engine.ray_replica import (CATALOG_APP, CATALOG_ROUTE, ENGINES_APP, EngineStarter, FleetCatalog,
                                        engine_replica, replica_cache_dir, vllm_starter)
from service.settings import Settings

# Requests one replica takes at once (Serve's default is 5): vLLM batches them; more wait in Serve's queue.
MAX_ONGOING_REQUESTS = 64
HEALTH_CHECK_PERIOD_S = 2.0
# Serve waits this long for a stopping replica's `__del__` (which stops its vLLM: SIGTERM, then SIGKILL
# after LocalEngine's 20 s grace) before it kills the actor.
GRACEFUL_SHUTDOWN_S = 60.0


@dataclass
class FleetShape:
    """How many replicas, with what, each holding at most `adapters_per_replica` adapters."""

    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    adapters_per_replica: int = 4
    num_cpus: float = 1.0
    num_gpus: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings, **flags) -> "FleetShape":
        shape = cls(settings.ray_replicas, settings.ray_min_replicas, settings.ray_max_replicas,
                    settings.ray_adapters_per_replica, settings.ray_replica_cpus, settings.ray_replica_gpus)
        for name, value in flags.items():
            if value is not None:
                setattr(shape, name, value)
        return shape

    def deployment_options(self) -> dict[str, Any]:
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ValueError("give both --min-replicas and --max-replicas, or --replicas")
        scale: dict[str, Any] = {"num_replicas": self.replicas}
        if self.max_replicas is not None:
            if self.min_replicas > self.max_replicas:
                raise ValueError("--min-replicas is above --max-replicas")
            scale = {"autoscaling_config": {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas}}
        return {**scale, "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
                "max_ongoing_requests": MAX_ONGOING_REQUESTS, "health_check_period_s": HEALTH_CHECK_PERIOD_S,
                "graceful_shutdown_timeout_s": GRACEFUL_SHUTDOWN_S}


def connect(settings: Settings) -> None:
    if not ray.is_initialized():
        ray.init(address=settings.ray_address, namespace="graft", log_to_driver=False)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def deploy(settings: Settings, shape: FleetShape, *, starter: EngineStarter | None = None) -> None:
    """Deploy (or update) the catalog and the engine replicas; returns once the replicas are up."""
    options = shape.deployment_options()
    connect(settings)
    serve.start(http_options={"host": "127.0.0.1" if _is_loopback(settings.ray_serve_host) else "0.0.0.0",
                              "port": settings.ray_serve_port})
    serve.run(FleetCatalog.bind(), name=CATALOG_APP, route_prefix=CATALOG_ROUTE)
    replica = serve.deployment(engine_replica(shape.adapters_per_replica), name="EngineReplica", **options)
    serve.run(replica.bind(starter or vllm_starter(settings), replica_cache_dir(settings.ray_adapter_cache_dir), settings.ray_adapter_key),
              name=ENGINES_APP, route_prefix="/")


def status(settings: Settings) -> dict[str, Any]:
    """Each application's status and its deployments' replica counts by state."""
    connect(settings)
    applications = serve.status().applications
    return {name: {"status": str(app.status.value if hasattr(app.status, "value") else app.status),
                   "deployments": {d: {"status": str(getattr(ds.status, "value", ds.status)),
                                       "replicas": {str(getattr(k, "value", k)): v
                                                    for k, v in ds.replica_states.items()}}
                                   for d, ds in app.deployments.items()}}
            for name, app in applications.items() if name in (CATALOG_APP, ENGINES_APP)}


def down(settings: Settings) -> None:
    connect(settings)
    for name in (ENGINES_APP, CATALOG_APP):
        serve.delete(name)
