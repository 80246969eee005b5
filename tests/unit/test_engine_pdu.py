"""Upper Layer PDU codec (engine/pdu.py), cross-checked against pynetdicom's PDU classes."""

from __future__ import annotations

import struct
from dataclasses import replace
from typing import Any

import pytest
from pynetdicom.pdu import (
    A_ABORT_RQ,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_ASSOCIATE_RQ,
    A_RELEASE_RP,
    A_RELEASE_RQ,
)
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import PresentationContext

from pacsd.engine import pdu as P

VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
STORAGE_SERVICE = "1.2.840.10008.4.2"


def _context(context_id: int, abstract: str, syntaxes: list[str]) -> PresentationContext:
    context = PresentationContext()
    context.context_id = context_id
    context.abstract_syntax = abstract
    context.transfer_syntax = syntaxes
    return context


def _pynetdicom_user_items() -> list[Any]:
    """Every user information sub-item pynetdicom encodes, in pacsd's encoding order."""
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = 16382
    klass = ImplementationClassUIDNotification()
    klass.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.3.0.4"
    window = AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked = 5
    window.maximum_number_operations_performed = 3
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid = CT_IMAGE
    role.scu_role, role.scp_role = False, True
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = "PYNETDICOM_304"
    extended = SOPClassExtendedNegotiation()
    extended.sop_class_uid = STUDY_ROOT_FIND
    extended.service_class_application_information = b"\x01\x01\x00\x01"
    common = SOPClassCommonExtendedNegotiation()
    common.sop_class_uid = ENHANCED_SR
    common.service_class_uid = STORAGE_SERVICE
    common.related_general_sop_class_identification = [BASIC_TEXT_SR, COMPREHENSIVE_SR]
    identity = UserIdentityNegotiation()
    identity.user_identity_type = 2
    identity.positive_response_requested = True
    identity.primary_field = b"alice"
    identity.secondary_field = b"s3cret"
    return [maximum, klass, window, role, version, extended, common, identity]


