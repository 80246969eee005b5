"""The acceptance decision: a pure function of the request and the rules."""

from __future__ import annotations

from pacsd.policy.engine import (
    REJECT_CALLING_AE_NOT_RECOGNISED,
    REJECT_NO_REASON,
    AssociationRequest,
    decide,
)
from pacsd.settings import PolicyRule, Service

REQUEST = AssociationRequest("CT1", "PACSD", "10.1.2.3", 40000)


def test_first_rule_decides() -> None:
    """The first rule wins: an accepting rule grants its services."""
    rules = [
        PolicyRule(name="echo-only", services=[Service.VERIFICATION]),
        PolicyRule(name="all"),
    ]
    decision = decide(REQUEST, rules)
    assert decision.accepted
    assert decision.rule == "echo-only"
    assert decision.services == frozenset({Service.VERIFICATION})


def test_reject_rule_rejects_without_reason() -> None:
    """action: reject answers rejected-permanent, service-user, no-reason-given (1, 1, 1)."""
    decision = decide(REQUEST, [PolicyRule(name="closed", action="reject"), PolicyRule(name="a")])
    assert not decision.accepted
    assert decision.rejection == REJECT_NO_REASON
    assert decision.rule == "closed"


def test_no_rule_rejects_calling_ae_not_recognised() -> None:
    """No matching rule: rejected-permanent, calling AE title not recognised (1, 1, 3)."""
    decision = decide(REQUEST, [])
    assert not decision.accepted
    assert decision.rejection == REJECT_CALLING_AE_NOT_RECOGNISED
    assert (decision.rejection.result, decision.rejection.source, decision.rejection.reason) == (
        1,
        1,
        3,
    )
