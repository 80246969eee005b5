"""Life cycle of `pacsd serve`: compose, start, wait for a signal, drain, stop in order.

The DICOM engine runs on an asyncio event loop in the main thread (engine/core.py).
SIGTERM or SIGINT: stop accepting, let running associations finish within the grace period,
abort the rest, wait for their operations, close the database, exit 0. A second signal skips
the rest of the grace period. SIGHUP: reload the policies and the peer table (runtime.py).
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import os
import socket
import ssl
import sys
from pathlib import Path

import uvloop
from pydicom import config as pydicom_config

from pacsd import __version__, audit, extensions, metrics
from pacsd.admin.retention import RetentionWorker
from pacsd.archive import Archive
from pacsd.cluster import NodeHeartbeat, start_heartbeat
from pacsd.engine.core import Engine
from pacsd.engine.delivery import EngineDelivery, PrinterEventDelivery, UpsEventDelivery
from pacsd.engine.listeners import ListenError, Listeners, open_listeners
from pacsd.engine.operations import Services
from pacsd.engine.sockets import SocketOptions
from pacsd.engine.tls import TlsSetupError, configure_outgoing, server_context
from pacsd.http.launch import (
    HttpSetupError,
    HttpSide,
    MetricsFolder,
    RunningHttp,
    base_url,
    open_socket,
    single_process,
)
from pacsd.index.cluster import Claim
from pacsd.index.database import IndexDatabase, create_index_engine
from pacsd.index.schema import HEAD_REVISION, check_schema, create_schema
from pacsd.logs import bind_process, get_logger
from pacsd.policy.rules import Match
from pacsd.runtime import RuntimeConfig
from pacsd.services.commitment import CommitmentService, CommitmentWorker
from pacsd.services.mpps import MppsService
from pacsd.services.print_management import PrintService
from pacsd.services.query import QueryService
from pacsd.services.retrieve import RetrieveService
from pacsd.services.storage import StorageService
from pacsd.services.ups import UpsEventWorker, UpsService
from pacsd.services.worklist import WorklistService
from pacsd.settings import Settings
from pacsd.settings_paths import resolve_sqlite_url
from pacsd.settings_secrets import mask_url
from pacsd.signals import LoopSignals
from pacsd.storage.base import InstanceStore, open_store
from pacsd.workers import stop_with_supervisor, supervise

log = get_logger("pacsd.daemon")
EXIT_CONFIG = 2  # as cli.py: a configuration that cannot be used
SWITCH_INTERVAL_S = 0.002  # the GIL switch interval of a serving process (see _serve_associations)


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
    http = settings.http
    if http.enabled and not _is_loopback(http.host):
        anyone = [r.name for r in http.rules if r.users is None and r.address is None]
        log.warning(
            "the HTTP interface listens beyond loopback",
            host=http.host,
            rules_for_anyone=anyone,
        )
        if not http.tls and any(r.users is not None for r in http.rules):
            log.warning(
                "insecure: HTTP passwords and tokens cross the network in clear text; set http.tls"
            )
    if settings.status is not None:
        log.warning("the `status` section is the old name of `http`: rename it")
    by_username = [r.name for r in settings.policies if r.match.username is not None]
    identity = settings.identity
    if by_username and not identity.users and identity.jwt is None:
        log.warning(
            "rules match on a username, but no identity.users or identity.jwt can verify one",
            rules=by_username,
        )
    no_password = [user.username for user in identity.users if user.password_hash is None]
    if no_password:
        log.warning("users without password_hash: naming them is enough", users=no_password)
    if settings.logging.pynetdicom_level is not None:
        log.warning(
            "logging.pynetdicom_level has no effect: pacsd's DICOM engine is its own; "
            "logging.level DEBUG traces every PDU"
        )
    if settings.logging.log_patient_data:
        log.warning("logging.log_patient_data is on: logs will contain patient identifiers")
    tls = settings.network.tls
    by_subject = [r.name for r in settings.policies if r.match.tls_subject is not None]
    if by_subject and (not tls.enabled or tls.client_certificates == "none"):
        log.warning(
            "rules match on a TLS client certificate subject, but the TLS listener does not "
            "ask for client certificates (network.tls.client_certificates): they never match",
            rules=by_subject,
        )


def _prepare_tls(settings: Settings) -> ssl.SSLContext | None:
    """Load the TLS files before anything starts; the listener's context, if it has one.

    Raises TlsSetupError (a bad certificate, key, password or CA file) naming the key.
    """
    network = settings.network
    needed_outgoing = network.tls.enabled or any(peer.tls for peer in settings.peers)
    configure_outgoing(network.tls, build_now=needed_outgoing)
    return server_context(network.tls) if network.tls.enabled else None


def _refuse_start(problem: str) -> int:
    """Report a configuration problem found at start-up as `pacsd config` reports one."""
    log.error("cannot start", problem=problem)
    print(f"pacsd: {problem}", file=sys.stderr)
    return EXIT_CONFIG


def serve(settings: Settings, config_source: Path | None) -> int:
    """Run the daemon until a signal stops it; returns the process exit code.

    This process prepares the archive and opens the listening sockets; with `network.workers`
    > 1 it then forks the workers, which inherit them, and supervises them (workers.py).
    """
    log.info(
        "starting",
        version=__version__,
        config=str(config_source or "embedded default"),
        pid=os.getpid(),
    )
    _warn_about_insecure_settings(settings)
    for name, site in extensions.loaded().items():
        log.info(
            "site service loaded",
            extension=name,
            service=site.name,
            sop_classes=sorted(site.sop_classes.values()),
            requests=sorted([*site.handlers, *site.streams]),
            description=site.description,
        )
    try:
        tls_context = _prepare_tls(settings)
    except TlsSetupError as exc:
        return _refuse_start(f"{config_source or 'embedded default'}: {exc}")
    index = IndexDatabase(create_index_engine(settings.database.url, settings.database.pool_size))
    trail = audit.configure(settings)  # the audit trail: a stream apart from this log
    audit.application_started()
    try:
        # An out-of-date schema refuses start-up here; an empty database's is created here,
        # before the port opens, so that whoever waits for the port (a script, an admin
        # command, a health check) finds it. At the newest revision this is one SELECT.
        current = check_schema(index.engine)
        revision = (HEAD_REVISION,) if current else create_schema(index.engine).current
        _index_ready(settings, index, revision)
        files = open_store(settings.storage)
        removed = files.prepare()
        if removed:
            log.info("removed leftovers of an interrupted run", files=removed)
        try:
            listeners = open_listeners(
                settings.network, SocketOptions.from_settings(settings.network)
            )
        except ListenError as exc:
            return _refuse_start(str(exc))
        try:
            http_socket = open_socket(settings.http) if settings.http.enabled else None
        except HttpSetupError as exc:
            listeners.close()
            return _refuse_start(str(exc))
        if http_socket is not None:
            log.info("http interface listening", url=base_url(http_socket, settings.http.tls))
        if settings.network.workers > 1:
            index.dispose()  # no connection crosses the fork: each worker opens its own
            try:
                folder = MetricsFolder.prepare(settings.http.metrics_dir) if http_socket else None
            except HttpSetupError as exc:
                listeners.close()
                return _refuse_start(str(exc))

            def run_worker(number: int) -> int:
                return _worker(
                    number, settings, config_source, listeners, tls_context,
                    (http_socket, folder.path if folder else None),
                )  # fmt: skip

            try:
                ended = folder.worker_ended if folder is not None else None
                served = [http_socket] if http_socket is not None else []
                return supervise(settings, listeners, run_worker, ended, served)
            finally:
                if folder is not None:
                    folder.remove()
        single_process()
        runtime = RuntimeConfig(settings, config_source)
        if trail is not None:
            trail.peers = runtime.peers  # C-MOVE destinations' addresses
        return _serve_associations(
            settings, runtime, index, files, None, tls_context, listeners, (http_socket, None)
        )
    finally:
        index.dispose()
        audit.application_stopped()
        audit.shutdown()
        log.info("stopped")


def _worker(
    number: int,
    settings: Settings,
    config_source: Path | None,
    listeners: Listeners,
    tls_context: ssl.SSLContext | None,
    http: tuple[socket.socket | None, Path | None],
) -> int:
    """A forked worker: its own index connections and audit trail, the shared listeners;
    `http`: the HTTP socket (served by worker 0) and the folder of the metric files."""
    bind_process(worker=number)
    stop_with_supervisor()
    log.info("starting", version=__version__, pid=os.getpid())
    trail = audit.configure(settings)  # its own file handle and aggregates
    index = IndexDatabase(create_index_engine(settings.database.url, settings.database.pool_size))
    try:
        files = open_store(settings.storage)
        runtime = RuntimeConfig(settings, config_source)
        if trail is not None:
            trail.peers = runtime.peers
        return _serve_associations(
            settings, runtime, index, files, number, tls_context, listeners, http
        )
    finally:
        index.dispose()
        audit.shutdown()
        log.info("stopped")


def _serve_associations(
    settings: Settings,
    runtime: RuntimeConfig,
    index: IndexDatabase,
    files: InstanceStore,
    worker: int | None,
    tls_context: ssl.SSLContext | None,
    listeners: Listeners,
    http: tuple[socket.socket | None, Path | None],
) -> int:
    """Compose the services and the engine, and serve until stopped; `http`: the HTTP socket
    (None: no HTTP interface) and, with workers, the folder of the metric files."""
    # pydicom checks every value it decodes against its VR's regular expression only to warn:
    # pacsd keeps what it receives as received; structural checks are dicom/integrity.py's.
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    # The event loop shares the GIL with the executors' threads. A thread busy in Python
    # keeps it for the switch interval, CPython's default 5 ms, while every association
    # of the process waits to be read or written: a C-FIND's pending responses went out only
    # at its end, and a C-CANCEL was read too late. 2 ms bounds that wait (0.5 ms cost 5% of
    # the 8-association ingest of small instances; 2 ms nothing measurable).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    archive = Archive(files, index, settings.storage.duplicate_policy, settings.limits)
    commitment = CommitmentWorker(
        index, files, runtime.peers, settings.commitment, settings.ae_title
    )
    ups_events = UpsEventWorker(index, runtime.peers, settings.ups)
    # Cluster mode (pacsd.cluster): queued reports are claimed by node, every process alike.
    commitment.claim = ups_events.claim = Claim.for_settings(settings.cluster)
    ups = UpsService(index, ups_events, settings.ups, settings.query, settings.ae_title)
    # Site services (pacsd/extensions.py), loaded with the configuration before the fork.
    site_simple, site_streams = extensions.routes()
    printing = PrintService.from_settings(settings)
    services = Services(
        storage=StorageService(archive),
        query=QueryService(index, settings.query, settings.ae_title),
        retrieve=RetrieveService(index, files, runtime.peers),
        worklist=WorklistService(index, settings.query),
        mpps=MppsService(index, settings.worklist.retire_completed),
        commitment=CommitmentService(index, commitment),
        simple={
            **printing.routes(),
            **ups.simple_routes(),
            **site_simple,
        },
        streams={**ups.stream_routes(), **site_streams},
    )
    leading = worker in (None, 0)  # the one process with the HTTP and commitment threads
    shared = worker is not None  # other workers accept on the same sockets
    http_socket, metrics_dir = http
    if http_socket is not None and not leading:
        http_socket.close()  # worker 0 serves HTTP
    http_side = None
    if http_socket is not None:
        metrics.use(metrics.EarlySink())  # until the Prometheus sink is imported (HttpSide)
        served = http_socket if leading else None
        http_side = HttpSide(settings, served, archive, runtime, metrics_dir)
    # Retention (pacsd.admin.retention): a thread of the leading process, off the loop.
    retention = RetentionWorker(index, files, settings.retention)
    heartbeats: list[NodeHeartbeat | None] = []

    if leading and settings.retention.enabled:
        retention.start()
    if leading:  # cluster mode: this node's row in cluster_node and its claims kept fresh
        url = base_url(http_socket, settings.http.tls) if http_socket is not None else ""
        dicom = (listeners.host, _dicom_port(listeners))
        heartbeats.append(start_heartbeat(settings, index, dicom, url))
    try:
        return uvloop.run(
            _run(
                settings,
                runtime,
                services,
                (commitment, ups_events, printing),
                listeners,
                shared,
                tls_context,
                leading,
                http_side,
            )
        )
    finally:
        retention.stop()
        for heartbeat in heartbeats:
            if heartbeat is not None:
                heartbeat.stop()  # after the report workers (stopped in _run): claims go back


def _dicom_port(listeners: Listeners) -> int | None:
    return listeners.port if listeners.port is not None else listeners.tls_port


async def _run(
    settings: Settings,
    runtime: RuntimeConfig,
    services: Services,
    report_workers: tuple[CommitmentWorker, UpsEventWorker, PrintService],
    listeners: Listeners,
    shared: bool,
    tls_context: ssl.SSLContext | None,
    leading: bool,
    http_side: HttpSide | None,
) -> int:
    loop = asyncio.get_running_loop()
    engine = Engine(settings, services, runtime.policy, runtime.peers, tls_context=tls_context)
    signals = LoopSignals()
    signals.install(loop)
    audit.use_loop(loop)  # the quiet associations' Login/Logout aggregates: no timer thread
    commitment, ups_events, printing = report_workers
    commitment.delivery = EngineDelivery(engine, loop)
    ups_events.delivery = UpsEventDelivery(engine, loop)
    printing.events = PrinterEventDelivery(engine, loop)  # Printer status reports (PS3.4 H.4.6)
    await engine.start(listeners, shared)
    http: RunningHttp | None = None
    try:
        # `port` is the plain listener's, or the TLS one's when there is no plain listener.
        log.info(
            "listening",
            host=listeners.host,
            port=listeners.port if listeners.port is not None else listeners.tls_port,
            tls_port=listeners.tls_port,
            plain=listeners.port is not None,
            ae_title=settings.ae_title,
        )
        if leading:
            commitment.start()  # reports still pending from an earlier run go out now
            ups_events.start()  # and UPS event reports, after an SCP Status Change (CC.2.4.3)
        # Everything made so far (modules, configuration, the composed services) lives until
        # exit: out of the collector's sight, a full collection costs microseconds, not ~60 ms.
        gc.freeze()
        gc.enable()  # off since the command started (pacsd.__main__): nothing to collect then
        if http_side is not None:  # imported and started now that the DICOM port answers
            http = await http_side.start(engine.status_snapshot, engine.accepting)
        await _wait_for_stop(signals, runtime)
    finally:
        engine.stop_accepting()
        grace = settings.daemon.shutdown_grace_period
        if not await engine.drain(grace, signals.force):
            aborted = await engine.abort_all()
            log.warning("aborted associations still running after the grace period", count=aborted)
        if http is not None:  # it answered /readyz 503 while the associations drained
            await http.stop()
        # Both may wait on the loop (a report in delivery, an operation's last response).
        await asyncio.gather(
            loop.run_in_executor(None, commitment.stop),
            loop.run_in_executor(None, ups_events.stop),
        )
        await loop.run_in_executor(None, engine.close)
        audit.use_loop(None)
    return 0


def _index_ready(settings: Settings, index: IndexDatabase, revision: tuple[str, ...]) -> None:
    log.info(
        "index database ready",
        backend=index.backend,
        revision=",".join(revision),
        database=mask_url(resolve_sqlite_url(settings.database.url, Path.cwd())),
        storage_root=os.path.abspath(settings.storage.root),
    )


async def _wait_for_stop(signals: LoopSignals, runtime: RuntimeConfig) -> None:
    """Serve until SIGTERM/SIGINT, reloading the configuration on each SIGHUP."""
    while True:
        await signals.wait()
        if signals.reload.is_set():
            signals.reload.clear()
            log.info("SIGHUP: reloading the configuration")
            accepted = runtime.reload()
            audit.reopen()  # logrotate: the audit file may have been moved away
            rules = ", ".join(rule.name for rule in runtime.active.settings.policies)
            audit.configuration_reloaded(
                runtime.source,
                accepted,
                f"policies and peers {'reloaded' if accepted else 'reload refused'}; "
                f"rules in force: {rules}",
            )
        if signals.stop.is_set():
            _stopping(signals)
            return


def _stopping(signals: LoopSignals) -> None:
    if signals.force.is_set():
        log.warning("second signal: stopping now")
    log.info("stopping: no new associations, draining")
