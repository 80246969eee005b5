"""SOP Class (Common) Extended Negotiation: the reply bytes, what they agree, and the matching
rules they switch on (engine/negotiation.py, dicom/matching.py).

The A-ASSOCIATE-AC pacsd encodes is read back with pynetdicom's decoder, an independent
implementation of PS3.8 and PS3.7 D.3.3.5; the expected bytes are written out from the
tables of PS3.4 (C.5-2, C.5-4, K.5-2 and B.3-2), not computed with pacsd's code.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pynetdicom.pdu import A_ASSOCIATE_AC
from pynetdicom.pdu_primitives import SOPClassCommonExtendedNegotiation as PynetdicomCommon
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation as PynetdicomExtended

from pacsd.dicom.matching import (
    JsonRecord,
    MatchOptions,
    PersonNameMatcher,
    ZonedRecord,
    parse_identifier,
    utc_offset_minutes,
)
from pacsd.dimse.commands import Command
from pacsd.dimse.messages import NO_EXTENDED_OPTIONS, AcceptedContext, ExtendedOptions, Request
from pacsd.engine.negotiation import ACCEPTANCE, Accepted, Negotiator, extended_options
from pacsd.engine.pdu import (
    APPLICATION_CONTEXT_NAME,
    AssociateRequest,
    CommonExtendedNegotiation,
    ExtendedNegotiation,
    ProposedContext,
    RoleSelection,
    UserInformation,
    decode_associate_accept,
    encode_associate_accept,
)
from pacsd.handle import ClientHandle
from pacsd.policy.engine import AssociationRequest, Policy, allow, decide
from pacsd.policy.rules import PolicyRule
from pacsd.services.query import match_options, matching_fields, query_zone
from pacsd.settings import QuerySettings
from tests.unit.test_query_matching import reencoded

STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_STUDY_ONLY_FIND = "1.2.840.10008.5.1.4.1.2.3.1"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
PATIENT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
COMPOSITE_INSTANCE_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.4.2"
WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
MPPS = "1.2.840.10008.3.1.2.3.3"
VERIFICATION = "1.2.840.10008.1.1"
STORAGE_SERVICE_CLASS = "1.2.840.10008.4.2"
# Under the DICOM root, no SOP class pacsd (or pydicom) can name: a storage class from a newer
# edition of the standard, as a modality newer than pacsd would propose it.
NEWER_STORAGE = "1.2.840.10008.5.1.4.1.1.999.1"
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


# -- the reply bytes --------------------------------------------------------------------------

# PS3.4 Table C.5-1 -> C.5-2: relational-queries, combined date-time matching, fuzzy semantic
# matching of person names, timezone query adjustment are done when asked; Enhanced
# Multi-Frame Image Conversion, Empty Value Matching and Multiple Value Matching are not.
FIND_CASES = [
    (b"\x01", b"\x01"),  # C.5.1.1: a one byte offer gets a one byte answer
    (b"\x00", b"\x00"),
    (b"\x01\x01", b"\x01\x01"),
    (b"\x00\x01\x00\x01", b"\x00\x01\x00\x01"),
    (b"\x01\x01\x01\x01\x01", b"\x01\x01\x01\x01\x00"),
    (b"\x01" * 7, b"\x01\x01\x01\x01\x00\x00\x00"),
    (b"\x01" * 9, b"\x01\x01\x01\x01\x00\x00\x00"),  # bytes beyond Table C.5-2: not answered
    (b"\x02\x02\x02\x02", b"\x00\x00\x00\x00"),  # only 1 asks
]


@pytest.mark.parametrize("uid", [STUDY_FIND, PATIENT_FIND, PATIENT_STUDY_ONLY_FIND])
@pytest.mark.parametrize(("asked", "answer"), FIND_CASES)
def test_find_reply_follows_table_c_5_2(uid: str, asked: bytes, answer: bytes) -> None:
    options = extended_options(uid, asked)
    assert options.reply == answer
    flags = (
        options.relational,
        options.combined_date_time,
        options.fuzzy_person_names,
        options.timezone_adjustment,
    )
    assert flags == tuple(bool(answer[i]) if i < len(answer) else False for i in range(4))


@pytest.mark.parametrize("uid", [STUDY_MOVE, PATIENT_GET])
@pytest.mark.parametrize(
    ("asked", "answer"),
    [
        (b"\x01", b"\x01"),
        (b"\x01\x01", b"\x01\x00"),
        (b"\x00\x01", b"\x00\x00"),
        (b"\x01" * 3, b"\x01\x00"),
    ],
)
def test_retrieve_reply_accepts_relational_retrieval_only(
    uid: str, asked: bytes, answer: bytes
) -> None:
    """PS3.4 C.5.2.1.2 / C.5.3.1: relational-retrieval yes, Enhanced Multi-Frame Image
    Conversion no (qr_models.retrieve_keys already takes the upper unique keys as optional)."""
    options = extended_options(uid, asked)
    assert (options.reply, options.relational) == (answer, answer[0] == 1)


@pytest.mark.parametrize(
    ("asked", "answer"),
    [
        (b"\x01\x01\x00", b"\x01\x01\x00"),
        (b"\x01\x01\x01", b"\x01\x01\x01"),
        (b"\x00\x00\x01\x01", b"\x01\x01\x01\x01"),  # K.5.1: the reserved bytes are always 1
        (b"\x01\x01\x01\x01\x01", b"\x01\x01\x01\x01"),
    ],
)
def test_worklist_reply_follows_table_k_5_2(asked: bytes, answer: bytes) -> None:
    options = extended_options(WORKLIST_FIND, asked)
    assert options.reply == answer
    assert (options.fuzzy_person_names, options.timezone_adjustment) == (
        answer[2] == 1,
        len(answer) > 3 and answer[3] == 1,
    )
    assert not options.relational
    assert not options.combined_date_time


@pytest.mark.parametrize(
    ("asked", "answer"),
    [
        (bytes((3, 0, 0, 0, 2, 0)), bytes((2, 0, 3, 0, 0, 0))),
        (bytes((2, 0, 3, 0, 1, 0)), bytes((2, 0, 3, 0, 0, 0))),
        (b"\x03", b"\x02"),
    ],
)
def test_storage_reply_is_level_2_signature_level_3_no_coercion(
    asked: bytes, answer: bytes
) -> None:
    """PS3.4 Table B.3-2: level 2 (Full), signature level 3 (bit-preserving), no coercion."""
    assert extended_options(CT_IMAGE, asked).reply == answer


@pytest.mark.parametrize(
    "uid", [VERIFICATION, MPPS, COMPOSITE_INSTANCE_ROOT_MOVE], ids=["echo", "mpps", "cir"]
)
def test_no_reply_where_no_field_is_defined(uid: str) -> None:
    assert extended_options(uid, b"\x01\x01") == NO_EXTENDED_OPTIONS


def test_no_sub_item_no_reply() -> None:
    assert extended_options(STUDY_FIND, None) == NO_EXTENDED_OPTIONS
    assert extended_options(STUDY_FIND, b"") == NO_EXTENDED_OPTIONS


# -- the A-ASSOCIATE-AC -----------------------------------------------------------------------


def _policy(**fields: Any) -> Policy:
    fields.setdefault("sop_classes", ["verification", "storage", "query-retrieve", "worklist"])
    return Policy.compile([PolicyRule.model_validate({"name": "r", **fields})])


def _accept(
    *contexts: ProposedContext, policy: Policy | None = None, **user: Any
) -> tuple[Accepted, ClientHandle]:
    """Decide and accept a request like the acceptor does (decision first, on the handle)."""
    policy = policy or _policy()
    handle = ClientHandle.connect("127.0.0.1", 104)
    handle.decision = decide(AssociationRequest("SCU", "PACSD", "127.0.0.1"), policy)
    assert handle.decision.grant is not None
    request = AssociateRequest(
        b"PACSD", b"SCU", APPLICATION_CONTEXT_NAME, contexts, UserInformation(**user)
    )
    accepted = Negotiator(lambda: policy, 16384).accept(request, handle, handle.decision.grant)
    return accepted, handle


def _replies(accepted: Accepted) -> dict[str, bytes]:
    """The AC's SOP Class Extended Negotiation items, as pynetdicom decodes them."""
    ac = A_ASSOCIATE_AC()
    ac.decode(encode_associate_accept(accepted.accept))
    items = ac.to_primitive().user_information
    assert not [item for item in items if isinstance(item, PynetdicomCommon)], "D.3.3.6: none"
    return {
        str(item.sop_class_uid): bytes(item.service_class_application_information or b"")
        for item in items
        if isinstance(item, PynetdicomExtended)
    }


