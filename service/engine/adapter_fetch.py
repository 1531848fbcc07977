"""How an adapter version's files reach a fleet replica that has no folder shared with the gateway.

The gateway registers a version as a *source*: its folder on the gateway's machine, the sha256 of
each file, and the URL its files are served at (`GET /v1/adapters/{name}/versions/{v}/files/{path}`).
A replica uses the folder when it sees it (a shared folder), else its node's cached copy, else it
downloads the files, checks each sha256, and keeps them in the node's cache under the version's
content digest (immutable, so a cached copy never goes stale).
"""

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

from service.basemodel import sha256_file


class AdapterFetchError(Exception):
    pass


def source_of(folder: Path, files_url: str | None, shared: bool = True) -> dict[str, Any]:
    """What the fleet's catalog records for a version stored in `folder` (named by its content digest);
    `shared`: replicas may read the folder itself where their node sees it."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {"path": str(folder) if shared else None, "content": folder.name, "url": files_url,
            "files": [{"path": p.relative_to(folder).as_posix(), "sha256": sha256_file(p), "size": p.stat().st_size}
                      for p in files]}


def _complete(folder: Path, files: list[dict[str, Any]]) -> bool:
    return folder.is_dir() and all((folder / f["path"]).is_file() for f in files)


async def local_folder(source: dict[str, Any], cache_dir: Path, key: str | None) -> Path:
    """A folder on this node holding the version's files (see the module's doc)."""
    if source["path"] and _complete(Path(source["path"]), source["files"]):
        return Path(source["path"])
    cached = cache_dir / source["content"]
    if _complete(cached, source["files"]):
        return cached
    if not source.get("url"):
        raise AdapterFetchError(f"{source['path']} is not on this node and the gateway gave no URL to fetch it from")
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=cache_dir))
    try:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=600)) as http:
            for file in source["files"]:
                await _download(http, source["url"].rstrip("/") + "/" + file["path"], staging / file["path"], file)
        try:
            staging.rename(cached)
        except OSError:  # another request of this node fetched it first
            if not _complete(cached, source["files"]):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return cached


async def _download(http: aiohttp.ClientSession, url: str, target: Path, file: dict[str, Any]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    try:
        async with http.get(url) as response:
            if response.status != 200:
                raise AdapterFetchError(f"GET {url} answered {response.status}")
            with target.open("wb") as out:
                async for block in response.content.iter_chunked(1 << 20):
                    digest.update(block)
                    out.write(block)
    except aiohttp.ClientError as exc:
        raise AdapterFetchError(f"GET {url} failed: {exc!r}") from exc
    if digest.hexdigest() != file["sha256"]:
        raise AdapterFetchError(f"{file['path']} from {url} does not match its sha256")
