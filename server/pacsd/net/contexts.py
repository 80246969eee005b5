"""Presentation contexts for one association, built from its policy grant.

pacsd accepts a context only where the policy grants the SOP class and pacsd serves the
operation behind it; the order of each context's transfer syntaxes is the rule's preference,
because pynetdicom picks the first of the acceptor's syntaxes that the peer proposed
(presentation.py, negotiate_as_acceptor).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.presentation import PresentationContext

from pacsd.dicom.part10 import IMPLEMENTATION_CLASS_UID
from pacsd.dicom.qr_models import MODELS
from pacsd.dicom.sop_classes import operation_of
from pacsd.policy.engine import Grant

# The operations this version of pacsd has a service for; of find/get/move, the information
# models of dicom/qr_models (not Composite Instance Root, nor retrieve without bulk data).
SERVED_OPERATIONS = frozenset({"echo", "store", "worklist", "mpps", "commit"})
# Of the "mpps" group, the Notification SOP class (the SCP sends N-EVENT-REPORTs) is not served.
_NOT_SERVED = frozenset({"1.2.840.10008.3.1.2.3.5"})
# Offered at server level only so that pynetdicom starts; no peer can propose it. If the per-
# association policy step failed to run, negotiation would therefore accept nothing (fail closed).
_PLACEHOLDER_ABSTRACT_SYNTAX = f"{IMPLEMENTATION_CLASS_UID}.0.1"


def is_served(sop_class_uid: str) -> bool:
    """True when pacsd has a service for the SOP class."""
    if sop_class_uid in _NOT_SERVED:
        return False
    return operation_of(sop_class_uid) in SERVED_OPERATIONS or sop_class_uid in MODELS


def _context(
    abstract_syntax: str,
    transfer_syntaxes: Iterable[str],
    scu_role: bool | None = None,
    scp_role: bool | None = None,
) -> PresentationContext:
    context = PresentationContext()
    context.abstract_syntax = abstract_syntax
    context.transfer_syntax = list(transfer_syntaxes)
    # As acceptor: whether to accept the peer proposing the SCU / the SCP role (PS3.7 D.3.3.4).
    context.scu_role = scu_role
    context.scp_role = scp_role
    return context


@lru_cache(maxsize=64)  # grants compare by identity: one entry per rule per configuration
def contexts_for(grant: Grant) -> tuple[PresentationContext, ...]:
    """The supported contexts of an association the policy granted `grant` (shared, read-only)."""
    return tuple(
        _context(uid, syntaxes, scu_role=True, scp_role=uid in grant.peer_scp)
        for uid, syntaxes in grant.transfer_syntaxes.items()
        if is_served(uid)
    )


def placeholder_contexts() -> list[PresentationContext]:
    """The server-level context list: one that matches no real proposal."""
    return [_context(_PLACEHOLDER_ABSTRACT_SYNTAX, [ExplicitVRLittleEndian])]
