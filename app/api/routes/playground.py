"""``GET /playground``: the web playground — static files shipped in the package (the page, one ES module per panel,
a style sheet), no build step, no CDN.

The page calls the public API of the server that serves it (same origin), so its Content-Security-Policy allows
scripts, styles and requests from this origin only; the admin token a user types stays in the page's memory.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from app.errors import NotFound

router = APIRouter(tags=["playground"], include_in_schema=False)
# One ES module per panel (and the helpers they share): the page loads main.js, which imports the rest.
MODULES = ("main", "common", "tabs", "bank", "steer", "snippets", "analogies", "plots", "vectors", "train")
ASSETS = {**{f"{name}.js": "text/javascript; charset=utf-8" for name in MODULES},
          "playground.css": "text/css; charset=utf-8"}
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
          "form-action 'none'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {"Content-Security-Policy": POLICY, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-cache"}


def _read(name: str) -> bytes:
    return files("app.playground").joinpath("static", name).read_bytes()


@router.get("/playground")
def playground() -> Response:
    """The page."""
    return Response(_read("index.html"), media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/playground/")
def playground_slash() -> RedirectResponse:
    return RedirectResponse("/playground")


@router.get("/playground/{asset}")
def playground_asset(asset: str) -> Response:
    """Its modules and style sheet (only those: the name is looked up, never joined into a path)."""
    if asset not in ASSETS:
        raise NotFound(f"no playground file {asset!r}", param="asset")
    return Response(_read(asset), media_type=ASSETS[asset], headers=HEADERS)
