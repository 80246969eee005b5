"""One row of the benchmark's table: a goal of issue 16, measured side by side in one run."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class GoalRow:
    """A measured figure for pacsd and the peers, and the goal it is judged against.

    `pacsd` and `peers` hold the median of the repetitions (None: not measured in this run).
    `higher_is_better` says which way the ratio goes (instances/s: True; latency, RSS: False).
    `target` is the goal as a ratio to one peer ("orthanc", "storescp") or an absolute bound
    (`limit`, in `unit`), as the issue states it. `unmet` names a part of the goal that the
    figure does not show and that failed in this run (e.g. a thread per idle association):
    the goal is then not met, whatever the figure.
    """

    goal: str
    unit: str
    pacsd: float | None
    peers: dict[str, float | None] = field(default_factory=dict)
    higher_is_better: bool = True
    target_peer: str | None = None
    target_ratio: float | None = None
    limit: float | None = None
    samples: dict[str, list[float]] = field(default_factory=dict)
    note: str = ""
    unmet: str = ""

    def ratio(self, peer: str) -> float | None:
        """pacsd's figure relative to `peer`'s, >1 meaning pacsd is better."""
        other = self.peers.get(peer)
        if self.pacsd is None or other is None or other == 0 or self.pacsd == 0:
            return None
        return self.pacsd / other if self.higher_is_better else other / self.pacsd

    def met(self) -> bool | None:
        """Whether the goal is met in this run (None: not measured)."""
        if self.unmet:
            return False
        if self.limit is not None:
            if self.pacsd is None:
                return None
            return self.pacsd >= self.limit if self.higher_is_better else self.pacsd <= self.limit
        if self.target_peer is None or self.target_ratio is None:
            return None
        ratio = self.ratio(self.target_peer)
        return None if ratio is None else ratio >= self.target_ratio


def median(values: Sequence[float]) -> float | None:
    """The median, or None for no values."""
    return statistics.median(values) if values else None