def test_one_reply_per_proposed_and_accepted_sop_class() -> None:
    """PS3.7 D.3.3.5: a reply for each SOP class the requestor sent a sub-item for, none for
    the others, none for a class pacsd rejected; each context carries what was agreed."""
    accepted, handle = _accept(
        ProposedContext(1, STUDY_FIND, (IMPLICIT,)),
        ProposedContext(3, STUDY_MOVE, (IMPLICIT,)),
        ProposedContext(5, WORKLIST_FIND, (IMPLICIT,)),
        ProposedContext(7, CT_IMAGE, (EXPLICIT,)),
        ProposedContext(9, PATIENT_FIND, (IMPLICIT,)),
        ProposedContext(11, MPPS, (IMPLICIT,)),  # not granted by the rule: rejected
        extended=(
            ExtendedNegotiation(STUDY_FIND, b"\x01\x01\x01\x01\x01"),
            ExtendedNegotiation(STUDY_MOVE, b"\x01\x01"),
            ExtendedNegotiation(WORKLIST_FIND, b"\x01\x01\x01\x00"),
            ExtendedNegotiation(CT_IMAGE, bytes((3, 0, 0, 0, 2, 0))),
            ExtendedNegotiation(MPPS, b"\x01"),
            ExtendedNegotiation(STUDY_FIND, b"\x00"),  # a second one for the class: ignored
        ),
    )
    assert _replies(accepted) == {
        STUDY_FIND: b"\x01\x01\x01\x01\x00",
        STUDY_MOVE: b"\x01\x00",
        WORKLIST_FIND: b"\x01\x01\x01\x00",
        CT_IMAGE: bytes((2, 0, 3, 0, 0, 0)),
    }
    find = accepted.contexts[1].extended
    assert (find.relational, find.combined_date_time) == (True, True)
    assert (find.fuzzy_person_names, find.timezone_adjustment) == (True, True)
    assert accepted.contexts[3].extended.relational
    assert accepted.contexts[5].extended.fuzzy_person_names
    assert accepted.contexts[9].extended == NO_EXTENDED_OPTIONS  # nothing proposed for it
    assert 11 not in accepted.contexts
    snapshot = {cx["context_id"]: cx for cx in handle.snapshot()["accepted_contexts"]}
    assert snapshot[1]["extended"] == {
        "relational": True,
        "combined_date_time": True,
        "fuzzy_person_names": True,
        "timezone_adjustment": True,
        "reply": "0101010100",
    }
    assert "extended" not in snapshot[9]


