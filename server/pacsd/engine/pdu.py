"""DICOM Upper Layer PDUs as plain data, and their encodings (PS3.8 9.3, Annex D).

Pure functions: bytes in, dataclasses out, and back. The engine frames PDUs off the socket
(engine/framing.py) and hands the variable field of each one here; nothing here does I/O.
A malformed PDU raises `PduError` with what is wrong: the association then ends with an
A-ABORT (PS3.8 9.3.8, reason "invalid PDU parameter value").
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache

# PDU types (PS3.8 9.3.1).
A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07
PDU_NAMES = {
    A_ASSOCIATE_RQ: "A-ASSOCIATE-RQ",
    A_ASSOCIATE_AC: "A-ASSOCIATE-AC",
    A_ASSOCIATE_RJ: "A-ASSOCIATE-RJ",
    P_DATA_TF: "P-DATA-TF",
    A_RELEASE_RQ: "A-RELEASE-RQ",
    A_RELEASE_RP: "A-RELEASE-RP",
    A_ABORT: "A-ABORT",
}

# Item types (PS3.8 9.3.2, 9.3.3, Annex D).
APPLICATION_CONTEXT_ITEM = 0x10
PRESENTATION_CONTEXT_RQ_ITEM = 0x20
PRESENTATION_CONTEXT_AC_ITEM = 0x21
ABSTRACT_SYNTAX_ITEM = 0x30
TRANSFER_SYNTAX_ITEM = 0x40
USER_INFORMATION_ITEM = 0x50
MAXIMUM_LENGTH_ITEM = 0x51
IMPLEMENTATION_CLASS_UID_ITEM = 0x52
ASYNCHRONOUS_OPERATIONS_ITEM = 0x53
ROLE_SELECTION_ITEM = 0x54
IMPLEMENTATION_VERSION_NAME_ITEM = 0x55
SOP_CLASS_EXTENDED_ITEM = 0x56
SOP_CLASS_COMMON_EXTENDED_ITEM = 0x57
USER_IDENTITY_RQ_ITEM = 0x58
USER_IDENTITY_AC_ITEM = 0x59

# PS3.7 A.2.1: the one DICOM application context name.
APPLICATION_CONTEXT_NAME = "1.2.840.10008.3.1.1.1"
PROTOCOL_VERSION = 0x0001  # PS3.8 9.3.2: bit 0 set

# A-ABORT source and reason (PS3.8 9.3.8, Table 9-26).
ABORT_SOURCE_USER = 0
ABORT_SOURCE_PROVIDER = 2
ABORT_REASON_NOT_SPECIFIED = 0
ABORT_REASON_UNRECOGNIZED_PDU = 1
ABORT_REASON_UNEXPECTED_PDU = 2
ABORT_REASON_UNRECOGNIZED_PARAMETER = 4
ABORT_REASON_UNEXPECTED_PARAMETER = 5
ABORT_REASON_INVALID_PARAMETER = 6

MINIMUM_PDU_LENGTH = 256  # the smallest Maximum Length (PS3.8 D.1) a peer may announce
_HEADER = struct.Struct(">BBL")
_ITEM_HEADER = struct.Struct(">BBH")
_FIXED_FIELDS = 68  # version, reserved, called and calling AE titles, reserved (Table 9-11)


class PduError(Exception):
    """A PDU that does not follow PS3.8 9.3; the message says what is wrong."""


@dataclass(frozen=True)
class ProposedContext:
    """A presentation context item of an A-ASSOCIATE-RQ (PS3.8 9.3.2.2)."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True)
class ContextResult:
    """A presentation context item of an A-ASSOCIATE-AC (PS3.8 9.3.3.2).

    `result`: 0 acceptance, 1 user rejection, 2 no reason, 3 abstract syntax not supported,
    4 transfer syntaxes not supported. The transfer syntax is significant only when accepted.
    """

    context_id: int
    result: int
    transfer_syntax: str


@dataclass(frozen=True)
class RoleSelection:
    """SCP/SCU Role Selection sub-item (PS3.7 D.3.3.4): the roles of the association
    requestor, as proposed (in an RQ) or as accepted (in an AC)."""

    sop_class_uid: str
    scu_role: bool
    scp_role: bool


