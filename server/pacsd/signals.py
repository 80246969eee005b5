"""The daemon's signal handling: flags set by the handlers, acted on by the main thread."""

from __future__ import annotations

import asyncio
import faulthandler
import signal
import threading
from types import FrameType

HANDLER_CHECK_S = 0.5  # longest a signal received by another thread waits for its handler


def dump_stacks(_signum: int = 0, _frame: FrameType | None = None) -> None:
    """SIGUSR1: every thread's stack to stderr, from the main thread holding the GIL.

    A Python-level handler, not `faulthandler.register`: faulthandler's C handler reads the
    other threads' frames while they run, and crashed pacsd (SIGSEGV in 1 of 6 and 1 of 9
    runs of a test signalling a pacsd just started, a thread busy importing), as it crashes
    other programs (CPython issue 116008). Here no other thread runs Python code during the
    dump, so every stack stands still. The handler runs at the main thread's next bytecode,
    or when the event loop wakes for the signal; a main thread stuck in C code holding the
    GIL would not print it."""
    faulthandler.dump_traceback(all_threads=True)


def install_stack_dump() -> None:
    """SIGUSR1 prints every thread's stack (main thread only)."""
    signal.signal(signal.SIGUSR1, dump_stacks)


class Signals:
    """SIGTERM/SIGINT: the first asks for a graceful stop, the second forces it. SIGHUP: reload.
    SIGUSR1: every thread's stack to stderr (`dump_stacks`), for a server that does not stop.

    Handlers only set flags and wake the main thread, which does the work outside the handler.
    """

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.force = threading.Event()
        self.reload = threading.Event()
        self.wake = threading.Event()

    def install(self) -> None:
        """Register the handlers (main thread only)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hangup)
        install_stack_dump()

    def wait(self) -> None:
        """Block until a handler has run (main thread), then clear the wake-up.

        Waits in slices: the kernel may deliver a signal to any thread, and then the main
        thread, blocked in a lock without a timeout, is not interrupted and never runs the
        Python handler (a SIGTERM that never stopped the server, seen under load).
        """
        while not self.wake.wait(HANDLER_CHECK_S):
            pass
        self.wake.clear()

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        if self.stop.is_set():
            self.force.set()
        self.stop.set()
        self.wake.set()

    def _on_hangup(self, _signum: int, _frame: FrameType | None) -> None:
        self.reload.set()
        self.wake.set()


class LoopSignals:
    """The same signals for a process whose main thread runs an asyncio loop: the handlers
    run on the loop (signal.set_wakeup_fd wakes it whichever thread the kernel chose)."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.force = asyncio.Event()
        self.reload = asyncio.Event()
        self._wake = asyncio.Event()

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Register the handlers on `loop` (main thread only)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop)
        loop.add_signal_handler(signal.SIGHUP, self._on_hangup)
        # Not through the loop: the handler also runs while a callback holds the loop.
        install_stack_dump()

    async def wait(self) -> None:
        """Until a handler has run; then clear the wake-up."""
        await self._wake.wait()
        self._wake.clear()

    def _on_stop(self) -> None:
        if self.stop.is_set():
            self.force.set()
        self.stop.set()
        self._wake.set()

    def _on_hangup(self) -> None:
        self.reload.set()
        self._wake.set()
