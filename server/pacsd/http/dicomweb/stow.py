"""STOW-RS (PS3.18 10.5): instances uploaded as multipart/related; type="application/dicom".

`POST /dicom-web/studies` and `POST /dicom-web/studies/{study}`. The body is parsed as it
arrives (python-multipart's push parser); each part's bytes go to a spool file under the
storage root's .tmp folder (storage/incoming.py, written on the loop like a C-STORE's
fragments), never into memory. A part beyond `limits.max_dataset_size` stops being written and
fails with 0xA700. Each finished part is stored by `Archive.store` in a small executor, with the
file meta's Media Storage SOP Class and Instance UIDs in the role of a C-STORE request's (PS3.10
7.1), as `pacsd import` does: the C-STORE path's integrity checks, limits and duplicate policy.
At most `PENDING_STORES` parts of one request wait for their store; reading the body waits
beyond that (uvicorn then stops reading the socket: back-pressure, PS3.18 8.6).

The answer (PS3.18 10.5.3): 200 when every instance was stored, 202 when some failed (a
Warning header, and each failure in the Failed SOP Sequence with its Failure Reason, the DIMSE
status the C-STORE would have had), 409 when all failed, 415 for a body that is not
multipart/related of application/dicom, 400 for a malformed one (parts that ended before the
fault are stored). With a study in the path, an instance of another study fails with 0xA900
(PS3.18 10.5.1.1: "the instances shall be of that study"). The audit trail gets one DICOM
Instances Transferred message per study, action and outcome, naming the HTTP requester.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pacsd import audit
from pacsd.archive import Archive, IncomingInstance
from pacsd.audit import transfers
from pacsd.audit.messages import (
    INSTANCES_TRANSFERRED,
    ROLE_DESTINATION,
    ROLE_SOURCE,
    Participant,
    application_entity,
    audit_message,
    outcome_of_status,
    patient_object,
    study_object,
)
from pacsd.dicom.instance import inflate_limit
from pacsd.dicom.part10 import open_dataset, read_file_meta
from pacsd.errors import (
    CannotUnderstand,
    DatasetMismatch,
    DicomStatusError,
    OutOfResources,
    ProcessingFailure,
)
from pacsd.http.access import Requester, guarded
from pacsd.http.dicomweb.common import PREFIX, base_url, check_uid, handled
from pacsd.logs import get_logger
from pacsd.storage.incoming import IncomingFile

if TYPE_CHECKING:
    from pacsd.http.app import HttpContext

log = get_logger("pacsd.http")
MEDIA_DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
STOW_AE_TITLE = "STOW-RS"  # the Source AE Title of an uploaded instance's stored file meta
PENDING_STORES = 2  # finished parts of one request waiting for their store, at most
STORE_THREADS = 2
_META_ALLOWANCE = 64 * 1024  # preamble and file meta, on top of limits.max_dataset_size
_LAST_TAG_READ = 0x0020000E  # Series Instance UID: Patient ID and Study UID come before it
_LONG_VRS = frozenset(
    vr.encode()
    for vr in ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV")
)
_ACTIONS = {"stored": "C", "duplicate-kept-first": "R", "replaced": "U"}


@dataclass
class PartOutcome:
    """What became of one part: its instance's UIDs and, when it failed, the status why."""

    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    patient_id: str = ""
    failure: int | None = None  # the DIMSE status (PS3.18 10.5.3: Failure Reason)
    reason: str = ""
    outcome: str = ""  # StoreOutcome's value when stored


