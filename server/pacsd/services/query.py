"""Query/Retrieve - FIND (PS3.4 C.4.1): identifier in, matches streamed as pending responses.

The identifier's level and hierarchy are checked (qr_models; the hierarchy only without
relational-queries, C.4.1.2.2), its keys parsed into matchers (dicom/matching) with the
options negotiated on the request's context (PS3.4 C.5.1.1) and the policy rule's person name
matching, the index streams the matches (index/query) and each becomes a response holding
every requested key (dicom/find_response), sent through the operation's port (which waits
while the peer reads slower than the matches come). A C-CANCEL is honoured between two
matches, whenever it arrived (0xFE00); more matches than `query.max_results` end the query
with 0xA700.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from pacsd.dicom.find_response import response_identifier, response_json
from pacsd.dicom.header_bytes import SPECIFIC_CHARACTER_SET
from pacsd.dicom.matching import (
    TIMEZONE_OFFSET_FROM_UTC,
    Key,
    MatchOptions,
    element_values,
    parse_identifier,
    utc_offset_minutes,
)
from pacsd.dicom.qr_models import (
    QUERY_RETRIEVE_LEVEL,
    Level,
    check_find_hierarchy,
    level_of,
    model_of,
)
from pacsd.dimse.messages import Request, stored_elements
from pacsd.errors import CannotUnderstand, OutOfResources
from pacsd.handle import ClientHandle
from pacsd.index.database import IndexDatabase
from pacsd.index.query import Match, find_batches, usable_keys
from pacsd.services.guard import StreamReport
from pacsd.services.ports import OperationPort
from pacsd.settings import QuerySettings

PENDING = 0xFF00
# PS3.4 C.4.1.1.4: pending, "one or more Optional Keys were not supported".
PENDING_KEYS_UNSUPPORTED = 0xFF01
CANCELLED = 0xFE00
RETRIEVE_AE_TITLE = int(Tag("RetrieveAETitle"))
INSTANCE_AVAILABILITY = int(Tag("InstanceAvailability"))


def decoded_identifier(request: Request) -> Dataset:
    """The request identifier, or Cannot Understand (0xC000) when it does not decode."""
    try:
        identifier = request.dataset()
        if _needs_decode(identifier):
            identifier.decode()  # apply its Specific Character Set now, not while matching
        elif any(isinstance(element, RawDataElement) for element in stored_elements(identifier)):
            for _element in identifier:  # each value converted now, not while matching
                pass
        _restore_text_vrs(identifier)
    except Exception as exc:
        raise CannotUnderstand(f"identifier cannot be decoded: {exc}") from None
    return identifier


# Values of these VRs are text; a list of them can outgrow a 16-bit length (PS3.5 6.2.2).
TEXT_VRS = frozenset(
    [
        "AE",
        "AS",
        "CS",
        "DA",
        "DS",
        "DT",
        "IS",
        "LO",
        "LT",
        "PN",
        "SH",
        "ST",
        "TM",
        "UC",
        "UI",
        "UR",
        "UT",
    ]
)
SINGLE_VALUED_VRS = frozenset({"LT", "ST", "UR", "UT"})


def _needs_decode(identifier: Dataset) -> bool:
    """Whether `Dataset.decode` would change a value: only with a Specific Character Set, or
    a sequence whose items may hold one. Without them every value was read in the default
    repertoire, and decoding again (about a third of a query's decoding) changes nothing."""
    return SPECIFIC_CHARACTER_SET in identifier or any(
        _may_be_sequence(element.tag, element.VR) for element in stored_elements(identifier)
    )


def _may_be_sequence(tag: int, vr: str | None) -> bool:
    """Whether an element, by the VR it was read with (None: implicit VR), may be a sequence."""
    if vr is not None:
        return vr in ("SQ", "UN")
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return True  # a private or unknown element: whatever it is, decode() looks


def _restore_text_vrs(identifier: Dataset) -> None:
    """Give UN elements of a known text attribute their VR back (PS3.5 6.2.2, 7.1.2).

    In Explicit VR, a value longer than 64 kB cannot have a 16-bit length VR such as UI, so an
    SCU encodes it as UN (pydicom does, e.g. a C-MOVE listing 2,000 Study Instance UIDs);
    pydicom keeps such an element as UN bytes, which would match nothing.
    """
    unknown = [element.tag for element in stored_elements(identifier) if element.VR == "UN"]
    if not unknown:
        return
    encodings = convert_encodings(identifier.get("SpecificCharacterSet") or "ISO_IR 6")
    for tag in unknown:
        element = identifier[tag]
        if element.VR != "UN" or not isinstance(element.value, bytes):
            continue
        try:
            vr = dictionary_VR(element.tag)
        except KeyError:
            continue
        if vr not in TEXT_VRS:
            continue
        text = decode_bytes(element.value, encodings, set()).rstrip("\0 ")
        values = [text] if vr in SINGLE_VALUED_VRS else text.split("\\")
        identifier[element.tag] = DataElement(element.tag, vr, values)


def match_options(
    settings: QuerySettings, request: Request, handle: ClientHandle, worklist: bool = False
) -> MatchOptions:
    """How this request's keys match: what its context negotiated (PS3.4 C.5.1.1, K.5.1),
    else the policy rule's `person_name_matching`, else `query.person_name_case_insensitive`.

    Dates and times combine when negotiated, and always in a worklist query (K.6.1.2.2).
    """
    negotiated = request.context.extended
    decision = handle.decision
    rule = decision.grant.person_name_matching if decision and decision.grant else None
    names = rule or ("case-insensitive" if settings.person_name_case_insensitive else "exact")
    return MatchOptions(
        person_name_case_insensitive=names == "case-insensitive",
        fuzzy_person_names=negotiated.fuzzy_person_names or names == "fuzzy",
        combined_date_time=worklist or negotiated.combined_date_time,
    )


def query_zone(request: Request, identifier: Dataset) -> int | None:
    """The requester's timezone (minutes east of UTC) when timezone query adjustment was
    negotiated and the identifier gives Timezone Offset From UTC (PS3.4 C.2.2.2.1.3)."""
    element = identifier.get(TIMEZONE_OFFSET_FROM_UTC)
    if not request.context.extended.timezone_adjustment or element is None:
        return None
    values = element_values(element)
    return utc_offset_minutes(values[0]) if len(values) == 1 else None


def matching_fields(options: MatchOptions, zone: int | None, relational: bool) -> list[str]:
    """The matching rules in force beyond the defaults, for the operation's log line."""
    fields = ["relational"] if relational else []
    fields += ["combined-date-time"] if options.combined_date_time else []
    if options.fuzzy_person_names or options.person_name_case_insensitive:
        fields.append("fuzzy-names" if options.fuzzy_person_names else "case-insensitive-names")
    if zone is not None:
        hours, minutes = divmod(abs(zone), 60)
        fields.append(f"timezone {'-' if zone < 0 else '+'}{hours:02d}{minutes:02d}")
    return fields


class QueryService:
    """C-FIND SCP over the index."""

    def __init__(self, index: IndexDatabase, settings: QuerySettings, ae_title: str) -> None:
        self.index = index
        self.settings = settings
        self.ae_title = ae_title

    def on_c_find(
        self, request: Request, handle: ClientHandle, report: StreamReport, port: OperationPort
    ) -> None:
        """One pending response (0xFF00, or 0xFF01) per match; the engine then sends the
        final one with the report's status."""
        identifier = decoded_identifier(request)
        model = model_of(request.sop_class_uid)
        level = level_of(identifier, model)
        negotiated = request.context.extended
        if not negotiated.relational:
            # C.4.1.2.1 hierarchical: one unique key per level above; relational-queries
            # (C.4.1.2.2, C.4.1.3.2) allow keys of any level above without them.
            check_find_hierarchy(identifier, model, level)
        options = match_options(self.settings, request, handle)
        zone = query_zone(request, identifier)
        # C.2.2.2: Timezone Offset From UTC is not matched when timezone adjustment applies.
        unmatched = [TIMEZONE_OFFSET_FROM_UTC] if negotiated.timezone_adjustment else []
        keys = parse_identifier(identifier, options, [QUERY_RETRIEVE_LEVEL], unmatched)
        usable, refused = usable_keys(keys, level)
        pending = PENDING_KEYS_UNSUPPORTED if refused else PENDING
        charset = charset_terms(identifier)
        report.fields.update(query_level=level.name, model=model.name, matches=0)
        if matching := matching_fields(options, zone, negotiated.relational):
            report.fields["matching"] = matching
        if refused:
            report.fields["unsupported_keys"] = [key.keyword for key in refused]
        batches = find_batches(self.index, level, usable, zone=zone)
        documents = self._documents(batches, keys, level, port)
        # Each response is handed over as it is made (no `hold`): sent together with the final
        # response, a small answer's messages reach a pynetdicom 3.0 requester at once, and its
        # reactor thread can then take the final response away from send_c_find, which waits
        # until its DIMSE timeout (seen in tests/interop/test_benchmarks.py; dicom-notes.md).
        stream_matches(request, report, port, documents, pending, charset, self.settings)

    def _documents(
        self,
        batches: Iterable[tuple[list[Match], bool]],
        keys: list[Key],
        level: Level,
        port: OperationPort,
    ) -> Iterator[dict[str, Any]]:
        """The response identifier of each match; the responses held so far are flushed
        before the next batch is read."""
        for matches, more in batches:
            for match in matches:
                yield self._filled(response_json(keys, match.header, match.computed), level)
            if more:
                port.flush()

    def _filled(self, document: dict[str, Any], level: Level) -> dict[str, Any]:
        """Query/Retrieve Level, and Retrieve AE Title / Instance Availability when asked."""
        document[f"{QUERY_RETRIEVE_LEVEL:08X}"] = {"vr": "CS", "Value": [level.name]}
        if f"{RETRIEVE_AE_TITLE:08X}" in document:
            document[f"{RETRIEVE_AE_TITLE:08X}"] = {"vr": "AE", "Value": [self.ae_title]}
        if f"{INSTANCE_AVAILABILITY:08X}" in document:
            document[f"{INSTANCE_AVAILABILITY:08X}"] = {"vr": "CS", "Value": ["ONLINE"]}
        return document


def stream_matches(
    request: Request,
    report: StreamReport,
    port: OperationPort,
    documents: Iterable[dict[str, Any]],
    pending: int,
    charset: list[str],
    settings: QuerySettings,
    hold: bool = False,
) -> None:
    """One pending response per matching document; C-CANCEL and the `max_results` cap end
    the stream (0xFE00, 0xA700). With `hold`, responses may be held (OperationPort.pending):
    `documents` then flushes the port before any slow step."""
    transfer_syntax = request.context.transfer_syntax
    for count, document in enumerate(documents, start=1):
        if request.cancelled:
            report.status = CANCELLED
            return
        if count > settings.max_results:
            raise OutOfResources(f"more than {settings.max_results} matches: narrow the query")
        report.fields["matches"] = count
        identifier = response_identifier(document, charset, transfer_syntax)
        port.pending(pending, identifier, hold=hold)
    if request.cancelled:
        report.status = CANCELLED


def charset_terms(identifier: Dataset) -> list[str]:
    value = identifier.get("SpecificCharacterSet", "")
    if not value:
        return []
    return [str(term) for term in value] if not isinstance(value, str) else [value]
