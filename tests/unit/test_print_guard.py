"""The guard authorises a message of a Meta SOP Class's member class by the meta class its
context negotiated (PS3.4 H.3): a rule that grants the Basic Grayscale Print Management Meta SOP
Class lets the peer send Film Session, Film Box, Image Box and Printer messages on it."""

from __future__ import annotations

from pydicom.uid import ImplicitVRLittleEndian

from pacsd.dicom.sop_classes import (
    BASIC_COLOR_IMAGE_BOX,
    BASIC_FILM_SESSION,
    BASIC_GRAYSCALE_PRINT_META,
)
from pacsd.dimse import commands as c
from pacsd.dimse.commands import Command
from pacsd.dimse.messages import AcceptedContext, Request
from pacsd.handle import ClientHandle
from pacsd.policy.engine import AssociationRequest, Policy, decide
from pacsd.policy.rules import PolicyRule
from pacsd.services.guard import OperationResult, run_operation


def _handle(sop_classes: list[str]) -> ClientHandle:
    handle = ClientHandle.connect("127.0.0.1", 40000)
    policy = Policy.compile([PolicyRule(name="printing", sop_classes=sop_classes)])
    handle.decision = decide(AssociationRequest("SCU", "PACSD", "127.0.0.1"), policy)
    assert handle.decision.accepted
    return handle


def _request(sop_class: str, context_sop_class: str) -> Request:
    command = Command(
        {c.AFFECTED_SOP_CLASS_UID: sop_class, c.COMMAND_FIELD: c.N_CREATE_RQ, c.MESSAGE_ID: 1}
    )
    return Request(command, AcceptedContext(1, context_sop_class, ImplicitVRLittleEndian), None)


def _succeed(request: Request, handle: ClientHandle) -> OperationResult:
    return OperationResult(0x0000)


def test_member_class_on_meta_context_is_authorised_by_the_meta_class() -> None:
    """A rule naming only the meta class: a Film Session N-CREATE on its context is allowed."""
    handle = _handle(["verification", BASIC_GRAYSCALE_PRINT_META])
    request = _request(BASIC_FILM_SESSION, BASIC_GRAYSCALE_PRINT_META)
    assert run_operation("print", _succeed, request, handle).status == 0x0000


def test_member_class_on_its_own_context_needs_its_own_grant() -> None:
    """The same message on a context of the Film Session class itself: not granted (0x0124)."""
    handle = _handle(["verification", BASIC_GRAYSCALE_PRINT_META])
    request = _request(BASIC_FILM_SESSION, BASIC_FILM_SESSION)
    assert run_operation("print", _succeed, request, handle).status == 0x0124


def test_a_class_outside_the_meta_class_is_not_covered_by_it() -> None:
    """A Color Image Box is no member of the grayscale meta class: its grant does not cover it."""
    handle = _handle(["verification", BASIC_GRAYSCALE_PRINT_META])
    request = _request(BASIC_COLOR_IMAGE_BOX, BASIC_GRAYSCALE_PRINT_META)
    assert run_operation("print", _succeed, request, handle).status == 0x0124


def test_a_rule_without_the_meta_class_refuses_its_members() -> None:
    """A rule that grants verification only: a Film Session on a meta context is refused."""
    handle = _handle(["verification"])
    request = _request(BASIC_FILM_SESSION, BASIC_GRAYSCALE_PRINT_META)
    assert run_operation("print", _succeed, request, handle).status == 0x0124
