"""The DICOM listener: pynetdicom's AE and server, configured and wired to pacsd's handlers."""

from __future__ import annotations

import contextlib
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from pydicom import config as pydicom_config
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.events import Event

from pacsd import __version__
from pacsd.dicom.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacsd.logs import get_logger
from pacsd.net import unrecognized
from pacsd.net.contexts import placeholder_contexts
from pacsd.net.handle import ClientHandle, HandleRegistry
from pacsd.net.negotiation import Negotiator, PolicyProvider
from pacsd.net.pending import PendingConnections
from pacsd.net.reactor import EventRequestHandler, use_for_requestors
from pacsd.net.servers import PacsdServer, server_class
from pacsd.net.sockets import SocketOptions, on_connection_open
from pacsd.services.commitment import CommitmentService
from pacsd.services.guard import (
    guarded,
    guarded_normalized,
    guarded_stream,
    refuse_find,
    refuse_get,
    refuse_move,
)
from pacsd.services.mpps import MppsService
from pacsd.services.query import QueryService
from pacsd.services.retrieve import RetrieveService, install_sender
from pacsd.services.storage import StorageService
from pacsd.services.verification import on_c_echo
from pacsd.services.worklist import MODALITY_WORKLIST_FIND, WorklistService
from pacsd.settings import Settings

log = get_logger("pacsd.listener")


def configure_pynetdicom(spool_dir: Path, log_identifiers: bool, pynetdicom_level: str) -> None:
    """Process-wide pynetdicom settings; call once before the listener starts.

    Chunked receive writes each incoming data set to a Part 10 spool file instead of memory;
    the spool lives under the storage root (tempfile's directory) so that it is cleaned at
    start-up and fills the same file system the free-space check watches.
    """
    # pynetdicom's standard handlers describe every PDU and DIMSE message at INFO and DEBUG,
    # building their text before the logger's level is looked at: not bound unless logged.
    _config.LOG_HANDLER_LEVEL = "standard" if pynetdicom_level in ("DEBUG", "INFO") else "none"
    _config.STORE_RECV_CHUNKED_DATASET = True
    unrecognized.install()
    use_for_requestors()  # C-MOVE sub-associations and commitment reports: event-driven too
    # C-GET/C-MOVE sub-operations send stored files from disk, undecoded (services/retrieve).
    _config.STORE_SEND_CHUNKED_DATASET = True
    _config.LOG_REQUEST_IDENTIFIERS = log_identifiers
    _config.LOG_RESPONSE_IDENTIFIERS = log_identifiers
    tempfile.tempdir = str(spool_dir)
    # pydicom checks every value it decodes (and every UID it constructs, pynetdicom's included)
    # against its VR's regular expression only to warn: ~8% of a C-STORE's CPU. pacsd keeps
    # what it receives as received; structural checks are dicom/integrity.py's.
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE


class _AE(AE):
    """pynetdicom's AE whose outgoing associations send stored files (C-MOVE sub-operations).

    pynetdicom opens a C-MOVE sub-association through `AE.associate` and hands it the datasets
    the handler yields; `install_sender` lets those be stored files streamed from disk, and
    the socket options (net/sockets.py) spare each C-STORE a ~40 ms delayed-ACK wait
    (measured: 18 instances/s to a DCMTK storescp without TCP_NODELAY).
    """

    def associate(self, *args: Any, **kwargs: Any) -> Association:
        handlers = kwargs.get("evt_handlers") or []
        kwargs["evt_handlers"] = [*handlers, (evt.EVT_CONN_OPEN, on_connection_open)]
        assoc = super().associate(*args, **kwargs)
        install_sender(assoc)
        return assoc


@dataclass(frozen=True)
class ListeningAddresses:
    """Where the listeners accept connections: the plain and the TLS port (None: off)."""

    host: str
    port: int | None
    tls_port: int | None


@dataclass(frozen=True)
class Services:
    """The DIMSE services the listener routes requests to."""

    storage: StorageService
    query: QueryService
    retrieve: RetrieveService
    worklist: WorklistService
    mpps: MppsService
    commitment: CommitmentService


