"""The seeded fuzz generator (tests/fuzz_cases.py) yields a case for every seed.

A fresh-clone CI drew seed 3513689639, whose truncation after a truncation left one byte and
made the generator itself raise, so test_fuzz failed before it sent anything.
"""

from tests import fuzz_cases as fz


def test_a_truncation_after_a_truncation_to_one_byte_still_yields_its_case() -> None:
    cases = list(fz.mutated_streams(3513689639, 200))
    assert [index for index, _, _ in cases] == list(range(200))
    assert all(len(data) >= 1 for _, _, data in cases)


def test_every_mutation_pair_yields_non_empty_streams_across_many_seeds() -> None:
    seen: set[str] = set()
    for seed in range(300):
        for _, mutation, data in fz.mutated_streams(seed, 40):
            assert data, (seed, mutation)
            seen.add(mutation)
    # every single mutation and every ordered pair came up, so each path was exercised
    names = sorted(fz.MUTATIONS)
    assert set(names) | {f"{a}+{b}" for a in names for b in names} <= seen
