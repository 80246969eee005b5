"""Life cycle of `pacsd serve`: compose, start, wait for a signal, drain, stop in order.

SIGTERM or SIGINT: stop accepting, let running associations finish within the grace period,
abort the rest, wait for their handlers, close the database, exit 0. A second signal skips the
rest of the grace period.
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
from pacsd.net.listener import Listener, configure_pynetdicom
from pacsd.services.storage import StorageService
from pacsd.settings import Settings
from pacsd.storage.filesystem import FilesystemStore

log = get_logger("pacsd.daemon")


class StopSignals:
    """SIGTERM/SIGINT: the first asks for a graceful stop, the second forces it."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.force = threading.Event()

    def install(self) -> None:
        """Register the handlers (main thread only)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.stop.is_set():
            log.warning("second signal: stopping now", signal=name)
            self.force.set()
        else:
            log.info("stopping: no new associations, draining", signal=name)
            self.stop.set()


def _warn_about_insecure_settings(settings: Settings) -> None:
    host = settings.network.host
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    accepts_anyone = any(rule.action == "accept" for rule in settings.policies)
    if not loopback and accepts_anyone:
        log.warning(
            "insecure: listening beyond loopback with a policy that accepts every peer",
            host=host,
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
        listener = Listener(settings, StorageService(archive), rules=lambda: settings.policies)
        return _run_until_stopped(settings, listener)
    finally:
        index.dispose()
        log.info("stopped")


def _run_until_stopped(settings: Settings, listener: Listener) -> int:
    signals = StopSignals()
    signals.install()
    host, port = listener.start()
    log.info("listening", host=host, port=port, ae_title=settings.ae_title)
    signals.stop.wait()
    listener.stop_accepting()
    grace = settings.daemon.shutdown_grace_period
    if not listener.drain(grace, signals.force):
        aborted = listener.abort_all()
        log.warning("aborted associations still running after the grace period", count=aborted)
    return 0
