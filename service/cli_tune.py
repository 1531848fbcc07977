"""`graft domain tune|configs|config|apply`: domain tunings and configuration versions over a running
gateway's REST API (the commands join the `graft domain` group of service/cli_client.py)."""

import json

import typer
from rich.console import Console
from rich.table import Table

from adapters_store.models import JobStatus
from evaluation.metrics import METRICS
from service.cli_client import KEY, URL, check_response, domain_app, gateway_client
from service.cli_jobs import follow


def _describe_tuning(job: dict) -> tuple[int, int | None, str]:
    """A tuning's progress: trials done of the budget, and the best score so far."""
    progress = job["progress"] or {}
    done, total = progress.get("trials_done", 0), progress.get("trials_total")
    return done, total, (f"{progress.get('stage', job['status'])}: trials {done}/{total}, "
                         f"best {_num(progress.get('best_score'))}")


@domain_app.command("tune")
def domain_tune(domain: str, evalset: str = typer.Option(..., help="the evaluation set whose tuning split is searched"),
                metric: str = typer.Option("answer_contains", help=f"one of {', '.join(METRICS)}"),
                trials: int = typer.Option(20, help="configurations tried (the budget)"),
                holdout: str = typer.Option(None, help="a second set scored at the end (default: the set's holdout split)"),
                space: str = typer.Option(None, help='JSON choices per parameter, e.g. \'{"k": [2, 4], "mode": ["hybrid"]}\''),
                url: str = URL, key: str = KEY) -> None:
    """Search DOMAIN's configuration on EVALSET (a `tune` job), follow it, print the version it stored."""
    body: dict = {"evalset": evalset, "metric": metric, "budget": {"trials": trials}}
    if holdout:
        body["holdout"] = holdout
    if space:
        try:
            body["space"] = json.loads(space)
        except ValueError as exc:
            raise typer.BadParameter(f"--space is not JSON: {exc}") from exc
    with gateway_client(url, key) as http:
        started = check_response(http.post(f"/v1/domains/{domain}/tunings", json=body))
        typer.echo(f"job {started['job_id']}")
        job = follow(http, started["job_id"], describe=_describe_tuning, interval_s=0.5)
        if job["status"] != JobStatus.SUCCEEDED:
            typer.echo(f"graft: error: tuning {job['status']}: {job['reason']}", err=True)
            raise typer.Exit(1)
        result = job["result"]
        version = check_response(http.get(f"/v1/domains/{domain}/configs/{result['config_version']}"))
    typer.echo(f"config version {result['config_version']}: {metric} tuning {_num(result['tuning_score'])}, "
               f"holdout {_num(result['holdout_score'])} (current {_num(result['current_score'])}); "
               f"{result['engine_calls']} engine calls in {result['seconds']:.1f} s")
    _print_diff(version["diff"])
    typer.echo(f"apply it with: graft domain apply {domain} {result['config_version']}")


@domain_app.command("configs")
def domain_configs(domain: str, url: str = URL, key: str = KEY) -> None:
    """DOMAIN's configuration versions with their scores."""
    with gateway_client(url, key) as http:
        rows = check_response(http.get(f"/v1/domains/{domain}/configs"))["data"]
    table = Table("version", "applied", "metric", "tuning", "holdout", "current", "template", "k", "mode")
    for row in rows:
        config = row["config"]
        table.add_row(str(row["version"]), "yes" if row["applied"] else "", row["metric"] or "-",
                      _num(row["tuning_score"]), _num(row["holdout_score"]), _num(row["current_score"]),
                      config["prompt_template"], str(config["retrieval"]["k"]), config["retrieval"]["mode"])
    Console().print(table)


@domain_app.command("config")
def domain_config(domain: str, version: int, url: str = URL, key: str = KEY) -> None:
    """One configuration version: its configuration and its diff against the live one."""
    with gateway_client(url, key) as http:
        row = check_response(http.get(f"/v1/domains/{domain}/configs/{version}"))
    typer.echo(json.dumps(row["config"], indent=2, ensure_ascii=False))
    _print_diff(row["diff"])


@domain_app.command("apply")
def domain_apply(domain: str, version: int,
                 gate: str = typer.Option(None, help="an evaluation set: apply only if the version scores well"),
                 metric: str = typer.Option("answer_contains", help="the gate's metric"),
                 min_delta: float = typer.Option(0.0, help="the gain over the live configuration the gate needs"),
                 url: str = URL, key: str = KEY) -> None:
    """Make configuration VERSION DOMAIN's live one (through the gate, if one is given or set)."""
    body: dict = {}
    if gate:
        body["gate"] = {"evalset": gate, "metric": metric, "min_delta": min_delta}
    with gateway_client(url, key) as http:
        applied = check_response(http.post(f"/v1/domains/{domain}/configs/{version}/apply", json=body))
    typer.echo(f"{domain}: configuration version {applied['config_version']} applied")
    if applied.get("gate_result"):
        gate_result = applied["gate_result"]
        typer.echo(f"gate: {gate_result['metric']} {_num(gate_result['candidate'])} vs {_num(gate_result['current'])}")


def _print_diff(diff: dict) -> None:
    if not diff:
        typer.echo("same as the live configuration")
    for field, change in diff.items():
        typer.echo(f"{field}: {json.dumps(change['current'], ensure_ascii=False)} -> "
                   f"{json.dumps(change['config'], ensure_ascii=False)}")


def _num(value) -> str:
    return "-" if value is None else f"{value:.3f}"
