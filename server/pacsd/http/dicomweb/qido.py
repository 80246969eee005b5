"""QIDO-RS (PS3.18 10.6): studies, series and instances searched with C-FIND's engine.

The query parameters become C-FIND keys (search.py); the index's C-FIND statements
(index/query.find_batches: SQL narrowing, exact matching on the representative header,
batches of 200 rows) find the matches, and each answer is built as a C-FIND response's
identifier is (dicom/find_response.response_json), then completed with Retrieve URL and
Instance Availability. The whole search runs in the DICOMweb executor, JSON encoding included.

Answers (PS3.18 8.3.4, 10.6.3): 200 with a DICOM JSON array (application/dicom+json), empty
when nothing matches; 400 with the reason for a parameter that is not understood; Warning
headers (PS3.18 8.3.5.1, 10.6.3.3.1) for matching keys pacsd ignores at the level and for a
result cut at `query.max_results`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pacsd.dicom.find_response import response_json
from pacsd.dicom.matching import Key
from pacsd.dicom.qr_models import Level
from pacsd.http.access import guarded
from pacsd.http.dicomweb import auditing
from pacsd.http.dicomweb.common import (
    DICOM_JSON,
    PREFIX,
    Web,
    WebError,
    base_url,
    check_uid,
    handled,
    web_of,
)
from pacsd.http.dicomweb.search import (
    INSTANCE_AVAILABILITY,
    RETRIEVE_URL,
    Search,
    parse_search,
    return_keys,
)
from pacsd.index.query import find_batches, usable_keys

STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
_UID_TAGS = {"study": 0x0020000D, "series": 0x0020000E}
WARNING_PREFIX = "299 pacsd"


@dataclass(frozen=True)
class Answer:
    """A search's body and what its Warning header says."""

    body: bytes
    matches: int
    warnings: list[str]


def _uid(document: dict[str, Any], name: str) -> str:
    values = document.get(name, {}).get("Value") or [""]
    return str(values[0])


def _retrieve_url(base: str, level: Level, document: dict[str, Any]) -> str:
    url = f"{base}/studies/{_uid(document, STUDY_UID)}"
    if level >= Level.SERIES:
        url += f"/series/{_uid(document, SERIES_UID)}"
    if level >= Level.IMAGE:
        url += f"/instances/{_uid(document, SOP_UID)}"
    return url


def _completed(document: dict[str, Any], level: Level, base: str) -> dict[str, Any]:
    """Retrieve URL (PS3.18 10.6.3.3.1) and Instance Availability (ONLINE: every file is on
    disk) where the answer carries them."""
    if f"{RETRIEVE_URL:08X}" in document:
        document[f"{RETRIEVE_URL:08X}"] = {
            "vr": "UR",
            "Value": [_retrieve_url(base, level, document)],
        }
    if f"{INSTANCE_AVAILABILITY:08X}" in document:
        document[f"{INSTANCE_AVAILABILITY:08X}"] = {"vr": "CS", "Value": ["ONLINE"]}
    return document


def search_now(web: Web, search: Search, levels: list[Level], base: str) -> Answer:
    """Run `search` against the index and encode the answer (blocking: executor only)."""
    level = search.level
    keys = return_keys(search, levels)
    usable, refused = usable_keys(keys, level)
    ignored = [key for key in refused if key.matcher is not None or not key.supported]
    # Return keys of lower levels are answered from the representative instance; keys that
    # would match below the level are not matched (PS3.18 8.3.5.1: a Warning says so).
    queried: list[Key] = usable + [key for key in refused if key.matcher is None]
    maximum = web.settings.query.max_results
    cap = maximum if search.limit is None else min(search.limit, maximum)
    documents: list[dict[str, Any]] = []
    skipped, truncated = 0, False
    for matches, _more in find_batches(web.context.archive.index, level, queried):
        for match in matches:
            if skipped < search.offset:
                skipped += 1
                continue
            if len(documents) >= cap:
                truncated = True
                break
            document = response_json(keys, match.header, match.computed)
            documents.append(_completed(document, level, base))
        if truncated:
            break
    warnings = []
    if ignored:
        names = ", ".join(key.keyword for key in ignored)
        warnings.append(f"The following attributes were not used for matching: {names}")
    if truncated and (search.limit is None or search.limit > maximum):
        warnings.append(
            "The number of results exceeded the maximum supported by the server. "
            "Additional results can be requested."
        )
    return Answer(orjson.dumps(documents), len(documents), warnings)


def _levels(level: Level, scope: dict[int, str]) -> list[Level]:
    """The levels whose default attributes an answer carries: its own, and those above it
    that the path does not fix (PS3.18 Table 6.7.1-2a: /series carries the study's too)."""
    levels = [level]
    if level >= Level.SERIES and 0x0020000D not in scope:
        levels.insert(0, Level.STUDY)
    if level is Level.IMAGE and 0x0020000E not in scope:
        levels.insert(-1, Level.SERIES)
    return levels


def searcher(web: Web, level: Level) -> Any:
    """The endpoint of one QIDO-RS resource at `level`."""

    async def search_resource(request: Request) -> Response:
        scope = {
            _UID_TAGS[name]: check_uid(value, name) for name, value in request.path_params.items()
        }
        query = request.url.query
        try:
            parameters = parse_qsl(query, keep_blank_values=True, strict_parsing=False)
            case_insensitive = web.settings.query.person_name_case_insensitive
            search = parse_search(level, parameters, scope, case_insensitive)
        except ValueError as exc:
            raise WebError(400, str(exc)) from None
        base = base_url(request)
        levels = _levels(level, scope)
        answer = await web.query(lambda: search_now(web, search, levels, base))
        headers = {}
        if answer.warnings:
            headers["Warning"] = ", ".join(f'{WARNING_PREFIX} "{w}"' for w in answer.warnings)
        requester = request.state.requester
        description = f"{request.url.path} {answer.matches} matches"
        web.emit(
            lambda trail: auditing.query_message(
                trail.source, trail.ae_title, requester, query, description, 200
            )
        )
        return Response(answer.body, 200, headers, media_type=DICOM_JSON)

    search_resource.__name__ = f"qido_{level.name.lower()}"
    return search_resource


def routes(context: Any) -> list[Route]:
    """The QIDO-RS resources (PS3.18 10.6.1, Table 10.6.1-1)."""
    web = web_of(context)
    resources = [
        ("/studies", Level.STUDY),
        ("/series", Level.SERIES),
        ("/instances", Level.IMAGE),
        ("/studies/{study}/series", Level.SERIES),
        ("/studies/{study}/instances", Level.IMAGE),
        ("/studies/{study}/series/{series}/instances", Level.IMAGE),
    ]
    return [
        Route(
            PREFIX + path,
            guarded("read", handled(searcher(web, level))),
            methods=["GET"],
            name=f"qido{path}",
        )
        for path, level in resources
    ]
