"""WADO-RS (PS3.18 10.4): studies, series and instances, and their metadata.

Instances go as multipart/related; type="application/dicom" (PS3.18 8.7.3.1), one part per
instance, in index order. Each goes in its stored transfer syntax when the Accept header allows
it (`transfer-syntax=*`, or the stored UID named), else converted without further loss
(dicom/transcode.py, the C-GET rules); none of the acceptable syntaxes reachable for some
stored syntax of the selection: 406 before anything is sent. A stored file is sent as it is,
read in 1 MiB blocks in the executor as the socket takes them (streams.py): a 1 GB instance or
a 2,000-instance study is never in memory; only a converted instance is.

Metadata (PS3.18 10.4.1.1.2) is a DICOM JSON array, one data set per instance, built from the
stored file's header; each bulk data element (pixel data, binary values over 1 KiB) is a
BulkDataURI to the instance's bulkdata resource (pixels.py). Unknown UIDs: 404.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import orjson
from sqlalchemy import bindparam, select
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from pacsd.dicom.header import header_json
from pacsd.dicom.qr_models import Level
from pacsd.dicom.transcode import TranscodeError, choose_transfer_syntax, transcoded_dataset
from pacsd.http.access import guarded
from pacsd.http.dicomweb.accept import (
    AS_STORED,
    DICOM,
    accepts_json,
    dicom_syntaxes,
    parse_accept,
)
from pacsd.http.dicomweb.common import (
    DICOM_JSON,
    PREFIX,
    Web,
    WebError,
    base_url,
    check_uid,
    handled,
    log,
)
from pacsd.http.dicomweb.layout import Layout
from pacsd.http.dicomweb.multipart import MultipartWriter
from pacsd.http.dicomweb.streams import (
    ROWS_PER_BATCH,
    Source,
    Transfer,
    file_chunks,
    instance_batches,
    instance_layout,
    local_file,
    one,
    read_small,
    source_of,
)
from pacsd.index.database import IndexDatabase
from pacsd.index.models import Patient, Study
from pacsd.index.retrieve import (
    Selection,
    StoredInstance,
    select_few_of_patient,
    select_instances,
)
from pacsd.storage.base import InstanceStore

T = TypeVar("T")
METADATA_BATCH = 16  # instances whose metadata one executor call makes
_PATH_LEVELS = {"study": Level.STUDY, "series": Level.SERIES, "instance": Level.IMAGE}


@dataclass(frozen=True)
class Target:
    """What a WADO-RS path names: the selected instances and their patient."""

    keys: Mapping[Level, Sequence[str]]
    selection: Selection
    patient_id: str
    study_uid: str

    @property
    def rows(self) -> tuple[StoredInstance, ...] | None:
        """Every selected row, when they were few (read with the selection)."""
        return self.selection.rows


# Built once: Core, no ORM session (a session's set-up was half of a small study's query).
_PATIENT_OF_STUDY = (
    select(Patient.patient_id)
    .join(Study, Study.patient_fk == Patient.pk)
    .where(Study.study_instance_uid == bindparam("study"))
)


def _patient_id(index: IndexDatabase, study_uid: str) -> str:
    with index.reading_connection() as connection:
        return str(connection.execute(_PATIENT_OF_STUDY, {"study": study_uid}).scalar() or "")


async def target_of(web: Web, request: Request) -> Target:
    """The instances the path's UIDs select (404 when none)."""
    target, _ = await target_and(web, request, None)
    return target


async def target_and(
    web: Web, request: Request, then: Callable[[Target], T] | None
) -> tuple[Target, T | None]:
    """The instances the path's UIDs select (404 when none) and, when `then` is given,
    `then(target)` in the same executor call (a small study's answer is one hop off the loop)."""
    keys: dict[Level, list[str]] = {}
    for name, value in request.path_params.items():
        if name in _PATH_LEVELS:
            keys[_PATH_LEVELS[name]] = [check_uid(value, name)]
    index = web.context.archive.index
    study_uid = keys[Level.STUDY][0]

    def look_up() -> tuple[Target, T | None]:
        few = select_few_of_patient(index, keys, ROWS_PER_BATCH)
        if few is not None:
            selection, patient_id = few
        else:
            selection = select_instances(index, keys, whole_up_to=0)
            patient_id = _patient_id(index, study_uid)
        if not selection.count:
            names = " / ".join(uids[0] for uids in keys.values())
            raise WebError(404, f"no such {list(_PATH_LEVELS)[len(keys) - 1]}: {names}")
        target = Target(keys, selection, patient_id, study_uid)
        return target, then(target) if then is not None else None

    return await web.query(look_up)


def transfer_of(web: Web, request: Request, target: Target, what: str) -> Transfer:
    """The audit tally of one retrieval."""
    return Transfer(
        web, request.state.requester, what, target.study_uid, target.patient_id,
        target.selection.count,
    )  # fmt: skip


