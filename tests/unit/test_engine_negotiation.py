"""Association negotiation (engine/negotiation.py): contexts, roles, window, identity, decide."""

from __future__ import annotations

from typing import Any

import pytest
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from pacsd.dicom.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacsd.engine import negotiation
from pacsd.engine.negotiation import Accepted, Negotiator
from pacsd.engine.pdu import (
    APPLICATION_CONTEXT_NAME,
    AssociateRequest,
    CommonExtendedNegotiation,
    ContextResult,
    ExtendedNegotiation,
    ProposedContext,
    RoleSelection,
    UserInformation,
    encode_associate_accept,
)
from pacsd.handle import ClientHandle
from pacsd.policy.engine import REJECT_TRANSIENT_NO_REASON, REJECTIONS, Grant, Policy
from pacsd.policy.rules import PolicyRule, RejectReason

VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
MPPS_NOTIFICATION = "1.2.840.10008.3.1.2.3.5"  # in the "mpps" group, but not served
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
# Under the DICOM root but no SOP class: never taken for a private storage SOP class.
UNKNOWN_DICOM_UID = "1.2.840.10008.9.9.9"
PRIVATE_CLASS = "1.3.12.2.1107.5.9.1"  # a vendor's (Siemens CSA Non-Image Storage)
ROLES = [None, (True, True), (True, False), (False, True), (False, False)]


def _policy(**fields: Any) -> Policy:
    """A policy of one accepting rule for verification, storage and MPPS."""
    fields.setdefault("sop_classes", ["verification", "storage", "mpps"])
    return Policy.compile([PolicyRule.model_validate({"name": "r", **fields})])


def _grant(**fields: Any) -> Grant:
    grant = _policy(**fields).rules[0].grant
    assert grant is not None
    return grant


def _request(*contexts: ProposedContext, **user: Any) -> AssociateRequest:
    return AssociateRequest(
        b"ARCHIVE         ",
        b" MODALITY       ",
        APPLICATION_CONTEXT_NAME,
        contexts,
        UserInformation(**user),
    )


def _accept(request: AssociateRequest, grant: Grant, max_pdu: int = 16384) -> Accepted:
    negotiator = Negotiator(lambda: _policy(), max_pdu)
    return negotiator.accept(request, ClientHandle.connect("127.0.0.1", 104), grant)


def _roles_item(proposed: tuple[bool, bool] | None) -> dict[str, Any]:
    if proposed is None:
        return {}
    return {"roles": (RoleSelection(CT_IMAGE, *proposed),)}


@pytest.mark.parametrize("peer_scp", [True, False], ids=["peer-scp-granted", "not-granted"])
@pytest.mark.parametrize("proposed", ROLES, ids=["none", "TT", "TF", "FT", "FF"])
def test_roles_agree_with_pynetdicom(proposed: tuple[bool, bool] | None, peer_scp: bool) -> None:
    """PS3.7 D.3.3.4: for each proposed SCU/SCP role pair, pacsd gives pynetdicom's acceptor
    outcome (contexts with scu_role=True, scp_role=peer_scp): the same result, the same
    roles for itself and the same role selection reply item (none without a proposal)."""
    grant = _grant(peer_scp_role=["storage"] if peer_scp else [])
    accepted = _accept(
        _request(ProposedContext(1, CT_IMAGE, (IMPLICIT,)), **_roles_item(proposed)), grant
    )

    requestor = PresentationContext()
    requestor.context_id, requestor.abstract_syntax = 1, CT_IMAGE
    requestor.transfer_syntax = [IMPLICIT]
    acceptor = PresentationContext()
    acceptor.abstract_syntax, acceptor.transfer_syntax = CT_IMAGE, [EXPLICIT, IMPLICIT]
    acceptor.scu_role, acceptor.scp_role = True, peer_scp
    roles = None if proposed is None else {CT_IMAGE: proposed}
    [reference], reference_roles = negotiate_as_acceptor([requestor], [acceptor], roles)

    [result] = accepted.accept.contexts
    assert result.result == reference.result
    context = accepted.contexts.get(1)
    pacsd_roles = (context.pacsd_scu, context.pacsd_scp) if context else (False, False)
    assert pacsd_roles == (bool(reference.as_scu), bool(reference.as_scp))
    assert [(r.sop_class_uid, r.scu_role, r.scp_role) for r in accepted.accept.user.roles] == [
        (r.sop_class_uid, r.scu_role, r.scp_role) for r in reference_roles
    ]