@dataclass(frozen=True)
class UserIdentityRequest:
    """User Identity sub-item of an A-ASSOCIATE-RQ (PS3.7 D.3.3.7.1)."""

    identity_type: int
    positive_response_requested: bool
    primary_field: bytes
    secondary_field: bytes = b""


@dataclass(frozen=True)
class ExtendedNegotiation:
    """SOP Class Extended Negotiation sub-item (PS3.7 D.3.3.5): application information."""

    sop_class_uid: str
    information: bytes


@dataclass(frozen=True)
class CommonExtendedNegotiation:
    """SOP Class Common Extended Negotiation sub-item (PS3.7 D.3.3.6)."""

    sop_class_uid: str
    service_class_uid: str
    related_general_sop_classes: tuple[str, ...] = ()


@dataclass(frozen=True)
class UserInformation:
    """The User Information item's sub-items (PS3.8 9.3.2.3, PS3.7 D.3.3)."""

    maximum_length: int | None = None  # PS3.8 D.1: 0 means unlimited
    implementation_class_uid: str = ""
    implementation_version_name: str = ""
    # (maximum operations invoked, maximum operations performed), PS3.7 D.3.3.3
    asynchronous_operations: tuple[int, int] | None = None
    roles: tuple[RoleSelection, ...] = ()
    extended: tuple[ExtendedNegotiation, ...] = ()
    common_extended: tuple[CommonExtendedNegotiation, ...] = ()
    user_identity: UserIdentityRequest | None = None
    user_identity_response: bytes | None = None  # in an A-ASSOCIATE-AC, PS3.7 D.3.3.7.2


@dataclass(frozen=True)
class AssociateRequest:
    """An A-ASSOCIATE-RQ (PS3.8 9.3.2). AE titles keep their bytes: they come from the wire."""

    called_ae_title: bytes
    calling_ae_title: bytes
    application_context: str
    contexts: tuple[ProposedContext, ...]
    user: UserInformation = field(default_factory=UserInformation)
    protocol_version: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class AssociateAccept:
    """An A-ASSOCIATE-AC (PS3.8 9.3.3)."""

    called_ae_title: bytes
    calling_ae_title: bytes
    application_context: str
    contexts: tuple[ContextResult, ...]
    user: UserInformation = field(default_factory=UserInformation)


@dataclass(frozen=True)
class AssociateReject:
    """An A-ASSOCIATE-RJ (PS3.8 9.3.4, Table 9-21)."""

    result: int
    source: int
    reason: int


# -- decoding -------------------------------------------------------------------------------


def _items(
    data: bytes | memoryview, start: int, end: int, what: str
) -> Iterator[tuple[int, int, int]]:
    """(item type, value start, value end) of each item in data[start:end]."""
    offset = start
    while offset < end:
        if offset + 4 > end:
            raise PduError(f"{what}: item header runs past its container")
        item_type, _, length = _ITEM_HEADER.unpack_from(data, offset)
        value_end = offset + 4 + length
        if value_end > end:
            raise PduError(f"{what}: item 0x{item_type:02X} of length {length} runs past its end")
        yield item_type, offset + 4, value_end
        offset = value_end


def _uid(data: bytes | memoryview, start: int, end: int, what: str) -> str:
    raw = bytes(data[start:end])
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise PduError(f"{what} is not ASCII") from None
    # PS3.5 9.1: a UID may be padded with a NUL; some implementations pad with a space.
    return text.rstrip("\0 ")


def _text(data: bytes | memoryview, start: int, end: int) -> str:
    """A short text value (implementation version name): ASCII, undecodable bytes escaped."""
    return bytes(data[start:end]).decode("ascii", "backslashreplace").rstrip("\0 ")


# Whole A-ASSOCIATE-RQs by their bytes: a modality or a viewer sends the same request on
# every association (getscu's is 17 KB: 121 contexts and their roles), and decoding it took
# 0.14 ms of the set-up, on the event loop. Bounded (least recently used out first), so a peer
# can only evict entries; a malformed request raises and is not kept; nor is a request with a
# user identity, so that no password or token outlives its association.
_REQUEST_CACHE_SIZE = 64
_REQUEST_CACHE_MAX_BYTES = 65536
_requests: OrderedDict[bytes, AssociateRequest] = OrderedDict()


