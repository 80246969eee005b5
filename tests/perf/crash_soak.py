"""A long crash loop by hand: `python -m tests.perf.crash_soak --rounds 200 [--seed N]`.

The loop of tests/integration/test_crash_loop.py (parallel C-STOREs, SIGKILL at a seeded
random moment, restart) for as many rounds as asked, then the same checks: every acknowledged
instance indexed once with its intact file, fsck finding only unacknowledged files. Exit code 1
when a check failed. --database-url runs it on PostgreSQL (an empty database).
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tests.integration.test_crash_loop import INSTANCES_PER_SENDER, run_crash_loop


def main(argv: list[str] | None = None) -> int:
    """Run the soak; print each round and the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--per-sender", type=int, default=INSTANCES_PER_SENDER)
    parser.add_argument("--database-url", default=None, help="default: SQLite in the work folder")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    options = parser.parse_args(argv)
    seed = options.seed if options.seed is not None else secrets.randbelow(2**32)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="pacsd-crash-soak-"))
    print(f"crash soak: {options.rounds} rounds, seed {seed}, work folder {work}", flush=True)
    try:
        result = run_crash_loop(
            work, options.database_url, options.rounds, seed, options.per_sender
        )
    finally:
        if not options.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(result.summary())
    print(f"{time.monotonic() - started:.0f} s")
    for problem in result.problems[:50]:
        print(f"PROBLEM: {problem}")
    return 1 if result.problems else 0


if __name__ == "__main__":
    sys.exit(main())