@dataclass
class Upload:
    """The parts of one request: the one being received and the stores under way."""

    spool_dir: Path
    part_limit: int
    current: IncomingFile | None = None
    header_name: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    part_type: str = ""
    finished: list[tuple[IncomingFile | None, str]] = field(default_factory=list)
    head: bytearray | None = None  # the current part's first bytes, until the header is known
    ended: bool = False

    def callbacks(self) -> dict[str, Callable[..., None]]:
        """python-multipart's callbacks, filling this upload."""
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda data, start, end: self.header_name.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self.header_value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._end,
            "on_end": self._body_end,
        }

    def _begin(self) -> None:
        self.part_type = ""

    def _header_end(self) -> None:
        if bytes(self.header_name).strip().lower() == b"content-type":
            media, _ = parse_options_header(bytes(self.header_value))
            self.part_type = media.decode("latin-1").lower()
        self.header_name.clear()
        self.header_value.clear()

    def _headers_finished(self) -> None:
        # PS3.18 8.6.1.2: a part without Content-Type has the type parameter's media type.
        if self.part_type in ("", MEDIA_DICOM):
            self.current = IncomingFile(self.spool_dir, b"", self.part_limit)
            self.head = bytearray()

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self.current is None:
            return
        if self.head is None:
            self.current.write(memoryview(data)[start:end])
            return
        self.head.extend(memoryview(data)[start:end])  # at most _META_ALLOWANCE and a chunk
        if _decided(self.head):
            self._write_head(self.current, self.head)

    def _write_head(self, current: IncomingFile, head: bytearray) -> None:
        """The part's first bytes, as a Part 10 header when they are a bare file meta group."""
        self.head = None
        current.write(memoryview(part10_head(bytes(head))))

    def _end(self) -> None:
        if self.current is not None:
            if self.head is not None:
                self._write_head(self.current, self.head)
            self.current.close()  # the store reads it by its path
        self.finished.append((self.current, self.part_type))
        self.current = None

    def _body_end(self) -> None:
        self.ended = True

    def discard(self) -> None:
        """Remove the spool of a part cut off by a malformed body."""
        if self.current is not None:
            self.current.discard()
            self.current = None


def routes(context: HttpContext) -> list[Route]:
    """The STOW-RS routes over `context.archive`."""
    archive = context.archive
    pool = ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="pacsd-http-stow")

    async def store_instances(request: Request) -> Response:
        """POST /dicom-web/studies[/{study}]: store the body's instances (PS3.18 10.5)."""
        study = request.path_params.get("study")
        if study is not None:
            check_uid(study, "study")
        return await _stow(request, archive, pool, study)

    endpoint = guarded("upload", handled(store_instances))
    return [
        Route(f"{PREFIX}/studies", endpoint, methods=["POST"]),
        Route(f"{PREFIX}/studies/{{study}}", endpoint, methods=["POST"]),
    ]


def _problem(status: int, text: str) -> Response:
    return Response(json.dumps({"error": text}).encode(), status, media_type="application/json")


async def _stow(
    request: Request, archive: Archive, pool: ThreadPoolExecutor, study: str | None
) -> Response:
    started = time.monotonic()
    media, options = parse_options_header(request.headers.get("content-type", ""))
    part_type = options.get(b"type", MEDIA_DICOM.encode()).decode("latin-1").lower()
    if media != b"multipart/related" or part_type != MEDIA_DICOM:
        # PS3.18 10.5.1: only the DICOM media type is stored; metadata and bulk data are not.
        return _problem(415, 'expected multipart/related; type="application/dicom"')
    boundary = options.get(b"boundary")
    if not boundary:
        return _problem(400, "multipart/related without a boundary")
    limit = int(archive.limits.max_dataset_size) + _META_ALLOWANCE
    upload = Upload(archive.files.tmp_dir, limit)
    parser = MultipartParser(boundary, upload.callbacks())  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    stores: list[asyncio.Future[PartOutcome]] = []
    malformed = ""
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            for spool, media_type in upload.finished:
                stores.append(
                    loop.run_in_executor(pool, _store_part, archive, spool, media_type, study)
                )
            upload.finished.clear()
            waiting = [store for store in stores if not store.done()]
            if len(waiting) > PENDING_STORES:
                await asyncio.wait(waiting[: len(waiting) - PENDING_STORES])
        if not upload.ended:
            malformed = "multipart body ends before its closing boundary"
    except MultipartParseError as exc:
        malformed = f"malformed multipart body: {exc}"
    finally:
        upload.discard()
    outcomes = list(await asyncio.gather(*stores))
    requester: Requester = request.state.requester
    pool.submit(_audit, requester, outcomes)  # the audit file may fsync: not on the loop
    stored = sum(1 for outcome in outcomes if outcome.failure is None)
    log.info(
        "stow-rs",
        instances=len(outcomes),
        failed=len(outcomes) - stored,
        malformed=bool(malformed),
        user=requester.username,
        address=requester.address,
        duration_ms=round((time.monotonic() - started) * 1000, 1),
    )
    if malformed:
        return _problem(400, malformed)
    if not outcomes:
        return _problem(400, "the request holds no instance")
    return _answer(outcomes, base_url(request), study)