def decode_associate_request(body: bytes | memoryview) -> AssociateRequest:
    """The A-ASSOCIATE-RQ whose variable field (after the 6-byte header) is `body`: equal
    bodies give the same (frozen) object, which the negotiation's own cache relies on."""
    if len(body) > _REQUEST_CACHE_MAX_BYTES:
        return _decode_associate_request(body)
    key = bytes(body)
    request = _requests.get(key)
    if request is not None:
        _requests.move_to_end(key)
        return request
    request = _decode_associate_request(key)
    if request.user.user_identity is None:
        _requests[key] = request
        if len(_requests) > _REQUEST_CACHE_SIZE:
            _requests.popitem(last=False)
    return request


def _decode_associate_request(body: bytes | memoryview) -> AssociateRequest:
    called, calling, version = _fixed_fields(body, "A-ASSOCIATE-RQ")
    application_context = ""
    contexts: list[ProposedContext] = []
    user = UserInformation()
    for item_type, start, end in _items(body, _FIXED_FIELDS, len(body), "A-ASSOCIATE-RQ"):
        if item_type == APPLICATION_CONTEXT_ITEM:
            application_context = _uid(body, start, end, "application context name")
        elif item_type == PRESENTATION_CONTEXT_RQ_ITEM:
            contexts.append(_proposed_context(body, start, end))
        elif item_type == USER_INFORMATION_ITEM:
            user = _user_information(body, start, end)
        else:
            raise PduError(f"A-ASSOCIATE-RQ: unexpected item type 0x{item_type:02X}")
    if not application_context:
        raise PduError("A-ASSOCIATE-RQ without an application context item")
    return AssociateRequest(called, calling, application_context, tuple(contexts), user, version)


def decode_associate_accept(body: bytes | memoryview) -> AssociateAccept:
    """The A-ASSOCIATE-AC whose variable field is `body`."""
    called, calling, _version = _fixed_fields(body, "A-ASSOCIATE-AC")
    application_context = ""
    results: list[ContextResult] = []
    user = UserInformation()
    for item_type, start, end in _items(body, _FIXED_FIELDS, len(body), "A-ASSOCIATE-AC"):
        if item_type == APPLICATION_CONTEXT_ITEM:
            application_context = _uid(body, start, end, "application context name")
        elif item_type == PRESENTATION_CONTEXT_AC_ITEM:
            results.append(_context_result(body, start, end))
        elif item_type == USER_INFORMATION_ITEM:
            user = _user_information(body, start, end)
        else:
            raise PduError(f"A-ASSOCIATE-AC: unexpected item type 0x{item_type:02X}")
    return AssociateAccept(called, calling, application_context, tuple(results), user)


def decode_associate_reject(body: bytes | memoryview) -> AssociateReject:
    """The A-ASSOCIATE-RJ whose variable field is `body`."""
    if len(body) < 4:
        raise PduError("A-ASSOCIATE-RJ shorter than 4 bytes")
    return AssociateReject(body[1], body[2], body[3])


def decode_abort(body: bytes | memoryview) -> tuple[int, int]:
    """(source, reason) of an A-ABORT's variable field."""
    if len(body) < 4:
        raise PduError("A-ABORT shorter than 4 bytes")
    return body[2], body[3]


def _fixed_fields(body: bytes | memoryview, what: str) -> tuple[bytes, bytes, int]:
    if len(body) < _FIXED_FIELDS:
        raise PduError(f"{what} shorter than its fixed fields ({len(body)} bytes)")
    (version,) = struct.unpack_from(">H", body, 0)
    return bytes(body[4:20]), bytes(body[20:36]), version


def _proposed_context(body: bytes | memoryview, start: int, end: int) -> ProposedContext:
    return _proposed_context_item(bytes(body[start:end]))


# Parsed items by their bytes: a modality proposes the same contexts and roles on every
# association, a hundred-odd of them for getscu or storescu with its defaults. Bounded, so a
# peer can only evict entries; a malformed item raises and is not kept.
_ITEM_CACHE_SIZE = 4096


