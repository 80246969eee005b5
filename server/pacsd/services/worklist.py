"""Modality Worklist - FIND (PS3.4 K.6.1): the scheduled steps a modality asks for.

The identifier's keys, Scheduled Procedure Step Sequence items included, are parsed with the
C-FIND matchers (dicom/matching: wild cards, date and time ranges combined (K.6.1.2.2),
sequence matching, person names as negotiated (K.5.1) or as the policy rule says) and matched
on the stored items (index/worklist), in the requester's timezone when timezone query
adjustment was negotiated; every requested key comes back, and the stream is paced,
cancellable and capped exactly like a C-FIND (services/query).
"""

from __future__ import annotations

from dataclasses import replace

from pacsd.dicom.find_response import response_json
from pacsd.dicom.matching import TIMEZONE_OFFSET_FROM_UTC, parse_identifier
from pacsd.dicom.qr_models import QUERY_RETRIEVE_LEVEL
from pacsd.dimse.messages import Request
from pacsd.handle import ClientHandle
from pacsd.index.database import IndexDatabase
from pacsd.index.worklist import find_items
from pacsd.services.guard import StreamReport
from pacsd.services.ports import OperationPort
from pacsd.services.query import (
    PENDING,
    PENDING_KEYS_UNSUPPORTED,
    charset_terms,
    decoded_identifier,
    match_options,
    matching_fields,
    query_zone,
    stream_matches,
)
from pacsd.settings import QuerySettings

MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"


class WorklistService:
    """Modality Worklist C-FIND SCP over the worklist items in the index."""

    def __init__(self, index: IndexDatabase, settings: QuerySettings) -> None:
        self.index = index
        self.settings = settings

    def on_c_find(
        self, request: Request, handle: ClientHandle, report: StreamReport, port: OperationPort
    ) -> None:
        """One pending response (0xFF00 or 0xFF01) per matching scheduled step."""
        identifier = decoded_identifier(request)
        options = match_options(self.settings, request, handle, worklist=True)
        zone = query_zone(request, identifier)
        # K.2.2.2: Timezone Offset From UTC is never a matching key of a worklist query.
        unmatched = [TIMEZONE_OFFSET_FROM_UTC]
        keys = parse_identifier(identifier, options, [QUERY_RETRIEVE_LEVEL], unmatched)
        refused = [key for key in keys if not key.supported]
        usable = [key for key in keys if key.supported]
        report.fields.update(model="Modality Worklist", matches=0)
        # Dates and times always combine here: logged only when something else applies.
        logged = replace(options, combined_date_time=False)
        if matching := matching_fields(logged, zone, relational=False):
            report.fields["matching"] = matching
        if refused:
            report.fields["unsupported_keys"] = [key.keyword for key in refused]
        pending = PENDING_KEYS_UNSUPPORTED if refused else PENDING
        found = find_items(self.index, usable, zone=zone)
        documents = (response_json(keys, item, {}) for item in found)
        charset = charset_terms(identifier)
        stream_matches(request, report, port, documents, pending, charset, self.settings)