def _pynetdicom_request() -> bytes:
    """An A-ASSOCIATE-RQ as pynetdicom encodes it, with every user information sub-item."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = P.APPLICATION_CONTEXT_NAME
    primitive.calling_ae_title = "MODALITY"
    primitive.called_ae_title = "ARCHIVE"
    primitive.presentation_context_definition_list = [
        _context(1, VERIFICATION, [IMPLICIT]),
        _context(3, CT_IMAGE, [EXPLICIT, IMPLICIT]),
    ]
    primitive.user_information = _pynetdicom_user_items()
    request = A_ASSOCIATE_RQ()
    request.from_primitive(primitive)
    return bytes(request.encode())


def _request_with(items: bytes) -> bytes:
    """An A-ASSOCIATE-RQ variable field: fixed fields, application context, then `items`."""
    fixed = struct.pack(">HH", 1, 0) + b"ARCHIVE".ljust(16) + b"CALLER".ljust(16) + bytes(32)
    return fixed + _item(0x10, P.APPLICATION_CONTEXT_NAME.encode()) + items


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _pc(context_id: int, *sub_items: bytes) -> bytes:
    return _item(0x20, bytes((context_id, 0, 0, 0)) + b"".join(sub_items))


_AS = _item(0x30, VERIFICATION.encode())
_TS = _item(0x40, IMPLICIT.encode())
_GOOD_PC = _pc(1, _AS, _TS)


def _user(sub_item: bytes) -> bytes:
    """A request whose user information item holds `sub_item`."""
    return _request_with(_GOOD_PC + _item(0x50, sub_item))


def test_decode_reads_every_field_of_a_pynetdicom_request() -> None:
    """Every A-ASSOCIATE-RQ field and user information sub-item pynetdicom sends is read
    (PS3.8 9.3.2, PS3.7 D.3.3.1 to D.3.3.7)."""
    encoded = _pynetdicom_request()
    assert encoded[0] == P.A_ASSOCIATE_RQ
    assert struct.unpack_from(">L", encoded, 2)[0] == len(encoded) - 6
    request = P.decode_associate_request(encoded[6:])
    assert request.called_ae_title == b"ARCHIVE".ljust(16)
    assert request.calling_ae_title == b"MODALITY".ljust(16)
    assert request.protocol_version == 1
    assert request.application_context == P.APPLICATION_CONTEXT_NAME
    assert request.contexts == (
        P.ProposedContext(1, VERIFICATION, (IMPLICIT,)),
        P.ProposedContext(3, CT_IMAGE, (EXPLICIT, IMPLICIT)),
    )
    assert request.user == P.UserInformation(
        maximum_length=16382,
        implementation_class_uid="1.2.826.0.1.3680043.9.3811.3.0.4",
        implementation_version_name="PYNETDICOM_304",
        asynchronous_operations=(5, 3),
        roles=(P.RoleSelection(CT_IMAGE, scu_role=False, scp_role=True),),
        extended=(P.ExtendedNegotiation(STUDY_ROOT_FIND, b"\x01\x01\x00\x01"),),
        common_extended=(
            P.CommonExtendedNegotiation(
                ENHANCED_SR, STORAGE_SERVICE, (BASIC_TEXT_SR, COMPREHENSIVE_SR)
            ),
        ),
        user_identity=P.UserIdentityRequest(2, True, b"alice", b"s3cret"),
    )
    # Encoded back, the request is byte for byte what pynetdicom sent (same sub-item order).
    assert P.encode_associate_request(request) == encoded


def test_encoded_request_reads_back_in_pynetdicom() -> None:
    """pacsd's A-ASSOCIATE-RQ decodes in pynetdicom to the same fields (PS3.8 9.3.2)."""
    request = P.AssociateRequest(
        b"ARCHIVE",
        b"QR_SCU",
        P.APPLICATION_CONTEXT_NAME,
        (
            P.ProposedContext(1, VERIFICATION, (IMPLICIT,)),
            P.ProposedContext(5, CT_IMAGE, (EXPLICIT, IMPLICIT)),
        ),
        P.UserInformation(
            maximum_length=0,
            implementation_class_uid="1.2.3",
            implementation_version_name="PACSD",
            asynchronous_operations=(2, 1),
            roles=(P.RoleSelection(CT_IMAGE, True, True),),
            user_identity=P.UserIdentityRequest(1, False, b"bob"),
        ),
    )
    decoded = A_ASSOCIATE_RQ()
    decoded.decode(P.encode_associate_request(request))
    primitive = decoded.to_primitive()
    assert (primitive.called_ae_title, primitive.calling_ae_title) == ("ARCHIVE", "QR_SCU")
    assert primitive.application_context_name == P.APPLICATION_CONTEXT_NAME
    contexts = primitive.presentation_context_definition_list
    assert [(cx.context_id, cx.abstract_syntax, cx.transfer_syntax) for cx in contexts] == [
        (1, VERIFICATION, [IMPLICIT]),
        (5, CT_IMAGE, [EXPLICIT, IMPLICIT]),
    ]
    items = {type(item).__name__: item for item in primitive.user_information}
    assert items["MaximumLengthNotification"].maximum_length_received == 0
    assert items["ImplementationClassUIDNotification"].implementation_class_uid == "1.2.3"
    assert items["ImplementationVersionNameNotification"].implementation_version_name == "PACSD"
    window = items["AsynchronousOperationsWindowNegotiation"]
    assert (
        window.maximum_number_operations_invoked,
        window.maximum_number_operations_performed,
    ) == (2, 1)
    role = items["SCP_SCU_RoleSelectionNegotiation"]
    assert (role.sop_class_uid, role.scu_role, role.scp_role) == (CT_IMAGE, True, True)
    identity = items["UserIdentityNegotiation"]
    assert (identity.user_identity_type, identity.positive_response_requested) == (1, False)
    assert (identity.primary_field, identity.secondary_field) == (b"bob", b"")


