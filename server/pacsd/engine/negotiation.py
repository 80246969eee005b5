"""A-ASSOCIATE-RQ -> policy decision -> A-ASSOCIATE-AC or A-ASSOCIATE-RJ.

`Negotiator.decide` reads the request into the client handle, asks the policy (one
configuration snapshot for the whole decision, fail closed), and for an accepting rule builds
the answer: per proposed context, the first of the rule's transfer syntaxes the peer proposed
(PS3.8 9.3.3.2), the SCP/SCU roles (PS3.7 D.3.3.4), the asynchronous operations window
(D.3.3.3), the SOP Class Extended Negotiation replies (D.3.3.5) and what they agree (on each
context, for the services), storage classes accepted as their related general class (D.3.3.6),
the user identity response (D.3.3.7.2) and pacsd's maximum PDU length (D.1).
Verifying a password hashes it (tens of milliseconds): `needs_executor` tells the engine when
to run `decide` off its event loop.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache

from pacsd.dicom.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacsd.dicom.qr_models import MODELS, PATIENT_ROOT, PATIENT_STUDY_ONLY, STUDY_ROOT
from pacsd.dicom.sop_classes import (
    DICOM_ROOT,
    is_site,
    is_storage,
    operation_of,
    sop_class_keyword,
)
from pacsd.dimse.messages import NO_EXTENDED_OPTIONS, AcceptedContext, ExtendedOptions
from pacsd.engine.pdu import (
    APPLICATION_CONTEXT_NAME,
    AssociateAccept,
    AssociateRequest,
    CommonExtendedNegotiation,
    ContextResult,
    ExtendedNegotiation,
    ProposedContext,
    RoleSelection,
    UserInformation,
    encode_associate_accept,
)
from pacsd.handle import ClientHandle, NegotiatedContext, extended_as_dict
from pacsd.policy.engine import (
    REJECT_NO_REASON,
    REJECT_TRANSIENT_NO_REASON,
    REJECTIONS,
    AssociationRequest,
    Decision,
    Grant,
    Policy,
)
from pacsd.policy.identity import IdentityClaim, IdentityResult, Outcome
from pacsd.policy.limits import AssociationSlots
from pacsd.policy.rules import RejectReason

PolicyProvider = Callable[[], Policy]
# The operations this version of pacsd has a service for; of find/get/move, the information
# models of dicom/qr_models.MODELS (Composite Instance Root and Without Bulk Data included).
SERVED_OPERATIONS = frozenset({"echo", "store", "worklist", "mpps", "commit", "print", "ups"})
# Of the "mpps" group, the Notification SOP class (the SCP sends N-EVENT-REPORTs) is not served;
# of the "print" group, Print Job and Basic Annotation Box (PS3.4 H.4.5, H.4.4): pacsd makes no
# instance of either, and an SCU that sees their contexts rejected knows not to ask for them.
_NOT_SERVED = frozenset(
    {"1.2.840.10008.3.1.2.3.5", "1.2.840.10008.5.1.1.14", "1.2.840.10008.5.1.1.15"}
)
# PS3.8 9.3.3.2 results.
ACCEPTANCE, USER_REJECTION, ABSTRACT_SYNTAX_NOT_SUPPORTED, TRANSFER_SYNTAXES_NOT_SUPPORTED = (
    0,
    1,
    3,
    4,
)
REJECT_APPLICATION_CONTEXT = REJECTIONS[RejectReason.APPLICATION_CONTEXT_NOT_SUPPORTED]
STORAGE_SERVICE_CLASS = "1.2.840.10008.4.2"  # PS3.4 B.3.1.3
# PS3.4 Table B.3-2: level 2 (Full) SCP, every element kept, private ones included; signature
# level 3, bit-preserving (the data set is kept as received and sent back as stored when the
# receiver accepts its syntax); no element coercion (pacsd never changes a stored attribute).
# Bytes 2, 4 and 6 are reserved.
STORAGE_REPLY = bytes((2, 0, 3, 0, 0, 0))
# ... and where the requestor took the SCP role alone (a C-GET's storage contexts): pacsd is
# an SCU only there, "N/A" (3), signature level 0, coercion "N/A" (2).
STORAGE_SCU_REPLY = bytes((3, 0, 0, 0, 2, 0))
# PS3.4 Table C.5-2: relational-queries, combined date-time matching, fuzzy semantic matching
# of person names, timezone query adjustment (all done when asked), then Enhanced Multi-Frame
# Image Conversion, Empty Value Matching (C.2.2.2.7) and Multiple Value Matching (C.2.2.2.8,
# every key value must match; pacsd takes several values as alternatives): never done, 0.
FIND_FIELDS = 7
RETRIEVE_FIELDS = 2  # C.5.2.1.2: relational-retrieval, Enhanced Multi-Frame Image Conversion
WORKLIST_FIELDS = 4  # K.5.1.2: two reserved (always 1), fuzzy matching, timezone adjustment
_QR_MODELS = (PATIENT_ROOT, STUDY_ROOT, PATIENT_STUDY_ONLY)  # the C.6 models C.5 speaks of


def is_served(sop_class_uid: str) -> bool:
    """True when pacsd has a service for the SOP class: built in, or a site service's
    (pacsd/extensions.py)."""
    if sop_class_uid in _NOT_SERVED:
        return False
    return (
        operation_of(sop_class_uid) in SERVED_OPERATIONS
        or sop_class_uid in MODELS
        or is_site(sop_class_uid)
    )


def accepted_syntaxes(grant: Grant, sop_class_uid: str) -> tuple[str, ...] | None:
    """The transfer syntaxes a context proposing `sop_class_uid` may be accepted with under
    `grant`, pacsd's preferred first; None: refused (abstract syntax not supported). The
    conformance statement (pacsd/conformance.py) lists what this answers."""
    return grant.syntaxes_for(sop_class_uid) if is_served(sop_class_uid) else None


@dataclass(frozen=True)
class Accepted:
    """What an accepted association was given."""

    accept: AssociateAccept
    contexts: dict[int, AcceptedContext]  # accepted ones, by context ID
    invoked_window: int  # operations the peer may have outstanding (PS3.7 D.3.3.3)
    peer_max_pdu: int  # the longest P-DATA-TF pacsd may send (0: no limit, PS3.8 D.1)
    local_max_pdu: int  # the longest P-DATA-TF pacsd accepts
    pdu: bytes  # `accept` encoded: the A-ASSOCIATE-AC PDU


@dataclass(frozen=True)
class _Answer:
    """A kept answer (Negotiator.accept) and what it recorded on the handle."""

    request: AssociateRequest
    grant: Grant
    accepted: Accepted
    negotiated: tuple[NegotiatedContext, ...]
    extended: bool  # whether it logged the extended negotiation's agreement


# Answers kept: per request and grant, both compared by identity (equal request bytes decode to
# the same object, engine/pdu.py; a grant is its policy rule's until a reload replaces it).
_ANSWER_CACHE_SIZE = 64


class Negotiator:
    """Decides association requests against the policy in force."""

    def __init__(self, policy: PolicyProvider, max_pdu_size: int) -> None:
        self.policy = policy
        self.slots = AssociationSlots()
        self.max_pdu_size = max_pdu_size
        self._answers: OrderedDict[tuple[int, int], _Answer] = OrderedDict()

    def needs_executor(self, request: AssociateRequest) -> bool:
        """Whether deciding `request` may block (a user identity to verify)."""
        return request.user.user_identity is not None

    def decide(self, request: AssociateRequest, handle: ClientHandle) -> Decision:
        """Fill `handle` from the request and decide it; never raises (fail closed).

        An accepted decision holds a slot in the association limits (`handle.slot`) until
        `release` gives it back.
        """
        try:
            read_request(request, handle)
            if request.application_context != APPLICATION_CONTEXT_NAME:
                # PS3.8 Table 9-21: application-context-name not supported (1, 1, 2), as DCMTK.
                return Decision.reject(
                    REJECT_APPLICATION_CONTEXT,
                    f"application context {request.application_context!r} not supported",
                )
            if not request.contexts:
                # PS3.8 9.3.2: one or more presentation contexts; none would leave an
                # association that can do nothing until it times out.
                return Decision.reject(REJECT_NO_REASON, "no presentation context proposed")
            policy = self.policy()  # one configuration for the whole decision, even mid-reload
            identity = policy.identity.verify(_claim(request))
            _record_identity(handle, identity)
            decision, handle.slot = self.slots.admit(_policy_request(handle, identity), policy)
            return decision
        except Exception:
            handle.log.exception("policy evaluation failed; rejecting (fail closed)")
            return Decision.reject(REJECT_TRANSIENT_NO_REASON, "policy evaluation failed")

    def release(self, handle: ClientHandle) -> None:
        """Give back the association's slot (idempotent)."""
        slot, handle.slot = handle.slot, None
        if slot is not None:
            self.slots.release(slot)

    def accept(self, request: AssociateRequest, handle: ClientHandle, grant: Grant) -> Accepted:
        """The A-ASSOCIATE-AC for an accepted request; records the contexts on `handle`.

        The same request under the same grant gets the same answer, so it is worked out once
        and kept (bounded, on the event loop only): answering getscu's 121 contexts took 0.22
        ms of every association's set-up, with the per-context answers already cached. Not
        kept: an answer that depends on more than the two (a user identity's response, a
        grant specialized for related general SOP classes).
        """
        key = (id(request), id(grant))
        answer = self._answers.get(key)
        if answer is not None and answer.request is request and answer.grant is grant:
            self._answers.move_to_end(key)
            accepted = answer.accepted
            handle.contexts = list(answer.negotiated)
            handle.local_max_pdu_size = accepted.local_max_pdu
            if answer.extended:
                _log_extended(handle, accepted.contexts)
            return replace(accepted, contexts=dict(accepted.contexts))
        accepted, kept = self._answer(request, handle, grant)
        if kept:
            extended = bool(request.user.extended or request.user.common_extended)
            negotiated = tuple(handle.contexts)
            self._answers[key] = _Answer(request, grant, accepted, negotiated, extended)
            if len(self._answers) > _ANSWER_CACHE_SIZE:
                self._answers.popitem(last=False)
            accepted = replace(accepted, contexts=dict(accepted.contexts))
        return accepted

    def _answer(
        self, request: AssociateRequest, handle: ClientHandle, grant: Grant
    ) -> tuple[Accepted, bool]:
        """(the answer, whether it depends on `request` and `grant` alone)."""
        proposal = _Proposal.of(request)
        related = _related_general(request, proposal, grant)
        if related:  # this association's grant also names them (the guard asks it per request)
            grant = grant.specialized(related)
            if handle.decision is not None:
                handle.decision = replace(handle.decision, grant=grant)
        results: list[ContextResult] = []
        accepted: dict[int, AcceptedContext] = {}
        replies: dict[str, RoleSelection] = {}
        extended: dict[str, ExtendedNegotiation] = {}
        negotiated: list[NegotiatedContext] = []
        for proposed in _unique(request):
            uid = proposed.abstract_syntax
            outcome = _context_outcome(
                grant,
                proposed,
                proposal.roles.get(uid),
                proposal.extended.get(uid),
                related.get(uid, ""),
            )
            if outcome.accepted is not None:
                accepted[proposed.context_id] = outcome.accepted
                if outcome.role_reply is not None:
                    replies[uid] = outcome.role_reply
                if outcome.extended_reply is not None:
                    extended[uid] = outcome.extended_reply
            results.append(outcome.result)
            negotiated.append(outcome.negotiated)
        local_max = grant.offered_pdu_size(self.max_pdu_size)
        window, window_item = _window(request, grant)
        identity_response = None
        if grant.user_identity == "not-accepted":
            handle.username, handle.user_verified = None, None  # the sent identity is ignored
        elif handle.identity_response is not None:
            identity_response = handle.identity_response
        user = UserInformation(
            maximum_length=local_max,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            asynchronous_operations=window_item,
            roles=tuple(replies[uid] for uid in sorted(replies)),
            # PS3.7 D.3.3.5: one reply per SOP class the requestor sent a sub-item for (and
            # pacsd accepted); D.3.3.6: SOP Class Common Extended Negotiation has no reply.
            extended=tuple(extended[uid] for uid in sorted(extended)),
            user_identity_response=identity_response,
        )
        handle.contexts = negotiated
        handle.local_max_pdu_size = local_max
        if proposal.extended or proposal.common:
            _log_extended(handle, accepted)
        accept = AssociateAccept(
            request.called_ae_title,
            request.calling_ae_title,
            APPLICATION_CONTEXT_NAME,
            tuple(sorted(results, key=lambda item: item.context_id)),
            user,
        )
        peer_max = request.user.maximum_length or 0
        answer = Accepted(
            accept, accepted, window, peer_max, local_max, encode_associate_accept(accept)
        )
        alone = request.user.user_identity is None and handle.identity_response is None
        return answer, alone and not related


