"""The web dashboard: static files in `static/`, served by the API itself.

The pages hold no data: every number on them comes from the API's JSON routes, called by
the page's script with the `X-API-Key` the user entered once (kept in the browser's
localStorage). So the pages and their assets are public, like `/docs`, and the data routes
keep their key check. No build step and nothing from a CDN: plain HTML, CSS and ES modules,
read from the package once at start (DESIGN.md, "Dashboard").
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from model_trainer.errors import NotFoundError
from service_common.static_assets import MEDIA_TYPES, StaticAsset

DASHBOARD_PATH = "/dashboard/"


def load_assets() -> dict[str, StaticAsset]:
    """Every file of `static/` by name (the folder is flat)."""
    folder = resources.files(__package__) / "static"
    assets: dict[str, StaticAsset] = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in MEDIA_TYPES:
            assets[entry.name] = StaticAsset(entry.read_bytes(), MEDIA_TYPES[suffix])
    if "index.html" not in assets:
        raise RuntimeError("the dashboard's static/index.html is missing from the package")
    return assets


def dashboard_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)
    assets = load_assets()

    @router.get("/")
    async def root() -> RedirectResponse:
        return RedirectResponse(DASHBOARD_PATH, status_code=307)

    @router.get("/dashboard")
    async def dashboard_no_slash() -> RedirectResponse:
        return RedirectResponse(DASHBOARD_PATH, status_code=307)

    @router.get(DASHBOARD_PATH)
    async def index(request: Request) -> Response:
        return assets["index.html"].response(request)

    @router.get(DASHBOARD_PATH + "{name}")
    async def asset(name: str, request: Request) -> Response:
        found = assets.get(name)
        if found is None:
            raise NotFoundError(f"no dashboard file {name!r}")
        return found.response(request)

    return router
