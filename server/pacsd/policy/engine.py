"""Association acceptance: a pure function of the request and the configured rules.

The first rule that matches decides; no match rejects. In this first version every rule matches
every association (the matchers on AE titles, addresses and identities arrive with the policy
engine's own issue); what a rule grants is a set of service groups. Nothing here does I/O or
imports pynetdicom, so every decision can be unit-tested with plain values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pacsd.settings import PolicyRule, Service


@dataclass(frozen=True)
class Rejection:
    """A-ASSOCIATE-RJ parameters (PS3.8 9.3.4): result, source and reason/diagnostic."""

    result: int
    source: int
    reason: int

    def describe(self) -> str:
        """The three codes, for logs."""
        return f"result={self.result} source={self.source} reason={self.reason}"


# PS3.8 Table 9-21. Result 1 permanent, 2 transient; source 1 is the DICOM UL service-user.
REJECT_NO_REASON = Rejection(result=1, source=1, reason=1)
REJECT_CALLING_AE_NOT_RECOGNISED = Rejection(result=1, source=1, reason=3)
REJECT_TRANSIENT_NO_REASON = Rejection(result=2, source=1, reason=1)


@dataclass(frozen=True)
class AssociationRequest:
    """What the policy may look at: who asks, whom they call, from where."""

    calling_ae_title: str
    called_ae_title: str
    peer_address: str
    peer_port: int


@dataclass(frozen=True)
class Decision:
    """Accept with the granted service groups, or reject with A-ASSOCIATE-RJ codes."""

    accepted: bool
    rule: str | None
    services: frozenset[Service]
    rejection: Rejection | None
    reason: str

    @classmethod
    def reject(cls, rejection: Rejection, reason: str, rule: str | None = None) -> Decision:
        """A rejection decision."""
        return cls(False, rule, frozenset(), rejection, reason)


def decide(request: AssociationRequest, rules: Sequence[PolicyRule]) -> Decision:
    """Decide an association request: the first matching rule wins, no match rejects."""
    for rule in rules:
        if not _matches(rule, request):
            continue
        if rule.action == "reject":
            return Decision.reject(REJECT_NO_REASON, f"rule {rule.name!r} rejects", rule.name)
        return Decision(
            accepted=True,
            rule=rule.name,
            services=frozenset(rule.services),
            rejection=None,
            reason=f"rule {rule.name!r} accepts",
        )
    return Decision.reject(REJECT_CALLING_AE_NOT_RECOGNISED, "no policy rule matches")


def _matches(rule: PolicyRule, request: AssociationRequest) -> bool:
    """Every rule matches for now; the policy engine issue adds AE/address/identity matchers."""
    return True
