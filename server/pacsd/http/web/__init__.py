"""The web page pacsd serves itself: study search, a study's series, one image, the live
associations and the health checks, in plain JavaScript over pacsd's own HTTP resources.

`GET /` answers the page (index.html), `GET /ui/{name}` its script and style sheet; both need
the `read` permission (http.rules). No build step and no external URL: the three files are
package data (static/), read once when the routes are made, and the page talks only to its
own origin: QIDO-RS (/dicom-web/studies?...), thumbnail and rendered resources,
/api/associations (else /associations), /readyz and /healthz.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pacsd.http.access import guarded

if TYPE_CHECKING:
    from pacsd.http.app import HttpContext

MEDIA_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# The page runs only its own script and style, talks only to its own origin.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def load_files() -> dict[str, bytes]:
    """The page's files, from the package."""
    folder = resources.files(__package__).joinpath("static")
    return {name: folder.joinpath(name).read_bytes() for name in MEDIA_TYPES}


def routes(_context: HttpContext) -> list[Route]:
    """`/` and `/ui/{name}`: the page and its files."""
    files = load_files()

    async def page(_request: Request) -> Response:
        """GET /: the web page."""
        return Response(files["index.html"], media_type=MEDIA_TYPES["index.html"], headers=HEADERS)

    async def asset(request: Request) -> Response:
        """GET /ui/{name}: the page's script or style sheet."""
        name = request.path_params["name"]
        if name not in files:
            return Response(b'{"error": "not found"}', 404, media_type="application/json")
        return Response(files[name], media_type=MEDIA_TYPES[name], headers=HEADERS)

    return [
        Route("/", guarded("read", page), methods=["GET"]),
        Route("/ui/{name}", guarded("read", asset), methods=["GET"]),
    ]