def plan_syntaxes(accept: str | None, selection: Selection) -> dict[str, str]:
    """Stored syntax -> syntax to send, for every stored syntax of the selection (PS3.18
    8.7.3.5.2); WebError 406 when one has no acceptable form."""
    acceptable = dicom_syntaxes(parse_accept(accept))
    if acceptable is None:
        raise WebError(406, 'this resource is multipart/related; type="application/dicom"')
    named = [syntax for syntax in acceptable if syntax != AS_STORED]
    plan: dict[str, str] = {}
    for stored in sorted({syntax for _sop_class, syntax in selection.presentations}):
        if AS_STORED in acceptable or stored in named:
            plan[stored] = stored
            continue
        target = choose_transfer_syntax(stored, named)
        if target is None:
            wanted = ", ".join(named)
            raise WebError(406, f"instances stored as {stored} cannot be sent as {wanted}")
        plan[stored] = target
    return plan


def transcoded_part10(instance: StoredInstance, path: Source, target: str) -> bytes:
    """The instance converted to `target`, as a Part 10 file (in memory)."""
    with local_file(path) as local:
        dataset = transcoded_dataset(local, target)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _as_stored_paths(
    files: InstanceStore, batch: Sequence[StoredInstance], plan: Mapping[str, str]
) -> tuple[list[Source], list[Path]]:
    """The batch's sources, and the local files among them that go as stored."""
    paths = [source_of(files, instance.file_path) for instance in batch]
    as_stored = [
        path
        for path, instance in zip(paths, batch, strict=True)
        if plan[instance.transfer_syntax_uid] == instance.transfer_syntax_uid
        and isinstance(path, Path)  # an object is streamed by ranged GETs
    ]
    return paths, as_stored


@dataclass(frozen=True)
class Prepared:
    """What a retrieval knows once its rows are read: the syntaxes to send and, for a
    selection of few rows, each row's source and the small files among them, read (in the
    same executor call as the rows)."""

    plan: dict[str, str]
    sources: list[Source]
    small: dict[Path, bytes]


def prepare(files: InstanceStore, accept: str | None, target: Target) -> Prepared:
    """The plan of `target` (WebError 406) and, for few rows, their small files (blocking)."""
    plan = plan_syntaxes(accept, target.selection)
    if target.rows is None:
        return Prepared(plan, [], {})
    sources, as_stored = _as_stored_paths(files, target.rows, plan)
    return Prepared(plan, sources, read_small(as_stored))


def whole_answer(
    target: Target, prepared: Prepared, writer: MultipartWriter, transfer: Transfer
) -> bytes | None:
    """The whole multipart body when the selection is a few small local files sent as stored
    (a study of a few CT or MR slices, the common viewer request), read with the rows: the
    answer goes out with a Content-Length in one send, without the per-chunk machinery of a
    streamed response (measured: most of a small study's cost). Else None."""
    rows, small = target.rows, prepared.small
    if rows is None or len(small) != len(rows):
        return None
    pieces: list[bytes] = []
    for instance, source in zip(rows, prepared.sources, strict=True):
        syntax = instance.transfer_syntax_uid
        data = small.get(source) if isinstance(source, Path) else None
        if data is None or prepared.plan[syntax] != syntax:
            return None
        pieces += (writer.part_head(f"{DICOM}; transfer-syntax={syntax}"), data)
        transfer.sent[instance.sop_class_uid] += 1
    pieces.append(writer.close())
    transfer.complete = True
    return b"".join(pieces)


async def instances_body(
    web: Web,
    target: Target,
    plan: Mapping[str, str],
    writer: MultipartWriter,
    transfer: Transfer,
    prefetched: dict[Path, bytes] | None = None,
) -> AsyncIterator[bytes]:
    """The multipart body: each selected instance as stored or converted; `prefetched`: the
    first batch's small files, already read."""
    files = web.context.archive.files
    try:
        async for batch in instance_batches(web, target.selection):
            paths, as_stored = _as_stored_paths(files, batch, plan)
            if prefetched:
                small, prefetched = prefetched, None
            else:  # one call for small files
                small = await web.run(partial(read_small, as_stored))
            for instance, path in zip(batch, paths, strict=True):
                syntax = plan[instance.transfer_syntax_uid]
                if syntax == instance.transfer_syntax_uid:
                    data = small.pop(path, None) if isinstance(path, Path) else None
                    chunks = one(data) if data is not None else file_chunks(web, path)
                else:
                    try:
                        data = await web.run(partial(transcoded_part10, instance, path, syntax))
                    except (TranscodeError, OSError) as exc:
                        transfer.failed += 1
                        log.warning("dicomweb instance not sent", reason=str(exc))
                        continue
                    chunks = one(data)
                content_type = f"{DICOM}; transfer-syntax={syntax}"
                try:
                    async for chunk in writer.part(content_type, chunks):
                        yield chunk
                except FileNotFoundError:
                    transfer.failed += 1  # removed since selected: the part stays empty
                    continue
                transfer.sent[instance.sop_class_uid] += 1
        yield writer.close()
        transfer.complete = True
    finally:
        transfer.audit()


