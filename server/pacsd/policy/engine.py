"""Acceptance policies as pure functions: `decide(request) -> Decision`, `allow(...)`.

The first rule whose `match` fits the association decides; no match rejects. A rule is compiled
once per configuration (groups expanded, transfer syntaxes ordered), so deciding costs a few
comparisons. Nothing here does I/O or imports pynetdicom: every decision can be unit-tested with
plain values, and `pacsd policy explain` runs the same code without a server.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from typing import Protocol

from pacsd.dicom import sop_classes, transfer_syntaxes
from pacsd.policy.identity import IdentityResult, IdentityVerifier, Outcome
from pacsd.policy.rules import CALLING_AE, Match, PolicyRule, RejectReason


@dataclass(frozen=True)
class Rejection:
    """A-ASSOCIATE-RJ parameters (PS3.8 9.3.4): result, source and reason/diagnostic."""

    result: int
    source: int
    reason: int

    def describe(self) -> str:
        """The three codes, for logs."""
        return f"result={self.result} source={self.source} reason={self.reason}"


# PS3.8 Table 9-21. Result 1 rejected-permanent, 2 rejected-transient. Source 1 is the DICOM UL
# service-user, 3 the service-provider's presentation-related function.
REJECTIONS: dict[RejectReason, Rejection] = {
    RejectReason.NO_REASON: Rejection(1, 1, 1),
    RejectReason.APPLICATION_CONTEXT_NOT_SUPPORTED: Rejection(1, 1, 2),
    RejectReason.CALLING_AE_NOT_RECOGNISED: Rejection(1, 1, 3),
    RejectReason.CALLED_AE_NOT_RECOGNISED: Rejection(1, 1, 7),
    RejectReason.TEMPORARY_CONGESTION: Rejection(2, 3, 1),
    RejectReason.LOCAL_LIMIT_EXCEEDED: Rejection(2, 3, 2),
}
REJECT_NO_REASON = REJECTIONS[RejectReason.NO_REASON]
REJECT_CALLING_AE_NOT_RECOGNISED = REJECTIONS[RejectReason.CALLING_AE_NOT_RECOGNISED]
REJECT_LOCAL_LIMIT_EXCEEDED = REJECTIONS[RejectReason.LOCAL_LIMIT_EXCEEDED]
# Fail closed: an error while deciding is the acceptor's problem, so transient and no reason.
REJECT_TRANSIENT_NO_REASON = Rejection(2, 1, 1)
# PS3.7 D.3.3.7 (Supplement 99): an association refused for a failed user identity is rejected
# permanent with source "DICOM UL service-provider (ACSE related function)"; PS3.8 Table 9-21
# gives that source reason 1, no-reason-given. (pynetdicom's own EVT_USER_ID path sends 2/2/1.)
REJECT_USER_IDENTITY = Rejection(1, 2, 1)


@dataclass(frozen=True)
class AssociationRequest:
    """What a policy may look at: who asks, whom they call, from where, as whom."""

    calling_ae_title: str
    called_ae_title: str
    peer_address: str
    peer_port: int = 0
    username: str | None = None  # a verified user identity (PS3.7 D.3.3.7), else None
    tls_subject: str | None = None  # the client certificate's subject, RFC 4514
    # What verifying the sent user identity found; None: `username` alone says (explain, tests).
    identity: IdentityResult | None = None


@dataclass(frozen=True, eq=False)
class Grant:
    """What an accepting rule allows, expanded to UIDs; compared (and hashed) by identity."""

    transfer_syntaxes: Mapping[str, tuple[str, ...]]  # SOP class UID -> syntaxes, preferred first
    peer_scp: frozenset[str]  # SOP classes for which the peer may take the SCP role
    operations: frozenset[str]
    move_destinations: tuple[str, ...]
    max_pdu_size: int | None
    async_operations_window: int
    user_identity: str = "optional"  # the rule's user identity requirement (rules.py)
    # Every private SOP class (sop_classes.is_private) is accepted with these syntaxes; None: no.
    private_storage: tuple[str, ...] | None = None
    private_peer_scp: bool = False  # ... and the peer may take the SCP role for them
    # "exact", "case-insensitive" or "fuzzy" (rules.PersonNameMatching); None: the global
    # query setting decides.
    person_name_matching: str | None = None
    # Storage SOP classes unknown to pacsd that one association was granted as a related general
    # SOP class (PS3.4 B.3.1.4, PS3.7 D.3.3.6): specialized UID -> general UID (`specialized`).
    related_general: Mapping[str, str] = field(default_factory=dict)

    @property
    def sop_classes(self) -> frozenset[str]:
        """The accepted SOP class UIDs the standard names (private ones: `private_storage`)."""
        return frozenset(self.transfer_syntaxes)

    def syntaxes_for(self, sop_class_uid: str) -> tuple[str, ...] | None:
        """The transfer syntaxes accepted for a SOP class, preferred first; None: not granted."""
        syntaxes = self.transfer_syntaxes.get(sop_class_uid)
        private = self.private_storage
        if syntaxes is None and private is not None and sop_classes.is_private(sop_class_uid):
            return private
        general = self.related_general.get(sop_class_uid)
        if syntaxes is None and general is not None:
            return self.syntaxes_for(general)
        return syntaxes

    def peer_may_be_scp(self, sop_class_uid: str) -> bool:
        """May the peer take the SCP role (PS3.7 D.3.3.4) for this SOP class?"""
        if sop_class_uid in self.peer_scp:
            return True
        general = self.related_general.get(sop_class_uid)
        if general is not None:
            return self.peer_may_be_scp(general)
        private = self.private_storage is not None and sop_classes.is_private(sop_class_uid)
        return self.private_peer_scp and private

    def specialized(self, related: Mapping[str, str]) -> Grant:
        """This grant for one association that also accepts each SOP class of `related` as
        its related general SOP class (same syntaxes, roles and operations)."""
        return replace(self, related_general={**self.related_general, **related})

    def offered_pdu_size(self, network_max_pdu_size: int) -> int:
        """The maximum PDU pacsd offers: the smaller of the network's and the rule's; 0 = none."""
        sizes = [size for size in (network_max_pdu_size, self.max_pdu_size) if size]
        return min(sizes) if sizes else 0


@dataclass(frozen=True)
class CompiledRule:
    """A rule ready to match: its configuration plus the grant or rejection it leads to."""

    source: PolicyRule
    grant: Grant | None
    rejection: Rejection | None

    @property
    def name(self) -> str:
        """The rule's name."""
        return self.source.name

    def mismatch(self, request: AssociationRequest) -> str | None:
        """Why this rule does not match `request`, or None when it does."""
        return _mismatch(self.source.match, request)