def _store_part(
    archive: Archive, spool: IncomingFile | None, media_type: str, study: str | None
) -> PartOutcome:
    """Store one part (in the store pool); every failure becomes the part's Failure Reason."""
    outcome = PartOutcome()
    try:
        if spool is None:
            raise CannotUnderstand(f"part of type {media_type}, not {MEDIA_DICOM}")
        if spool.refused is not None:
            raise OutOfResources(spool.refused)  # too large, disk full: as for C-STORE
        _identify(archive, spool.path, outcome)
        if study is not None and outcome.study_instance_uid != study:
            raise DatasetMismatch("Study Instance UID differs from the request's study")
        incoming = IncomingInstance(
            spool.path, outcome.sop_class_uid, outcome.sop_instance_uid, STOW_AE_TITLE
        )
        result = archive.store(incoming)
        outcome.outcome = result.outcome.value
    except DicomStatusError as exc:
        outcome.failure, outcome.reason = exc.status, exc.comment
    except Exception as exc:  # one broken part must not fail its neighbours
        log.exception("stow-rs part failed")
        outcome.failure, outcome.reason = ProcessingFailure.status, type(exc).__name__
    finally:
        if spool is not None:
            spool.discard()
    return outcome


def _decided(head: bytearray) -> bool:
    """Whether the first bytes of a part say enough to write them: a Part 10 preamble, all of
    a bare file meta group, something else, or _META_ALLOWANCE bytes."""
    if len(head) >= _META_ALLOWANCE:
        return True
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    if head[:2] != b"\x02\x00":
        return len(head) >= 2
    return _meta_length(head) is not None


def _meta_length(head: bytes | bytearray) -> int | None:
    """Bytes of the group 0002 elements that begin `head` (explicit VR little endian, PS3.10
    7.1); None until the first element of another group is in."""
    offset = 0
    while offset + 8 <= len(head):
        if head[offset : offset + 2] != b"\x02\x00":
            return offset
        if bytes(head[offset + 4 : offset + 6]) in _LONG_VRS:
            if offset + 12 > len(head):
                return None
            offset += 12 + int.from_bytes(head[offset + 8 : offset + 12], "little")
        else:
            offset += 8 + int.from_bytes(head[offset + 6 : offset + 8], "little")
    return None


def part10_head(head: bytes) -> bytes:
    """`head` as the start of a Part 10 file. Some clients (dicomweb-client 0.61) send the
    file meta group without the preamble, the DICM prefix and the group length: those are
    added (PS3.10 7.1); anything else is left for the store to judge."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return head
    length = _meta_length(head)
    if length is None or length == 0:
        return head
    meta = head[:length]
    if meta[:4] == b"\x02\x00\x00\x00":  # an existing group length: computed anew
        meta = meta[8 + int.from_bytes(meta[6:8], "little") :]
    group_length = b"\x02\x00\x00\x00UL\x04\x00" + len(meta).to_bytes(4, "little")
    return b"\x00" * 128 + b"DICM" + group_length + meta + head[length:]


def _identify(archive: Archive, path: Path, outcome: PartOutcome) -> None:
    """The part's UIDs: SOP class and instance from its file meta (PS3.10 7.1), the study,
    series and patient from the data set's first elements (values over 1 KiB left unread)."""
    try:
        with path.open("rb") as fp:
            layout, meta = read_file_meta(fp)
            outcome.sop_class_uid = str(meta.get("MediaStorageSOPClassUID", "") or "")
            outcome.sop_instance_uid = str(meta.get("MediaStorageSOPInstanceUID", "") or "")
            limits = archive.limits
            limit = inflate_limit(layout, int(limits.max_inflated_size), limits.max_inflate_ratio)
            source = open_dataset(fp, layout, limit)
            source.stream.seek(source.start)
            dataset: Dataset = read_dataset(
                source.stream,
                is_implicit_VR=not source.explicit_vr,
                is_little_endian=source.little_endian,
                bytelength=source.end - source.start,
                stop_when=_after_series_uid,
                defer_size=1024,
            )
    except DicomStatusError:
        raise
    except Exception as exc:
        raise CannotUnderstand(f"data set cannot be read: {type(exc).__name__}") from None
    if not outcome.sop_class_uid or not outcome.sop_instance_uid:
        raise CannotUnderstand("file meta lacks the Media Storage SOP Class or Instance UID")
    outcome.study_instance_uid = _text(dataset, "StudyInstanceUID")
    outcome.series_instance_uid = _text(dataset, "SeriesInstanceUID")
    outcome.patient_id = _text(dataset, "PatientID")