def routes_of(web: Web) -> list[Route]:
    """The WADO-RS instance and metadata resources."""

    async def retrieve(request: Request) -> Response:
        accept = request.headers.get("accept")
        files = web.context.archive.files
        target, prepared = await target_and(web, request, partial(prepare, files, accept))
        assert prepared is not None
        writer = MultipartWriter(DICOM)
        transfer = transfer_of(web, request, target, f"instances of {request.scope['path']}")
        whole = whole_answer(target, prepared, writer, transfer)
        if whole is not None:
            transfer.audit()  # written in the executor (Web.emit)
            return Response(whole, media_type=writer.content_type)
        body = instances_body(web, target, prepared.plan, writer, transfer, prepared.small)
        return StreamingResponse(body, media_type=writer.content_type)

    async def metadata(request: Request) -> Response:
        if not accepts_json(request.headers.get("accept")):
            raise WebError(406, "metadata is application/dicom+json")
        target = await target_of(web, request)
        transfer = transfer_of(web, request, target, f"metadata of {request.url.path}")
        body = metadata_body(web, target, base_url(request), transfer)
        return StreamingResponse(body, media_type=DICOM_JSON)

    paths = [
        "/studies/{study}",
        "/studies/{study}/series/{series}",
        "/studies/{study}/series/{series}/instances/{instance}",
    ]
    routes = []
    for path in paths:
        routes.append(Route(PREFIX + path, guarded("read", handled(retrieve)), methods=["GET"]))
        routes.append(
            Route(PREFIX + path + "/metadata", guarded("read", handled(metadata)), methods=["GET"])
        )
    return routes


def instance_url(base: str, study_uid: str, instance: StoredInstance, series_uid: str) -> str:
    """The WADO-RS URL of one instance."""
    return f"{base}/studies/{study_uid}/series/{series_uid}/instances/{instance.sop_instance_uid}"


def metadata_document(layout: Layout, url: str) -> dict[str, Any]:
    """One instance's metadata (PS3.18 F.2): the header, bulk data as BulkDataURI (F.2.6)."""
    document = header_json(layout.header)
    if "00080005" in document:  # the JSON is UTF-8 (PS3.18 F.2), whatever the file's set
        document["00080005"] = {"vr": "CS", "Value": ["ISO_IR 192"]}
    for tag, bulk in layout.bulk.items():
        document[f"{tag:08X}"] = {"vr": bulk.vr, "BulkDataURI": f"{url}/bulkdata/{tag:08X}"}
    if layout.pixel_tag is not None:
        vr = "OB" if layout.encapsulated else (layout.pixel.vr if layout.pixel else "OW")
        name = f"{layout.pixel_tag:08X}"
        document[name] = {"vr": vr, "BulkDataURI": f"{url}/bulkdata/{name}"}
    return dict(sorted(document.items()))


def metadata_batch(web: Web, batch: Sequence[StoredInstance], base: str, study: str) -> bytes:
    """The metadata of `batch`, comma-separated JSON objects (blocking: executor only)."""
    files = web.context.archive.files
    documents = []
    for instance in batch:
        try:  # an object: read by ranged GETs, no copy
            source = source_of(files, instance.file_path)
            layout = instance_layout(source, instance.transfer_syntax_uid)
        except (OSError, TranscodeError) as exc:
            log.warning("dicomweb metadata not read", reason=str(exc))
            continue
        series_uid = str(layout.header.get("SeriesInstanceUID", ""))
        url = instance_url(base, study, instance, series_uid)
        documents.append(orjson.dumps(metadata_document(layout, url)))
    return b",".join(documents)


async def metadata_body(
    web: Web, target: Target, base: str, transfer: Transfer
) -> AsyncIterator[bytes]:
    """The metadata array, a batch of instances per executor call."""
    try:
        yield b"["
        first = True
        async for rows in instance_batches(web, target.selection):
            for start in range(0, len(rows), METADATA_BATCH):
                batch = rows[start : start + METADATA_BATCH]
                data = await web.run(partial(metadata_batch, web, batch, base, target.study_uid))
                if data:
                    yield data if first else b"," + data
                    first = False
                for instance in batch:
                    transfer.sent[instance.sop_class_uid] += 1
        yield b"]"
        transfer.complete = True
    finally:
        transfer.audit()