@dataclass(frozen=True)
class _Proposal:
    """The A-ASSOCIATE-RQ's per SOP class sub-items (PS3.7 D.3.3.4-6). D.3.3.5-6 allow one
    (common) extended negotiation sub-item per SOP class: the first counts."""

    roles: Mapping[str, RoleSelection]
    extended: Mapping[str, bytes] = field(default_factory=dict)
    common: Mapping[str, CommonExtendedNegotiation] = field(default_factory=dict)

    @classmethod
    def of(cls, request: AssociateRequest) -> _Proposal:
        user = request.user
        roles = {role.sop_class_uid: role for role in user.roles}
        extended = {item.sop_class_uid: item.information for item in reversed(user.extended)}
        common = {item.sop_class_uid: item for item in reversed(user.common_extended)}
        return cls(roles, extended, common)


def _log_extended(handle: ClientHandle, accepted: Mapping[int, AcceptedContext]) -> None:
    """One line with what SOP Class (Common) Extended Negotiation agreed, by SOP class."""
    agreed = {
        sop_class_keyword(context.abstract_syntax): extended_as_dict(context.extended)
        for context in accepted.values()
        if context.extended != NO_EXTENDED_OPTIONS
    }
    handle.log.info("extended negotiation", agreed=agreed)


def _unique(request: AssociateRequest) -> list[ProposedContext]:
    """The proposed contexts, one per context ID (the first when a peer repeats an ID)."""
    seen: dict[int, ProposedContext] = {}
    for context in request.contexts:
        seen.setdefault(context.context_id, context)
    return list(seen.values())


