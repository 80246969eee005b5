"""Acceptance policies applied by a real pacsd to real pynetdicom associations."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
)
from pynetdicom import build_role
from pynetdicom.pdu_primitives import (
    AsynchronousOperationsWindowNegotiation,
    UserIdentityNegotiation,
)
from pynetdicom.sop_class import CTImageStorage, MRImageStorage

from tests import datagen
from tests.harness import VERIFICATION, PacsdProcess
from tests.inspect_archive import index_rows, stored_files
from tests.scu import UNCOMPRESSED, established, rejection_of, request

ServerFactory = Callable[..., PacsdProcess]


def rule(name: str, **fields: Any) -> dict[str, Any]:
    """A policy rule as an operator writes it."""
    return {"name": name, **fields}


def ct_file(tmp_path: Path, name: str = "ct.dcm") -> Path:
    """A small CT image as a Part 10 file."""
    dataset = datagen.ct_image(datagen.StudyContext(), size=64)
    return datagen.write_part10(dataset, tmp_path / name)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (rule("r", action="reject", reject_reason="called-ae-not-recognised"), (1, 1, 7)),
        (rule("r", action="reject", reject_reason="temporary-congestion"), (2, 3, 1)),
        (
            rule("r", action="reject", reject_reason="no-reason", reject_result="transient"),
            (2, 1, 1),
        ),
        (rule("r", match={"calling_ae": "SOMEONE_ELSE"}, sop_classes=["verification"]), (1, 1, 3)),
        (rule("r", match={"address": "10.0.0.0/8"}, sop_classes=["verification"]), (1, 1, 3)),
    ],
)
def test_rejections_carry_the_configured_codes(
    pacsd_server: ServerFactory, policy: dict[str, Any], expected: tuple[int, int, int]
) -> None:
    """A rejecting rule answers its own result/source/reason; no matching rule answers 1/1/3."""
    server = pacsd_server(policies=[policy], ready_by_echo=False)
    assert rejection_of(request(server)) == expected
    [line] = server.wait_for("association rejected")
    assert line["rejection"] == "result={} source={} reason={}".format(*expected)


def test_matchers_select_the_rule(pacsd_server: ServerFactory) -> None:
    """Calling AE globs, called AE, loopback CIDR and usernames pick the first fitting rule."""
    policies = [
        rule("by-user", match={"username": "alice"}, sop_classes=["verification"]),
        rule(
            "modalities",
            match={"calling_ae": ["CT?", "MR_*"], "called_ae": "PACSD", "address": "127.0.0.0/8"},
            sop_classes=["verification"],
        ),
        rule("others", action="reject", reject_reason="calling-ae-not-recognised"),
    ]
    # match.username sees verified names only: alice is a configured user (username only).
    identity = {"users": [{"username": "alice"}]}
    server = pacsd_server(policies=policies, identity=identity, ready_by_echo=False)
    alice = UserIdentityNegotiation()
    alice.user_identity_type = 1
    alice.primary_field = b"alice"
    with established(server, calling="ANYONE", ext_neg=[alice]):
        pass
    for calling in ("CT1", "MR_HEAD"):
        with established(server, calling=calling):
            pass
    assert rejection_of(request(server, calling="CT12")) == (1, 1, 3)
    assert rejection_of(request(server, calling="CT1", called="OTHER")) == (1, 1, 3)
    accepted = [line["rule"] for line in server.accepted_associations(3)]
    assert accepted == ["by-user", "modalities", "modalities"]


def test_forbidden_sop_class_is_rejected_inside_an_accepted_association(
    pacsd_server: ServerFactory, tmp_path: Path
) -> None:
    """Only the rule's SOP classes are accepted; the rest answer 'abstract syntax not supported'."""
    policy = rule("ct-only", sop_classes=["verification", "CTImageStorage"])
    server = pacsd_server(policies=[policy])
    contexts = [(CTImageStorage, UNCOMPRESSED), (MRImageStorage, UNCOMPRESSED)]
    with established(server, contexts=[*contexts, (VERIFICATION, UNCOMPRESSED)]) as assoc:
        rejected = {str(cx.abstract_syntax): cx.result for cx in assoc.rejected_contexts}
        assert rejected == {MRImageStorage: 0x03}
        assert int(assoc.send_c_store(ct_file(tmp_path)).Status) == 0x0000