@pytest.mark.parametrize(
    ("proposed", "peer_may_be_scp", "expected"),
    [
        (None, True, (False, True, None)),
        (None, False, (False, True, None)),
        ((True, True), True, (True, True, (True, True))),
        ((True, True), False, (False, True, (True, False))),
        ((True, False), True, (False, True, (True, False))),
        ((True, False), False, (False, True, (True, False))),
        ((False, True), True, (True, False, (False, True))),
        ((False, True), False, None),
        ((False, False), True, None),
        ((False, False), False, None),
    ],
)  # fmt: skip
def test_role_table(
    proposed: tuple[bool, bool] | None,
    peer_may_be_scp: bool,
    expected: tuple[bool, bool, tuple[bool, bool] | None] | None,
) -> None:
    """_roles: without an item the requestor is SCU and pacsd SCP; the reply never accepts a
    role the requestor did not propose; a context where neither side could act is rejected
    (PS3.7 D.3.3.4)."""
    item = None if proposed is None else RoleSelection(CT_IMAGE, *proposed)
    outcome = negotiation._roles(item, peer_may_be_scp)
    if expected is None:
        assert outcome is None
        return
    assert outcome is not None
    scu, scp, reply = outcome
    assert (scu, scp) == expected[:2]
    if expected[2] is None:
        assert reply is None
    else:
        assert reply == RoleSelection(CT_IMAGE, *expected[2])


def test_context_results_and_transfer_syntax_choice() -> None:
    """PS3.8 9.3.3.2: one result per proposed context, by context ID: the rule's preferred
    transfer syntax among those proposed; 3 for an abstract syntax not granted or not
    served, 4 when no proposed transfer syntax is granted; a repeated ID counts once."""
    request = _request(
        ProposedContext(7, CT_IMAGE, (JPEG_BASELINE,)),
        ProposedContext(1, VERIFICATION, (IMPLICIT, EXPLICIT)),
        ProposedContext(3, UNKNOWN_DICOM_UID, (IMPLICIT,)),
        ProposedContext(5, MPPS_NOTIFICATION, (IMPLICIT,)),
        ProposedContext(1, CT_IMAGE, (IMPLICIT,)),  # repeats ID 1: ignored
        maximum_length=32768,
    )
    grant = _grant(transfer_syntaxes=["uncompressed"])
    accepted = _accept(request, grant)
    assert accepted.accept.contexts == (
        ContextResult(1, 0, EXPLICIT),  # the rule prefers Explicit VR LE
        ContextResult(3, 3, IMPLICIT),
        ContextResult(5, 3, IMPLICIT),
        ContextResult(7, 4, JPEG_BASELINE),
    )
    assert list(accepted.contexts) == [1]
    assert accepted.contexts[1].abstract_syntax == VERIFICATION
    assert (accepted.contexts[1].pacsd_scu, accepted.contexts[1].pacsd_scp) == (False, True)


def test_a_context_pacsd_sends_on_takes_the_receiver_s_preferred_syntax() -> None:
    """Issue 17, retrieve as stored: where the peer takes the SCP role (C-GET), pacsd accepts
    the first syntax the peer proposed among the rule's; where pacsd receives, the rule's
    order decides (uncompressed first)."""
    syntaxes = (JPEG_BASELINE, EXPLICIT, IMPLICIT)
    request = _request(
        ProposedContext(1, CT_IMAGE, syntaxes),
        ProposedContext(3, MR_IMAGE, syntaxes),
        roles=(RoleSelection(CT_IMAGE, False, True),),
    )
    accepted = _accept(request, _grant(peer_scp_role=["storage"]))
    assert accepted.contexts[1].transfer_syntax == JPEG_BASELINE  # pacsd sends: peer's choice
    assert accepted.contexts[3].transfer_syntax == EXPLICIT  # pacsd receives: the rule's
    narrowed = _accept(
        request, _grant(peer_scp_role=["storage"], transfer_syntaxes=["uncompressed"])
    )
    assert narrowed.contexts[1].transfer_syntax == EXPLICIT  # a rule may still force conversion