def _related_general(
    request: AssociateRequest, proposal: _Proposal, grant: Grant
) -> dict[str, str]:
    """Proposed storage SOP classes pacsd does not know, each with the related general SOP
    class the rule grants that it is accepted as (PS3.4 B.3.1.3-4, PS3.7 D.3.3.6).

    Only a UID under the DICOM root that pacsd cannot name (a SOP class newer than pacsd):
    known classes are granted or refused by the rule itself, private ones by `storage`.
    """
    related: dict[str, str] = {}
    for uid in {context.abstract_syntax for context in request.contexts}:
        item = proposal.common.get(uid)
        if item is None or item.service_class_uid != STORAGE_SERVICE_CLASS:
            continue
        if not uid.startswith(DICOM_ROOT) or sop_class_keyword(uid) != uid:
            continue
        if grant.syntaxes_for(uid) is not None:
            continue
        general = next(
            (
                candidate
                for candidate in item.related_general_sop_classes
                if candidate != uid
                and is_storage(candidate)
                and grant.syntaxes_for(candidate) is not None
            ),
            None,
        )
        if general is not None:
            related[uid] = general
    return related


def extended_options(
    uid: str, information: bytes | None, general: str = "", pacsd_scp: bool = True
) -> ExtendedOptions:
    """What pacsd agrees to for an accepted SOP class, and its reply (PS3.7 D.3.3.5).

    Each reply is the service class's Service-class-application-information, no longer than
    the requestor's field, with 1 only where the requestor asked (1) and pacsd does it. No
    sub-item proposed, or one for a SOP class without a defined field: no reply (the
    default conditions hold).
    """
    base = ExtendedOptions(related_general_sop_class=general)
    if not information:
        return base if general else NO_EXTENDED_OPTIONS
    asked = [value == 1 for value in information] + [False] * FIND_FIELDS
    length = len(information)
    operation = operation_of(uid) if MODELS.get(uid) in _QR_MODELS else ""
    if operation == "find":  # PS3.4 C.5.1.1.2, Table C.5-2
        options = replace(
            base,
            relational=asked[0],
            combined_date_time=asked[1],
            fuzzy_person_names=asked[2],
            timezone_adjustment=asked[3],
        )
        return replace(options, reply=bytes([*asked[:4], 0, 0, 0][: min(length, FIND_FIELDS)]))
    if operation in ("move", "get"):  # C.5.2.1.2, C.5.3.1: Table C.5-4
        reply = bytes([asked[0], 0][: min(length, RETRIEVE_FIELDS)])
        return replace(base, relational=asked[0], reply=reply)
    if operation_of(uid) == "worklist":  # K.5.1.2: bytes 1 and 2 are reserved and always 1
        reply = bytes([1, 1, asked[2], asked[3]][: min(length, WORKLIST_FIELDS)])
        return replace(base, fuzzy_person_names=asked[2], timezone_adjustment=asked[3], reply=reply)
    if is_storage(uid):  # B.3.1.2, Table B.3-2
        return replace(base, reply=(STORAGE_REPLY if pacsd_scp else STORAGE_SCU_REPLY)[:length])
    return base if general else NO_EXTENDED_OPTIONS


