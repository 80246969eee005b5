"""Presentation contexts pacsd can accept, per service group, built once per process."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.presentation import AllStoragePresentationContexts, PresentationContext

from pacsd.dicom.part10 import IMPLEMENTATION_CLASS_UID
from pacsd.dicom.transfer_syntaxes import STORAGE_PREFERENCE, VERIFICATION_PREFERENCE
from pacsd.settings import Service

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"  # PS3.4 A.4
# Offered at server level only so that pynetdicom starts; no peer can propose it. If the per-
# association policy step failed to run, negotiation would therefore accept nothing (fail closed).
_PLACEHOLDER_ABSTRACT_SYNTAX = f"{IMPLEMENTATION_CLASS_UID}.0.1"


def _context(abstract_syntax: str, transfer_syntaxes: Iterable[str]) -> PresentationContext:
    context = PresentationContext()
    context.abstract_syntax = abstract_syntax
    context.transfer_syntax = list(transfer_syntaxes)
    return context


@cache
def storage_sop_classes() -> tuple[str, ...]:
    """Every storage SOP class pynetdicom knows."""
    return tuple(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts)


@cache
def contexts_for(services: frozenset[Service]) -> tuple[PresentationContext, ...]:
    """The supported contexts for a set of granted service groups (shared, read-only)."""
    contexts: list[PresentationContext] = []
    if Service.VERIFICATION in services:
        contexts.append(_context(VERIFICATION_SOP_CLASS, VERIFICATION_PREFERENCE))
    if Service.STORAGE in services:
        contexts.extend(_context(uid, STORAGE_PREFERENCE) for uid in storage_sop_classes())
    return tuple(contexts)


def placeholder_contexts() -> list[PresentationContext]:
    """The server-level context list: one that matches no real proposal."""
    return [_context(_PLACEHOLDER_ABSTRACT_SYNTAX, [ExplicitVRLittleEndian])]
