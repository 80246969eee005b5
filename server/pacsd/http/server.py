"""uvicorn serving pacsd's ASGI application on the engine's event loop.

`Server.serve()` runs as a task of the loop the DICOM engine runs on (uvloop), on a socket pacsd
bound itself before the workers started (pacsd.http.launch). uvicorn's signal handling is off:
pacsd's LoopSignals stays the only handler of SIGTERM, SIGINT and SIGHUP, and the daemon stops
the server (`stop`) in its ordered shutdown. uvicorn's log records go through pacsd's
structlog set-up (no handlers of its own); its start-up lines are dropped, and its access log
is off unless `http.access_log` is true.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn

from pacsd import __version__
from pacsd.logs import get_logger

log = get_logger("pacsd.http")
GRACEFUL_S = 5  # requests in progress at a stop get this long, then their connections close
STOP_TIMEOUT_S = GRACEFUL_S + 2.0
# Connections served at once; beyond them uvicorn answers 503 (no queue a client can grow).
LIMIT_CONCURRENCY = 256


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handlers (pacsd's own handle the signals)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # uvicorn before 0.29
        return


class HttpServer:
    """The HTTP interface of this process, serving `app` on `sock` until stopped."""

    def __init__(self, app: Any, sock: socket.socket, access_log: bool) -> None:
        config = uvicorn.Config(
            app,
            log_config=None,  # no dictConfig: records propagate to pacsd's handlers
            access_log=access_log,
            lifespan="off",
            ws="none",
            proxy_headers=False,
            server_header=False,
            headers=[("server", f"pacsd/{__version__}")],
            limit_concurrency=LIMIT_CONCURRENCY,
            timeout_graceful_shutdown=GRACEFUL_S,
        )
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # "Started server ..."
        self.sock = sock
        self.server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Serve, as a task of the running loop."""
        self._task = asyncio.get_running_loop().create_task(self.server.serve([self.sock]))
        self._task.add_done_callback(_report_end)

    async def stop(self) -> None:
        """Stop accepting, let requests in progress finish (bounded), close."""
        task = self._task
        if task is None:
            return
        self.server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), STOP_TIMEOUT_S)
        except TimeoutError:
            self.server.force_exit = True
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, STOP_TIMEOUT_S)


def _report_end(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("the HTTP interface stopped", error=repr(exc))
