"""What the DICOMweb resources share: a bounded executor, errors as responses, URLs, audit.

Everything that blocks (index queries, file reads, transcoding, JSON encoding of a result,
writing an audit record) runs in one small executor per process (`pacsd-web`), never on the
loop (docs/STYLE.md); index queries wait at most `QUERY_TIMEOUT_S`, so a database that stops
answering costs executor threads, never the loop. Errors are JSON bodies `{"error": ...}` with
the status PS3.18 names (400 bad query, 404 unknown UID, 406 no acceptable representation).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from pacsd import audit
from pacsd.audit.messages import AuditMessage
from pacsd.logs import get_logger

if TYPE_CHECKING:
    from pacsd.http.app import HttpContext

log = get_logger("pacsd.http.dicomweb")
PREFIX = "/dicom-web"
WORKERS = 4  # executor threads: file reads of every stream and the index queries share them
QUERY_TIMEOUT_S = 60.0
DICOM_JSON = "application/dicom+json"
T = TypeVar("T")
Endpoint = Callable[[Request], Awaitable[Response]]


class WebError(Exception):
    """A request that gets an error status and a one-line reason."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


def problem(status: int, reason: str, headers: dict[str, str] | None = None) -> Response:
    """An error response: `{"error": reason}` as JSON."""
    body = json.dumps({"error": reason}).encode("utf-8")
    return Response(body, status, headers, media_type="application/json")


@dataclass
class Web:
    """The DICOMweb side of one process: the HTTP context and the bounded executor."""

    context: HttpContext
    pool: ThreadPoolExecutor

    @property
    def settings(self) -> Any:
        """The settings in force at start-up."""
        return self.context.settings

    async def run(self, call: Callable[[], T], timeout: float | None = None) -> T:
        """`call()` in the executor; 503 when it takes longer than `timeout` seconds."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.pool, call)
        if timeout is None:
            return await future
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise WebError(503, f"the index did not answer within {timeout:g} s") from None

    async def query(self, call: Callable[[], T]) -> T:
        """An index query in the executor, bounded by QUERY_TIMEOUT_S."""
        return await self.run(call, QUERY_TIMEOUT_S)

    def emit(self, build: Callable[[audit.AuditTrail], AuditMessage]) -> None:
        """Write an audit message in the executor (the audit file may fsync); never raises."""
        trail = audit.current()
        if trail is None:
            return

        def write() -> None:
            try:
                trail.emit(build(trail))
            except Exception as exc:  # an audit bug must never break the request
                trail.errors.failed(exc)

        self.pool.submit(write)


_webs: dict[int, tuple[Any, Web]] = {}


def web_of(context: HttpContext) -> Web:
    """The one `Web` of `context` (made on first use; every module's routes share it)."""
    entry = _webs.get(id(context))
    if entry is None or entry[0] is not context:
        pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="pacsd-web")
        entry = (context, Web(context, pool))
        _webs[id(context)] = entry
    return entry[1]


def handled(endpoint: Endpoint) -> Endpoint:
    """`endpoint` with WebError answered as its status and reason (logged at info)."""

    async def answer(request: Request) -> Response:
        try:
            return await endpoint(request)
        except WebError as exc:
            log.info(
                "dicomweb request refused",
                path=request.url.path,
                status=exc.status,
                reason=exc.reason,
            )
            return problem(exc.status, exc.reason, exc.headers)

    answer.__name__ = getattr(endpoint, "__name__", "endpoint")
    answer.__doc__ = endpoint.__doc__
    return answer


def base_url(request: Request) -> str:
    """The DICOMweb service's root URL as the client reached it (for Retrieve URL and
    BulkDataURI values): the Host header's name and port; when it names no port (some clients
    send only the name, e.g. dicomweb-client 0.61 through requests), the port this server was
    reached on, unless it is the scheme's default."""
    url = request.base_url
    port = url.port
    server = request.scope.get("server")
    if port is None and server and server[1] not in (None, 80 if url.scheme == "http" else 443):
        url = url.replace(port=int(server[1]))
    return str(url).rstrip("/") + PREFIX


def check_uid(value: str, what: str) -> str:
    """A UID from the path (PS3.5 9.1: digits and dots, at most 64); else 400."""
    if not value or len(value) > 64 or not all(c.isdigit() or c == "." for c in value):
        raise WebError(400, f"{what} is not a UID: {value[:80]!r}")
    return value