def test_encoded_accept_reads_back_in_pynetdicom() -> None:
    """pacsd's A-ASSOCIATE-AC decodes in pynetdicom: context results, max length, roles,
    window and the user identity server response (PS3.8 9.3.3, PS3.7 D.3.3.7.2)."""
    accept = P.AssociateAccept(
        b"ARCHIVE",
        b"MODALITY",
        P.APPLICATION_CONTEXT_NAME,
        (
            P.ContextResult(1, 0, IMPLICIT),
            P.ContextResult(3, 3, IMPLICIT),
            P.ContextResult(5, 4, EXPLICIT),
        ),
        P.UserInformation(
            maximum_length=16384,
            implementation_class_uid="1.2.3.4",
            implementation_version_name="PACSD_1",
            asynchronous_operations=(4, 1),
            roles=(P.RoleSelection(CT_IMAGE, False, True),),
            user_identity_response=b"token",
        ),
    )
    encoded = P.encode_associate_accept(accept)
    decoded = A_ASSOCIATE_AC()
    decoded.decode(encoded)
    primitive = decoded.to_primitive()
    assert (primitive.called_ae_title, primitive.calling_ae_title) == ("ARCHIVE", "MODALITY")
    assert primitive.application_context_name == P.APPLICATION_CONTEXT_NAME
    results = primitive.presentation_context_definition_results_list
    assert [(cx.context_id, cx.result, cx.transfer_syntax[0]) for cx in results] == [
        (1, 0, IMPLICIT),
        (3, 3, IMPLICIT),
        (5, 4, EXPLICIT),
    ]
    items = {type(item).__name__: item for item in primitive.user_information}
    assert items["MaximumLengthNotification"].maximum_length_received == 16384
    assert items["ImplementationClassUIDNotification"].implementation_class_uid == "1.2.3.4"
    assert items["ImplementationVersionNameNotification"].implementation_version_name == "PACSD_1"
    window = items["AsynchronousOperationsWindowNegotiation"]
    assert (
        window.maximum_number_operations_invoked,
        window.maximum_number_operations_performed,
    ) == (4, 1)
    role = items["SCP_SCU_RoleSelectionNegotiation"]
    assert (role.sop_class_uid, role.scu_role, role.scp_role) == (CT_IMAGE, False, True)
    assert items["UserIdentityNegotiation"].server_response == b"token"
    # And pacsd reads its own encoding back unchanged.
    assert P.decode_associate_accept(encoded[6:]) == replace(
        accept, called_ae_title=b"ARCHIVE".ljust(16), calling_ae_title=b"MODALITY".ljust(16)
    )


