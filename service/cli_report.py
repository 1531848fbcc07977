"""`graft domain report`: a domain's report over a running gateway's REST API (the command joins the
`graft domain` group of service/cli_client.py)."""

import typer
from rich.console import Console
from rich.table import Table

from evaluation.metrics import METRICS
from service.cli_client import domain_app
from service.cli_common import KEY, URL, check_response, gateway_client
from service.cli_jobs import follow

INGREDIENTS = ("tuned", "reader", "memorize", "composed")


@domain_app.command("report")
def domain_report(domain: str, evalset: str = typer.Option(..., help="the evaluation set every route is run on"),
                  reader: str = typer.Option(None, help="the reader adapter, name@version (default: the newest trained on the domain's corpora)"),
                  memorize: str = typer.Option(None, help="the memorize adapter, name@version (default: as --reader)"),
                  composed: str = typer.Option(None, help="a composed adapter, name@version (default: the newest composed from those)"),
                  tuned: int = typer.Option(None, help="the configuration version (default: the newest a tuning stored)"),
                  without: list[str] = typer.Option([], help=f"leave a route out: one of {', '.join(INGREDIENTS)}"),
                  max_tokens: int = typer.Option(64, help="the most tokens an answer may have"),
                  url: str = URL, key: str = KEY) -> None:
    """Run DOMAIN's routes on EVALSET (a `report` job), follow it, print the table: each route's metrics
    and, under each, the paired bootstrap 95 % interval of its difference against the retrieval row."""
    routes: dict = {name: _adapter(name, value) for name, value in
                    (("reader", reader), ("memorize", memorize), ("composed", composed)) if value}
    if tuned is not None:
        routes["tuned"] = {"version": tuned}
    for name in without:
        if name not in INGREDIENTS:
            raise typer.BadParameter(f"--without takes one of {', '.join(INGREDIENTS)}")
        routes[name] = False
    with gateway_client(url, key) as http:
        started = check_response(http.post(f"/v1/domains/{domain}/reports", json={
            "evalset": evalset, "routes": routes, "max_tokens": max_tokens}))
        job = follow(http, started["job_id"], _describe, interval_s=0.5)
    if job["status"] != "succeeded":
        typer.echo(f"graft: error: report {job['status']}: {job['reason']}", err=True)
        raise typer.Exit(1)
    print_report(job["result"])


def _describe(job: dict) -> tuple[int, int | None, str]:
    progress = job["progress"]
    return progress.get("runs_done") or 0, progress.get("runs_total"), f"report: {progress.get('stage') or job['status']}"


def print_report(result: dict) -> None:
    rows = result["rows"]
    metrics = [m for m in METRICS if any((r.get("metrics") or {}).get(m) is not None for r in rows)]
    table = Table("route", "what", *metrics, "eval", title=f"{result['domain']} on {result['evalset']}: "
                  f"differences against {result['reference']} (95 % interval)")
    notes = []
    for row in rows:
        if not row["available"] or row["status"] != "succeeded":
            status = "not available" if not row["available"] else row["status"]
            notes.append(f"{row['label']}: {status}: {row['reason']}")
            table.add_row(row["label"], status, *["-"] * len(metrics), (row.get("eval_id") or "-")[:8])
            continue
        cells = [_cell(row["metrics"].get(m), (row["delta"] or {}).get(m)) for m in metrics]
        table.add_row(row["label"], _what(row), *cells, row["eval_id"][:8])
    Console().print(table)
    for note in notes:
        typer.echo(note)
    typer.echo(f"report of {result['domain']}: {len(rows)} routes in {result['seconds']:.1f} s")


def _what(row: dict) -> str:
    where = "" if row["source"] is None else f" ({row['source']})"
    if row["adapter"]:
        return f"{row['engine_model']}{where}"
    if row["config_version"] is not None:
        return f"config {row['config_version']}{where}"
    return row["engine_model"] + ("" if row["retrieval"] else ", no retrieval")


def _cell(value, delta: dict | None) -> str:
    shown = "-" if value is None else f"{value:.3f}"
    if delta is None:
        return shown
    return f"{shown}\n{delta['delta']:+.3f} [{delta['low']:+.3f}, {delta['high']:+.3f}]"


def _adapter(option: str, value: str) -> dict:
    name, _, version = value.rpartition("@")
    if not name or not version.isdigit():
        raise typer.BadParameter(f"--{option} takes name@version")
    return {"name": name, "version": int(version)}
