"""`graft corpus|adapter|domain ...`: operator commands that talk to a running gateway over REST."""

import json
import mimetypes
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from indexer.extract import EXTENSIONS

corpus_app = typer.Typer(no_args_is_help=True, help="Corpora (talks to a running gateway)")
adapter_app = typer.Typer(no_args_is_help=True, help="Adapter versions (talks to a running gateway)")
domain_app = typer.Typer(no_args_is_help=True, help="Domains (talks to a running gateway)")

URL = typer.Option("http://127.0.0.1:8000", "--url", envvar="GRAFT_URL", help="gateway base URL")
KEY = typer.Option(None, "--key", envvar="GRAFT_API_KEY", help="admin API key")


def _http(url: str, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url, headers=headers, timeout=300)


def _check(response: httpx.Response) -> dict:
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        typer.echo(f"graft: error: {response.status_code}: {message}", err=True)
        raise typer.Exit(1)
    return response.json()


def _print(body: dict) -> None:
    typer.echo(json.dumps(body, indent=2))


@corpus_app.command("create")
def corpus_create(name: str, chunk_size: int = typer.Option(None), chunk_overlap: int = typer.Option(None),
                  embedding_model: str = typer.Option(None), url: str = URL, key: str = KEY) -> None:
    body = {k: v for k, v in {"name": name, "chunk_size": chunk_size, "chunk_overlap": chunk_overlap,
                              "embedding_model": embedding_model}.items() if v is not None}
    with _http(url, key) as http:
        _print(_check(http.post("/v1/corpora", json=body)))


def _files_of(paths: list[Path]) -> list[Path]:
    files = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)
        elif path.is_file():
            files.append(path)
        else:
            typer.echo(f"graft: error: {path} does not exist", err=True)
            raise typer.Exit(1)
    return files


@corpus_app.command("upload")
def corpus_upload(name: str, paths: list[Path], batch: int = typer.Option(200, help="files per request"),
                  url: str = URL, key: str = KEY) -> None:
    """Upload files or folders and follow the ingestion jobs until done."""
    files = _files_of(paths)
    if not files:
        typer.echo("graft: error: no supported files (txt, md, html, pdf, jsonl)", err=True)
        raise typer.Exit(1)
    with _http(url, key) as http:
        jobs = []
        for start in range(0, len(files), batch):
            with ExitStack() as stack:
                parts = [("files", (f.name, stack.enter_context(f.open("rb")),
                                    mimetypes.guess_type(f.name)[0] or "application/octet-stream"))
                         for f in files[start:start + batch]]
                jobs.append(_check(http.post(f"/v1/corpora/{name}/documents", files=parts))["job_id"])
        failed = _follow(http, jobs)
    raise typer.Exit(1 if failed else 0)


def _follow(http: httpx.Client, jobs: list[str]) -> bool:
    failed = False
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns) as progress:
        for job_id in jobs:
            task = progress.add_task(f"job {job_id[:8]}", total=None)
            while True:
                job = _check(http.get(f"/v1/jobs/{job_id}"))
                p = job["progress"]
                progress.update(task, completed=p["chunks_done"], total=p["chunks_total"] or None,
                                description=f"job {job_id[:8]} {job['status']}")
                if job["status"] in ("succeeded", "failed"):
                    break
                time.sleep(0.5)
            for error in job["errors"]:
                progress.console.print(f"[yellow]{error['file'] or error['document_id']}: {error['error']}")
            if job["status"] == "failed":
                failed = True
                progress.console.print(f"[red]job {job_id} failed: {job['reason']}")
    return failed


@corpus_app.command("search")
def corpus_search(name: str, query: str, k: int = 5, mode: str = "hybrid",
                  url: str = URL, key: str = KEY) -> None:
    with _http(url, key) as http:
        hits = _check(http.post(f"/v1/corpora/{name}/search", json={"query": query, "k": k, "mode": mode}))
    for hit in hits["hits"]:
        typer.echo(f"{hit['score']:.4f}  {hit['document_id']}  {hit['text'][:100]!r}")


