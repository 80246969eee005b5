"""`pacsd policy explain`: what the configured policy does with one association, and why.

Runs the engine the server runs (same compile, same decide, same allow), without a server.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import UID

from pacsd.dicom import sop_classes, transfer_syntaxes
from pacsd.engine.negotiation import is_served
from pacsd.policy.engine import AssociationRequest, Decision, Grant, allow, decide
from pacsd.runtime import compile_policy
from pacsd.settings import Settings


@dataclass(frozen=True)
class Question:
    """What the operator asks about, beyond the association request."""

    sop_class: str | None = None
    transfer_syntax: str | None = None
    operation: str | None = None
    destination: str | None = None


@dataclass(frozen=True)
class Explanation:
    """The lines to print and whether everything asked about would be allowed."""

    lines: list[str]
    allowed: bool


@dataclass(frozen=True)
class _Subject:
    decision: Decision | None


def explain(settings: Settings, request: AssociationRequest, question: Question) -> Explanation:
    """Explain the decision for `request` and the answers to `question`."""
    decision = decide(request, compile_policy(settings))
    lines = [_describe_request(request), *decision.trace]
    if decision.grant is None:
        codes = decision.rejection.describe() if decision.rejection else ""
        lines.append(f"decision: REJECT ({codes}): {decision.reason}")
        return Explanation(lines, allowed=False)
    lines.append(f"decision: ACCEPT: {decision.reason}")
    lines.extend(_describe_grant(decision.grant, settings))
    allowed = True
    if question.sop_class is not None:
        sop_lines, allowed = _describe_sop_class(decision.grant, question)
        lines.extend(sop_lines)
    if question.operation is not None:
        sop_class = min(sop_classes.resolve(question.sop_class)) if question.sop_class else None
        permission = allow(
            _Subject(decision),
            question.operation,
            sop_class or _any_class_for(decision.grant, question.operation),
            question.destination,
        )
        target = f" to {question.destination}" if question.destination else ""
        verdict = "allowed" if permission.allowed else "REFUSED (0x0124 Not Authorized)"
        lines.append(f"operation {question.operation}{target}: {verdict}: {permission.reason}")
        allowed = allowed and permission.allowed
    return Explanation(lines, allowed)


def _describe_request(request: AssociationRequest) -> str:
    extra = "".join(
        f", {label} {value!r}"
        for label, value in (("username", request.username), ("TLS subject", request.tls_subject))
        if value is not None
    )
    return (
        f"request: calling AE {request.calling_ae_title!r} -> called AE "
        f"{request.called_ae_title!r} from {request.peer_address}{extra}"
    )


def _describe_grant(grant: Grant, settings: Settings) -> list[str]:
    accepted = grant.sop_classes
    counts = [
        f"{name} {len(members & accepted)}/{len(members)}"
        for name, members in sop_classes.groups().items()
        if members & accepted
    ]
    unserved = sorted(sop_classes.sop_class_keyword(uid) for uid in accepted if not is_served(uid))
    offered = grant.offered_pdu_size(settings.network.max_pdu_size)
    private = " and every private SOP class" if grant.private_storage is not None else ""
    lines = [
        f"  SOP classes granted: {len(accepted)}{private} ({', '.join(counts) or 'by UID only'})",
        f"  operations: {', '.join(sorted(grant.operations)) or 'none'}",
        "  peer may take the SCP role for: "
        + (f"{len(grant.peer_scp)} SOP classes" if grant.peer_scp else "none (SCU only)")
        + (" and every private one" if grant.private_peer_scp else ""),
        "  C-MOVE destinations: "
        + (", ".join(grant.move_destinations) if "move" in grant.operations else "(no C-MOVE)"),
        f"  maximum PDU offered: {offered or 'unlimited'}; "
        f"asynchronous operations window: {grant.async_operations_window}",
        f"  user identity (PS3.7 D.3.3.7): {grant.user_identity}",
        "  person name matching (C-FIND, unless fuzzy matching is negotiated): "
        + _name_matching(grant, settings),
    ]
    if unserved:
        lines.append(
            f"  not served by this pacsd version (contexts rejected): {len(unserved)} "
            f"({', '.join(unserved[:6])}{', ...' if len(unserved) > 6 else ''})"
        )
    return lines


def _name_matching(grant: Grant, settings: Settings) -> str:
    if grant.person_name_matching is not None:
        return grant.person_name_matching
    insensitive = settings.query.person_name_case_insensitive
    return f"{'case-insensitive' if insensitive else 'exact'} (query.person_name_case_insensitive)"


def _describe_sop_class(grant: Grant, question: Question) -> tuple[list[str], bool]:
    assert question.sop_class is not None
    uids = sorted(sop_classes.resolve(question.sop_class))
    lines: list[str] = []
    allowed = True
    for uid in uids:
        name = f"SOP class {sop_classes.sop_class_keyword(uid)} ({uid})"
        syntaxes = grant.syntaxes_for(uid)
        if syntaxes is None or not is_served(uid):
            why = "not granted by the rule" if syntaxes is None else "not served by pacsd yet"
            lines.append(f"{name}: REJECTED ({why})")
            allowed = False
            continue
        role = "the peer may also be SCP" if grant.peer_may_be_scp(uid) else "the peer is SCU only"
        lines.append(f"{name}: accepted ({role}); transfer syntaxes, preferred first:")
        lines.extend(
            f"  {rank}. {ts} {UID(ts).name} [{transfer_syntaxes.group_of(ts)}]"
            for rank, ts in enumerate(syntaxes, start=1)
        )
        if question.transfer_syntax is not None:
            verdict, ok = _describe_syntax(question.transfer_syntax, syntaxes)
            lines.append(f"  transfer syntax {question.transfer_syntax}: {verdict}")
            allowed = allowed and ok
    return lines, allowed


def _describe_syntax(token: str, syntaxes: tuple[str, ...]) -> tuple[str, bool]:
    asked = transfer_syntaxes.resolve(token)
    chosen = [ts for ts in syntaxes if ts in asked]
    if not chosen:
        return "REJECTED (not in the rule's transfer syntaxes)", False
    return f"accepted, preference {syntaxes.index(chosen[0]) + 1} of {len(syntaxes)}", True


def _any_class_for(grant: Grant, operation: str) -> str:
    """A granted SOP class used by `operation`, so allow() judges the operation itself."""
    return next(
        (uid for uid in sorted(grant.sop_classes) if sop_classes.operation_of(uid) == operation),
        "",
    )