def test_no_sub_items_no_replies() -> None:
    """D.3.3.5: sub-items absent from the A-ASSOCIATE-RQ are omitted from the AC."""
    accepted, _handle = _accept(
        ProposedContext(1, STUDY_FIND, (IMPLICIT,)), ProposedContext(3, CT_IMAGE, (IMPLICIT,))
    )
    assert _replies(accepted) == {}
    assert decode_associate_accept(encode_associate_accept(accepted.accept)[6:]).user.extended == ()


def _newer(*related: str, service_class: str = STORAGE_SERVICE_CLASS) -> dict[str, Any]:
    return {"common_extended": (CommonExtendedNegotiation(NEWER_STORAGE, service_class, related),)}


def test_newer_storage_class_is_accepted_as_its_related_general_class() -> None:
    """PS3.4 B.3.1.4, PS3.7 D.3.3.6: an unknown storage SOP class whose Related General SOP
    Class the rule accepts gets that class's syntaxes and roles; the association's grant
    names it, so the per-request policy check lets its C-STOREs in."""
    policy = _policy(
        sop_classes=["verification", "storage:image"],
        transfer_syntaxes=["lossless", "uncompressed"],
        peer_scp_role=["storage"],
    )
    accepted, handle = _accept(
        ProposedContext(1, NEWER_STORAGE, (JPEG_BASELINE, EXPLICIT, IMPLICIT)),
        ProposedContext(3, CT_IMAGE, (JPEG_BASELINE,)),
        policy=policy,
        roles=(RoleSelection(NEWER_STORAGE, True, True),),
        **_newer(ENHANCED_SR, CT_IMAGE),  # SR is not granted: the next one is taken
    )
    newer = accepted.contexts[1]
    assert 3 not in accepted.contexts  # JPEG Baseline (lossy) is not among the rule's syntaxes
    assert newer.transfer_syntax == EXPLICIT  # so the peer's first of the rule's (it is SCP)
    assert (newer.pacsd_scu, newer.pacsd_scp) == (True, True)  # peer_scp_role of CT
    assert newer.extended.related_general_sop_class == CT_IMAGE
    assert allow(handle, "store", NEWER_STORAGE).allowed
    assert not allow(handle, "store", "1.2.840.10008.5.1.4.1.1.999.2").allowed
    assert _replies(accepted) == {}  # no 0x56 proposed; and never a 0x57 (checked inside)
    [snapshot] = [cx for cx in handle.snapshot()["accepted_contexts"] if cx["context_id"] == 1]
    assert snapshot["extended"] == {"related_general_sop_class": CT_IMAGE}


