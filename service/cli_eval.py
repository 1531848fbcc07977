"""`graft evalset ...` and `graft eval run|show|compare`: evaluation over a running gateway's REST API."""

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from adapters_store.models import JobStatus
from evaluation.compare import compare_runs
from evaluation.metrics import METRICS
from service.cli_common import KEY, URL, check_response, gateway_client
from service.cli_jobs import follow

evalset_app = typer.Typer(no_args_is_help=True, help="Evaluation sets (talks to a running gateway)")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluation runs (talks to a running gateway)")
SUMMARY = (*METRICS, "latency_p50_ms", "latency_p99_ms", "completion_tokens", "items")


@evalset_app.command("create")
def evalset_create(name: str, path: Path, url: str = URL, key: str = KEY) -> None:
    """Upload a JSONL file of {id?, question, answers?, document_ids?, unanswerable?} as the set NAME."""
    with gateway_client(url, key) as http, path.open("rb") as file:
        body = check_response(http.post("/v1/evalsets", params={"name": name},
                                files=[("files", (path.name, file, "application/jsonl"))]))
    typer.echo(f"{body['name']}\t{body['items']} items\tsha256 {body['sha256'][:12]}")


@evalset_app.command("ls")
def evalset_ls(url: str = URL, key: str = KEY) -> None:
    """List evaluation sets: name, items, sha256."""
    with gateway_client(url, key) as http:
        for row in check_response(http.get("/v1/evalsets"))["data"]:
            typer.echo(f"{row['name']}\t{row['items']} items\tsha256 {row['sha256'][:12]}")


@eval_app.command("run")
def eval_run(domain: str, evalset: str,
             adapter: str = typer.Option(None, help="a candidate name@version, evaluated without being routed"),
             k: int = typer.Option(None, help="passages retrieved per question (default: the domain's)"),
             mode: str = typer.Option(None, help="dense, bm25 or hybrid (default: the domain's)"),
             no_retrieval: bool = typer.Option(False, "--no-retrieval", help="closed book"),
             max_tokens: int = typer.Option(64, help="the most tokens an answer may have"), url: str = URL, key: str = KEY) -> None:
    """Run DOMAIN on EVALSET, follow it with a progress bar, print the summary and the eval id."""
    body: dict = {"domain": domain, "evalset": evalset, "max_tokens": max_tokens}
    if adapter:
        name, _, version = adapter.rpartition("@")
        if not name or not version.isdigit():
            raise typer.BadParameter("--adapter takes name@version")
        body["adapter"] = {"name": name, "version": int(version)}
    if no_retrieval:
        body["retrieval"] = False
    elif k is not None or mode is not None:
        body["retrieval"] = {key_: v for key_, v in {"k": k, "mode": mode}.items() if v is not None}
    with gateway_client(url, key) as http:
        started = check_response(http.post("/v1/evals", json=body))
        job = follow(http, started["job_id"], interval_s=0.5)
        if job["status"] != JobStatus.SUCCEEDED:
            typer.echo(f"graft: error: evaluation {job['status']}: {job['reason']}", err=True)
            raise typer.Exit(1)
        run = check_response(http.get(f"/v1/evals/{started['eval_id']}"))
    _print_summaries([run])


@eval_app.command("show")
def eval_show(eval_id: str, items: bool = typer.Option(False, help="print each item too"),
              url: str = URL, key: str = KEY) -> None:
    """Print a run's summary (and with --items each item's output and scores)."""
    with gateway_client(url, key) as http:
        run = check_response(http.get(f"/v1/evals/{eval_id}"))
        rows = check_response(http.get(f"/v1/evals/{eval_id}/items"))["items"] if items else []
    _print_summaries([run])
    for row in rows:
        typer.echo(json.dumps(row, ensure_ascii=False))


@eval_app.command("compare")
def eval_compare(a: str, b: str, url: str = URL, key: str = KEY) -> None:
    """Both summaries, per-item wins/losses of B against A, and a paired bootstrap 95 % interval
    of each metric's difference (B - A) over the items both runs share."""
    with gateway_client(url, key) as http:
        runs = [check_response(http.get(f"/v1/evals/{run_id}")) for run_id in (a, b)]
        items = [{i["id"]: i for i in check_response(http.get(f"/v1/evals/{run_id}/items"))["items"]} for run_id in (a, b)]
    _print_summaries(runs)
    if runs[0]["evalset_sha256"] != runs[1]["evalset_sha256"]:
        typer.echo("note: the runs used different evaluation sets; only shared item ids are compared")
    table = Table("metric", "A", "B", "B - A", "95 % interval", "wins", "losses", "ties", "n")
    for metric, row in compare_runs(*items).items():
        if not row["n"]:
            continue
        table.add_row(metric, _num(row["mean_a"]), _num(row["mean_b"]), f"{row['delta']:+.3f}",
                      f"[{row['low']:+.3f}, {row['high']:+.3f}]", str(row["wins"]), str(row["losses"]),
                      str(row["ties"]), str(row["n"]))
    Console().print(table)


def _print_summaries(runs: list[dict]) -> None:
    table = Table("", *[f"{r['id'][:8]} {r['domain']} {r['adapter']} k={r['k']}" for r in runs])
    for metric in SUMMARY:
        table.add_row(metric, *[_num((r["metrics"] or {}).get(metric)) for r in runs])
    Console().print(table)
    for run in runs:
        typer.echo(f"eval {run['id']}")


def _num(value) -> str:
    if value is None:
        return "-"
    return str(value) if isinstance(value, int) else f"{value:.3f}"