@lru_cache(maxsize=_ITEM_CACHE_SIZE)
def _proposed_context_item(body: bytes) -> ProposedContext:
    start, end = 0, len(body)
    if end - start < 4:
        raise PduError("presentation context item shorter than 4 bytes")
    context_id = body[start]
    if not context_id % 2:
        raise PduError(f"presentation context ID {context_id} is even (PS3.8 9.3.2.2: odd)")
    abstract = ""
    syntaxes: list[str] = []
    for item_type, value_start, value_end in _items(body, start + 4, end, "presentation context"):
        if item_type == ABSTRACT_SYNTAX_ITEM:
            abstract = _uid(body, value_start, value_end, "abstract syntax")
        elif item_type == TRANSFER_SYNTAX_ITEM:
            syntaxes.append(_uid(body, value_start, value_end, "transfer syntax"))
        else:
            raise PduError(f"presentation context: unexpected sub-item 0x{item_type:02X}")
    if not abstract or not syntaxes:
        raise PduError(f"presentation context {context_id} lacks its abstract or transfer syntax")
    return ProposedContext(context_id, abstract, tuple(syntaxes))


def _context_result(body: bytes | memoryview, start: int, end: int) -> ContextResult:
    if end - start < 4:
        raise PduError("presentation context item shorter than 4 bytes")
    syntax = ""
    for item_type, value_start, value_end in _items(body, start + 4, end, "presentation context"):
        if item_type == TRANSFER_SYNTAX_ITEM:
            syntax = _uid(body, value_start, value_end, "transfer syntax")
    return ContextResult(body[start], body[start + 2], syntax)


def _user_information(body: bytes | memoryview, start: int, end: int) -> UserInformation:
    values: dict[str, object] = {}
    roles: list[RoleSelection] = []
    extended: list[ExtendedNegotiation] = []
    common: list[CommonExtendedNegotiation] = []
    for item_type, value_start, value_end in _items(body, start, end, "user information"):
        length = value_end - value_start
        if item_type == MAXIMUM_LENGTH_ITEM:
            if length != 4:
                raise PduError("maximum length sub-item is not 4 bytes")
            maximum = struct.unpack_from(">L", body, value_start)[0]
            if 0 < maximum < MINIMUM_PDU_LENGTH:
                # PS3.8 D.1 sets no floor, but below this not even a command set fits sensibly
                # (it would be sent a few bytes per PDU): an invalid parameter value.
                raise PduError(f"maximum length {maximum} is below {MINIMUM_PDU_LENGTH}")
            values["maximum_length"] = maximum
        elif item_type == IMPLEMENTATION_CLASS_UID_ITEM:
            values["implementation_class_uid"] = _uid(
                body, value_start, value_end, "implementation class UID"
            )
        elif item_type == IMPLEMENTATION_VERSION_NAME_ITEM:
            values["implementation_version_name"] = _text(body, value_start, value_end)
        elif item_type == ASYNCHRONOUS_OPERATIONS_ITEM:
            if length != 4:
                raise PduError("asynchronous operations window sub-item is not 4 bytes")
            values["asynchronous_operations"] = struct.unpack_from(">HH", body, value_start)
        elif item_type == ROLE_SELECTION_ITEM:
            roles.append(_role(body, value_start, value_end))
        elif item_type == SOP_CLASS_EXTENDED_ITEM:
            uid, offset = _prefixed_uid(body, value_start, value_end, "extended negotiation")
            extended.append(ExtendedNegotiation(uid, bytes(body[offset:value_end])))
        elif item_type == SOP_CLASS_COMMON_EXTENDED_ITEM:
            common.append(_common_extended(body, value_start, value_end))
        elif item_type == USER_IDENTITY_RQ_ITEM:
            values["user_identity"] = _user_identity(body, value_start, value_end)
        elif item_type == USER_IDENTITY_AC_ITEM:
            response, _ = _prefixed_bytes(body, value_start, value_end, "user identity response")
            values["user_identity_response"] = response
        # PS3.7 D.3.3: an unknown sub-item is ignored (an extension this side does not know).
    return UserInformation(
        roles=tuple(roles),
        extended=tuple(extended),
        common_extended=tuple(common),
        **values,  # type: ignore[arg-type]
    )