@pytest.mark.parametrize(
    "user",
    [
        {},  # no common extended negotiation item
        _newer(ENHANCED_SR),  # a related class the rule does not grant
        _newer(CT_IMAGE, service_class="1.2.840.10008.4.99"),  # not the Storage Service Class
        _newer(),  # no related general class
    ],
    ids=["no-item", "related-not-granted", "other-service-class", "no-related"],
)
def test_newer_storage_class_otherwise_refused(user: dict[str, Any]) -> None:
    policy = _policy(sop_classes=["verification", "storage:image"])
    accepted, handle = _accept(
        ProposedContext(1, NEWER_STORAGE, (IMPLICIT,)), policy=policy, **user
    )
    assert accepted.contexts == {}
    assert [cx.result for cx in handle.contexts] == [3]


def test_a_known_class_the_rule_refuses_stays_refused() -> None:
    """Common extended negotiation never widens a rule for a SOP class it can name."""
    policy = _policy(sop_classes=["verification", "CTImageStorage"])
    mr = "1.2.840.10008.5.1.4.1.1.4"
    common = (CommonExtendedNegotiation(mr, STORAGE_SERVICE_CLASS, (CT_IMAGE,)),)
    accepted, _handle = _accept(
        ProposedContext(1, mr, (IMPLICIT,)), policy=policy, common_extended=common
    )
    assert accepted.contexts == {}


def test_storage_reply_for_a_class_accepted_through_its_related_class() -> None:
    accepted, _handle = _accept(
        ProposedContext(1, NEWER_STORAGE, (IMPLICIT,)),
        extended=(ExtendedNegotiation(NEWER_STORAGE, bytes((3, 0, 0, 0, 2, 0))),),
        **_newer(CT_IMAGE),
    )
    assert accepted.contexts[1].extended.related_general_sop_class == CT_IMAGE
    assert _replies(accepted) == {NEWER_STORAGE: bytes((2, 0, 3, 0, 0, 0))}
    assert [result.result for result in accepted.accept.contexts] == [ACCEPTANCE]


# -- matching --------------------------------------------------------------------------------

PATIENT_NAME = int(Tag("PatientName"))


def _name(alphabetic: str, ideographic: str = "") -> JsonRecord:
    value = {"Alphabetic": alphabetic, **({"Ideographic": ideographic} if ideographic else {})}
    return JsonRecord({f"{PATIENT_NAME:08X}": {"vr": "PN", "Value": [value]}})