def test_transfer_syntax_preference_and_exclusion(pacsd_server: ServerFactory) -> None:
    """The rule's order picks the syntax; a syntax it does not list is never chosen."""
    policy = rule(
        "lossless-ct",
        sop_classes=["verification", "storage:image"],
        transfer_syntaxes=["uncompressed", "lossless"],
        transfer_syntax_overrides=[
            {"sop_classes": ["MRImageStorage"], "transfer_syntaxes": ["lossless", "uncompressed"]}
        ],
    )
    server = pacsd_server(policies=[policy])
    contexts = [
        (CTImageStorage, [JPEGBaseline8Bit, JPEG2000Lossless, ExplicitVRLittleEndian]),
        (CTImageStorage, [JPEGBaseline8Bit]),
        (MRImageStorage, [ExplicitVRLittleEndian, JPEG2000Lossless]),
    ]
    with established(server, contexts=contexts) as assoc:
        chosen = {cx.context_id: str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
        assert chosen == {1: ExplicitVRLittleEndian, 5: JPEG2000Lossless}
        assert [(cx.context_id, cx.result) for cx in assoc.rejected_contexts] == [(3, 0x04)]


def test_scp_role_for_c_get_only_where_the_rule_allows(pacsd_server: ServerFactory) -> None:
    """A peer asking to be SCP for CT storage (C-GET) gets it under one rule and not another."""
    policies = [
        rule(
            "getter",
            match={"calling_ae": "GETSCU"},
            sop_classes=["storage"],
            peer_scp_role=["storage:image"],
        ),
        rule("pusher", sop_classes=["storage"]),
    ]
    server = pacsd_server(policies=policies, ready_by_echo=False)
    contexts = [(CTImageStorage, UNCOMPRESSED)]
    role = [build_role(CTImageStorage, scu_role=False, scp_role=True)]
    with established(server, calling="GETSCU", contexts=contexts, roles=role) as assoc:
        [context] = assoc.accepted_contexts
        assert (context.as_scu, context.as_scp) == (False, True)  # the peer's roles
    # Under "pusher" the peer may only be SCU; asking for the SCP role alone leaves no role.
    assoc = request(server, calling="OTHER", contexts=contexts, roles=role)
    assert not assoc.accepted_contexts
    assert [cx.result for cx in assoc.rejected_contexts] == [0x01]
    both = [build_role(CTImageStorage, scu_role=True, scp_role=True)]
    with established(server, calling="OTHER", contexts=contexts, roles=both) as assoc:
        [context] = assoc.accepted_contexts
        assert (context.as_scu, context.as_scp) == (True, False)


def test_forbidden_operation_is_refused_and_nothing_is_stored(
    pacsd_server: ServerFactory, tmp_path: Path
) -> None:
    """Storage contexts accepted (for C-GET), but `store` not granted: C-STORE answers 0x0124."""
    policy = rule(
        "viewer",
        sop_classes=["verification", "storage"],
        peer_scp_role=["storage"],
        operations=["echo", "find", "get", "move"],
    )
    server = pacsd_server(policies=[policy])
    contexts = [(CTImageStorage, UNCOMPRESSED), (VERIFICATION, UNCOMPRESSED)]
    with established(server, contexts=contexts) as assoc:
        response = assoc.send_c_store(ct_file(tmp_path))
        assert int(response.Status) == 0x0124
        assert "not allowed" in str(response.ErrorComment)
        assert int(assoc.send_c_echo().Status) == 0x0000
    database = f"sqlite:///{server.config_path.parent / 'index.sqlite'}"
    assert index_rows(database) == []
    assert stored_files(server.storage_root) == {}
    [refused] = server.events("operation refused by policy")
    assert "store" in refused["reason"]


def test_rule_limits_and_the_global_limit(pacsd_server: ServerFactory) -> None:
    """The N+1th association gets transient local-limit-exceeded; the first N keep working."""
    policies = [
        rule(
            "per-ae",
            match={"calling_ae": "AE*"},
            sop_classes=["verification"],
            limits={"max_associations_per_calling_ae": 1},
        ),
        rule(
            "two",
            match={"calling_ae": "TWO*"},
            sop_classes=["verification"],
            limits={"max_associations": 2},
        ),
        rule("rest", sop_classes=["verification"]),
    ]
    server = pacsd_server(policies=policies, network={"max_associations": 5}, ready_by_echo=False)
    with ExitStack() as stack:
        first = [stack.enter_context(established(server, calling=f"TWO{n}")) for n in (1, 2)]
        assert rejection_of(request(server, calling="TWO3")) == (2, 3, 2)
        stack.enter_context(established(server, calling="AE1"))
        assert rejection_of(request(server, calling="AE1")) == (2, 3, 2)
        stack.enter_context(established(server, calling="AE2"))
        stack.enter_context(established(server, calling="REST"))  # the 5th
        assert rejection_of(request(server, calling="REST")) == (2, 3, 2)  # global limit
        assert all(int(assoc.send_c_echo().Status) == 0 for assoc in first)
        first[0].release()
        # Slots are given back when the connection closes, a moment after the release.
        _eventually_established(server, calling="TWO3")
    reasons = [line["reason"] for line in server.events("association rejected")]
    assert any("rule 'two'" in reason for reason in reasons)
    assert any("per calling AE title" in reason for reason in reasons)
    assert any("(network)" in reason for reason in reasons)


def _eventually_established(server: PacsdProcess, calling: str, attempts: int = 50) -> None:
    for _ in range(attempts):
        assoc = request(server, calling=calling)
        if assoc.is_established:
            assoc.release()
            return
    raise AssertionError(f"{calling} never got an association after a slot was freed")


def test_pdu_size_and_async_window_follow_the_rule(pacsd_server: ServerFactory) -> None:
    """pacsd offers the rule's maximum PDU and grants at most the rule's operations window."""
    policies = [
        rule(
            "tuned",
            match={"calling_ae": "TUNED"},
            sop_classes=["verification"],
            limits={"max_pdu_size": 16384, "async_operations_window": 4},
        ),
        rule("plain", sop_classes=["verification"]),
    ]
    server = pacsd_server(policies=policies, ready_by_echo=False)
    window = AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked = 8
    window.maximum_number_operations_performed = 8
    with established(server, calling="TUNED", ext_neg=[window]) as assoc:
        assert assoc.acceptor.maximum_length == 16384
        assert assoc.acceptor.asynchronous_operations == (4, 1)
        assert int(assoc.send_c_echo().Status) == 0x0000
    with established(server, calling="PLAIN", ext_neg=[window]) as assoc:
        assert assoc.acceptor.maximum_length == 262144
        assert assoc.acceptor.asynchronous_operations == (1, 1)
