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
import ssl
from collections.abc import Iterator
from typing import Any

import uvicorn

from pacsd import __version__
from pacsd.engine.proxied import ProxyTrust
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

    def __init__(
        self,
        app: Any,
        sock: socket.socket,
        access_log: bool,
        tls: ssl.SSLContext | None = None,
        log_queries: bool = False,
        proxy: ProxyTrust | None = None,
        proxy_header_timeout: float = 30.0,
    ) -> None:
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
        access = logging.getLogger("uvicorn.access")
        for stale in [f for f in access.filters if isinstance(f, _WithoutQuery)]:
            access.removeFilter(stale)
        if not log_queries:
            access.addFilter(_WithoutQuery())
        if tls is not None:
            # HTTPS with pacsd's own context (engine/tls.py: the DICOM TLS certificate, minimum
            # version and ciphers); uvicorn hands config.ssl to the loop's create_server.
            config.load()
            config.ssl = tls
        if proxy is not None and proxy.enabled:
            # Behind a TCP balancer: the PROXY header before uvicorn's protocol (http/proxied.py).
            from pacsd.http.proxied import gated

            if not config.loaded:
                config.load()
            config.http_protocol_class = gated(
                config.http_protocol_class, proxy, proxy_header_timeout
            )
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


class _WithoutQuery(logging.Filter):
    """The access log without query strings: QIDO-RS searches carry patient names and IDs
    (PatientName=DOE*), which pacsd does not log unless logging.log_patient_data is true."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], args[2].split("?", 1)[0], *args[3:])
        return True


def _report_end(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("the HTTP interface stopped", error=repr(exc))
