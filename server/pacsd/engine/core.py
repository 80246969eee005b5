"""The engine of one process: its listeners, live associations, executors and outgoing
associations, on one asyncio event loop.

`Engine.start` binds the plain listener (`network.listen_plain`) and the TLS one
(`network.tls`); every accepted connection becomes an `Acceptor`. Blocking work goes to two
bounded executors: `io` for what every C-STORE needs (file fsync, index commit, password
hashing) and `work` for the longer operations (C-FIND, C-GET, C-MOVE, the N-services). `connect`
opens an association to a peer of the AE table (C-MOVE destinations, commitment reports).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pacsd import __version__
from pacsd.engine import pdu as pdus
from pacsd.engine.acceptor import Acceptor
from pacsd.engine.association import TRACE, Timeouts
from pacsd.engine.limits import ReceiveLimits
from pacsd.engine.negotiation import Negotiator, PolicyProvider
from pacsd.engine.operations import Operations, Services
from pacsd.engine.pending import PendingConnections
from pacsd.engine.requestor import Proposal, Requestor, associate
from pacsd.engine.sockets import SocketOptions
from pacsd.engine.tls import handshake_failure, tls_args_for
from pacsd.logs import get_logger
from pacsd.settings import Peer, Settings

log = get_logger("pacsd.listener")
REQUEST_BODY_TIMEOUT_S = 5.0
WORK_THREADS = 32  # C-FIND, C-GET, C-MOVE and N-service operations running at once  # an A-ASSOCIATE-RQ that has begun must be complete by then
LISTEN_BACKLOG = 128
DRAIN_POLL_S = 0.05


class ListenError(Exception):
    """A listening socket could not be opened; the message names the listener and port."""


@dataclass(frozen=True)
class ListeningAddresses:
    """Where the listeners accept connections: the plain and the TLS port (None: off)."""

    host: str
    port: int | None
    tls_port: int | None


class Engine:
    """Everything the associations of this process share."""

    def __init__(
        self,
        settings: Settings,
        services: Services,
        policy: PolicyProvider,
        peers: Callable[[], Mapping[str, Peer]],
        reuse_port: bool = False,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        network = settings.network
        self.settings = settings
        self.ae_title = settings.ae_title
        self.peers = peers
        self.reuse_port = reuse_port
        self.tls_context = tls_context
        self.negotiator = Negotiator(policy, network.max_pdu_size)
        self.pending = PendingConnections(
            network.max_pending_connections, network.max_pending_per_address
        )
        self.options = SocketOptions.from_settings(network)
        self.limits = ReceiveLimits.from_settings(settings.limits)
        self.timeouts = Timeouts(
            network.acse_timeout, network.dimse_timeout, network.network_timeout
        )
        self.connect_timeout = float(network.connection_timeout)
        self.tls_handshake_timeout = float(network.tls.handshake_timeout)
        self.request_body_timeout = REQUEST_BODY_TIMEOUT_S
        self.max_pdu_size = network.max_pdu_size
        self.io = ThreadPoolExecutor(max_workers=16, thread_name_prefix="pacsd-io")
        self.sync = ThreadPoolExecutor(max_workers=16, thread_name_prefix="pacsd-sync")
        # Operations beyond these threads wait their turn (bounded memory, whatever the peers).
        self.work = ThreadPoolExecutor(max_workers=WORK_THREADS, thread_name_prefix="pacsd-op")
        self.operations = Operations(
            services, self.io, self.sync, self.work, self.limits.max_memory_dataset_size
        )
        self.live: dict[str, Acceptor] = {}  # by association ID
        TRACE.enabled = logging.getLogger("pacsd.association").isEnabledFor(logging.DEBUG)
        self._servers: list[asyncio.Server] = []
        self._tls_sockets: list[socket.socket] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- listening -----------------------------------------------------------------------

    async def start(self) -> ListeningAddresses:
        """Bind the configured listeners; where they listen."""
        network = self.settings.network
        port = tls_port = None
        try:
            if network.listen_plain:
                port = await self._serve(network.host, network.port, None, "plain")
            if self.tls_context is not None:
                tls_port = await self._serve(
                    network.host, network.tls.port, self.tls_context, "TLS"
                )
        except BaseException:
            self.stop_accepting()
            raise
        return ListeningAddresses(network.host, port, tls_port)

    async def _serve(self, host: str, port: int, tls: ssl.SSLContext | None, kind: str) -> int:
        try:
            sock = self._listening_socket(host, port)
        except OSError as exc:
            raise ListenError(
                f"cannot listen on {host}:{port} (the {kind} DICOM listener): {exc.strerror or exc}"
            ) from None
        loop = asyncio.get_running_loop()
        if tls is None:
            self._servers.append(await loop.create_server(lambda: Acceptor(self), sock=sock))
        else:
            loop.add_reader(sock.fileno(), self._accept_tls, sock, tls)
            self._tls_sockets.append(sock)
        return int(sock.getsockname()[1])

    def _accept_tls(self, listening: socket.socket, context: ssl.SSLContext) -> None:
        """DICOM TLS connections: accepted here and counted as pending from now on, so that a
        peer stuck in the handshake holds a pending slot (network.max_pending_*), bounded by
        network.tls.handshake_timeout; the handshake itself is the loop's."""
        port = int(listening.getsockname()[1])
        for _ in range(LISTEN_BACKLOG):
            try:
                connection, address = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("accept failed on the TLS listener", error=str(exc))
                return
            key = (str(address[0]), int(address[1]), port)
            if not self.pending.admit(key):
                connection.close()
                continue
            connection.setblocking(False)
            task = asyncio.get_running_loop().create_task(
                self._tls_handshake(connection, key, context)
            )
            self.track(task)

    async def _tls_handshake(
        self, connection: socket.socket, key: tuple[str, int, int], context: ssl.SSLContext
    ) -> None:
        """PS3.15 B.1: the server side of the handshake, then the association's Acceptor."""
        loop = asyncio.get_running_loop()
        timeout = self.tls_handshake_timeout
        try:
            await loop.connect_accepted_socket(
                lambda: Acceptor(self, admitted=key),
                connection,
                ssl=context,
                ssl_handshake_timeout=timeout,
            )
        except (TimeoutError, OSError, ssl.SSLError, ConnectionError) as exc:
            self.pending.release(key)
            connection.close()
            log.warning(
                "TLS handshake failed; connection closed",
                peer_address=key[0],
                peer_port=key[1],
                reason=handshake_failure(exc, timeout),
            )

    def _listening_socket(self, host: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.reuse_port:  # several worker processes listen on the port
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            self.options.apply_buffers(sock)  # before listen: accepted sockets inherit them
            sock.bind((host, port))
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def stop_accepting(self) -> None:
        """Close the listening sockets; running associations continue."""
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        tls_sockets, self._tls_sockets = self._tls_sockets, []
        for sock in tls_sockets:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()

    async def drain(self, grace_period: float, interrupted: asyncio.Event) -> bool:
        """Wait up to `grace_period` for the associations to end; False if some remain."""
        deadline = time.monotonic() + grace_period
        while self.live:
            if time.monotonic() >= deadline or interrupted.is_set():
                return False
            await asyncio.sleep(DRAIN_POLL_S)
        return True

    async def abort_all(self, wait: float = 10.0) -> int:
        """A-ABORT every association still open, and wait (bounded) for them to close."""
        acceptors = list(self.live.values())
        for acceptor in acceptors:
            acceptor.abort(pdus.ABORT_SOURCE_USER, 0)
            acceptor.close_transport()
        if acceptors:
            waits = [asyncio.ensure_future(acceptor.wait_closed()) for acceptor in acceptors]
            _done, pending = await asyncio.wait(waits, timeout=wait)
            for task in pending:
                task.cancel()
        return len(acceptors)

    def close(self) -> None:
        """Wait for the operations still in the executors (their answers go nowhere)."""
        self.work.shutdown(wait=True, cancel_futures=True)
        self.io.shutdown(wait=True)
        self.sync.shutdown(wait=True)

    def register(self, acceptor: Acceptor) -> None:
        """A new connection."""
        self.live[acceptor.handle.association_id] = acceptor

    def unregister(self, acceptor: Acceptor) -> None:
        """A connection ended."""
        self.live.pop(acceptor.handle.association_id, None)

    def track(self, task: asyncio.Task[Any]) -> None:
        """Keep a background task referenced until it ends."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- outgoing associations -----------------------------------------------------------

    async def connect(
        self,
        peer: Peer,
        contexts: Sequence[tuple[str, Sequence[str]]],
        roles: Sequence[pdus.RoleSelection] = (),
    ) -> Requestor:
        """An association to `peer` (over DICOM TLS when the peer is marked `tls`)."""
        proposal = Proposal(self.ae_title, peer.ae_title, contexts, roles, self.max_pdu_size)
        return await associate(
            peer.host,
            peer.port,
            proposal,
            self.limits,
            self.timeouts,
            self.options,
            self.connect_timeout,
            tls_args_for(peer),
        )

    # -- status --------------------------------------------------------------------------

    def status_snapshot(self) -> dict[str, Any]:
        """What the status interface serves: this engine and its live client handles."""
        handles = sorted(
            (acceptor.handle for acceptor in self.live.values()),
            key=lambda handle: handle.connected_at,
        )
        return {
            "ae_title": self.ae_title,
            "pacsd_version": __version__,
            "associations_accepted": self.negotiator.slots.total(),
            "max_associations": self.settings.network.max_associations,
            "pending_connections": self.pending.count(),
            "pending_connections_refused": self.pending.refused,
            "associations": [handle.snapshot() for handle in handles],
        }