@dataclass(frozen=True)
class _ContextOutcome:
    """One proposed context's answer: the AC's item, what the handle records, and when it
    is accepted the context and its role selection and extended negotiation replies."""

    result: ContextResult
    negotiated: NegotiatedContext
    accepted: AcceptedContext | None
    role_reply: RoleSelection | None
    extended_reply: ExtendedNegotiation | None


@lru_cache(maxsize=4096)
def _context_outcome(
    grant: Grant,
    proposed: ProposedContext,
    role: RoleSelection | None,
    information: bytes | None,
    general: str,
) -> _ContextOutcome:
    """The answer to one proposed context under `grant`: the same for the same proposal, so
    it is worked out once per grant (a policy rule's, compared by identity) and proposal. A
    modality proposes the same hundred-odd contexts on every association (getscu, storescu
    with its defaults), and building their answers dominated the association set-up. Every
    object in the answer is frozen, so associations share them safely."""
    result, context, reply = _negotiate_context(proposed, grant, role)
    if result != ACCEPTANCE:
        return _ContextOutcome(
            ContextResult(proposed.context_id, result, context.transfer_syntax),
            _for_handle(proposed.abstract_syntax, result, context),
            None,
            None,
            None,
        )
    uid = context.abstract_syntax
    options = extended_options(uid, information, general, context.pacsd_scp)
    if options != context.extended:
        context = replace(context, extended=options)
    extended = None if options.reply is None else ExtendedNegotiation(uid, options.reply)
    return _ContextOutcome(
        ContextResult(proposed.context_id, result, context.transfer_syntax),
        _for_handle(proposed.abstract_syntax, result, context),
        context,
        reply,
        extended,
    )