def test_decode_accept_encoded_by_pynetdicom() -> None:
    """An A-ASSOCIATE-AC from pynetdicom decodes (results and the server response)."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = P.APPLICATION_CONTEXT_NAME
    primitive.calling_ae_title, primitive.called_ae_title = "MODALITY", "ARCHIVE"
    primitive.result = 0
    accepted = _context(1, VERIFICATION, [EXPLICIT])
    accepted.result = 0
    rejected = _context(3, CT_IMAGE, [IMPLICIT])
    rejected.result = 3
    primitive.presentation_context_definition_results_list = [accepted, rejected]
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = 32768
    klass = ImplementationClassUIDNotification()
    klass.implementation_class_uid = "1.2.3.4"
    identity = UserIdentityNegotiation()
    identity.server_response = b"ok"
    primitive.user_information = [maximum, klass, identity]
    encoded = A_ASSOCIATE_AC()
    encoded.from_primitive(primitive)
    accept = P.decode_associate_accept(bytes(encoded.encode())[6:])
    assert accept.application_context == P.APPLICATION_CONTEXT_NAME
    assert accept.contexts == (P.ContextResult(1, 0, EXPLICIT), P.ContextResult(3, 3, IMPLICIT))
    assert accept.user.maximum_length == 32768
    assert accept.user.implementation_class_uid == "1.2.3.4"
    assert accept.user.user_identity_response == b"ok"


def test_reject_abort_and_release_match_pynetdicom() -> None:
    """A-ASSOCIATE-RJ, A-ABORT, A-RELEASE-RQ/RP encode as pynetdicom reads and writes them
    (PS3.8 9.3.4, 9.3.6 to 9.3.8)."""
    reject = A_ASSOCIATE_RJ()
    reject.decode(P.encode_associate_reject(P.AssociateReject(1, 3, 2)))
    assert (reject.result, reject.source, reject.reason_diagnostic) == (1, 3, 2)
    assert P.decode_associate_reject(reject.encode()[6:]) == P.AssociateReject(1, 3, 2)
    abort = A_ABORT_RQ()
    abort.decode(P.encode_abort(P.ABORT_SOURCE_PROVIDER, P.ABORT_REASON_INVALID_PARAMETER))
    assert (abort.source, abort.reason_diagnostic) == (2, 6)
    assert P.decode_abort(abort.encode()[6:]) == (2, 6)
    assert A_RELEASE_RQ().encode() == P.RELEASE_RQ
    assert A_RELEASE_RP().encode() == P.RELEASE_RP


def test_abort_reason_is_zero_unless_the_provider_aborts() -> None:
    """PS3.8 Table 9-26: the reason is significant only for source 2 (service provider)."""
    assert P.encode_abort(P.ABORT_SOURCE_USER, 6) == bytes((7, 0, 0, 0, 0, 4, 0, 0, 0, 0))
    assert P.encode_abort(P.ABORT_SOURCE_PROVIDER, 2)[-2:] == b"\x02\x02"


def test_pdv_and_p_data_headers() -> None:
    """PS3.8 9.3.5.1: the PDV item length counts the context ID and control header; a
    P-DATA-TF of one PDV is the PDV's value plus its 6 bytes of item header long."""
    assert P.pdv_header(10, 3, 0x03) == struct.pack(">LBB", 12, 3, 3)
    assert P.p_data_header(10) == struct.pack(">BBL", 4, 0, 16)


def test_ae_titles_are_padded_and_cut_to_16_bytes() -> None:
    """PS3.8 9.3.2: the AE title fields are 16 bytes, padded with spaces."""
    request = P.AssociateRequest(
        b"A" * 20,
        b"B",
        P.APPLICATION_CONTEXT_NAME,
        (P.ProposedContext(1, VERIFICATION, (IMPLICIT,)),),
    )
    body = P.encode_associate_request(request)[6:]
    assert body[4:20] == b"A" * 16
    assert body[20:36] == b"B".ljust(16)


def test_nul_or_space_padded_uids_are_stripped() -> None:
    """PS3.5 9.1: a UID may be padded with a NUL; some peers pad with a space."""
    body = _request_with(
        _pc(1, _item(0x30, VERIFICATION.encode() + b"\0"), _item(0x40, IMPLICIT.encode() + b" "))
    )
    request = P.decode_associate_request(body)
    assert request.contexts == (P.ProposedContext(1, VERIFICATION, (IMPLICIT,)),)


def test_unknown_user_information_sub_item_is_ignored() -> None:
    """PS3.7 D.3.3: an unknown user information sub-item is skipped, the rest still read."""
    body = _user(_item(0x7F, b"xyz") + _item(0x51, struct.pack(">L", 4096)))
    assert P.decode_associate_request(body).user.maximum_length == 4096


