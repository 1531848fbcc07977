"""The ops console: one static page (GET /console) and its assets (GET /console/static/...).

The page holds no data and needs no key: it signs in with an admin key kept in the tab's
sessionStorage and calls the public API with `Authorization: Bearer <key>` (no cookies, so no
CSRF surface). Its files live in the `service/console` package folder.

GET /v1/engines is the one read-only route the page needed that the API lacked: each engine's
health, readiness, requests in flight and the adapters loaded on it (admin scope).
"""

from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse

from adapters_store.errors import NotFound
from service.auth import Principal
from service.responses import EngineList, answers
from service.state import GatewayState, admin_principal, get_state

router = APIRouter()

CONSOLE_DIR = Path(__file__).resolve().parent.parent / "console"
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
               ".md": "text/markdown; charset=utf-8", ".svg": "image/svg+xml", ".txt": "text/plain; charset=utf-8"}
# Scripts only from the gateway itself, data only from its API, nothing framed.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
                               "style-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'; "
                               "frame-ancestors 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated (ETag) so an upgraded gateway serves its new page
}


def _file(path: Path) -> FileResponse:
    return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix, "application/octet-stream"),
                        headers=HEADERS)


@router.get("/console", include_in_schema=False)
@router.get("/console/", include_in_schema=False)
async def console_page():
    return _file(CONSOLE_DIR / "index.html")


# What /console/static/ serves, by its path under the folder: listed once, so a request's path is
# looked up, never handed to the filesystem (no traversal, no NUL or over-long name reaching it).
ASSETS = {path.relative_to(CONSOLE_DIR).as_posix(): path for path in CONSOLE_DIR.rglob("*")
          if path.is_file() and path.suffix in MEDIA_TYPES}


@router.get("/console/static/{path:path}", include_in_schema=False)
async def console_asset(path: str):
    target = ASSETS.get(path)
    if target is None:
        raise NotFound(f"no console file {path[:200]!r}", param="path", code="not_found")
    return _file(target)


@router.get("/v1/engines", responses=answers(EngineList))
async def list_engines(principal: Principal = Depends(admin_principal), state: GatewayState = Depends(get_state)):
    """The engines and the adapters each holds (a tenant's key sees its own adapters only)."""
    return {"object": "list", "data": [
        {"object": "engine", "url": e.url, "healthy": e.healthy, "ready": e.ready, "in_flight": e.in_flight,
         "adapters": sorted(a for a in e.loaded_adapters if principal.sees(a))} for e in state.pool.replicas()]}