class Listener:
    """Accepts associations on the configured address until stopped."""

    def __init__(
        self,
        settings: Settings,
        services: Services,
        policy: PolicyProvider,
        reuse_port: bool = False,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.settings = settings
        self.reuse_port = reuse_port
        self.tls_context = tls_context  # network.tls.enabled: the TLS listener's context
        self.handles = HandleRegistry()
        self.negotiator = Negotiator(policy, self.handles, settings.network.max_pdu_size)
        network = settings.network
        self.pending = PendingConnections(
            network.max_pending_connections, network.max_pending_per_address
        )
        self.options = SocketOptions.from_settings(network)
        self.ae = self._build_ae(settings)
        self.services = services
        self._servers: list[tuple[PacsdServer, threading.Thread]] = []

    @staticmethod
    def _build_ae(settings: Settings) -> AE:
        network = settings.network
        ae = _AE(ae_title=settings.ae_title)
        ae.maximum_pdu_size = network.max_pdu_size
        # pacsd counts associations itself (policy limits, network.max_associations) and answers
        # "local limit exceeded"; pynetdicom's own count includes connections being rejected, so
        # it only backs that up.
        ae.maximum_associations = 2 * network.max_associations + 8
        ae.acse_timeout = network.acse_timeout
        ae.dimse_timeout = network.dimse_timeout
        ae.network_timeout = network.network_timeout
        ae.connection_timeout = network.connection_timeout
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        return ae

    def _handlers(self) -> list[Any]:
        negotiator, services = self.negotiator, self.services
        return [
            (evt.EVT_CONN_OPEN, negotiator.on_connection_open),
            (evt.EVT_REQUESTED, negotiator.on_requested),
            (evt.EVT_ACCEPTED, negotiator.on_accepted),
            (evt.EVT_REJECTED, negotiator.on_rejected),
            (evt.EVT_ABORTED, negotiator.on_aborted),
            (evt.EVT_CONN_CLOSE, negotiator.on_connection_close),
            *self.pending.handlers(),
            (evt.EVT_DATA_RECV, negotiator.on_data_received),
            (evt.EVT_DATA_SENT, negotiator.on_data_sent),
            (evt.EVT_C_ECHO, guarded("C-ECHO", "echo", on_c_echo, self.handle_of)),
            (
                evt.EVT_C_STORE,
                guarded("C-STORE", "store", services.storage.on_c_store, self.handle_of),
            ),
            (evt.EVT_C_FIND, self._on_c_find()),
            (
                evt.EVT_N_ACTION,
                guarded_normalized(
                    "N-ACTION", "commit", services.commitment.on_n_action, self.handle_of
                ),
            ),
            (
                evt.EVT_N_CREATE,
                guarded_normalized("N-CREATE", "mpps", services.mpps.on_n_create, self.handle_of),
            ),
            (
                evt.EVT_N_SET,
                guarded_normalized("N-SET", "mpps", services.mpps.on_n_set, self.handle_of),
            ),
            (
                evt.EVT_N_GET,
                guarded_normalized("N-GET", "mpps", services.mpps.on_n_get, self.handle_of),
            ),
            (
                evt.EVT_C_GET,
                guarded_stream(
                    "C-GET", "get", services.retrieve.on_c_get, self.handle_of, refuse_get
                ),
            ),
            (
                evt.EVT_C_MOVE,
                guarded_stream(
                    "C-MOVE", "move", services.retrieve.on_c_move, self.handle_of, refuse_move
                ),
            ),
        ]

    def _on_c_find(self) -> Callable[[Event], Iterator[Any]]:
        """C-FIND: a Query/Retrieve model ("find") or the Modality Worklist ("worklist")."""
        services = self.services
        query = guarded_stream(
            "C-FIND", "find", services.query.on_c_find, self.handle_of, refuse_find
        )
        worklist = guarded_stream(
            "C-FIND", "worklist", services.worklist.on_c_find, self.handle_of, refuse_find
        )

        def on_c_find(event: Event) -> Iterator[Any]:
            if str(event.request.AffectedSOPClassUID) == MODALITY_WORKLIST_FIND:
                return worklist(event)
            return query(event)

        return on_c_find

    def status_snapshot(self) -> dict[str, Any]:
        """What the status interface serves: this listener and its live client handles."""
        handles = self.handles.live()
        return {
            "ae_title": self.settings.ae_title,
            "pacsd_version": __version__,
            "associations_accepted": self.negotiator.slots.total(),
            "max_associations": self.settings.network.max_associations,
            "pending_connections": self.pending.count(),
            "pending_connections_refused": self.pending.refused,
            "associations": [handle.snapshot() for handle in handles],
        }

    def handle_of(self, event: Event) -> ClientHandle:
        """The client handle of the association an event belongs to."""
        return self.handles.get(event.assoc)

    def start(self) -> ListeningAddresses:
        """Bind the plain listener (network.listen_plain) and the TLS one (network.tls), each
        served in a background thread; return where they listen."""
        network = self.settings.network
        try:
            port = self._serve(network.port, None) if network.listen_plain else None
            tls_port = None
            if self.tls_context is not None:
                tls = (self.tls_context, network.tls.handshake_timeout)
                tls_port = self._serve(network.tls.port, tls)
        except BaseException:
            self.stop_accepting()  # a listener already serving must not keep the process
            raise
        return ListeningAddresses(network.host, port, tls_port)

    def _serve(self, port: int, tls: tuple[ssl.SSLContext, float] | None) -> int:
        server = self.ae.make_server(
            (self.settings.network.host, port),
            contexts=placeholder_contexts(),
            evt_handlers=self._handlers(),
            server_class=server_class(self.options, self.pending, self.reuse_port, tls),
            request_handler=EventRequestHandler,
        )
        name = "pacsd-tls-listener" if tls is not None else "pacsd-listener"
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name=name
        )
        self._servers.append((cast(PacsdServer, server), thread))  # an instance of server_class
        thread.start()
        return int(server.server_address[1])

    def stop_accepting(self) -> None:
        """Close the listening sockets; running associations continue."""
        servers, self._servers = self._servers, []
        for server, thread in servers:
            # Servers from make_server are not in ae._servers, so shutdown() ends in a
            # ValueError after it has stopped serving (PYNETDICOM_NOTES.md).
            with contextlib.suppress(ValueError):
                server.shutdown()
            thread.join(timeout=5)

    def active_associations(self) -> list[Association]:
        """Associations whose threads are still running."""
        return list(self.ae.active_associations)

    def drain(self, grace_period: float, interrupted: threading.Event) -> bool:
        """Wait up to `grace_period` for running associations to end; False if some remain."""
        deadline = time.monotonic() + grace_period
        while self.active_associations():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or interrupted.wait(min(0.1, remaining)):
                return False
        return True

    def abort_all(self, join_timeout: float = 10.0) -> int:
        """A-ABORT every running association and wait for their threads to finish."""
        associations = self.active_associations()
        for assoc in associations:
            assoc.abort()
        deadline = time.monotonic() + join_timeout
        for assoc in associations:
            assoc.join(timeout=max(0.0, deadline - time.monotonic()))
        return len(associations)
