"""Life cycle of `pacsd serve`: compose, start, wait for a signal, drain, stop in order.

SIGTERM or SIGINT: stop accepting, let running associations finish within the grace period,
abort the rest, wait for their handlers, close the database, exit 0. A second signal skips the
rest of the grace period. SIGHUP: reload the policies and the peer table (runtime.py).
"""

from __future__ import annotations

import ipaddress
import signal
import threading
from pathlib import Path
from types import FrameType

from pacsd import __version__
from pacsd.archive import Archive
from pacsd.index.database import IndexDatabase, create_index_engine
from pacsd.index.schema import ensure_schema
from pacsd.logs import get_logger
from pacsd.net.listener import Listener, Services, configure_pynetdicom
from pacsd.net.status import StatusServer, associations_url
from pacsd.policy.rules import Match
from pacsd.runtime import RuntimeConfig
from pacsd.services.commitment import CommitmentService, CommitmentWorker
from pacsd.services.mpps import MppsService
from pacsd.services.query import QueryService
from pacsd.services.retrieve import RetrieveService
from pacsd.services.storage import StorageService
from pacsd.services.worklist import WorklistService
from pacsd.settings import Settings
from pacsd.storage.filesystem import FilesystemStore

log = get_logger("pacsd.daemon")


class Signals:
    """SIGTERM/SIGINT: the first asks for a graceful stop, the second forces it. SIGHUP: reload.

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

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        if self.stop.is_set():
            self.force.set()
        self.stop.set()
        self.wake.set()

    def _on_hangup(self, _signum: int, _frame: FrameType | None) -> None:
        self.reload.set()
        self.wake.set()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _warn_about_insecure_settings(settings: Settings) -> None:
    host = settings.network.host
    open_rules = [r.name for r in settings.policies if r.action == "accept" and r.match == Match()]
    if not _is_loopback(host) and open_rules:
        log.warning(
            "insecure: listening beyond loopback with a rule that accepts every peer",
            host=host,
            rules=open_rules,
        )
    if settings.status.enabled and not _is_loopback(settings.status.host):
        log.warning("the status interface listens beyond loopback", host=settings.status.host)
    asserted = [r.name for r in settings.policies if r.match.username is not None]
    if asserted:
        log.warning(
            "rules match on a username the peer asserts; pacsd does not verify it yet",
            rules=asserted,
        )
    if settings.logging.log_patient_data:
        log.warning("logging.log_patient_data is on: logs will contain patient identifiers")


def serve(settings: Settings, config_source: Path | None) -> int:
    """Run the daemon until a signal stops it; returns the process exit code."""
    log.info("starting", version=__version__, config=str(config_source or "embedded default"))
    _warn_about_insecure_settings(settings)
    index = IndexDatabase(create_index_engine(settings.database.url, settings.database.pool_size))
    try:
        status = ensure_schema(index.engine)
        log.info("index database ready", backend=index.backend, revision=",".join(status.current))
        files = FilesystemStore(settings.storage.root, int(settings.storage.min_free_space))
        removed = files.prepare()
        if removed:
            log.info("removed leftovers of an interrupted run", files=removed)
        configure_pynetdicom(files.spool_dir, settings.logging.log_patient_data)
        archive = Archive(files, index, settings.storage.duplicate_policy)
        runtime = RuntimeConfig(settings, config_source)
        commitment = CommitmentWorker(
            index, files, runtime.peers, settings.commitment, settings.ae_title
        )
        services = Services(
            storage=StorageService(archive),
            query=QueryService(index, settings.query, settings.ae_title),
            retrieve=RetrieveService(index, files, runtime.peers),
            worklist=WorklistService(index, settings.query),
            mpps=MppsService(index, settings.worklist.retire_completed),
            commitment=CommitmentService(index, commitment),
        )
        listener = Listener(settings, services, policy=runtime.policy)
        commitment.start()  # reports still pending from an earlier run go out now
        try:
            return _run_until_stopped(settings, runtime, listener)
        finally:
            commitment.stop()
            archive.close()
    finally:
        index.dispose()
        log.info("stopped")


def _start_status(settings: Settings, listener: Listener) -> StatusServer | None:
    status = settings.status
    if not status.enabled:
        return None
    server = StatusServer(status.host, status.port, listener.status_snapshot)
    server.start()
    host, port = server.address
    log.info("status interface listening", url=associations_url(host, port))
    return server


def _run_until_stopped(settings: Settings, runtime: RuntimeConfig, listener: Listener) -> int:
    signals = Signals()
    signals.install()
    host, port = listener.start()
    status = None
    try:
        status = _start_status(settings, listener)
        log.info("listening", host=host, port=port, ae_title=settings.ae_title)
        _wait_for_stop(signals, runtime)
    finally:
        if status is not None:
            status.stop()
        listener.stop_accepting()
    grace = settings.daemon.shutdown_grace_period
    if not listener.drain(grace, signals.force):
        aborted = listener.abort_all()
        log.warning("aborted associations still running after the grace period", count=aborted)
    return 0


def _wait_for_stop(signals: Signals, runtime: RuntimeConfig) -> None:
    """Serve until SIGTERM/SIGINT, reloading the configuration on each SIGHUP."""
    while True:
        signals.wake.wait()
        signals.wake.clear()
        if signals.reload.is_set():
            signals.reload.clear()
            log.info("SIGHUP: reloading the configuration")
            runtime.reload()
        if signals.stop.is_set():
            if signals.force.is_set():
                log.warning("second signal: stopping now")
            log.info("stopping: no new associations, draining")
            return
