"""The HTTP side's life cycle: its socket and metric files before the workers, the stack after
the DICOM listeners accept.

`pacsd serve` binds the HTTP socket where it opens the DICOM listeners (a port in use stops
start-up with one line, as for the DICOM port), and with `network.workers` > 1 prepares the
folder of prometheus_client's multiprocess mode and names it in PROMETHEUS_MULTIPROC_DIR before
the fork. Starlette, uvicorn and prometheus_client are imported only once the engine accepts
(`HttpSide.start`), in a thread so that the loop keeps answering meanwhile: the time until the
DICOM port answers C-ECHO does not include them. Every worker installs the metrics; the leading
process (the single one, or worker 0) also serves HTTP.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pacsd import metrics
from pacsd.archive import Archive
from pacsd.engine.proxied import ProxyTrust
from pacsd.engine.tls import server_context
from pacsd.logs import get_logger
from pacsd.runtime import RuntimeConfig
from pacsd.settings import HttpSettings, Settings

if TYPE_CHECKING:
    from pacsd.http.access import Access
    from pacsd.http.health import Health
    from pacsd.http.server import HttpServer

log = get_logger("pacsd.http")
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client reads it when imported
BACKLOG = 128
# prometheus_client's multiprocess files are <kind>_<pid>.db (gauges: gauge_<mode>_<pid>.db).
METRIC_FILE_KINDS = ("counter", "gauge", "histogram", "summary")


class HttpSetupError(Exception):
    """The HTTP socket cannot be bound, or the metrics folder cannot be used; the message
    names the key and the reason."""


def open_socket(settings: HttpSettings) -> socket.socket:
    """A listening socket on http.host:http.port (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    try:
        return socket.create_server((settings.host, settings.port), family=family, backlog=BACKLOG)
    except OSError as exc:
        raise HttpSetupError(
            f"http: cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
        ) from None


def base_url(sock: socket.socket, tls: bool = False) -> str:
    """The URL of the bound socket, e.g. http://127.0.0.1:11113 (https:// with `tls`)."""
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in str(host) else str(host)
    return f"{'https' if tls else 'http'}://{host}:{port}"


@dataclass
class MetricsFolder:
    """The workers' metric files (multiprocess mode); `owned`: made here, removed at exit."""

    path: Path
    owned: bool

    @classmethod
    def prepare(cls, configured: Path | None) -> MetricsFolder:
        """Empty `configured` of an earlier run's metric files (or make a new folder) and
        name it for prometheus_client. A configured folder holding anything else is refused:
        every *.db file in it would be read as metrics, and pacsd deletes only its own."""
        if configured is None:
            folder = cls(Path(tempfile.mkdtemp(prefix="pacsd-metrics-")), owned=True)
        else:
            try:
                configured.mkdir(parents=True, exist_ok=True)
                entries = list(configured.iterdir())
                foreign = sorted(p.name for p in entries if not _is_metric_file(p.name))
                if foreign:
                    raise HttpSetupError(
                        f"http.metrics_dir: {configured} must hold pacsd's metric files only; "
                        f"it holds {', '.join(foreign[:3])}"
                    )
                for stale in entries:  # an earlier run's counts
                    stale.unlink()
            except OSError as exc:
                raise HttpSetupError(
                    f"http.metrics_dir: cannot use {configured}: {exc.strerror or exc}"
                ) from None
            folder = cls(configured.resolve(), owned=False)
        os.environ[MULTIPROCESS_ENV] = str(folder.path)
        return folder

    def worker_ended(self, pid: int) -> None:
        """A worker is gone: its live gauges (associations open) no longer count."""
        from prometheus_client import multiprocess

        try:
            multiprocess.mark_process_dead(pid, str(self.path))  # type: ignore[no-untyped-call]
        except OSError as exc:
            log.warning("cannot remove an ended worker's gauge files", pid=pid, error=str(exc))

    def remove(self) -> None:
        """At exit: remove the folder made here (a configured one keeps its last counts)."""
        if self.owned:
            shutil.rmtree(self.path, ignore_errors=True)


def _is_metric_file(name: str) -> bool:
    kind = name.split("_", 1)[0]
    return kind in METRIC_FILE_KINDS and name.endswith(".db")


def single_process() -> None:
    """One process: metrics in memory, whatever the environment says."""
    os.environ.pop(MULTIPROCESS_ENV, None)


def _import_stack(serving: bool) -> None:
    """Import the metrics library and, to serve HTTP, the rest of the stack (in a thread:
    see the module docstring)."""
    for name in ("metrics", "app", "server") if serving else ("metrics",):
        importlib.import_module(f"pacsd.http.{name}")


@dataclass
class HttpSide:
    """What one process needs to start the HTTP side; `sock` only in the leading process."""

    settings: Settings
    sock: socket.socket | None
    archive: Archive
    runtime: RuntimeConfig
    multiprocess_dir: Path | None

    async def start(
        self, snapshot: Callable[[], dict[str, Any]], dicom_listening: Callable[[], bool]
    ) -> RunningHttp:
        """Install the metrics and, in the leading process, serve HTTP."""
        await asyncio.to_thread(_import_stack, self.sock is not None)
        from pacsd.http import metrics as prometheus

        sink = prometheus.install(self.multiprocess_dir)
        metrics.use(sink)
        if self.sock is None:
            return RunningHttp(None, None)
        from pacsd.http.access import Access
        from pacsd.http.app import HttpContext, create_app
        from pacsd.http.health import Health
        from pacsd.http.server import HttpServer

        archive = self.archive
        health = Health(archive.index, archive.files, dicom_listening)
        access = Access(self.settings.http.rules, lambda: self.runtime.policy().identity)
        context = HttpContext(
            snapshot, health, sink, self.multiprocess_dir, self.settings, archive, self.runtime
        )
        http = self.settings.http
        tls = server_context(self.settings.network.tls) if http.tls else None
        server = HttpServer(
            create_app(context, access),
            self.sock,
            http.access_log,
            tls,
            log_queries=self.settings.logging.log_patient_data,
            proxy=ProxyTrust(http.proxy_protocol, "http.proxy_protocol"),
            proxy_header_timeout=self.settings.network.acse_timeout,
        )
        server.start()
        log.info("http interface serving", url=base_url(self.sock, tls is not None))
        return RunningHttp(server, health, access)


@dataclass
class RunningHttp:
    """The HTTP side once started."""

    server: HttpServer | None
    health: Health | None
    access: Access | None = None

    async def stop(self) -> None:
        """Stop serving (bounded) and release the checks' threads."""
        if self.server is not None:
            await self.server.stop()
        if self.health is not None:
            self.health.close()
        if self.access is not None:
            self.access.close()