def test_private_and_retired_storage_classes_under_the_storage_group() -> None:
    """The group "storage" covers the retired storage classes and every private SOP class (a UID
    outside the DICOM root the standard does not name), peer SCP role included when granted;
    exclude_sop_classes storage:private narrows it again."""
    retired_us = "1.2.840.10008.5.1.4.1.1.6"
    request = _request(
        ProposedContext(1, PRIVATE_CLASS, (IMPLICIT,)),
        ProposedContext(3, retired_us, (IMPLICIT,)),
        ProposedContext(5, UNKNOWN_DICOM_UID, (IMPLICIT,)),
        roles=(RoleSelection(PRIVATE_CLASS, True, True),),
    )
    accepted = _accept(request, _grant(peer_scp_role=["storage"]))
    assert [(r.context_id, r.result) for r in accepted.accept.contexts] == [(1, 0), (3, 0), (5, 3)]
    assert (accepted.contexts[1].pacsd_scu, accepted.contexts[1].pacsd_scp) == (True, True)
    narrowed = _accept(request, _grant(exclude_sop_classes=["storage:private"]))
    assert [r.result for r in narrowed.accept.contexts] == [3, 0, 3]


def test_accept_fields_and_handle() -> None:
    """The A-ASSOCIATE-AC repeats the AE title fields (PS3.8 9.3.3), names the DICOM
    application context, pacsd's implementation and maximum length (PS3.8 D.1: the smaller
    of the network's and the rule's); the handle records the negotiated contexts."""
    handle = ClientHandle.connect("127.0.0.1", 104)
    request = _request(
        ProposedContext(1, VERIFICATION, (IMPLICIT,)),
        ProposedContext(3, UNKNOWN_DICOM_UID, (IMPLICIT,)),
        maximum_length=0,
    )
    grant = _grant(limits={"max_pdu_size": 8192})
    accepted = Negotiator(lambda: _policy(), 16384).accept(request, handle, grant)
    accept = accepted.accept
    assert (accept.called_ae_title, accept.calling_ae_title) == (
        request.called_ae_title,
        request.calling_ae_title,
    )
    assert accept.application_context == APPLICATION_CONTEXT_NAME
    assert accept.user.maximum_length == 8192 == accepted.local_max_pdu
    assert accept.user.implementation_class_uid == IMPLEMENTATION_CLASS_UID
    assert accept.user.implementation_version_name == IMPLEMENTATION_VERSION_NAME
    assert accept.user.asynchronous_operations is None
    assert accept.user.user_identity_response is None
    assert accepted.peer_max_pdu == 0  # the peer receives any length (PS3.8 D.1)
    assert accepted.invoked_window == 1
    assert handle.local_max_pdu_size == 8192
    assert [(cx.context_id, cx.result, cx.pacsd_scp) for cx in handle.contexts] == [
        (1, 0, True),
        (3, 3, False),
    ]


def test_the_same_request_and_grant_are_answered_once() -> None:
    """A repeated request under the same grant gets the kept answer, and its handle the same
    contexts as the first; another grant (a reloaded policy) is answered anew. The kept
    answer's contexts are each association's own copy."""
    negotiator = Negotiator(lambda: _policy(), 16384)
    request = _request(
        ProposedContext(1, VERIFICATION, (IMPLICIT,)),
        ProposedContext(3, CT_IMAGE, (EXPLICIT, IMPLICIT)),
        ProposedContext(5, UNKNOWN_DICOM_UID, (IMPLICIT,)),
    )
    grant = _grant()
    first_handle, second_handle = (ClientHandle.connect("127.0.0.1", port) for port in (1, 2))
    first = negotiator.accept(request, first_handle, grant)
    second = negotiator.accept(request, second_handle, grant)
    assert second.accept is first.accept
    assert second.pdu == first.pdu
    assert second.pdu == encode_associate_accept(first.accept)
    assert second.contexts == first.contexts
    assert second.contexts is not first.contexts
    assert second_handle.contexts == first_handle.contexts
    assert second_handle.contexts is not first_handle.contexts
    assert second_handle.local_max_pdu_size == first_handle.local_max_pdu_size == 16384
    refusing = _grant(sop_classes=["verification"])
    third_handle = ClientHandle.connect("127.0.0.1", 3)
    third = negotiator.accept(request, third_handle, refusing)
    assert [cx.result for cx in third.accept.contexts] == [0, 3, 3]
    assert [cx.result for cx in third_handle.contexts] == [0, 3, 3]