@dataclass(frozen=True)
class Policy:
    """The compiled rules of one configuration, plus the global association limit."""

    rules: tuple[CompiledRule, ...]
    max_associations: int | None = None
    identity: IdentityVerifier = field(default_factory=IdentityVerifier)  # users, JWT keys
    # One peer address's share of the associations, so that a flood from one host (or a
    # misbehaving modality) cannot take every slot from the others.
    max_associations_per_address: int | None = None

    @classmethod
    def compile(
        cls,
        rules: Sequence[PolicyRule],
        max_associations: int | None = None,
        identity: IdentityVerifier | None = None,
        max_associations_per_address: int | None = None,
    ) -> Policy:
        """Expand every rule once; raises ValueError on a name the catalogues do not know."""
        compiled = tuple(_compile(rule) for rule in rules)
        verifier = identity or IdentityVerifier()
        return cls(compiled, max_associations, verifier, max_associations_per_address)


class Usage(Protocol):
    """How many accepted associations are live, for the limits."""

    def total(self) -> int:
        """All of them."""
        ...

    def of_rule(self, rule: str) -> int:
        """Those accepted by `rule`."""
        ...

    def of_calling_ae(self, rule: str, calling_ae_title: str) -> int:
        """Those accepted by `rule` for `calling_ae_title`."""
        ...

    def of_address(self, address: str) -> int:
        """Those from peer address `address`."""
        ...


