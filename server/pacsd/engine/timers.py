"""The association timers of one event loop: ARTIM and the network idle timeout, swept.

PS3.8 9.1.5 gives each association an ARTIM timer, and pacsd aborts an association whose peer
stays silent for `network.network_timeout`. A loop timer per association and per restart would
cost more than the rest of a short association (each a libuv handle made and closed); here an
association only notes its deadlines, and one sweep per `TICK_S` looks at them all. A timer
therefore fires up to TICK_S late, which no DICOM timeout (seconds) notices.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import Protocol

TICK_S = 0.25


class Timed(Protocol):
    """An association with deadlines."""

    def check_timers(self, now: float) -> None:
        """Act on whatever deadline `now` has passed."""
        ...


class Sweeper:
    """Calls `check_timers` of every registered association every TICK_S."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._timed: set[Timed] = set()
        self._handle: asyncio.TimerHandle | None = None

    def add(self, timed: Timed) -> None:
        """Look at `timed` from now on (the sweep starts with the first one)."""
        self._timed.add(timed)
        if self._handle is None:
            self._handle = self.loop.call_later(TICK_S, self._sweep)

    def discard(self, timed: Timed) -> None:
        """Stop looking at `timed`."""
        self._timed.discard(timed)

    def _sweep(self) -> None:
        now = time.monotonic()
        for timed in list(self._timed):
            timed.check_timers(now)
        # Idle once nothing is registered: no wake-ups on a server without associations.
        self._handle = self.loop.call_later(TICK_S, self._sweep) if self._timed else None


_sweepers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Sweeper] = (
    weakref.WeakKeyDictionary()
)


def sweeper() -> Sweeper:
    """The running loop's sweeper."""
    loop = asyncio.get_running_loop()
    found = _sweepers.get(loop)
    if found is None:
        found = _sweepers[loop] = Sweeper(loop)
    return found
