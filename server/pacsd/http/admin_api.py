"""The REST admin API under /api: browse, statistics, queues, associations, deletion.

- `GET /api/patients`, `/api/studies`, `/api/studies/{uid}/series`,
  `/api/series/{uid}/instances`: search with C-FIND matching keys as query parameters
  (`?PatientName=DOE*&StudyDate=20240101-20241231&limit=50&offset=100`; pacsd.admin.browse);
  `GET /api/studies/{uid}`: one study and its series. Permission `read`.
- `GET /api/stats` (counts, bytes, per modality and SOP class, free space), `/api/queues`
  (Storage Commitment and UPS event reports to deliver), `/api/associations` (the same
  document as /associations). Permission `admin`.
- `DELETE /api/studies/{uid}`, `/api/series/{uid}`, `/api/instances/{uid}`: index rows first,
  files after, audited as Study Deleted "deleted by <user> via http" (pacsd.admin.delete);
  `?dry_run=true` only says what would go. Permission `delete`, which the default http.rules
  give nobody.

The same functions serve `pacsd studies`, `pacsd stats` and `pacsd delete`. Database and file
work runs in this API's own bounded thread pool, never on the event loop. Errors are
`{"error": ...}`: 400 for a search key pacsd cannot use, 404 for a UID the index does not hold.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pacsd.admin import browse, delete, queues, stats
from pacsd.dicom.matching import MatchOptions
from pacsd.dicom.qr_models import Level
from pacsd.http.access import Requester, guarded
from pacsd.logs import get_logger

if TYPE_CHECKING:
    from pacsd.http.app import HttpContext

log = get_logger("pacsd.http")
POOL_THREADS = 3  # searches and deletions at once; more requests wait for a thread
T = TypeVar("T")
_SCOPES = {
    "studies": delete.Scope.STUDY,
    "series": delete.Scope.SERIES,
    "instances": delete.Scope.INSTANCE,
}


class BadRequest(Exception):
    """A parameter this API cannot use (400)."""


def routes(context: HttpContext) -> list[Route]:
    """The /api routes of `context`'s archive, each guarded by its permission."""
    api = AdminApi(context)
    return [
        Route("/api/patients", guarded("read", api.patients), methods=["GET"]),
        Route("/api/studies", guarded("read", api.studies), methods=["GET"]),
        Route("/api/studies/{uid}", guarded("read", api.study), methods=["GET"]),
        Route("/api/studies/{uid}/series", guarded("read", api.series), methods=["GET"]),
        Route("/api/series/{uid}/instances", guarded("read", api.instances), methods=["GET"]),
        Route("/api/stats", guarded("admin", api.statistics), methods=["GET"]),
        Route("/api/queues", guarded("admin", api.queues), methods=["GET"]),
        Route("/api/associations", guarded("admin", api.associations), methods=["GET"]),
        *(
            Route(f"/api/{name}/{{uid}}", guarded("delete", api.deleter(scope)), methods=["DELETE"])
            for name, scope in _SCOPES.items()
        ),
    ]


def _json(document: Any, status_code: int = 200) -> Response:
    body = json.dumps(document, indent=1).encode("utf-8")
    return Response(body, status_code, media_type="application/json")


def _error(problem: str, status_code: int) -> Response:
    return _json({"error": problem}, status_code)