def _prefixed_bytes(body: bytes | memoryview, start: int, end: int, what: str) -> tuple[bytes, int]:
    """A value with a 2-byte length in front; returns it and the offset after it."""
    if start + 2 > end:
        raise PduError(f"{what}: no room for its length")
    (length,) = struct.unpack_from(">H", body, start)
    if start + 2 + length > end:
        raise PduError(f"{what}: length {length} runs past its sub-item")
    return bytes(body[start + 2 : start + 2 + length]), start + 2 + length


def _prefixed_uid(body: bytes | memoryview, start: int, end: int, what: str) -> tuple[str, int]:
    raw, offset = _prefixed_bytes(body, start, end, what)
    return _uid(raw, 0, len(raw), f"{what} UID"), offset


def _role(body: bytes | memoryview, start: int, end: int) -> RoleSelection:
    return _role_item(bytes(body[start:end]))


@lru_cache(maxsize=_ITEM_CACHE_SIZE)
def _role_item(body: bytes) -> RoleSelection:
    start, end = 0, len(body)
    uid, offset = _prefixed_uid(body, start, end, "role selection")
    if offset + 2 > end:
        raise PduError("role selection sub-item lacks its role fields")
    return RoleSelection(uid, bool(body[offset]), bool(body[offset + 1]))


def _common_extended(body: bytes | memoryview, start: int, end: int) -> CommonExtendedNegotiation:
    sop_class, offset = _prefixed_uid(body, start, end, "common extended negotiation")
    service_class, offset = _prefixed_uid(body, offset, end, "common extended negotiation")
    related_raw, _ = _prefixed_bytes(body, offset, end, "related general SOP classes")
    related = [
        _uid(related_raw, item_start, item_end, "related general SOP class")
        for item_start, item_end in _length_prefixed(related_raw)
    ]
    return CommonExtendedNegotiation(sop_class, service_class, tuple(related))


def _length_prefixed(raw: bytes) -> Iterator[tuple[int, int]]:
    offset = 0
    while offset < len(raw):
        if offset + 2 > len(raw):
            raise PduError("related general SOP class list is truncated")
        (length,) = struct.unpack_from(">H", raw, offset)
        if offset + 2 + length > len(raw):
            raise PduError("related general SOP class runs past its list")
        yield offset + 2, offset + 2 + length
        offset += 2 + length


def _user_identity(body: bytes | memoryview, start: int, end: int) -> UserIdentityRequest:
    if start + 2 > end:
        raise PduError("user identity sub-item shorter than 2 bytes")
    identity_type, positive = body[start], body[start + 1]
    primary, offset = _prefixed_bytes(body, start + 2, end, "user identity primary field")
    secondary = b""
    if offset < end:
        secondary, _ = _prefixed_bytes(body, offset, end, "user identity secondary field")
    return UserIdentityRequest(identity_type, bool(positive), primary, secondary)


# -- encoding -------------------------------------------------------------------------------


def pdu(pdu_type: int, body: bytes) -> bytes:
    """A whole PDU: header (type, reserved, 4-byte length) and variable field."""
    return _HEADER.pack(pdu_type, 0, len(body)) + body


def _item(item_type: int, value: bytes) -> bytes:
    return _ITEM_HEADER.pack(item_type, 0, len(value)) + value


def _ascii(text: str) -> bytes:
    return text.encode("ascii")


def _ae_field(title: bytes) -> bytes:
    return title[:16].ljust(16, b" ")


def _prefixed(value: bytes) -> bytes:
    return struct.pack(">H", len(value)) + value


def encode_associate_request(request: AssociateRequest) -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2)."""
    items = [_item(APPLICATION_CONTEXT_ITEM, _ascii(request.application_context))]
    for context in request.contexts:
        value = bytes((context.context_id, 0, 0, 0))
        value += _item(ABSTRACT_SYNTAX_ITEM, _ascii(context.abstract_syntax))
        value += b"".join(
            _item(TRANSFER_SYNTAX_ITEM, _ascii(ts)) for ts in context.transfer_syntaxes
        )
        items.append(_item(PRESENTATION_CONTEXT_RQ_ITEM, value))
    items.append(_encode_user_information(request.user))
    return pdu(
        A_ASSOCIATE_RQ, _fixed(request.called_ae_title, request.calling_ae_title) + b"".join(items)
    )


def encode_associate_accept(accept: AssociateAccept) -> bytes:
    """An A-ASSOCIATE-AC PDU (PS3.8 9.3.3); its AE title fields repeat the request's."""
    items = [_item(APPLICATION_CONTEXT_ITEM, _ascii(accept.application_context))]
    for result in accept.contexts:
        value = bytes((result.context_id, 0, result.result, 0))
        value += _item(TRANSFER_SYNTAX_ITEM, _ascii(result.transfer_syntax))
        items.append(_item(PRESENTATION_CONTEXT_AC_ITEM, value))
    items.append(_encode_user_information(accept.user))
    return pdu(
        A_ASSOCIATE_AC, _fixed(accept.called_ae_title, accept.calling_ae_title) + b"".join(items)
    )


