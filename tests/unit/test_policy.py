"""The acceptance-policy engine as pure functions: matchers, rule order, grants, allow, limits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacsd.dicom import sop_classes, transfer_syntaxes
from pacsd.policy.engine import (
    REJECTIONS,
    AssociationRequest,
    Decision,
    Grant,
    Policy,
    Rejection,
    allow,
    decide,
)
from pacsd.policy.limits import AssociationSlots
from pacsd.policy.rules import PolicyRule, RejectReason

VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
ULTRASOUND_RETIRED = "1.2.840.10008.5.1.4.1.1.6"
PRIVATE_SIEMENS_CSA = "1.3.12.2.1107.5.9.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_XL_RECOMPRESSION = "1.2.840.10008.1.2.4.111"


def rule(name: str = "r", **fields: Any) -> PolicyRule:
    """A rule as YAML would give it (single values allowed); accepts verification by default."""
    fields.setdefault("sop_classes", ["verification"])
    return PolicyRule.model_validate({"name": name, **fields})


def request(
    calling: str = "CT1", called: str = "PACSD", address: str = "10.1.2.3", **extra: Any
) -> AssociationRequest:
    """An association request from `calling` at `address`."""
    return AssociationRequest(calling, called, address, **extra)


def decide_one(match: dict[str, Any], req: AssociationRequest) -> Decision:
    """The decision of a policy of one accepting rule with `match`."""
    return decide(req, Policy.compile([rule(match=match)]))


def grant_of(**fields: Any) -> Grant:
    """The grant of one accepting rule compiled from `fields`."""
    grant = Policy.compile([rule(**fields)]).rules[0].grant
    assert grant is not None
    return grant


@dataclass(frozen=True)
class Client:
    """Anything carrying a decision, as a ClientHandle does."""

    decision: Decision | None


# --- matchers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "calling", "expected"),
    [
        ("CT1", "CT1", True),
        ("CT1", "CT10", False),
        ("CT_*", "CT_ABDOMEN", True),
        ("CT_*", "XCT_1", False),
        ("CT?", "CT2", True),
        ("CT?", "CT12", False),
        (["CT1", "MR1"], "MR1", True),
        (["CT1", "MR1"], "US1", False),
        ("ct1", "CT1", False),
        ("CT*", "ct1", False),
    ],
    ids=["exact", "exact-prefix", "star", "star-anchored", "qmark", "qmark-one-char", "list-hit",
         "list-miss", "case-pattern", "case-title"],
)  # fmt: skip
def test_calling_ae_matcher(pattern: str | list[str], calling: str, expected: bool) -> None:
    """calling_ae: exact, * and ? globs, a list is OR, and matching is case-sensitive."""
    assert decide_one({"calling_ae": pattern}, request(calling)).accepted is expected


def test_called_ae_matcher() -> None:
    """called_ae compares the AE title the peer called, not the calling one."""
    match = {"called_ae": "ARCHIVE"}
    assert decide_one(match, request("CT1", called="ARCHIVE")).accepted
    assert not decide_one(match, request("ARCHIVE", called="PACSD")).accepted


@pytest.mark.parametrize(
    ("network", "peer", "expected"),
    [
        ("10.1.2.3", "10.1.2.3", True),
        ("10.1.2.3", "10.1.2.4", False),
        ("10.1.2.0/24", "10.1.2.200", True),
        ("10.1.2.0/24", "10.1.3.1", False),
        ("2001:db8::/32", "2001:db8::5", True),
        ("2001:db8::/32", "2001:db9::5", False),
        ("10.1.2.0/24", "::ffff:10.1.2.3", True),
        ("10.1.2.0/24", "::ffff:10.9.2.3", False),
        ("10.0.0.0/8", "2001:db8::1", False),
        ("fe80::/10", "fe80::1%eth0", True),
    ],
    ids=["single", "single-other", "v4-cidr", "v4-cidr-outside", "v6-cidr", "v6-cidr-outside",
         "v4-mapped", "v4-mapped-outside", "v6-peer-v4-net", "v6-zone"],
)  # fmt: skip
def test_address_matcher(network: str, peer: str, expected: bool) -> None:
    """address: a host, IPv4/IPv6 CIDRs; ::ffff:a.b.c.d is the IPv4 peer; v6 never fits v4."""
    decision = decide_one({"address": network}, request(address=peer))
    assert decision.accepted is expected
    if not expected:  # an ordinary mismatch, not a failed evaluation
        assert decision.reason == "no policy rule matches"


def test_tls_subject_matcher() -> None:
    """tls_subject globs the client certificate subject; no certificate never matches."""
    match = {"tls_subject": "CN=ct1.example.org,*"}
    subject = "CN=ct1.example.org,O=Example Hospital,C=DE"
    assert decide_one(match, request(tls_subject=subject)).accepted
    assert not decide_one(match, request(tls_subject="CN=mr1.example.org,O=X")).accepted
    refused = decide_one(match, request(tls_subject=None))
    assert not refused.accepted
    assert "TLS subject none is not one of CN=ct1.example.org,*" in refused.trace[0]


def test_username_matcher() -> None:
    """username matches the negotiated user identity; no identity never matches, even with *."""
    assert decide_one({"username": "alice"}, request(username="alice")).accepted
    assert not decide_one({"username": "alice"}, request(username="bob")).accepted
    assert not decide_one({"username": "*"}, request(username=None)).accepted


@pytest.mark.parametrize(
    ("calling", "address", "expected"),
    [("CT1", "10.1.2.3", True), ("CT1", "10.9.9.9", False), ("CT2", "10.1.2.3", False)],
)
def test_match_keys_are_anded(calling: str, address: str, expected: bool) -> None:
    """Every key of a match must fit: the right AE from the wrong address does not match."""
    match = {"calling_ae": "CT1", "address": "10.1.2.0/24"}
    assert decide_one(match, request(calling, address=address)).accepted is expected


# --- rule order and rejections -------------------------------------------------------------


def test_first_matching_rule_decides_even_if_a_later_one_is_more_specific() -> None:
    """Rules are tried in order: a broad early rule wins over a later exact one."""
    policy = Policy.compile(
        [
            rule("broad", match={"calling_ae": "*"}),
            rule("ct-only", match={"calling_ae": "CT1"}, sop_classes=["storage"]),
        ]
    )
    decision = decide(request("CT1"), policy)
    assert decision.accepted
    assert decision.rule == "broad"
    assert decision.grant is not None
    assert CT_IMAGE not in decision.grant.sop_classes


def test_reject_rule_before_accept_rule_rejects() -> None:
    """A reject rule placed before an accept-all rule rejects the peers it matches."""
    policy = Policy.compile(
        [rule("deny", match={"calling_ae": "BAD*"}, action="reject"), rule("accept-all")]
    )
    denied = decide(request("BAD1"), policy)
    assert not denied.accepted
    assert denied.rule == "deny"
    assert denied.rejection == Rejection(1, 1, 1)
    assert denied.reason == "rule 'deny' rejects (no-reason)"
    assert decide(request("GOOD1"), policy).rule == "accept-all"


def test_no_matching_rule_rejects_calling_ae_not_recognised() -> None:
    """Nothing matches: rejected-permanent, service-user, calling AE title not recognised."""
    decision = decide(request("CT9"), Policy.compile([rule(match={"calling_ae": "CT1"})]))
    assert not decision.accepted
    assert decision.rejection == Rejection(1, 1, 3)
    assert decision.rule is None
    assert decision.grant is None
    assert decision.reason == "no policy rule matches"


def test_empty_policy_rejects_everyone() -> None:
    """No rules at all accepts nobody (no implicit accept-all)."""
    assert decide(request(), Policy.compile([])).rejection == Rejection(1, 1, 3)


# PS3.8 Table 9-21, written out independently of the engine's table.
PS38_TABLE_9_21 = {
    RejectReason.NO_REASON: (1, 1, 1),
    RejectReason.APPLICATION_CONTEXT_NOT_SUPPORTED: (1, 1, 2),
    RejectReason.CALLING_AE_NOT_RECOGNISED: (1, 1, 3),
    RejectReason.CALLED_AE_NOT_RECOGNISED: (1, 1, 7),
    RejectReason.TEMPORARY_CONGESTION: (2, 3, 1),
    RejectReason.LOCAL_LIMIT_EXCEEDED: (2, 3, 2),
}


def test_every_reject_reason_has_codes() -> None:
    """Every reason an operator can name has A-ASSOCIATE-RJ codes."""
    assert set(REJECTIONS) == set(RejectReason) == set(PS38_TABLE_9_21)


@pytest.mark.parametrize("reason", list(RejectReason))
def test_reject_reason_maps_to_ps38_codes(reason: RejectReason) -> None:
    """A reject rule answers the (result, source, reason) of PS3.8 Table 9-21."""
    policy = Policy.compile([rule("deny", action="reject", reject_reason=reason.value)])
    rejection = decide(request(), policy).rejection
    assert rejection is not None
    assert (rejection.result, rejection.source, rejection.reason) == PS38_TABLE_9_21[reason]


@pytest.mark.parametrize(
    ("reason", "result", "expected"),
    [
        ("calling-ae-not-recognised", "transient", Rejection(2, 1, 3)),
        ("local-limit-exceeded", "permanent", Rejection(1, 3, 2)),
        ("no-reason", "permanent", Rejection(1, 1, 1)),
    ],
)
def test_reject_result_override_changes_only_the_result(
    reason: str, result: str, expected: Rejection
) -> None:
    """reject_result sets permanent (1) or transient (2); source and reason stay."""
    policy = Policy.compile(
        [rule("deny", action="reject", reject_reason=reason, reject_result=result)]
    )
    assert decide(request(), policy).rejection == expected


# --- SOP class groups ----------------------------------------------------------------------


def test_storage_group_includes_ct_and_sr() -> None:
    """storage holds every current storage class (CT, MR, SR), not verification or Q/R."""
    accepted = grant_of(sop_classes="storage").sop_classes
    assert {CT_IMAGE, MR_IMAGE, BASIC_TEXT_SR} <= accepted
    assert VERIFICATION not in accepted
    assert STUDY_ROOT_FIND not in accepted


def test_storage_image_group_holds_images_only() -> None:
    """storage:image has CT and MR images but no structured report."""
    accepted = grant_of(sop_classes="storage:image").sop_classes
    assert {CT_IMAGE, MR_IMAGE} <= accepted
    assert BASIC_TEXT_SR not in accepted


def test_storage_sr_group_holds_structured_reports() -> None:
    """storage:sr has Basic Text SR and Key Object Selection but no image."""
    accepted = grant_of(sop_classes="storage:sr").sop_classes
    assert BASIC_TEXT_SR in accepted
    assert "1.2.840.10008.5.1.4.1.1.88.59" in accepted  # Key Object Selection Document
    assert CT_IMAGE not in accepted


def test_exclusions_remove_classes() -> None:
    """exclude_sop_classes takes classes (a keyword or a whole group) out of the grant."""
    accepted = grant_of(
        sop_classes=["verification", "storage"],
        exclude_sop_classes=["MRImageStorage", "storage:sr"],
    ).sop_classes
    assert CT_IMAGE in accepted
    assert VERIFICATION in accepted
    assert MR_IMAGE not in accepted
    assert BASIC_TEXT_SR not in accepted


def test_keyword_and_raw_uids_are_accepted() -> None:
    """A keyword, a standard UID and a private UID each name exactly that class."""
    grant = grant_of(sop_classes=["CTImageStorage", MR_IMAGE, PRIVATE_SIEMENS_CSA])
    assert grant.sop_classes == {CT_IMAGE, MR_IMAGE, PRIVATE_SIEMENS_CSA}


def test_private_uid_is_treated_as_storage() -> None:
    """An unknown (private) UID is a storage class: store operation and storage syntaxes."""
    grant = grant_of(sop_classes=[PRIVATE_SIEMENS_CSA])
    assert grant.operations == {"store"}
    assert grant.transfer_syntaxes[PRIVATE_SIEMENS_CSA] == transfer_syntaxes.STORAGE_PREFERENCE


def test_named_retired_storage_class_is_storage() -> None:
    """A retired storage class named explicitly (old US) gets store and compressed syntaxes."""
    grant = grant_of(sop_classes=["UltrasoundImageStorageRetired"])
    assert grant.sop_classes == {ULTRASOUND_RETIRED}
    assert grant.operations == {"store"}
    assert JPEG_BASELINE in grant.transfer_syntaxes[ULTRASOUND_RETIRED]
    assert grant.private_storage is None  # a named class grants no private ones


def test_storage_group_covers_retired_and_private_classes() -> None:
    """Issue 17: archives receive from old modalities and vendors' private classes for decades,
    so "storage" (the default policy's) holds the retired classes and every private one;
    "storage:retired" and "storage:private" name them apart, to exclude or grant alone."""
    storage = sop_classes.groups()["storage"]
    assert ULTRASOUND_RETIRED in storage
    assert sop_classes.groups()["storage:retired"] < storage
    assert CT_IMAGE not in sop_classes.groups()["storage:retired"]
    grant = grant_of(sop_classes=["storage"])
    private = "1.3.12.2.1107.5.9.1"
    assert grant.syntaxes_for(private) == grant.syntaxes_for(CT_IMAGE)
    assert grant.syntaxes_for("1.2.840.10008.9.9.9") is None  # DICOM root: not private
    assert grant.syntaxes_for("1.2.3.4.x") is None  # not a UID
    narrowed = grant_of(sop_classes=["storage"], exclude_sop_classes=["storage:private"])
    assert narrowed.syntaxes_for(private) is None
    assert narrowed.syntaxes_for(ULTRASOUND_RETIRED) is not None
    alone = grant_of(sop_classes=["verification", "storage:private"])
    assert alone.syntaxes_for(private) is not None
    assert alone.operations == {"echo", "store"}
    assert alone.syntaxes_for(CT_IMAGE) is None


# --- transfer syntaxes ---------------------------------------------------------------------


def test_default_all_prefers_uncompressed_then_lossless_then_lossy() -> None:
    """ "all": Explicit VR LE first, the uncompressed ones, then lossless, lossy, video last."""
    syntaxes = grant_of(sop_classes="CTImageStorage").transfer_syntaxes[CT_IMAGE]
    assert syntaxes[0] == ExplicitVRLittleEndian
    assert syntaxes[:4] == transfer_syntaxes.UNCOMPRESSED
    position = {uid: index for index, uid in enumerate(syntaxes)}
    last_lossless = max(position[uid] for uid in transfer_syntaxes.LOSSLESS)
    first_lossy = min(position[uid] for uid in transfer_syntaxes.GROUPS["lossy"])
    assert position[JPEG_2000_LOSSLESS] <= last_lossless < position[JPEG_BASELINE]
    assert last_lossless < first_lossy
    assert set(syntaxes[-len(transfer_syntaxes.VIDEO) :]) == set(transfer_syntaxes.VIDEO)


def test_rule_order_of_groups_is_the_preference() -> None:
    """[lossless, uncompressed] prefers JPEG 2000 Lossless to Explicit VR Little Endian."""
    syntaxes = grant_of(
        sop_classes="CTImageStorage", transfer_syntaxes=["lossless", "uncompressed"]
    ).transfer_syntaxes[CT_IMAGE]
    assert syntaxes.index(JPEG_2000_LOSSLESS) < syntaxes.index(ExplicitVRLittleEndian)
    assert JPEG_BASELINE not in syntaxes
    assert len(syntaxes) == len(set(syntaxes))


def test_lossy_syntaxes_absent_unless_granted() -> None:
    """JPEG Baseline is offered only when a lossy group (or all) is granted."""
    without = grant_of(sop_classes="storage", transfer_syntaxes=["uncompressed", "lossless"])
    assert all(JPEG_BASELINE not in ts for ts in without.transfer_syntaxes.values())
    with_lossy = grant_of(sop_classes="storage", transfer_syntaxes=["uncompressed", "lossy"])
    assert JPEG_BASELINE in with_lossy.transfer_syntaxes[CT_IMAGE]


def test_jpeg_xl_recompression_is_lossy() -> None:
    """JPEG XL JPEG Recompression is in "lossy" and "all", never in "lossless"."""
    assert transfer_syntaxes.resolve(JPEG_XL_RECOMPRESSION) == (JPEG_XL_RECOMPRESSION,)
    assert JPEG_XL_RECOMPRESSION in transfer_syntaxes.GROUPS["lossy"]
    assert JPEG_XL_RECOMPRESSION in transfer_syntaxes.GROUPS["all"]
    assert JPEG_XL_RECOMPRESSION not in transfer_syntaxes.GROUPS["lossless"]


def test_per_sop_class_overrides_first_wins() -> None:
    """The first override naming a class sets its syntaxes; other classes get the default."""
    grant = grant_of(
        sop_classes=["CTImageStorage", "MRImageStorage"],
        transfer_syntaxes=["uncompressed"],
        transfer_syntax_overrides=[
            {"sop_classes": "CTImageStorage", "transfer_syntaxes": ["JPEG2000Lossless"]},
            {"sop_classes": "storage:image", "transfer_syntaxes": ["lossy"]},
        ],
    )
    assert grant.transfer_syntaxes[CT_IMAGE] == (JPEG_2000_LOSSLESS,)
    assert grant.transfer_syntaxes[MR_IMAGE] == transfer_syntaxes.GROUPS["lossy"]
    plain = grant_of(
        sop_classes=["CTImageStorage", "MRImageStorage"],
        transfer_syntaxes=["uncompressed"],
        transfer_syntax_overrides=[{"sop_classes": "CTImageStorage", "transfer_syntaxes": "all"}],
    )
    assert plain.transfer_syntaxes[MR_IMAGE] == transfer_syntaxes.UNCOMPRESSED


def test_non_storage_classes_get_uncompressed_only() -> None:
    """Verification and Q/R get Explicit then Implicit VR LE whatever the rule's syntaxes say."""
    grant = grant_of(
        sop_classes=["verification", "query-retrieve"],
        transfer_syntaxes=["lossy"],
        transfer_syntax_overrides=[{"sop_classes": "verification", "transfer_syntaxes": "lossy"}],
    )
    expected = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    assert grant.transfer_syntaxes[VERIFICATION] == expected
    assert grant.transfer_syntaxes[STUDY_ROOT_FIND] == expected


# --- roles and operations ------------------------------------------------------------------


def test_peer_scp_role_only_for_accepted_classes() -> None:
    """peer_scp_role [storage] on a CT-only rule lets the peer be SCP for CT only."""
    grant = grant_of(sop_classes=["verification", "CTImageStorage"], peer_scp_role=["storage"])
    assert grant.peer_scp == {CT_IMAGE}
    assert not grant_of(sop_classes="CTImageStorage").peer_scp


@pytest.mark.parametrize(
    ("groups", "operations"),
    [
        (["verification"], {"echo"}),
        (["storage"], {"store"}),
        (["query-retrieve"], {"find", "get", "move"}),
        (["query-retrieve:find"], {"find"}),
        (["verification", "storage", "query-retrieve"], {"echo", "store", "find", "get", "move"}),
        (["worklist", "storage-commitment", "mpps"], {"worklist", "commit", "mpps"}),
        (["verification", "BasicFilmSession"], {"echo", "print"}),
        (["verification", "InstanceAvailabilityNotification"], {"echo"}),  # not served: none
    ],
)
def test_default_operations_follow_sop_classes(groups: list[str], operations: set[str]) -> None:
    """Without `operations`, each accepted class grants the operation it is used for."""
    assert grant_of(sop_classes=groups).operations == operations


def test_explicit_operations_override_the_derived_ones() -> None:
    """`operations: [echo]` on a storage rule grants echo only, not store."""
    assert grant_of(sop_classes=["verification", "storage"], operations=["echo"]).operations == {
        "echo"
    }


# --- allow ---------------------------------------------------------------------------------


def accepted_client(calling: str = "WS1", **fields: Any) -> Client:
    """A client whose association was accepted by one rule named 'viewer' with `fields`."""
    decision = decide(request(calling), Policy.compile([rule("viewer", **fields)]))
    assert decision.accepted
    return Client(decision)


def test_allow_refuses_an_operation_the_rule_does_not_grant() -> None:
    """A CT class may be stored, but not found: the reason names the operation and rule."""
    client = accepted_client(sop_classes=["storage", "query-retrieve"], operations=["store"])
    assert allow(client, "store", CT_IMAGE).allowed
    permission = allow(client, "find", STUDY_ROOT_FIND)
    assert not permission.allowed
    assert permission.reason == "operation find is not allowed by rule 'viewer'"


def test_allow_refuses_a_sop_class_not_accepted() -> None:
    """Store is granted, but MR is not one of the rule's classes."""
    permission = allow(accepted_client(sop_classes="CTImageStorage"), "store", MR_IMAGE)
    assert not permission.allowed
    assert permission.reason == "SOP class MRImageStorage is not accepted by rule 'viewer'"


@pytest.mark.parametrize(
    ("destinations", "destination", "expected"),
    [
        (["VIEW*"], "VIEWER2", True),
        (["VIEW*"], "ARCHIVE", False),
        (["$calling"], "WS1", True),
        (["$calling"], "WS2", False),
        (["$calling"], "$calling", False),
        (["*"], None, False),
        (["ARCHIVE", "$calling"], "ARCHIVE", True),
    ],
)
def test_allow_move_destination(
    destinations: list[str], destination: str | None, expected: bool
) -> None:
    """C-MOVE destinations: a glob, "$calling" (the requester itself), never no destination."""
    client = accepted_client("WS1", sop_classes="query-retrieve", move_destinations=destinations)
    permission = allow(client, "move", STUDY_ROOT_MOVE, destination)
    assert permission.allowed is expected
    if not expected:
        expected_reason = f"move destination {destination!r} is not allowed by rule 'viewer'"
        assert permission.reason == expected_reason


def test_allow_without_an_accepting_decision() -> None:
    """No decision, or a rejection, allows nothing."""
    assert not allow(Client(None), "echo", VERIFICATION).allowed
    rejected = decide(request(), Policy.compile([]))
    permission = allow(Client(rejected), "echo", VERIFICATION)
    assert not permission.allowed
    assert permission.reason == "the association has no accepting decision"


# --- fail closed ---------------------------------------------------------------------------


def test_policy_error_rejects_transient_and_does_not_fall_through() -> None:
    """A peer address that is not an IP rejects (2,1,1); a later accept-all is not consulted."""
    policy = Policy.compile([rule("lan", match={"address": "10.0.0.0/8"}), rule("accept-all")])
    decision = decide(request(address="not-an-ip"), policy)
    assert not decision.accepted
    assert decision.rejection == Rejection(2, 1, 1)
    assert decision.reason.startswith("policy evaluation failed: ValueError:")
    assert decision.grant is None


# --- limits --------------------------------------------------------------------------------


def test_rule_limit_admits_n_then_rejects_local_limit_exceeded() -> None:
    """max_associations 2: two admitted, the third is (2,3,2) naming the limit and the rule."""
    policy = Policy.compile([rule("ct", limits={"max_associations": 2})])
    slots = AssociationSlots()
    admitted = [slots.admit(request(f"CT{n}"), policy) for n in range(2)]
    assert all(decision.accepted and slot is not None for decision, slot in admitted)
    decision, slot = slots.admit(request("CT9"), policy)
    assert slot is None
    assert decision.rejection == Rejection(2, 3, 2)
    assert decision.reason == "local limit exceeded: 2 associations (rule 'ct')"
    assert slots.total() == 2


def test_release_frees_a_slot() -> None:
    """After one association ends, a new one is admitted again."""
    policy = Policy.compile([rule("ct", limits={"max_associations": 1})])
    slots = AssociationSlots()
    _, slot = slots.admit(request(), policy)
    assert slot is not None
    assert not slots.admit(request(), policy)[0].accepted
    slots.release(slot)
    assert slots.total() == 0
    assert slots.admit(request(), policy)[0].accepted


def test_per_calling_ae_limit_counts_titles_separately() -> None:
    """max_associations_per_calling_ae 1: a second CT1 is refused, CT2 still gets in."""
    policy = Policy.compile([rule("ct", limits={"max_associations_per_calling_ae": 1})])
    slots = AssociationSlots()
    assert slots.admit(request("CT1"), policy)[0].accepted
    second = slots.admit(request("CT1"), policy)[0]
    assert second.rejection == Rejection(2, 3, 2)
    assert "1 associations per calling AE title (rule 'ct')" in second.reason
    assert slots.admit(request("CT2"), policy)[0].accepted


def test_global_limit_counts_all_rules() -> None:
    """Policy.compile(..., max_associations=2): the third association of any rule is refused."""
    policy = Policy.compile(
        [rule("ct", match={"calling_ae": "CT*"}), rule("mr", match={"calling_ae": "MR*"})],
        max_associations=2,
    )
    slots = AssociationSlots()
    assert slots.admit(request("CT1"), policy)[0].accepted
    assert slots.admit(request("MR1"), policy)[0].accepted
    third = slots.admit(request("CT2"), policy)[0]
    assert third.rejection == Rejection(2, 3, 2)
    assert third.reason == "local limit exceeded: 2 associations (network)"


def test_one_address_gets_its_share_and_the_others_still_get_in() -> None:
    """max_associations_per_address 2: a third association from one address is refused (2,3,2)
    naming the address, while another address is admitted; a release gives the slot back."""
    policy = Policy.compile([rule("any")], max_associations=10, max_associations_per_address=2)
    slots = AssociationSlots()
    flood = [slots.admit(request("A", address="10.0.0.7"), policy) for _ in range(2)]
    assert all(decision.accepted for decision, _ in flood)
    third = slots.admit(request("A", address="10.0.0.7"), policy)[0]
    assert third.rejection == Rejection(2, 3, 2)
    assert third.reason == (
        "local limit exceeded: 2 associations from 10.0.0.7 (network.max_associations_per_address)"
    )
    assert slots.admit(request("B", address="10.0.0.8"), policy)[0].accepted
    slot = flood[0][1]
    assert slot is not None
    slots.release(slot)
    assert slots.of_address("10.0.0.7") == 1
    assert slots.admit(request("A", address="10.0.0.7"), policy)[0].accepted


def test_full_rule_does_not_fall_through_to_a_later_rule() -> None:
    """A matching rule at its limit rejects; a later rule that would accept is not tried."""
    policy = Policy.compile([rule("ct", limits={"max_associations": 1}), rule("accept-all")])
    slots = AssociationSlots()
    assert slots.admit(request(), policy)[0].rule == "ct"
    decision = slots.admit(request(), policy)[0]
    assert not decision.accepted
    assert decision.rule == "ct"


# --- trace ---------------------------------------------------------------------------------


def test_trace_explains_each_rule_up_to_the_match() -> None:
    """The trace says why each earlier rule failed, then names the matching rule, then stops."""
    policy = Policy.compile(
        [
            rule("mr", match={"calling_ae": "MR*"}),
            rule("lab", match={"address": "192.168.0.0/16"}),
            rule("ct", match={"calling_ae": "CT*"}),
            rule("never-reached"),
        ]
    )
    assert decide(request("CT1", address="10.1.2.3"), policy).trace == (
        "rule 'mr' does not match: calling AE title 'CT1' is not one of MR*",
        "rule 'lab' does not match: address 10.1.2.3 is not in 192.168.0.0/16",
        "rule 'ct' matches",
    )


def test_trace_when_nothing_matches() -> None:
    """With no match the trace ends with "no rule matches"."""
    trace = decide(request("US1"), Policy.compile([rule(match={"calling_ae": "CT1"})])).trace
    assert trace == (
        "rule 'r' does not match: calling AE title 'US1' is not one of CT1",
        "no rule matches",
    )


def test_a_failed_identity_under_a_username_rule_rejects_for_the_identity() -> None:
    """A rule that would match but for a failed identity decides (1, 2, 1); the reject rule
    after it is not reached. When its other keys do not fit, it does not decide."""
    from pacsd.policy.identity import IdentityResult, Outcome

    failed = IdentityResult(Outcome.FAILED, identity_type=2, reason="wrong password")
    catch_all = rule("everyone-else", action="reject", reject_reason="calling-ae-not-recognised")
    policy = Policy.compile([rule("ris", match={"username": "ris"}), catch_all])
    decision = decide(request(identity=failed), policy)
    assert (decision.rule, decision.rejection) == ("ris", Rejection(1, 2, 1))
    assert decision.reason == "user identity not verified: wrong password"
    assert decide(request(), policy).rejection == Rejection(1, 1, 3)  # none sent

    elsewhere = rule("ris", match={"username": "ris", "calling_ae": "RIS"})
    other_ae = decide(request(identity=failed), Policy.compile([elsewhere, catch_all]))
    assert (other_ae.rule, other_ae.rejection) == ("everyone-else", Rejection(1, 1, 3))