@pytest.mark.parametrize(
    ("key", "stored", "matches"),
    [
        ("smith", "Smith^John", True),  # one word matches any component
        ("SMITH^JOHN", "Smith^John", True),  # case
        ("john smith", "Smith^John", True),  # order, space for ^
        ("Smith, John", "Smith^John", True),
        ("Jöhn^Sm*", "Smith^John", True),  # accents, wild card in a word
        ("muller", "Müller^Jürgen", True),
        ("MUELLER", "Müller^Jürgen", False),  # no transliteration, no phonetics
        ("Smi*Jo*", "Smith^John", True),  # a pattern over the whole name
        ("Doe^*", "Doe", True),  # a lone * may match nothing
        ("smi", "Smith^John", False),  # whole words only, unless a wild card says otherwise
        ("John^Smithers", "Smith^John", False),
        ("john john", "Smith^John", False),  # each key word needs a word of its own
        ("\uff33\uff4d\uff49\uff54\uff48", "Smith^John", True),  # full-width letters
        ("yamada", "Yamada^Tarou", True),
    ],
)
def test_fuzzy_person_name_rules(key: str, stored: str, matches: bool) -> None:
    assert PersonNameMatcher(PATIENT_NAME, (key,)).matches(_name(stored)) is matches


def test_fuzzy_names_look_at_every_component_group() -> None:
    record = _name("Yamada^Tarou", "山田^太郎")
    assert PersonNameMatcher(PATIENT_NAME, ("山田",)).matches(record)
    assert PersonNameMatcher(PATIENT_NAME, ("tarou 山田",)).matches(record)


def test_fuzzy_option_gives_the_fuzzy_matcher_for_pn_only() -> None:
    ds = Dataset()
    ds.PatientName, ds.ReferringPhysicianName, ds.StudyDescription = "doe", "ref*", "X"
    keys = {
        key.keyword: key
        for key in parse_identifier(reencoded(ds), MatchOptions(fuzzy_person_names=True))
    }
    assert isinstance(keys["PatientName"].matcher, PersonNameMatcher)
    assert isinstance(keys["ReferringPhysicianName"].matcher, PersonNameMatcher)
    assert not isinstance(keys["StudyDescription"].matcher, PersonNameMatcher)


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("+0100", 60), ("-0530", -330), ("+0000", 0), ("+1400", 840), ("0100", None), ("+1500", None)],
)
def test_utc_offsets(text: str, minutes: int | None) -> None:
    assert utc_offset_minutes(text) == minutes


def _study(date: str, time: str, offset: str | None = None, **more: Any) -> JsonRecord:
    header = {
        "00080020": {"vr": "DA", "Value": [date]},
        "00080030": {"vr": "TM", "Value": [time]},
        **({"00080201": {"vr": "SH", "Value": [offset]}} if offset else {}),
        **more,
    }
    return JsonRecord(header)


def test_zoned_record_reads_dates_and_times_in_the_requesters_timezone() -> None:
    """PS3.4 C.2.2.2.1.3: a study at 23:30 on Jan 1 in -0500 is Jan 2, 05:30 in +0100."""
    record = ZonedRecord.of(_study("20240101", "2330", "-0500"), 60)
    assert record.values(int(Tag("StudyDate"))) == ["20240102"]
    assert record.values(int(Tag("StudyTime"))) == ["053000.000000"]


def test_zoned_record_leaves_values_without_a_known_offset() -> None:
    plain = _study("20240101", "2330")
    record = ZonedRecord.of(plain, 60)
    assert record.values(int(Tag("StudyDate"))) == ["20240101"]
    assert record.values(int(Tag("StudyTime"))) == ["2330"]
    # A date whose time is absent stays as it is.
    dated = JsonRecord(
        {
            "00080020": {"vr": "DA", "Value": ["20240101"]},
            "00080201": {"vr": "SH", "Value": ["-0500"]},
        }
    )
    assert ZonedRecord.of(dated, 60).values(int(Tag("StudyDate"))) == ["20240101"]


def test_zoned_record_applies_a_date_time_s_own_offset() -> None:
    acquisition = int(Tag("AcquisitionDateTime"))
    header = {
        f"{acquisition:08X}": {"vr": "DT", "Value": ["20240101233000-0500", "20240101233000"]},
        "00080201": {"vr": "SH", "Value": ["+0100"]},
    }
    record = ZonedRecord.of(JsonRecord(header), 0)
    assert record.values(acquisition) == ["20240102043000.000000", "20240101223000.000000"]


