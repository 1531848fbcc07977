"""`graft corpus|adapter|domain ...`: operator commands that talk to a running gateway over REST."""

import mimetypes
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import typer

from adapters_store.models import JobStatus
from indexer.extract import EXTENSIONS
from service.cli_common import KEY, URL, print_json, check_response, gateway_client
from service.cli_jobs import follow

corpus_app = typer.Typer(no_args_is_help=True, help="Corpora (talks to a running gateway)")
adapter_app = typer.Typer(no_args_is_help=True, help="Adapter versions (talks to a running gateway)")
domain_app = typer.Typer(no_args_is_help=True, help="Domains (talks to a running gateway)")

HEADERS = typer.Option(None, "--contextual-headers/--no-contextual-headers",
                       help="embed and BM25-index each chunk under its document's title and section path")


@corpus_app.command("create")
def corpus_create(name: str, chunk_size: int = typer.Option(None, help="tokens per chunk (default: the gateway's)"),
                  chunk_overlap: int = typer.Option(None, help="tokens two chunks share (default: the gateway's)"),
                  embedding_model: str = typer.Option(None, help="an embedding model the operator allows"),
                  contextual_headers: bool = HEADERS,
                  url: str = URL, key: str = KEY) -> None:
    """Create a corpus."""
    body = {k: v for k, v in {"name": name, "chunk_size": chunk_size, "chunk_overlap": chunk_overlap,
                              "embedding_model": embedding_model,
                              "contextual_headers": contextual_headers}.items() if v is not None}
    with gateway_client(url, key) as http:
        print_json(check_response(http.post("/v1/corpora", json=body)))


@corpus_app.command("rebuild")
def corpus_rebuild(name: str, chunk_size: int = typer.Option(None, help="new tokens per chunk (default: unchanged)"),
                   chunk_overlap: int = typer.Option(None, help="new overlap in tokens (default: unchanged)"),
                   contextual_headers: bool = HEADERS, url: str = URL, key: str = KEY) -> None:
    """Rebuild the corpus's index with new chunking settings; searches keep answering meanwhile."""
    body = {k: v for k, v in {"chunk_size": chunk_size, "chunk_overlap": chunk_overlap,
                              "contextual_headers": contextual_headers}.items() if v is not None}
    with gateway_client(url, key) as http:
        job_id = check_response(http.post(f"/v1/corpora/{name}/rebuild", json=body))["job_id"]
        failed = _follow(http, [job_id])
        if not failed:
            print_json(check_response(http.get(f"/v1/corpora/{name}")))
    raise typer.Exit(1 if failed else 0)


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
    with gateway_client(url, key) as http:
        jobs = []
        for start in range(0, len(files), batch):
            with ExitStack() as stack:
                parts = [("files", (f.name, stack.enter_context(f.open("rb")),
                                    mimetypes.guess_type(f.name)[0] or "application/octet-stream"))
                         for f in files[start:start + batch]]
                jobs.append(check_response(http.post(f"/v1/corpora/{name}/documents", files=parts))["job_id"])
        failed = _follow(http, jobs)
    raise typer.Exit(1 if failed else 0)


def _follow(http: httpx.Client, jobs: list[str]) -> bool:
    """Follow ingestion jobs one after the other, printing each one's per-file errors; True if one failed."""
    failed = False
    for job_id in jobs:
        job = follow(http, job_id, interval_s=0.5)
        for error in job["errors"]:
            typer.echo(f"{error['file'] or error['document_id']}: {error['error']}", err=True)
        if job["status"] != JobStatus.SUCCEEDED:
            failed = True
            typer.echo(f"job {job_id} {job['status']}: {job['reason']}", err=True)
    return failed


@corpus_app.command("search")
def corpus_search(name: str, query: str, k: int = typer.Option(5, help="how many passages"),
                  mode: str = typer.Option("hybrid", help="dense, bm25 or hybrid"),
                  url: str = URL, key: str = KEY) -> None:
    """Search a corpus: the best passages for QUERY."""
    with gateway_client(url, key) as http:
        hits = check_response(http.post(f"/v1/corpora/{name}/search", json={"query": query, "k": k, "mode": mode}))
    for hit in hits["hits"]:
        typer.echo(f"{hit['score']:.4f}  {hit['document_id']}  {hit['text'][:100]!r}")


@corpus_app.command("ls")
def corpus_ls(url: str = URL, key: str = KEY) -> None:
    """List corpora with their documents, chunks and generation."""
    with gateway_client(url, key) as http:
        for corpus in check_response(http.get("/v1/corpora"))["data"]:
            typer.echo(f"{corpus['name']}\t{corpus['documents']} docs\t{corpus['chunks']} chunks\t"
                       f"generation {corpus['generation']}")


@corpus_app.command("rm")
def corpus_rm(name: str, url: str = URL, key: str = KEY) -> None:
    """Delete a corpus (refused while a domain uses it)."""
    with gateway_client(url, key) as http:
        print_json(check_response(http.delete(f"/v1/corpora/{name}")))


@adapter_app.command("push")
def adapter_push(name: str, path: Path, url: str = URL, key: str = KEY) -> None:
    """Upload a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors) or archive."""
    files = [path / "adapter_config.json", path / "adapter_model.safetensors"] if path.is_dir() else [path]
    with gateway_client(url, key) as http, ExitStack() as stack:
        parts = [("files", (f.name, stack.enter_context(f.open("rb")), "application/octet-stream"))
                 for f in files]
        print_json(check_response(http.post(f"/v1/adapters/{name}/versions", files=parts)))