def _fixed(called: bytes, calling: bytes) -> bytes:
    return (
        struct.pack(">HH", PROTOCOL_VERSION, 0) + _ae_field(called) + _ae_field(calling) + bytes(32)
    )


def _encode_user_information(user: UserInformation) -> bytes:
    parts: list[bytes] = []
    if user.maximum_length is not None:
        parts.append(_item(MAXIMUM_LENGTH_ITEM, struct.pack(">L", user.maximum_length)))
    if user.implementation_class_uid:
        parts.append(_item(IMPLEMENTATION_CLASS_UID_ITEM, _ascii(user.implementation_class_uid)))
    if user.asynchronous_operations is not None:
        parts.append(
            _item(ASYNCHRONOUS_OPERATIONS_ITEM, struct.pack(">HH", *user.asynchronous_operations))
        )
    for role in user.roles:
        value = _prefixed(_ascii(role.sop_class_uid)) + bytes((role.scu_role, role.scp_role))
        parts.append(_item(ROLE_SELECTION_ITEM, value))
    if user.implementation_version_name:
        parts.append(
            _item(IMPLEMENTATION_VERSION_NAME_ITEM, _ascii(user.implementation_version_name))
        )
    for extended in user.extended:
        parts.append(
            _item(
                SOP_CLASS_EXTENDED_ITEM,
                _prefixed(_ascii(extended.sop_class_uid)) + extended.information,
            )
        )
    for common in user.common_extended:
        related = b"".join(_prefixed(_ascii(uid)) for uid in common.related_general_sop_classes)
        value = _prefixed(_ascii(common.sop_class_uid)) + _prefixed(
            _ascii(common.service_class_uid)
        )
        parts.append(_item(SOP_CLASS_COMMON_EXTENDED_ITEM, value + _prefixed(related)))
    if user.user_identity is not None:
        identity = user.user_identity
        value = bytes((identity.identity_type, identity.positive_response_requested))
        value += _prefixed(identity.primary_field) + _prefixed(identity.secondary_field)
        parts.append(_item(USER_IDENTITY_RQ_ITEM, value))
    if user.user_identity_response is not None:
        parts.append(_item(USER_IDENTITY_AC_ITEM, _prefixed(user.user_identity_response)))
    return _item(USER_INFORMATION_ITEM, b"".join(parts))


def encode_associate_reject(reject: AssociateReject) -> bytes:
    """An A-ASSOCIATE-RJ PDU (PS3.8 9.3.4)."""
    return pdu(A_ASSOCIATE_RJ, bytes((0, reject.result, reject.source, reject.reason)))


RELEASE_RQ = pdu(A_RELEASE_RQ, bytes(4))  # PS3.8 9.3.6
RELEASE_RP = pdu(A_RELEASE_RP, bytes(4))  # PS3.8 9.3.7


def encode_abort(source: int, reason: int) -> bytes:
    """An A-ABORT PDU (PS3.8 9.3.8); the reason is significant only for source 2."""
    return pdu(A_ABORT, bytes((0, 0, source, reason if source == ABORT_SOURCE_PROVIDER else 0)))


def pdv_header(length: int, context_id: int, control: int) -> bytes:
    """A PDV item's header (PS3.8 9.3.5.1, E.2): item length, context ID, control byte."""
    return struct.pack(">LBB", length + 2, context_id, control)


def p_data_header(pdv_value_length: int) -> bytes:
    """The header of a P-DATA-TF PDU holding one PDV of `pdv_value_length` bytes of data."""
    return _HEADER.pack(P_DATA_TF, 0, pdv_value_length + 6)
