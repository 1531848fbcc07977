"""What every command that talks to a running gateway shares: its options, its client, how it reads answers."""

import json

import httpx
import typer

URL = typer.Option("http://127.0.0.1:8000", "--url", envvar="GRAFT_URL", help="gateway base URL")
KEY = typer.Option(None, "--key", envvar="GRAFT_API_KEY", help="admin API key")


def gateway_client(url: str, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url, headers=headers, timeout=300)


def check_response(response: httpx.Response) -> dict:
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        typer.echo(f"graft: error: {response.status_code}: {message}", err=True)
        raise typer.Exit(1)
    return response.json()


def print_json(body: dict) -> None:
    typer.echo(json.dumps(body, indent=2))
