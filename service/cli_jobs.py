"""`graft jobs ls|show|cancel`, and the one way every command follows a job until it ends."""

import json
import time
from collections.abc import Callable

import httpx
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from adapters_store.models import TERMINAL_STATUSES, JobKind, JobStatus
from service.cli_common import KEY, URL, check_response, gateway_client

jobs_app = typer.Typer(no_args_is_help=True, help="Jobs: ingestion, rebuilds, evaluations, trainings (talks to a running gateway)")

# A job's progress as a bar: (done, total or None, what it is doing).
Describe = Callable[[dict], tuple[int, int | None, str]]


def describe_any(job: dict) -> tuple[int, int | None, str]:
    """Progress of any kind of job: the counters its kind reports (service/responses.py Job)."""
    p = job["progress"]
    done = p.get("chunks_done", p.get("done", p.get("step"))) or 0
    # chunks_total: ingestion's; chunks: a training's examples stage; steps: its training stage
    total = p.get("chunks_total", p.get("chunks", p.get("total", p.get("steps")))) or None
    stage = p.get("stage") or job["status"]
    loss = f" loss {p['loss']:.3f}" if p.get("loss") is not None else ""
    eta = f" eta {p['eta_s']:.0f}s" if p.get("eta_s") is not None else ""
    return done, total, f"{job['kind']} {job['id'][:8]} {stage}{loss}{eta}"


def follow(http: httpx.Client, job_id: str, describe: Describe = describe_any, interval_s: float = 1.0) -> dict:
    """Poll the job until its status is terminal (succeeded, failed or cancelled); the last answer."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(f"job {job_id[:8]}", total=None)
        while True:
            job = check_response(http.get(f"/v1/jobs/{job_id}"))
            done, total, description = describe(job)
            progress.update(task, completed=done, total=total, description=description)
            if job["status"] in TERMINAL_STATUSES:
                return job
            time.sleep(interval_s)


@jobs_app.command("ls")
def jobs_ls(kind: JobKind = typer.Option(None, help="only jobs of this kind"),
            status: JobStatus = typer.Option(None, help="only jobs in this status"),
            limit: int = typer.Option(20, min=1, max=1000, help="how many, newest first"),
            url: str = URL, key: str = KEY) -> None:
    """List the newest jobs the key may see: id, kind, status, progress."""
    params = {"limit": limit, **({"kind": kind.value} if kind else {}), **({"status": status.value} if status else {})}
    with gateway_client(url, key) as http:
        for job in check_response(http.get("/v1/jobs", params=params))["data"]:
            done, total, _ = describe_any(job)
            shown = f"{done}/{total}" if total else ""
            typer.echo(f"{job['id']}  {job['kind']:<8} {job['status']:<10} {shown}")


@jobs_app.command("show")
def jobs_show(job_id: str, url: str = URL, key: str = KEY) -> None:
    """Print one job as JSON: status, progress, errors, result."""
    with gateway_client(url, key) as http:
        typer.echo(json.dumps(check_response(http.get(f"/v1/jobs/{job_id}")), indent=2))


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, wait: bool = typer.Option(True, help="follow the job until it has stopped"),
                url: str = URL, key: str = KEY) -> None:
    """Cancel an evaluation or a training (ingestion and rebuilds run to their end)."""
    with gateway_client(url, key) as http:
        check_response(http.post(f"/v1/jobs/{job_id}/cancel"))
        job = follow(http, job_id) if wait else {"status": "cancelling"}
    typer.echo(f"job {job_id} {job['status']}")
