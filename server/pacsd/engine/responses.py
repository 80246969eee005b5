"""The command sets of the DIMSE responses and requests pacsd sends (PS3.7 9.3, 10.3).

Each response names its request's Message ID and SOP class; which other elements it carries
depends on its type (PS3.7 Tables 9.3-2 .. 10.3-12): the SOP instance for C-STORE and the
N-services, sub-operation counts for C-GET and C-MOVE, an Error Comment when there is one.
"""

from __future__ import annotations

from pacsd.dimse import commands as c
from pacsd.dimse.commands import Command, CommandValue, encode_command
from pacsd.services.ports import Outgoing, SubOperationCounts

_WITH_INSTANCE = frozenset(
    {
        c.C_STORE_RQ,
        c.N_EVENT_REPORT_RQ,
        c.N_GET_RQ,
        c.N_SET_RQ,
        c.N_ACTION_RQ,
        c.N_CREATE_RQ,
        c.N_DELETE_RQ,
    }
)
_WITH_COUNTS = frozenset({c.C_GET_RQ, c.C_MOVE_RQ})


def response(
    request: Command,
    status: int,
    *,
    comment: str = "",
    has_data_set: bool = False,
    counts: SubOperationCounts | None = None,
    error_id: int | None = None,
    attribute_tags: tuple[int, ...] = (),
    affected_sop_instance_uid: str = "",
) -> bytes:
    """The encoded command set answering `request` with `status`."""
    field = request.field
    elements: list[tuple[int, CommandValue]] = [
        (c.AFFECTED_SOP_CLASS_UID, request.sop_class_uid),
        (c.COMMAND_FIELD, field | c.RESPONSE_BIT),
        (c.MESSAGE_ID_BEING_RESPONDED_TO, request.message_id or 0),
        (c.COMMAND_DATA_SET_TYPE, c.DATA_SET_PRESENT if has_data_set else c.NO_DATA_SET),
        (c.STATUS, status),
    ]
    if field in _WITH_INSTANCE:
        instance = affected_sop_instance_uid or request.sop_instance_uid
        if instance:
            elements.append((c.AFFECTED_SOP_INSTANCE_UID, instance))
    if field == c.N_ACTION_RQ and request.number(c.ACTION_TYPE_ID) is not None:
        elements.append((c.ACTION_TYPE_ID, request.number(c.ACTION_TYPE_ID) or 0))
    if field == c.N_EVENT_REPORT_RQ and request.number(c.EVENT_TYPE_ID) is not None:
        elements.append((c.EVENT_TYPE_ID, request.number(c.EVENT_TYPE_ID) or 0))
    if counts is not None and field in _WITH_COUNTS:
        if 0xFF00 <= status <= 0xFF01 or status == 0xFE00:  # remaining: pending and cancel only
            elements.append((c.REMAINING_SUBOPERATIONS, counts.remaining))
        elements += [
            (c.COMPLETED_SUBOPERATIONS, counts.completed),
            (c.FAILED_SUBOPERATIONS, counts.failed),
            (c.WARNING_SUBOPERATIONS, counts.warning),
        ]
    if comment:
        elements.append((c.ERROR_COMMENT, comment))
    if error_id is not None:
        elements.append((c.ERROR_ID, error_id))
    if attribute_tags:
        elements.append((c.ATTRIBUTE_IDENTIFIER_LIST, attribute_tags))
    return encode_command(elements)


def store_request(
    outgoing: Outgoing, message_id: int, originator: tuple[str, int] | None = None
) -> bytes:
    """A C-STORE-RQ command set (PS3.7 9.3.1.1); `originator`: a C-MOVE's AE title and ID."""
    elements: list[tuple[int, CommandValue]] = [
        (c.AFFECTED_SOP_CLASS_UID, outgoing.sop_class_uid),
        (c.COMMAND_FIELD, c.C_STORE_RQ),
        (c.MESSAGE_ID, message_id),
        (c.PRIORITY, 0),
        (c.COMMAND_DATA_SET_TYPE, c.DATA_SET_PRESENT),
        (c.AFFECTED_SOP_INSTANCE_UID, outgoing.sop_instance_uid),
    ]
    if originator is not None:
        elements += [
            (c.MOVE_ORIGINATOR_AE_TITLE, originator[0]),
            (c.MOVE_ORIGINATOR_MESSAGE_ID, originator[1]),
        ]
    return encode_command(elements)


def event_report_request(
    sop_class_uid: str,
    sop_instance_uid: str,
    event_type: int,
    message_id: int,
    has_data_set: bool = True,
) -> bytes:
    """An N-EVENT-REPORT-RQ command set, with an Event Information data set unless
    `has_data_set` is False (PS3.7 10.3.1: Event Information is a user option)."""
    return encode_command(
        [
            (c.AFFECTED_SOP_CLASS_UID, sop_class_uid),
            (c.COMMAND_FIELD, c.N_EVENT_REPORT_RQ),
            (c.MESSAGE_ID, message_id),
            (c.COMMAND_DATA_SET_TYPE, c.DATA_SET_PRESENT if has_data_set else c.NO_DATA_SET),
            (c.AFFECTED_SOP_INSTANCE_UID, sop_instance_uid),
            (c.EVENT_TYPE_ID, event_type),
        ]
    )


def echo_request(message_id: int) -> bytes:
    """A C-ECHO-RQ command set (PS3.7 9.3.5.1)."""
    return encode_command(
        [
            (c.AFFECTED_SOP_CLASS_UID, "1.2.840.10008.1.1"),
            (c.COMMAND_FIELD, c.C_ECHO_RQ),
            (c.MESSAGE_ID, message_id),
            (c.COMMAND_DATA_SET_TYPE, c.NO_DATA_SET),
        ]
    )