def _after_series_uid(tag: BaseTag, _vr: str | None, _length: int) -> bool:
    return int(tag) > _LAST_TAG_READ


def _text(dataset: Dataset, keyword: str) -> str:
    try:
        return str(dataset.get(keyword, "") or "").strip()[:256]
    except Exception:  # a value that does not decode: the store will say why
        return ""


def _answer(outcomes: list[PartOutcome], root: str, study: str | None) -> Response:
    """The Store Instances Response Module (PS3.18 10.5.3) as DICOM JSON."""
    referenced, failed = [], []
    for outcome in outcomes:
        item: dict[str, Any] = {
            "00081150": _value("UI", outcome.sop_class_uid),
            "00081155": _value("UI", outcome.sop_instance_uid),
        }
        if outcome.failure is None:
            url = (
                f"{root}/studies/{outcome.study_instance_uid}/series/"
                f"{outcome.series_instance_uid}/instances/{outcome.sop_instance_uid}"
            )
            item["00081190"] = _value("UR", url)
            referenced.append(item)
        else:
            item["00081197"] = {"vr": "US", "Value": [outcome.failure]}
            failed.append(item)
    studies = {outcome.study_instance_uid for outcome in outcomes if outcome.failure is None}
    document: dict[str, Any] = {}
    if study is not None or len(studies) == 1:
        document["00081190"] = _value("UR", f"{root}/studies/{study or studies.pop()}")
    if failed:
        document["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        document["00081199"] = {"vr": "SQ", "Value": referenced}
    headers: dict[str, str] = {}
    if not referenced:
        status = 409  # PS3.18 10.5.3: none stored
    elif failed:
        status = 202  # some stored: the others in the Failed SOP Sequence
        reasons = Counter(f"0x{outcome.failure:04X}" for outcome in outcomes if outcome.failure)
        summary = ", ".join(f"{code} x{count}" for code, count in sorted(reasons.items()))
        headers["Warning"] = f'299 pacsd: "{len(failed)} of {len(outcomes)} failed: {summary}"'
    else:
        status = 200
    body = json.dumps(document).encode("utf-8")
    return Response(body, status, headers, media_type=DICOM_JSON)


def _value(vr: str, text: str) -> dict[str, Any]:
    return {"vr": vr, "Value": [text]} if text else {"vr": vr}


def _audit(requester: Requester, outcomes: list[PartOutcome]) -> None:
    """One DICOM Instances Transferred message per study, action and outcome (PS3.15 A.5.3.4),
    the HTTP requester as source; never raises."""
    trail = audit.current()
    if trail is None or not outcomes:
        return
    try:
        studies: dict[transfers.StudyKey, transfers.StudyTally] = {}
        for outcome in outcomes:
            status = outcome.failure or 0
            key = transfers.StudyKey(
                outcome.study_instance_uid,
                outcome.patient_id,
                _ACTIONS.get(outcome.outcome, "C"),
                outcome_of_status(status),
            )
            tally = studies.setdefault(key, transfers.StudyTally())
            tally.sop_classes[outcome.sop_class_uid or "unknown"] += 1
            if status:
                tally.statuses[status] += 1
        sender = Participant(
            requester.username or requester.address or "-",
            True,
            user_name=requester.username,
            address=requester.address or None,
            role=ROLE_SOURCE,
        )
        receiver = application_entity(trail.ae_title, False, role=ROLE_DESTINATION)
        for key, tally in studies.items():
            objects = [study_object(key.study_instance_uid or "unknown", tally.sop_classes)]
            if key.patient_id:
                objects.append(patient_object(key.patient_id))
            description = f"{sum(tally.sop_classes.values())} instances, STOW-RS"
            if tally.statuses:
                codes = ", ".join(f"0x{c:04X} x{n}" for c, n in sorted(tally.statuses.items()))
                description += f"; failed: {codes}"
            trail.emit(
                audit_message(
                    INSTANCES_TRANSFERRED,
                    key.action,
                    key.outcome,
                    trail.source,
                    [sender, receiver],
                    objects=objects,
                    description=description,
                )
            )
    except Exception as exc:  # an audit bug must never break the upload
        trail.errors.failed(exc)
