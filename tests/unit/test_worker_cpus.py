"""Which CPU each worker pins itself to (pacsd.workers.worker_cpus, network.cpu_affinity)."""

from __future__ import annotations

import pytest

from pacsd.workers import worker_cpus


@pytest.mark.parametrize(
    ("workers", "affinity", "allowed", "expected"),
    [
        (2, "auto", {0, 1}, [0, 1]),
        (2, "auto", {3, 1, 7, 5}, [1, 3]),  # the supervisor's own set, in order: a cpuset
        (4, "auto", {0, 1, 2, 3}, [0, 1, 2, 3]),
        (3, "auto", {0, 1}, [None, None, None]),  # more workers than CPUs: the kernel balances
        (1, "auto", {0, 1}, [None]),  # one process keeps every CPU
        (2, "none", {0, 1}, [None, None]),
    ],
)
def test_worker_cpus(
    workers: int, affinity: str, allowed: set[int], expected: list[int | None]
) -> None:
    assert worker_cpus(workers, affinity, allowed) == expected
