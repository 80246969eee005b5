"""pacsd's HTTP application (Starlette, ASGI): the routes, on the engine's event loop.

- `GET /associations`: the live client handles (ClientHandle.snapshot fields), the client of
  `pacsd associations`. The snapshot is taken on the loop, where the handles change.
- `GET /healthz`: the process serves HTTP (its loop runs): 200 and a small JSON.
- `GET /readyz`: 200 when the index answers, the storage root is writable with free space above
  `storage.min_free_space` and the DICOM listeners accept; else 503 naming what is not ready.
- `GET /metrics`: the Prometheus text format (pacsd.http.metrics); in cluster mode with every
  node's registry entry (`pacsd_cluster_node_*`), read in the database executor, bounded.
- `GET /conformance`: the DICOM Conformance Statement of the configuration in force, HTML
  (`?format=markdown` or `Accept: text/markdown`: Markdown; pacsd.conformance).

Nothing patient-related is served: AE titles, addresses, negotiated contexts, counters. Errors
are JSON bodies `{"error": ...}`. The routes change nothing; later routes (DICOMweb, the admin
API) are added to `routes()` and reach the archive through `HttpContext`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pacsd import __version__
from pacsd.archive import Archive
from pacsd.http import admin_api, dicomweb, metrics
from pacsd.http import web as web_page
from pacsd.http.access import Access, guarded
from pacsd.http.health import Health
from pacsd.index.cluster import list_nodes
from pacsd.logs import get_logger
from pacsd.runtime import Active, RuntimeConfig
from pacsd.settings import Settings

log = get_logger("pacsd.http")
JSON_TYPE = "application/json"


@dataclass(frozen=True)
class HttpContext:
    """What the routes read: the engine's snapshot, the readiness checks, the metrics."""

    snapshot: Callable[[], dict[str, Any]]
    health: Health
    sink: metrics.PrometheusSink
    multiprocess_dir: Path | None
    settings: Settings
    archive: Archive  # .files, .index: the same store and index as the DICOM port's
    runtime: RuntimeConfig  # the configuration in force (policies, peers; reloaded on SIGHUP)


def json_response(
    document: dict[str, Any], status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """`document` as the status interface has always written it (indented by one space)."""
    body = json.dumps(document, indent=1).encode("utf-8")
    return Response(body, status_code, headers, media_type=JSON_TYPE)


def create_app(context: HttpContext, access: Access) -> Starlette:
    """The ASGI application serving `context`, its routes guarded by `access`."""

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
        values, cluster = await asyncio.gather(
            context.health.scrape_values(), cluster_nodes(context)
        )
        values = dataclasses.replace(values, cluster=cluster)
        body = await context.health.in_file_pool(
            lambda: metrics.render(context.sink, context.multiprocess_dir, values)
        )
        return Response(body, media_type=metrics.CONTENT_TYPE)

    async def conformance(request: Request) -> Response:
        active = context.runtime.active  # the configuration in force, reloads included
        markdown = wants_markdown(request)
        return await context.health.in_file_pool(lambda: conformance_page(active, markdown))

    routes = [
        Route("/associations", guarded("admin", associations), methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_text, methods=["GET"]),
        Route("/conformance", guarded("read", conformance), methods=["GET"]),
        *web_page.routes(context),  # /, /ui/...: the web page (pacsd.http.web)
        *admin_api.routes(context),  # /api/...: the REST admin API (pacsd.http.admin_api)
        *dicomweb.routes(context),  # /dicom-web/...: QIDO-RS, WADO-RS (pacsd.http.dicomweb)
    ]
    cors = context.settings.http.cors
    middleware = []
    if cors.allow_origins:  # a browser viewer served from another origin (http.cors)
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=cors.allow_origins,
                allow_credentials=cors.allow_credentials,
                allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                allow_headers=["Authorization", "Accept", "Content-Type"],
                expose_headers=["Content-Type", "Content-Length", "Warning"],
                max_age=cors.max_age,
            )
        )
    app = Starlette(
        routes=routes, middleware=middleware, exception_handlers={HTTPException: _http_error}
    )
    app.state.access = access
    return app


async def cluster_nodes(context: HttpContext) -> list[metrics.NodeGauges] | None:
    """Cluster mode: every registered node for /metrics, from the index (in the health
    checks' database executor, bounded by their timeout); None for a single node, or when the
    database did not answer: those gauges are then left out, the scrape goes on."""
    if not context.settings.cluster.enabled:
        return None
    health, index = context.health, context.archive.index
    loop = asyncio.get_running_loop()
    try:
        nodes = await asyncio.wait_for(
            loop.run_in_executor(health.database_pool, lambda: list_nodes(index)), health.timeout
        )
    except Exception as exc:  # /readyz names the database problem; this is not the place
        log.info("cluster gauges left out of /metrics", problem=type(exc).__name__)
        return None
    # A dead node's last count is left out: its associations are not known (likely gone).
    return [
        metrics.NodeGauges(
            node.name,
            node.state == "live",
            None if node.state == "dead" else node.associations,
        )
        for node in nodes
    ]


def wants_markdown(request: Request) -> bool:
    """`?format=markdown`, or an Accept header that names text/markdown."""
    if "format" in request.query_params:
        return request.query_params["format"] == "markdown"
    return "text/markdown" in request.headers.get("accept", "")


def conformance_page(active: Active, markdown: bool) -> Response:
    """The DICOM Conformance Statement of the configuration in force (pacsd.conformance)."""
    from pacsd.conformance import build, render_html, render_markdown

    document = build(active.settings, active.policy)
    if markdown:
        return Response(render_markdown(document), media_type="text/markdown; charset=utf-8")
    return Response(render_html(document), media_type="text/html; charset=utf-8")


async def _http_error(_request: Request, exc: Exception) -> Response:
    """Errors as JSON with a hint (the old status interface's bodies)."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        problem = "not found; try /associations, /healthz, /readyz or /metrics"
    elif exc.status_code == 405:
        problem = "method not allowed on this resource"
    else:
        problem = str(exc.detail)
    return json_response({"error": problem}, exc.status_code, exc.headers)