class NoUsage:
    """No association is live (explain, tests)."""

    def total(self) -> int:
        """Zero."""
        return 0

    def of_rule(self, rule: str) -> int:
        """Zero."""
        return 0

    def of_calling_ae(self, rule: str, calling_ae_title: str) -> int:
        """Zero."""
        return 0

    def of_address(self, address: str) -> int:
        """Zero."""
        return 0


@dataclass(frozen=True)
class Decision:
    """Accept with a grant, or reject with A-ASSOCIATE-RJ codes; `trace` says why."""

    accepted: bool
    rule: str | None
    grant: Grant | None
    rejection: Rejection | None
    reason: str
    request: AssociationRequest | None = None
    trace: tuple[str, ...] = field(default=())

    @classmethod
    def reject(
        cls,
        rejection: Rejection,
        reason: str,
        rule: str | None = None,
        request: AssociationRequest | None = None,
        trace: tuple[str, ...] = (),
    ) -> Decision:
        """A rejection decision."""
        return cls(False, rule, None, rejection, reason, request, trace)


def decide(request: AssociationRequest, policy: Policy, usage: Usage | None = None) -> Decision:
    """Decide an association request. Never raises: an error rejects (fail closed)."""
    try:
        return _decide(request, policy, usage or NoUsage())
    except Exception as exc:  # fail closed (STYLE.md): an error never means "accept"
        return Decision.reject(
            REJECT_TRANSIENT_NO_REASON,
            f"policy evaluation failed: {type(exc).__name__}: {exc}",
            request=request,
        )


def _decide(request: AssociationRequest, policy: Policy, usage: Usage) -> Decision:
    trace: list[str] = []
    for rule in policy.rules:
        why_not = rule.mismatch(request)
        failed = _failed_identity(rule, request) if why_not is not None else None
        if failed is not None:
            # A rule that would match but for a user identity that failed verification decides:
            # the identity is refused (PS3.7 D.3.3.7), not the calling AE title, and no later
            # rule gets to accept the peer without it.
            trace.append(f"rule {rule.name!r} matches on username; the identity sent failed")
            problem = f"user identity not verified: {failed}"
            return Decision.reject(REJECT_USER_IDENTITY, problem, rule.name, request, tuple(trace))
        if why_not is not None:
            trace.append(f"rule {rule.name!r} does not match: {why_not}")
            continue
        trace.append(f"rule {rule.name!r} matches")
        if rule.grant is None:
            rejection = rule.rejection or REJECT_NO_REASON
            reason = f"rule {rule.name!r} rejects ({rule.source.reject_reason})"
            return Decision.reject(rejection, reason, rule.name, request, tuple(trace))
        refused = _identity_refused(rule.source.user_identity, request)
        if refused is not None:
            return Decision.reject(REJECT_USER_IDENTITY, refused, rule.name, request, tuple(trace))
        over = _over_limit(rule, request, policy, usage)
        if over is not None:
            return Decision.reject(
                REJECT_LOCAL_LIMIT_EXCEEDED, over, rule.name, request, tuple(trace)
            )
        reason = f"rule {rule.name!r} accepts"
        return Decision(True, rule.name, rule.grant, None, reason, request, tuple(trace))
    trace.append("no rule matches")
    return Decision.reject(
        REJECT_CALLING_AE_NOT_RECOGNISED, "no policy rule matches", None, request, tuple(trace)
    )