def test_missing_secondary_field_reads_as_empty() -> None:
    """A user identity sub-item that stops after its primary field has no secondary field."""
    identity = _item(0x58, bytes((1, 0)) + struct.pack(">H", 3) + b"bob")
    body = _user(identity)
    assert P.decode_associate_request(body).user.user_identity == P.UserIdentityRequest(
        1, False, b"bob", b""
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (bytes(67), "shorter than its fixed fields"),
        (_request_with(b"")[:68] + _GOOD_PC, "without an application context"),
        (_request_with(_pc(2, _AS, _TS)), "even"),
        (_request_with(_pc(1, _AS)), "lacks its abstract or transfer"),
        (_request_with(_pc(1, _TS)), "lacks its abstract or transfer"),
        (_request_with(_pc(1, _AS, _item(0x41, b"x"))), "sub-item 0x41"),
        (_request_with(_item(0x20, b"\x01\x00")), "shorter than 4 bytes"),
        (_request_with(_GOOD_PC + _item(0x60, b"")), "unexpected item type 0x60"),
        (_request_with(_GOOD_PC)[:-1], "runs past its end"),
        (_request_with(_GOOD_PC) + b"\x50\x00", "item header runs past"),
        (_request_with(_pc(1, _item(0x30, b"1.2.\xe9"), _TS)), "not ASCII"),
        (_user(_item(0x51, b"\0\0\x10")), "maximum length"),
        (_user(_item(0x51, struct.pack(">L", 6))), "below 256"),
        (_user(_item(0x53, b"\0\1")), "asynchronous operations"),
        (_user(_item(0x54, b"\0\x011")), "role fields"),
        (_user(_item(0x54, b"\0\x09123")), "runs past its sub-item"),
        (_user(_item(0x58, b"\x01")), "shorter than 2 bytes"),
        (_user(_item(0x58, b"\x01\x00\x00")), "no room for its length"),
        (_user(_item(0x57, b"\0\x011\0\x012\0\x03\0\x05x")), "runs past its list"),
        (_user(_item(0x57, b"\0\x011\0\x012\0\x01\0")), "truncated"),
    ],
    ids=["short", "no-app-context", "even-id", "no-ts", "no-abstract", "bad-sub-item", "short-pc",
         "unknown-item", "item-past-end", "header-past-end", "non-ascii-uid", "max-length-3",
         "max-length-6",
         "window-2", "role-no-fields", "role-uid-past", "identity-1", "identity-no-length",
         "related-past", "related-truncated"],
)  # fmt: skip
def test_malformed_request_raises_pdu_error(body: bytes, message: str) -> None:
    """A malformed A-ASSOCIATE-RQ raises PduError naming what is wrong (PS3.8 9.3.2, 9.3.8)."""
    with pytest.raises(P.PduError, match=message):
        P.decode_associate_request(body)


def test_equal_requests_decode_to_one_object_unless_they_carry_an_identity() -> None:
    """A request is decoded once per distinct body (negotiation keys its answers on that
    object); one with a user identity is decoded every time, so that no password is kept."""
    body = _user(_item(0x51, struct.pack(">L", 16384)))
    first = P.decode_associate_request(body)
    assert P.decode_associate_request(bytearray(body)) is first
    assert P.decode_associate_request(_user(_item(0x51, struct.pack(">L", 8192)))) is not first
    with_identity = _user(_item(0x58, bytes((1, 0)) + struct.pack(">H", 3) + b"bob"))
    once = P.decode_associate_request(with_identity)
    again = P.decode_associate_request(with_identity)
    assert once == again
    assert once is not again
    assert with_identity not in P._requests


def test_short_reject_abort_and_accept_raise() -> None:
    """A-ASSOCIATE-RJ and A-ABORT are 4 bytes (PS3.8 9.3.4, 9.3.8), an AC 68 at least."""
    with pytest.raises(P.PduError):
        P.decode_associate_reject(b"\0\1\1")
    with pytest.raises(P.PduError):
        P.decode_abort(b"\0\0\2")
    with pytest.raises(P.PduError):
        P.decode_associate_accept(bytes(10))
    with pytest.raises(P.PduError, match="unexpected item type 0x20"):
        P.decode_associate_accept(_request_with(_GOOD_PC))