def _negotiate_context(
    proposed: ProposedContext, grant: Grant, role: RoleSelection | None
) -> tuple[int, AcceptedContext, RoleSelection | None]:
    uid = proposed.abstract_syntax
    syntaxes = accepted_syntaxes(grant, uid)
    first = proposed.transfer_syntaxes[0]
    if syntaxes is None:
        return ABSTRACT_SYNTAX_NOT_SUPPORTED, AcceptedContext(proposed.context_id, uid, first), None
    outcome = _roles(role, grant.peer_may_be_scp(uid))
    if outcome is not None and outcome[0]:
        # pacsd will send on this context (C-GET's C-STOREs): the receiver's preference among
        # the rule's syntaxes, so that an instance stored in the syntax it asked for first
        # goes as stored (services/retrieve.py converts only what it must).
        chosen = next((ts for ts in proposed.transfer_syntaxes if ts in syntaxes), None)
    else:
        chosen = next((ts for ts in syntaxes if ts in proposed.transfer_syntaxes), None)
    if chosen is None:
        return (
            TRANSFER_SYNTAXES_NOT_SUPPORTED,
            AcceptedContext(proposed.context_id, uid, first),
            None,
        )
    if outcome is None:
        return USER_REJECTION, AcceptedContext(proposed.context_id, uid, chosen), None
    pacsd_scu, pacsd_scp, reply = outcome
    context = AcceptedContext(proposed.context_id, uid, chosen, pacsd_scu, pacsd_scp)
    return ACCEPTANCE, context, reply