def _failed_identity(rule: CompiledRule, request: AssociationRequest) -> str | None:
    """Why the user identity sent failed verification (a wrong password, an unknown user, a
    bad token), when `rule` matches on `username` and would fit `request` but for it."""
    match, identity = rule.source.match, request.identity
    if match.username is None or rule.source.user_identity == "not-accepted":
        return None
    if identity is None or identity.outcome is not Outcome.FAILED:
        return None
    others_fit = _mismatch(match.model_copy(update={"username": None}), request) is None
    return identity.reason if others_fit else None


def _identity_refused(requirement: str, request: AssociationRequest) -> str | None:
    """Why the rule's user identity requirement refuses `request`, or None."""
    result = request.identity
    if requirement == "not-accepted":
        return None  # the sent identity is ignored, whatever it was
    if result is None:  # no verification record: a username given is taken as verified
        verified = request.username is not None
        outcome = Outcome.VERIFIED if verified else Outcome.NONE
        result = IdentityResult(outcome, username=request.username, reason="no user identity sent")
    if result.outcome is Outcome.FAILED:
        # Also for "optional": a wrong password fails loudly instead of falling back to
        # anonymous access the operator may not expect.
        return f"user identity not verified: {result.reason}"
    if requirement == "required" and result.outcome is not Outcome.VERIFIED:
        return f"user identity required: {result.reason}"
    return None


def _over_limit(
    rule: CompiledRule, request: AssociationRequest, policy: Policy, usage: Usage
) -> str | None:
    limits = rule.source.limits
    if policy.max_associations is not None and usage.total() >= policy.max_associations:
        return f"local limit exceeded: {policy.max_associations} associations (network)"
    per_address = policy.max_associations_per_address
    if per_address is not None and usage.of_address(request.peer_address) >= per_address:
        return (
            f"local limit exceeded: {per_address} associations from {request.peer_address} "
            "(network.max_associations_per_address)"
        )
    if limits.max_associations is not None and usage.of_rule(rule.name) >= limits.max_associations:
        return f"local limit exceeded: {limits.max_associations} associations (rule {rule.name!r})"
    per_ae = limits.max_associations_per_calling_ae
    if per_ae is not None and usage.of_calling_ae(rule.name, request.calling_ae_title) >= per_ae:
        return (
            f"local limit exceeded: {per_ae} associations per calling AE title (rule {rule.name!r})"
        )
    return None


def fits(value: str | None, patterns: Sequence[str]) -> bool:
    return value is not None and any(fnmatchcase(value, pattern) for pattern in patterns)


def address_fits(address: str, networks: Sequence[str]) -> bool:
    peer = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped  # ::ffff:10.1.2.3 is 10.1.2.3 on a dual-stack socket
    return any(peer in ipaddress.ip_network(network) for network in networks)


def _mismatch(match: Match, request: AssociationRequest) -> str | None:
    checks: list[tuple[str, str | None, Sequence[str] | None]] = [
        ("calling AE title", request.calling_ae_title, match.calling_ae),
        ("called AE title", request.called_ae_title, match.called_ae),
        ("TLS subject", request.tls_subject, match.tls_subject),
        ("username", request.username, match.username),
    ]
    for what, value, patterns in checks:
        if patterns is not None and not fits(value, patterns):
            shown = "none" if value is None else repr(value)
            return f"{what} {shown} is not one of {', '.join(patterns)}"
    if match.address is not None and not address_fits(request.peer_address, match.address):
        return f"address {request.peer_address} is not in {', '.join(match.address)}"
    return None


def _expand(tokens: Sequence[str]) -> frozenset[str]:
    return frozenset().union(*(sop_classes.resolve(token) for token in tokens))


def _covers_private(tokens: Sequence[str]) -> bool:
    return any(sop_classes.covers_private(token) for token in tokens)


def _syntaxes(tokens: Sequence[str]) -> tuple[str, ...]:
    ordered = [uid for token in tokens for uid in transfer_syntaxes.resolve(token)]
    return tuple(dict.fromkeys(ordered))