@corpus_app.command("ls")
def corpus_ls(url: str = URL, key: str = KEY) -> None:
    with _http(url, key) as http:
        for corpus in _check(http.get("/v1/corpora"))["data"]:
            typer.echo(f"{corpus['name']}\t{corpus['documents']} docs\t{corpus['chunks']} chunks\t"
                       f"generation {corpus['generation']}")


@corpus_app.command("rm")
def corpus_rm(name: str, url: str = URL, key: str = KEY) -> None:
    with _http(url, key) as http:
        _print(_check(http.delete(f"/v1/corpora/{name}")))


@adapter_app.command("push")
def adapter_push(name: str, path: Path, url: str = URL, key: str = KEY) -> None:
    """Upload a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors) or archive."""
    files = [path / "adapter_config.json", path / "adapter_model.safetensors"] if path.is_dir() else [path]
    with _http(url, key) as http, ExitStack() as stack:
        parts = [("files", (f.name, stack.enter_context(f.open("rb")), "application/octet-stream"))
                 for f in files]
        _print(_check(http.post(f"/v1/adapters/{name}/versions", files=parts)))


@adapter_app.command("ls")
def adapter_ls(name: str = typer.Argument(None), url: str = URL, key: str = KEY) -> None:
    with _http(url, key) as http:
        path = f"/v1/adapters/{name}/versions" if name else "/v1/adapters"
        _print(_check(http.get(path)))


@adapter_app.command("rm")
def adapter_rm(name: str, version: int, url: str = URL, key: str = KEY) -> None:
    with _http(url, key) as http:
        _print(_check(http.delete(f"/v1/adapters/{name}/versions/{version}")))


@domain_app.command("set")
def domain_set(domain: str, corpus: list[str] = typer.Option([], "--corpus", help="repeatable"),
               adapter: str = typer.Option(None, help="name@version; none: the base model"),
               system_prompt: str = typer.Option(None), k: int = typer.Option(None), mode: str = typer.Option(None),
               url: str = URL, key: str = KEY) -> None:
    """Create or replace a domain's binding (PUT /v1/domains/{domain})."""
    body: dict = {"corpora": corpus, "system_prompt": system_prompt}
    if adapter:
        name, _, version = adapter.rpartition("@")
        if not name or not version.isdigit():
            raise typer.BadParameter("--adapter takes name@version, e.g. tone@2")
        body["adapter"] = {"name": name, "version": int(version)}
    retrieval = {k_: v for k_, v in {"k": k, "mode": mode}.items() if v is not None}
    if retrieval:
        body["retrieval"] = retrieval
    with _http(url, key) as http:
        _print(_check(http.put(f"/v1/domains/{domain}", json=body)))


@domain_app.command("ls")
def domain_ls(url: str = URL, key: str = KEY) -> None:
    with _http(url, key) as http:
        for row in _check(http.get("/v1/domains"))["data"]:
            typer.echo(f"{row['name']}\t{row['engine_model']}\tcorpora: {', '.join(row['corpora']) or '-'}")


@domain_app.command("rm")
def domain_rm(domain: str, url: str = URL, key: str = KEY) -> None:
    """Delete a domain; its adapter is unloaded once its requests finish."""
    with _http(url, key) as http:
        _print(_check(http.delete(f"/v1/domains/{domain}")))


@domain_app.command("swap")
def domain_swap(domain: str, adapter: str, version: int, url: str = URL, key: str = KEY) -> None:
    with _http(url, key) as http:
        _print(_check(http.post(f"/v1/domains/{domain}/adapter", json={"adapter": adapter, "version": version})))


@domain_app.command("rollback")
def domain_rollback(domain: str, url: str = URL, key: str = KEY) -> None:
    with _http(url, key) as http:
        _print(_check(http.post(f"/v1/domains/{domain}/rollback")))


@domain_app.command("history")
def domain_history(domain: str, url: str = URL, key: str = KEY) -> None:
    with _http(url, key) as http:
        for row in _check(http.get(f"/v1/domains/{domain}/history"))["data"]:
            typer.echo(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(row['at']))}  {row['action']:<8} "
                       f"{row['from'] or '-'} -> {row['to'] or '-'}  key {row['api_key_id'] or '-'}")