def test_an_answer_with_an_identity_response_is_not_kept() -> None:
    """The identity response belongs to one association: the next one without an identity
    gets none."""
    negotiator = Negotiator(lambda: _policy(), 16384)
    request = _request(ProposedContext(1, VERIFICATION, (IMPLICIT,)))
    grant = _grant(user_identity="optional")
    verified = ClientHandle.connect("127.0.0.1", 1)
    verified.identity_response, verified.username, verified.user_verified = b"", "alice", True
    assert negotiator.accept(request, verified, grant).accept.user.user_identity_response == b""
    anonymous = ClientHandle.connect("127.0.0.1", 2)
    assert negotiator.accept(request, anonymous, grant).accept.user.user_identity_response is None


def test_peer_maximum_length_is_passed_on() -> None:
    """The peer's Maximum Length (PS3.8 D.1) is what pacsd may send; absent means 0."""
    context = ProposedContext(1, VERIFICATION, (IMPLICIT,))
    assert _accept(_request(context, maximum_length=4096), _grant()).peer_max_pdu == 4096
    assert _accept(_request(context), _grant()).peer_max_pdu == 0


@pytest.mark.parametrize(
    ("proposed", "granted", "expected"),
    [
        (None, 8, (1, None)),
        ((5, 5), 1, (1, None)),
        ((1, 1), 8, (1, None)),
        ((3, 7), 8, (3, (3, 1))),
        ((20, 1), 8, (8, (8, 1))),
        ((0, 0), 8, (8, (8, 1))),
        ((1, 5), 8, (1, (1, 1))),
    ],
)  # fmt: skip
def test_asynchronous_operations_window(
    proposed: tuple[int, int] | None,
    granted: int,
    expected: tuple[int, tuple[int, int] | None],
) -> None:
    """PS3.7 D.3.3.3: no item, a rule window of 1 or a (1, 1) proposal is synchronous with
    no reply; otherwise the peer may invoke the smaller of its proposal (0: unlimited) and
    the rule's window; performed is 1, as pacsd invokes its own operations one at a time."""
    grant = _grant(limits={"async_operations_window": granted})
    request = _request(
        ProposedContext(1, VERIFICATION, (IMPLICIT,)), asynchronous_operations=proposed
    )
    assert negotiation._window(request, grant) == expected
    accepted = _accept(request, grant)
    assert accepted.invoked_window == expected[0]
    assert accepted.accept.user.asynchronous_operations == expected[1]


@pytest.mark.parametrize(
    ("user_identity", "response", "username"),
    [("optional", b"", "alice"), ("not-accepted", None, None)],
)
def test_user_identity_response(
    user_identity: str, response: bytes | None, username: str | None
) -> None:
    """PS3.7 D.3.3.7.2: the Server-response is sent when the rule accepts identities and one
    was verified; a rule that does not accept them ignores the sent identity altogether."""
    handle = ClientHandle.connect("127.0.0.1", 104)
    handle.identity_response, handle.username, handle.user_verified = b"", "alice", True
    grant = _grant(user_identity=user_identity)
    request = _request(ProposedContext(1, VERIFICATION, (IMPLICIT,)))
    accepted = Negotiator(lambda: _policy(), 16384).accept(request, handle, grant)
    assert accepted.accept.user.user_identity_response == response
    assert handle.username == username


def test_decide_accepts_and_fills_the_handle() -> None:
    """decide reads the AE titles (spaces not significant, PS3.8 9.3.2) and the peer's
    implementation into the handle, and an accepting rule holds an association slot."""
    negotiator = Negotiator(lambda: _policy(), 16384)
    handle = ClientHandle.connect("127.0.0.1", 104)
    request = _request(
        ProposedContext(1, VERIFICATION, (IMPLICIT,)),
        maximum_length=16384,
        implementation_class_uid="1.2.3",
        implementation_version_name="PEER_1",
    )
    decision = negotiator.decide(request, handle)
    assert decision.accepted
    assert decision.grant is not None
    assert (handle.calling_ae_title, handle.called_ae_title) == ("MODALITY", "ARCHIVE")
    assert (handle.peer_implementation_class_uid, handle.peer_implementation_version_name) == (
        "1.2.3",
        "PEER_1",
    )
    assert handle.peer_max_pdu_size == 16384
    assert handle.slot is not None
    negotiator.release(handle)
    assert handle.slot is None
    negotiator.release(handle)  # idempotent
    assert not negotiator.needs_executor(request)


