"""Live association counts for the limits: decide and reserve a slot in one atomic step."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass

from pacsd.policy.engine import AssociationRequest, Decision, Policy, decide


@dataclass(frozen=True)
class Slot:
    """One accepted association's place in the counts, given back when it ends."""

    rule: str
    calling_ae_title: str
    address: str = ""


class AssociationSlots:
    """Counts accepted associations by rule and calling AE title; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_rule: Counter[str] = Counter()
        self._by_calling: Counter[tuple[str, str]] = Counter()
        self._by_address: Counter[str] = Counter()

    def total(self) -> int:
        """All live accepted associations."""
        return sum(self._by_rule.values())

    def of_rule(self, rule: str) -> int:
        """Those accepted by `rule`."""
        return self._by_rule[rule]

    def of_calling_ae(self, rule: str, calling_ae_title: str) -> int:
        """Those accepted by `rule` for `calling_ae_title`."""
        return self._by_calling[(rule, calling_ae_title)]

    def of_address(self, address: str) -> int:
        """Those from `address`."""
        return self._by_address[address]

    def admit(self, request: AssociationRequest, policy: Policy) -> tuple[Decision, Slot | None]:
        """Decide `request` and, when accepted, take its slot before another request can."""
        with self._lock:
            decision = decide(request, policy, self)
            if not decision.accepted or decision.rule is None:
                return decision, None
            slot = Slot(decision.rule, request.calling_ae_title, request.peer_address)
            self._by_rule[slot.rule] += 1
            self._by_calling[(slot.rule, slot.calling_ae_title)] += 1
            self._by_address[slot.address] += 1
            return decision, slot

    def release(self, slot: Slot) -> None:
        """Give a slot back."""
        with self._lock:
            self._by_rule[slot.rule] -= 1
            self._by_calling[(slot.rule, slot.calling_ae_title)] -= 1
            if self._by_rule[slot.rule] <= 0:
                del self._by_rule[slot.rule]
            if self._by_calling[(slot.rule, slot.calling_ae_title)] <= 0:
                del self._by_calling[(slot.rule, slot.calling_ae_title)]
            self._by_address[slot.address] -= 1
            if self._by_address[slot.address] <= 0:
                del self._by_address[slot.address]