def _roles(
    proposed: RoleSelection | None, peer_may_be_scp: bool
) -> tuple[bool, bool, RoleSelection | None] | None:
    """(pacsd acts as SCU, pacsd acts as SCP, the reply item), or None: reject the context.

    PS3.7 D.3.3.4: without a role selection item the requestor is SCU and pacsd SCP. pacsd
    always lets the requestor be SCU; it lets it be SCP (pacsd then the SCU: C-GET's C-STOREs,
    a report to a modality) for the SOP classes the rule grants `peer_scp_role`. The reply
    never accepts a role the requestor did not propose.
    """
    if proposed is None:
        return False, True, None
    requestor_scu, requestor_scp = proposed.scu_role, proposed.scp_role
    granted_scp = requestor_scp and peer_may_be_scp
    if not requestor_scu and not granted_scp:
        return None  # nothing left that either side could do on this context
    reply = RoleSelection(proposed.sop_class_uid, requestor_scu, granted_scp)
    if requestor_scu and granted_scp:
        return True, True, reply
    if granted_scp:
        return True, False, reply
    return False, True, reply


def _window(request: AssociateRequest, grant: Grant) -> tuple[int, tuple[int, int] | None]:
    """The operations the peer may have outstanding, and the reply item (PS3.7 D.3.3.3)."""
    proposed = request.user.asynchronous_operations
    if proposed is None or grant.async_operations_window <= 1 or proposed == (1, 1):
        return 1, None
    invoked, _performed = proposed
    # 0 proposed means unlimited; grant at most the rule's window. pacsd invokes its own
    # operations (C-GET's C-STOREs) one at a time: performed 1.
    window = min(invoked or grant.async_operations_window, grant.async_operations_window)
    return window, (window, 1)


def _for_handle(abstract_syntax: str, result: int, context: AcceptedContext) -> NegotiatedContext:
    return NegotiatedContext(
        context_id=context.context_id,
        abstract_syntax=abstract_syntax,
        transfer_syntax=context.transfer_syntax,
        result=result,
        pacsd_scu=context.pacsd_scu if result == ACCEPTANCE else False,
        pacsd_scp=context.pacsd_scp if result == ACCEPTANCE else False,
        extended=context.extended,
    )


def ae_title(raw: bytes) -> str:
    """An AE title field as text: leading and trailing spaces are not significant (PS3.8
    9.3.2); bytes outside ASCII are escaped rather than refused."""
    return raw.decode("ascii", "backslashreplace").strip(" \0")


def read_request(request: AssociateRequest, handle: ClientHandle) -> None:
    """Fill the handle from the A-ASSOCIATE-RQ (AE titles, the peer's implementation)."""
    handle.requested(
        calling_ae_title=ae_title(request.calling_ae_title),
        called_ae_title=ae_title(request.called_ae_title),
    )
    user = request.user
    handle.peer_implementation_class_uid = user.implementation_class_uid
    handle.peer_implementation_version_name = user.implementation_version_name
    handle.peer_max_pdu_size = user.maximum_length


def _claim(request: AssociateRequest) -> IdentityClaim | None:
    """The User Identity sub-item as plain values (PS3.7 D.3.3.7.1)."""
    item = request.user.user_identity
    if item is None:
        return None
    return IdentityClaim(
        identity_type=item.identity_type,
        primary_field=item.primary_field,
        secondary_field=item.secondary_field,
        positive_response_requested=item.positive_response_requested,
    )


def _record_identity(handle: ClientHandle, identity: IdentityResult) -> None:
    """Put the verdict on the handle and log it: username and type only, never a secret."""
    handle.identity_response = identity.server_response()
    if identity.outcome is Outcome.NONE:
        return
    handle.user_identity_type = identity.identity_type
    handle.user_verified = identity.verified
    handle.username = identity.username
    if identity.verified:
        handle.log.info(
            "user identity verified",
            username=identity.username,
            user_identity_type=identity.identity_type,
        )
    else:
        handle.log.info(
            "user identity not verified",
            user_identity_type=identity.identity_type,
            reason=identity.reason,
        )


def _policy_request(handle: ClientHandle, identity: IdentityResult) -> AssociationRequest:
    return AssociationRequest(
        calling_ae_title=handle.calling_ae_title,
        called_ae_title=handle.called_ae_title,
        peer_address=handle.peer_address,
        peer_port=handle.peer_port,
        username=handle.username,
        tls_subject=handle.tls_subject,
        identity=identity,
    )