def test_decide_rejects_another_application_context() -> None:
    """PS3.8 Table 9-21: an unknown application context name is rejected (1, 1, 2)."""
    request = AssociateRequest(
        b"ARCHIVE", b"MODALITY", "1.2.3.4", (ProposedContext(1, VERIFICATION, (IMPLICIT,)),)
    )
    decision = Negotiator(lambda: _policy(), 16384).decide(
        request, ClientHandle.connect("127.0.0.1", 104)
    )
    assert not decision.accepted
    assert decision.rejection == REJECTIONS[RejectReason.APPLICATION_CONTEXT_NOT_SUPPORTED]


def test_decide_rejects_a_request_without_contexts() -> None:
    """PS3.8 9.3.2: an A-ASSOCIATE-RQ proposes one or more presentation contexts."""
    decision = Negotiator(lambda: _policy(), 16384).decide(
        _request(), ClientHandle.connect("127.0.0.1", 104)
    )
    assert not decision.accepted
    assert decision.rejection == REJECTIONS[RejectReason.NO_REASON]


def test_decide_fails_closed() -> None:
    """A policy that cannot be evaluated rejects, transient (fail closed), never raises."""

    def broken() -> Policy:
        raise RuntimeError("configuration unreadable")

    decision = Negotiator(broken, 16384).decide(
        _request(ProposedContext(1, VERIFICATION, (IMPLICIT,))),
        ClientHandle.connect("127.0.0.1", 104),
    )
    assert not decision.accepted
    assert decision.rejection == REJECT_TRANSIENT_NO_REASON


STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STORAGE_SERVICE_CLASS = "1.2.840.10008.4.2"


def test_extended_negotiation_items_change_no_context_result() -> None:
    """SOP Class (Common) Extended Negotiation sub-items for classes pacsd knows change neither
    results, syntaxes nor roles (PS3.7 D.3.3.5-6): only the reply items and the options."""
    contexts = (
        ProposedContext(1, CT_IMAGE, (JPEG_BASELINE, EXPLICIT)),
        ProposedContext(3, STUDY_FIND, (IMPLICIT,)),
        ProposedContext(5, UNKNOWN_DICOM_UID, (IMPLICIT,)),
    )
    grant = _grant(sop_classes=["storage", "query-retrieve"], peer_scp_role=["storage"])
    plain = _accept(_request(*contexts, roles=(RoleSelection(CT_IMAGE, True, True),)), grant)
    extended = _accept(
        _request(
            *contexts,
            roles=(RoleSelection(CT_IMAGE, True, True),),
            extended=(
                ExtendedNegotiation(CT_IMAGE, bytes(6)),
                ExtendedNegotiation(STUDY_FIND, b"\x01"),
            ),
            common_extended=(
                CommonExtendedNegotiation(CT_IMAGE, STORAGE_SERVICE_CLASS, (MR_IMAGE,)),
                # UNKNOWN_DICOM_UID names no storage class it could be accepted as
                CommonExtendedNegotiation(UNKNOWN_DICOM_UID, STORAGE_SERVICE_CLASS, ()),
            ),
        ),
        grant,
    )
    assert extended.accept.contexts == plain.accept.contexts
    assert extended.accept.user.roles == plain.accept.user.roles
    assert [item.sop_class_uid for item in extended.accept.user.extended] == [
        CT_IMAGE,
        STUDY_FIND,
    ]
    assert plain.accept.user.extended == ()
    assert extended.contexts[3].extended.relational
    assert not plain.contexts[3].extended.relational


def test_a_class_accepted_as_its_related_general_class_takes_its_overrides() -> None:
    """B.3.1.4: the newer class gets what the rule gives its related general class, the
    transfer syntax overrides included."""
    newer = "1.2.840.10008.5.1.4.1.1.999.7"
    grant = _grant(
        transfer_syntaxes=["uncompressed"],
        transfer_syntax_overrides=[
            {"sop_classes": ["CTImageStorage"], "transfer_syntaxes": ["JPEGBaseline8Bit"]}
        ],
    )
    request = _request(
        ProposedContext(1, newer, (EXPLICIT, JPEG_BASELINE)),
        ProposedContext(3, newer, (EXPLICIT,)),
        common_extended=(CommonExtendedNegotiation(newer, STORAGE_SERVICE_CLASS, (CT_IMAGE,)),),
    )
    accepted = _accept(request, grant)
    assert [(r.context_id, r.result, r.transfer_syntax) for r in accepted.accept.contexts] == [
        (1, 0, JPEG_BASELINE),
        (3, 4, EXPLICIT),
    ]
    assert grant.syntaxes_for(newer) is None  # the rule's grant itself is unchanged