@adapter_app.command("train")
def adapter_train(name: str, corpus: str = typer.Option(..., help="the corpus to compile"),
                  recipe: str = typer.Option("reader", help="reader (answers from graft's prompts) or memorize"),
                  rank: int = typer.Option(8, help="LoRA rank"), epochs: int = typer.Option(None, help="default: the recipe's"),
                  max_examples: int = typer.Option(200, help="the most chunks to write questions about"),
                  learning_rate: float = typer.Option(None, help="default: the recipe's"),
                  evalset: str = typer.Option(None, help="score the new version on this set (needs --domain)"),
                  domain: str = typer.Option(None, help="promote the new version to this domain"),
                  gate_metric: str = typer.Option(None, help="promote only if the candidate gains on this metric"),
                  min_delta: float = typer.Option(0.0, help="the gain the gate needs"), url: str = URL, key: str = KEY) -> None:
    """Train a new version of adapter NAME from a corpus, following the job until it ends."""
    body: dict = {"corpus": corpus, "recipe": recipe, "rank": rank, "max_examples": max_examples}
    body.update({k: v for k, v in (("epochs", epochs), ("learning_rate", learning_rate)) if v is not None})
    if evalset:
        body["evalset"] = evalset
    if domain:
        body["promote"] = {"domain": domain}
        if gate_metric:
            body["promote"]["gate"] = {"evalset": evalset, "metric": gate_metric, "min_delta": min_delta}
    with gateway_client(url, key) as http:
        job_id = check_response(http.post(f"/v1/adapters/{name}/trainings", json=body))["job_id"]
        job = follow(http, job_id)
    if job["status"] != JobStatus.SUCCEEDED:
        typer.echo(f"graft: error: training {job['status']}: {job['reason']}", err=True)
        raise typer.Exit(1)
    print_json(job["result"])


@adapter_app.command("ls")
def adapter_ls(name: str = typer.Argument(None), url: str = URL, key: str = KEY) -> None:
    """List adapters, or the versions of adapter NAME."""
    with gateway_client(url, key) as http:
        path = f"/v1/adapters/{name}/versions" if name else "/v1/adapters"
        print_json(check_response(http.get(path)))


@adapter_app.command("rm")
def adapter_rm(name: str, version: int, url: str = URL, key: str = KEY) -> None:
    """Delete version VERSION of adapter NAME (refused while used)."""
    with gateway_client(url, key) as http:
        print_json(check_response(http.delete(f"/v1/adapters/{name}/versions/{version}")))


@domain_app.command("set")
def domain_set(domain: str, corpus: list[str] = typer.Option([], "--corpus", help="repeatable"),
               adapter: str = typer.Option(None, help="name@version; none: the base model"),
               system_prompt: str = typer.Option(None, help="the system prompt of every request"),
               k: int = typer.Option(None, help="passages retrieved per request"),
               mode: str = typer.Option(None, help="dense, bm25 or hybrid"),
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
    with gateway_client(url, key) as http:
        print_json(check_response(http.put(f"/v1/domains/{domain}", json=body)))


@domain_app.command("ls")
def domain_ls(url: str = URL, key: str = KEY) -> None:
    """List domains and what each binds."""
    with gateway_client(url, key) as http:
        for row in check_response(http.get("/v1/domains"))["data"]:
            typer.echo(f"{row['name']}\t{row['engine_model']}\tcorpora: {', '.join(row['corpora']) or '-'}")


@domain_app.command("rm")
def domain_rm(domain: str, url: str = URL, key: str = KEY) -> None:
    """Delete a domain; its adapter is unloaded once its requests finish."""
    with gateway_client(url, key) as http:
        print_json(check_response(http.delete(f"/v1/domains/{domain}")))


@domain_app.command("swap")
def domain_swap(domain: str, adapter: str, version: int,
                gate: str = typer.Option(None, help="an evaluation set: flip only if the candidate scores well"),
                metric: str = typer.Option("answer_contains", help="the gate's metric"),
                min_delta: float = typer.Option(0.0, help="the gain over the current binding the gate needs"),
                url: str = URL, key: str = KEY) -> None:
    """Swap DOMAIN to ADAPTER@VERSION with no downtime, optionally through a gate."""
    body: dict = {"adapter": adapter, "version": version}
    if gate:
        body["gate"] = {"evalset": gate, "metric": metric, "min_delta": min_delta}
    with gateway_client(url, key) as http:
        print_json(check_response(http.post(f"/v1/domains/{domain}/adapter", json=body)))


@domain_app.command("rollback")
def domain_rollback(domain: str, url: str = URL, key: str = KEY) -> None:
    """Roll DOMAIN back to the version it had before its last change."""
    with gateway_client(url, key) as http:
        print_json(check_response(http.post(f"/v1/domains/{domain}/rollback")))


@domain_app.command("history")
def domain_history(domain: str, url: str = URL, key: str = KEY) -> None:
    """Print DOMAIN's history: every change, with the key that made it."""
    with gateway_client(url, key) as http:
        for row in check_response(http.get(f"/v1/domains/{domain}/history"))["data"]:
            typer.echo(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(row['at']))}  {row['action']:<8} "
                       f"{row['from'] or '-'} -> {row['to'] or '-'}  key {row['api_key_id'] or '-'}")
