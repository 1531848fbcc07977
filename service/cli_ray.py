"""`graft ray deploy|status|down`: the engine fleet on the Ray cluster at GRAFT_RAY_ADDRESS (extra `ray`)."""

import json

import httpx
import typer

from service.settings import Settings

ray_app = typer.Typer(no_args_is_help=True, help="The engine fleet on Ray Serve (GRAFT_ENGINE_BACKEND=ray)")


@ray_app.command("deploy")
def deploy(replicas: int = typer.Option(None, min=1, help="replicas (default GRAFT_RAY_REPLICAS)"),
           min_replicas: int = typer.Option(None, min=0, help="autoscaling lower bound (with --max-replicas)"),
           max_replicas: int = typer.Option(None, min=1, help="autoscaling upper bound"),
           adapters_per_replica: int = typer.Option(None, min=1, help="adapters a replica keeps loaded (LRU)"),
           num_gpus: float = typer.Option(None, min=0, help="GPUs per replica"),
           num_cpus: float = typer.Option(None, min=0, help="CPUs per replica")) -> None:
    """Deploy or update the fleet: one vLLM per replica, started with the local engine's settings."""
    from service.engine import ray_deploy

    settings = Settings()
    shape = ray_deploy.FleetShape.from_settings(
        settings, replicas=replicas, min_replicas=min_replicas, max_replicas=max_replicas,
        adapters_per_replica=adapters_per_replica, num_gpus=num_gpus, num_cpus=num_cpus)
    try:
        shape.deployment_options()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    ray_deploy.deploy(settings, shape)
    typer.echo(f"fleet deployed: {settings.ray_serve_url} (GRAFT_ENGINE_BACKEND=ray)")


@ray_app.command("status")
def status() -> None:
    """The fleet's applications and each replica's adapters, as JSON."""
    from service.engine import ray_deploy

    settings = Settings()
    report = {"applications": ray_deploy.status(settings)}
    try:
        report["replicas"] = httpx.get(f"{settings.ray_serve_url}/graft-fleet/replicas", timeout=10).json()["data"]
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        report["replicas_error"] = f"the fleet's catalog did not answer: {exc!r}"
    typer.echo(json.dumps(report, indent=2))


@ray_app.command("down")
def down() -> None:
    """Delete the fleet's applications (the Ray cluster stays)."""
    from service.engine import ray_deploy

    ray_deploy.down(Settings())
    typer.echo("fleet deleted")