def _compile(rule: PolicyRule) -> CompiledRule:
    if rule.action == "reject":
        rejection = REJECTIONS[rule.reject_reason]
        if rule.reject_result is not None:
            result = 1 if rule.reject_result == "permanent" else 2
            rejection = Rejection(result, rejection.source, rejection.reason)
        return CompiledRule(rule, None, rejection)
    accepted = _expand(rule.sop_classes) - _expand(rule.exclude_sop_classes)
    default = _syntaxes(rule.transfer_syntaxes)
    overrides = [
        (_expand(o.sop_classes), _syntaxes(o.transfer_syntaxes))
        for o in rule.transfer_syntax_overrides
    ]
    per_class: dict[str, tuple[str, ...]] = {}
    for uid in sorted(accepted):
        if not sop_classes.is_storage(uid):
            # Commands and identifiers of the other services travel uncompressed.
            per_class[uid] = transfer_syntaxes.VERIFICATION_PREFERENCE
            continue
        per_class[uid] = next((ts for members, ts in overrides if uid in members), default)
    private = _covers_private(rule.sop_classes) and not _covers_private(rule.exclude_sop_classes)
    private_syntaxes = next(
        (ts for o, (_, ts) in zip(rule.transfer_syntax_overrides, overrides, strict=True)
         if _covers_private(o.sop_classes)),
        default,
    )  # fmt: skip
    operations = (
        frozenset(rule.operations)
        if rule.operations is not None
        else frozenset(sop_classes.operation_of(uid) for uid in accepted) - {"other"}
        | ({"store"} if private else frozenset())
    )
    grant = Grant(
        transfer_syntaxes=per_class,
        peer_scp=_expand(rule.peer_scp_role) & accepted,
        operations=operations,
        move_destinations=tuple(rule.move_destinations),
        max_pdu_size=rule.limits.max_pdu_size,
        async_operations_window=rule.limits.async_operations_window,
        user_identity=rule.user_identity,
        private_storage=private_syntaxes if private else None,
        private_peer_scp=private and _covers_private(rule.peer_scp_role),
        person_name_matching=rule.person_name_matching,
    )
    return CompiledRule(rule, grant, None)


class HasDecision(Protocol):
    """Anything that carries an association's decision (a ClientHandle)."""

    @property
    def decision(self) -> Decision | None:
        """The decision taken when the association was requested."""
        ...


@dataclass(frozen=True)
class Permission:
    """The answer of `allow`: yes or no, and why."""

    allowed: bool
    reason: str


def allow(
    subject: HasDecision, operation: str, sop_class_uid: str, destination: str | None = None
) -> Permission:
    """May the association of `subject` run `operation` on `sop_class_uid` (to `destination`)?"""
    decision = subject.decision
    if decision is None or decision.grant is None:
        return Permission(False, "the association has no accepting decision")
    grant, rule = decision.grant, decision.rule
    if operation not in grant.operations:
        return Permission(False, f"operation {operation} is not allowed by rule {rule!r}")
    if grant.syntaxes_for(sop_class_uid) is None:
        keyword = sop_classes.sop_class_keyword(sop_class_uid)
        return Permission(False, f"SOP class {keyword} is not accepted by rule {rule!r}")
    if operation == "move":
        calling = decision.request.calling_ae_title if decision.request else None
        if not _destination_allowed(destination, grant.move_destinations, calling):
            return Permission(
                False, f"move destination {destination!r} is not allowed by rule {rule!r}"
            )
    return Permission(True, f"allowed by rule {rule!r}")


def _destination_allowed(
    destination: str | None, allowed: Sequence[str], calling_ae_title: str | None
) -> bool:
    if destination is None:
        return False
    for pattern in allowed:
        if pattern == CALLING_AE:
            if destination == calling_ae_title:
                return True
        elif fnmatchcase(destination, pattern):
            return True
    return False