def test_zoned_record_items_inherit_the_entity_offset() -> None:
    step = {
        "00400002": {"vr": "DA", "Value": ["20261130"]},
        "00400003": {"vr": "TM", "Value": ["233000"]},
    }
    header = {
        "00400100": {"vr": "SQ", "Value": [step]},
        "00080201": {"vr": "SH", "Value": ["+0000"]},
    }
    [item] = ZonedRecord.of(JsonRecord(header), 120).items(0x00400100)
    assert item.values(0x00400002) == ["20261201"]
    assert item.values(0x00400003) == ["013000.000000"]


def test_person_name_matching_is_a_checked_rule_key() -> None:
    grant = _policy(person_name_matching="fuzzy").rules[0].grant
    assert grant is not None
    assert grant.person_name_matching == "fuzzy"
    default = _policy().rules[0].grant
    assert default is not None
    assert default.person_name_matching is None  # query.person_name_case_insensitive decides
    with pytest.raises(ValueError, match="person_name_matching"):
        _policy(person_name_matching="soundex")


def test_storage_reply_where_pacsd_only_sends() -> None:
    """B.3.1.2: on a context where the requestor took the SCP role alone (a C-GET's storage
    context), pacsd is an SCU only: level N/A (3), signature level 0, coercion N/A (2)."""
    accepted, _handle = _accept(
        ProposedContext(1, CT_IMAGE, (EXPLICIT,)),
        ProposedContext(3, PATIENT_GET, (IMPLICIT,)),
        policy=_policy(peer_scp_role=["storage"]),
        roles=(RoleSelection(CT_IMAGE, False, True),),
        extended=(ExtendedNegotiation(CT_IMAGE, bytes((2, 0, 3, 0, 0, 0))),),
    )
    assert (accepted.contexts[1].pacsd_scu, accepted.contexts[1].pacsd_scp) == (True, False)
    assert _replies(accepted) == {CT_IMAGE: bytes((3, 0, 0, 0, 2, 0))}


@pytest.mark.parametrize(
    ("negotiated", "rule", "case_insensitive", "expected"),
    [
        (ExtendedOptions(), None, False, (False, False, False)),
        (ExtendedOptions(), None, True, (True, False, False)),
        (ExtendedOptions(), "exact", True, (False, False, False)),  # the rule wins
        (ExtendedOptions(), "fuzzy", False, (False, True, False)),
        (ExtendedOptions(fuzzy_person_names=True), "exact", False, (False, True, False)),
        (ExtendedOptions(combined_date_time=True), None, False, (False, False, True)),
    ],
)
def test_match_options_from_negotiation_rule_and_settings(
    negotiated: ExtendedOptions,
    rule: str | None,
    case_insensitive: bool,
    expected: tuple[bool, bool, bool],
) -> None:
    """Negotiated fuzzy matching first, then the rule's person_name_matching, then
    query.person_name_case_insensitive; dates and times combine when negotiated."""
    policy = _policy(**({"person_name_matching": rule} if rule else {}))
    handle = ClientHandle.connect("127.0.0.1", 104)
    handle.decision = decide(AssociationRequest("SCU", "PACSD", "127.0.0.1"), policy)
    request = Request(
        Command({}), AcceptedContext(1, STUDY_FIND, IMPLICIT, extended=negotiated), b""
    )
    settings = QuerySettings(person_name_case_insensitive=case_insensitive)
    options = match_options(settings, request, handle)
    assert (
        options.person_name_case_insensitive,
        options.fuzzy_person_names,
        options.combined_date_time,
    ) == expected
    assert match_options(settings, request, handle, worklist=True).combined_date_time


def test_the_requester_timezone_comes_from_the_identifier_when_negotiated() -> None:
    ds = Dataset()
    ds.TimezoneOffsetFromUTC = "-0530"
    zoned = AcceptedContext(
        1, STUDY_FIND, IMPLICIT, extended=ExtendedOptions(timezone_adjustment=True)
    )
    assert query_zone(Request(Command({}), zoned, b""), ds) == -330
    plain = AcceptedContext(1, STUDY_FIND, IMPLICIT)
    assert query_zone(Request(Command({}), plain, b""), ds) is None
    assert query_zone(Request(Command({}), zoned, b""), Dataset()) is None
    assert matching_fields(MatchOptions(), -330, relational=True) == [
        "relational",
        "timezone -0530",
    ]