class AdminApi:
    """The endpoints, over the archive of one HttpContext."""

    def __init__(self, context: HttpContext) -> None:
        self.context = context
        self.index = context.archive.index
        self.files = context.archive.files
        self.pool = ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="pacsd-http-admin")
        query = context.settings.query
        self.options = MatchOptions(person_name_case_insensitive=query.person_name_case_insensitive)

    async def _off_loop(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, call)

    async def _page(
        self, request: Request, level: Level, fixed: list[tuple[str, str]] | None = None
    ) -> dict[str, Any] | Response:
        """One page of matches of the query parameters' keys (and `fixed`), or a 400."""
        try:
            limit = _integer(request, "limit", browse.DEFAULT_LIMIT)
            offset = _integer(request, "offset", 0)
            pairs = [
                (name, value)
                for name, value in request.query_params.multi_items()
                if name not in ("limit", "offset")
            ]
            keys = browse.parse_keys([*pairs, *(fixed or [])], level, self.options)
        except (BadRequest, browse.SearchError) as exc:
            return _error(str(exc), 400)
        return await self._off_loop(
            functools.partial(browse.search, self.index, level, keys, limit, offset)
        )

    async def patients(self, request: Request) -> Response:
        """Patients matching the query parameters' keys."""
        page = await self._page(request, Level.PATIENT)
        return page if isinstance(page, Response) else _json(page)

    async def studies(self, request: Request) -> Response:
        """Studies matching the query parameters' keys."""
        page = await self._page(request, Level.STUDY)
        return page if isinstance(page, Response) else _json(page)

    async def study(self, request: Request) -> Response:
        """One study and its series; 404 when the index has none of that UID."""
        uid = request.path_params["uid"]
        document = await self._off_loop(functools.partial(browse.study, self.index, uid))
        if document is None:
            return _error(f"no study {uid}", 404)
        return _json(document)

    async def series(self, request: Request) -> Response:
        """The series of a study (matching the query parameters' keys); 404: no such study."""
        uid = request.path_params["uid"]
        page = await self._page(request, Level.SERIES, [("StudyInstanceUID", uid)])
        return await self._found(page, Level.STUDY, "StudyInstanceUID", uid)

    async def instances(self, request: Request) -> Response:
        """The instances of a series (matching the keys); 404: no such series."""
        uid = request.path_params["uid"]
        page = await self._page(request, Level.IMAGE, [("SeriesInstanceUID", uid)])
        return await self._found(page, Level.SERIES, "SeriesInstanceUID", uid)

    async def _found(
        self, page: dict[str, Any] | Response, parent: Level, keyword: str, uid: str
    ) -> Response:
        """`page`, or 404 when it is empty because the parent `uid` is not in the index."""
        if isinstance(page, Response):
            return page
        if not page["items"]:
            keys = browse.parse_keys([(keyword, uid)], parent)
            found = await self._off_loop(
                functools.partial(browse.search, self.index, parent, keys, 1, 0)
            )
            if not found["items"]:
                return _error(f"no {browse.level_name(parent)} {uid}", 404)
        return _json(page)

    async def statistics(self, _request: Request) -> Response:
        """Counts, bytes, per modality and SOP class, and the storage root's space."""
        return _json(await self._off_loop(lambda: stats.statistics(self.index, self.files)))

    async def queues(self, _request: Request) -> Response:
        """Storage Commitment and UPS event reports waiting for delivery."""
        return _json(await self._off_loop(lambda: queues.outgoing(self.index)))

    async def associations(self, _request: Request) -> Response:
        """The live associations (the /associations document), taken on the loop."""
        try:
            return _json(self.context.snapshot())
        except Exception:
            log.exception("status snapshot failed")
            return _error("snapshot failed; see the server log", 500)

    def deleter(self, scope: delete.Scope) -> Callable[[Request], Awaitable[Response]]:
        """The DELETE endpoint of `scope`."""

        async def delete_entity(request: Request) -> Response:
            """Delete one study, series or instance (or, with dry_run=true, say what would go)."""
            uid = request.path_params["uid"]
            dry_run = request.query_params.get("dry_run", "").lower() in ("1", "true", "yes")
            if dry_run:
                call = functools.partial(delete.plan, self.index, scope, [uid])
            else:
                user = _user(request.state.requester)
                call = functools.partial(
                    delete.delete_entities,
                    self.index,
                    self.files,
                    scope,
                    [uid],
                    f"deleted by {user} via http",
                    user,
                )
            deletion = await self._off_loop(call)
            if deletion.missing:
                return _error(f"no {scope} {uid}", 404)
            return _json(deletion.as_dict())

        delete_entity.__name__ = f"delete_{scope}"
        return delete_entity


def _user(requester: Requester) -> str:
    """Who asked, for the audit trail: the verified user, else the client's address."""
    return requester.username or f"anonymous@{requester.address}"


def _integer(request: Request, name: str, default: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number") from None
    if value < 0:
        raise BadRequest(f"{name} must not be negative")
    return value
