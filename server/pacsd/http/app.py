"""pacsd's HTTP application (Starlette, ASGI): the routes, on the engine's event loop.

- `GET /associations`: the live client handles (ClientHandle.snapshot fields), the client of
  `pacsd associations`. The snapshot is taken on the loop, where the handles change.
- `GET /healthz`: the process serves HTTP (its loop runs): 200 and a small JSON.
- `GET /readyz`: 200 when the index answers, the storage root is writable with free space above
  `storage.min_free_space` and the DICOM listeners accept; else 503 naming what is not ready.
- `GET /metrics`: the Prometheus text format (pacsd.http.metrics).

Nothing patient-related is served: AE titles, addresses, negotiated contexts, counters. Errors
are JSON bodies `{"error": ...}`. The routes change nothing; later routes (DICOMweb, the admin
API) are added to `routes()` and reach the archive through `HttpContext`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pacsd import __version__
from pacsd.http import metrics
from pacsd.http.health import Health
from pacsd.logs import get_logger

log = get_logger("pacsd.http")
JSON_TYPE = "application/json"


@dataclass(frozen=True)
class HttpContext:
    """What the routes read: the engine's snapshot, the readiness checks, the metrics."""

    snapshot: Callable[[], dict[str, Any]]
    health: Health
    sink: metrics.PrometheusSink
    multiprocess_dir: Path | None


def json_response(document: dict[str, Any], status_code: int = 200) -> Response:
    """`document` as the status interface has always written it (indented by one space)."""
    body = json.dumps(document, indent=1).encode("utf-8")
    return Response(body, status_code, media_type=JSON_TYPE)


def create_app(context: HttpContext) -> Starlette:
    """The ASGI application serving `context`."""

    async def associations(_request: Request) -> Response:
        try:
            return json_response(context.snapshot())
        except Exception:
            log.exception("status snapshot failed")
            return json_response({"error": "snapshot failed; see the server log"}, 500)

    async def healthz(_request: Request) -> Response:
        return json_response({"status": "ok", "pacsd_version": __version__, "pid": os.getpid()})

    async def readyz(_request: Request) -> Response:
        ready, document = await context.health.ready()
        return json_response(document, 200 if ready else 503)

    async def metrics_text(_request: Request) -> Response:
        values = await context.health.scrape_values()
        body = await context.health.in_file_pool(
            lambda: metrics.render(context.sink, context.multiprocess_dir, values)
        )
        return Response(body, media_type=metrics.CONTENT_TYPE)

    routes = [
        Route("/associations", associations, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_text, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error})


async def _http_error(_request: Request, exc: Exception) -> Response:
    """Errors as JSON with a hint (the old status interface's bodies)."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        problem = "not found; try /associations, /healthz, /readyz or /metrics"
    elif exc.status_code == 405:
        problem = "only GET"
    else:
        problem = str(exc.detail)
    return json_response({"error": problem}, exc.status_code)
