"""The engine of one process: its listeners, live associations, executors and outgoing
associations, on one asyncio event loop.

`Engine.start` accepts on the listening sockets (engine/listeners.py: opened before the workers
start); every accepted connection becomes an `Acceptor`. Blocking work goes to three
bounded executors: `io` for what every C-STORE needs (header parse, rename, index commit,
password hashing), `sync` for the fsync of each received file (started while the header is
parsed), and `work` for the longer operations (C-FIND, C-GET, C-MOVE, the N-services). `connect`
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
from typing import Any

from pacsd import __version__
from pacsd.engine import pdu as pdus
from pacsd.engine.acceptor import Acceptor
from pacsd.engine.association import TRACE, Timeouts
from pacsd.engine.limits import ReceiveLimits
from pacsd.engine.listeners import LISTEN_BACKLOG, Listeners
from pacsd.engine.negotiation import Negotiator, PolicyProvider
from pacsd.engine.operations import Operations, Services
from pacsd.engine.pending import PendingConnections
from pacsd.engine.proxied import ProxyTrust, Route, failure_reason, read_proxy_header
from pacsd.engine.proxy_protocol import ProxyHeaderError
from pacsd.engine.requestor import Proposal, Requestor, associate
from pacsd.engine.sockets import SocketOptions
from pacsd.engine.tls import handshake_failure, tls_args_for
from pacsd.logs import get_logger
from pacsd.settings import Peer, Settings

log = get_logger("pacsd.listener")
REQUEST_BODY_TIMEOUT_S = 5.0  # an A-ASSOCIATE-RQ that has begun must be complete by then
WORK_THREADS = 32  # C-FIND, C-GET, C-MOVE and N-service operations running at once
DRAIN_POLL_S = 0.05


class Engine:
    """Everything the associations of this process share."""

    def __init__(
        self,
        settings: Settings,
        services: Services,
        policy: PolicyProvider,
        peers: Callable[[], Mapping[str, Peer]],
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        network = settings.network
        self.settings = settings
        self.ae_title = settings.ae_title
        self.peers = peers
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
        # Behind a TCP balancer (engine/proxied.py); off while no balancer is trusted.
        self.proxy = ProxyTrust(network.proxy_protocol, "network.proxy_protocol")
        self.awaiting_header = 0  # connections whose PROXY header is being read
        self.max_pdu_size = network.max_pdu_size
        self.io = ThreadPoolExecutor(max_workers=16, thread_name_prefix="pacsd-io")
        # Operations beyond these threads wait their turn (bounded memory, whatever the peers).
        self.work = ThreadPoolExecutor(max_workers=WORK_THREADS, thread_name_prefix="pacsd-op")
        self.operations = Operations(
            services, self.io, self.work, self.limits.max_memory_dataset_size
        )
        self.live: dict[str, Acceptor] = {}  # by association ID
        TRACE.enabled = logging.getLogger("pacsd.association").isEnabledFor(logging.DEBUG)
        self._servers: list[asyncio.Server] = []
        self._listeners: Listeners | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # Sub-associations being released after their C-MOVE was answered, by peer address.
        self.releasing: dict[tuple[str, int], asyncio.Task[None]] = {}

    # -- listening -----------------------------------------------------------------------

    async def start(self, listeners: Listeners, shared: bool = False) -> None:
        """Accept on `listeners`; `shared`: other worker processes accept on them too, so take
        one connection per readiness event (engine/listeners.py)."""
        loop = asyncio.get_running_loop()
        self._listeners = listeners
        if listeners.plain is not None:
            if shared or self.proxy.enabled:
                batch = 1 if shared else LISTEN_BACKLOG
                loop.add_reader(
                    listeners.plain.fileno(), self._accept_plain, listeners.plain, batch
                )
            else:
                server = await loop.create_server(lambda: Acceptor(self), sock=listeners.plain)
                self._servers.append(server)
        if listeners.tls is not None and self.tls_context is not None:
            batch = 1 if shared else LISTEN_BACKLOG
            loop.add_reader(
                listeners.tls.fileno(), self._accept_tls, listeners.tls, self.tls_context, batch
            )

    def _accept_plain(self, listening: socket.socket, batch: int) -> None:
        """Connections from the shared queue (one per readiness event) or, behind a balancer,
        from this process's own; the uvloop transport is made for each."""
        for _ in range(batch):
            try:
                connection, address = listening.accept()
            except (BlockingIOError, InterruptedError):
                return  # another worker took it
            except OSError as exc:
                log.warning("accept failed", error=str(exc))
                return
            connection.setblocking(False)
            if self.proxy.enabled and self._proxied(connection, address, None):
                continue
            made = asyncio.get_running_loop().connect_accepted_socket(
                lambda: Acceptor(self), connection
            )
            self.track(asyncio.ensure_future(made))

    def _proxied(
        self, connection: socket.socket, address: Any, context: ssl.SSLContext | None
    ) -> bool:
        """network.proxy_protocol: False for a connection to serve as it is; else it is
        refused here, or its PROXY header read (a task) before it becomes an Acceptor."""
        route = self.proxy.route(str(address[0]))
        if route is Route.DIRECT:
            return False
        if route is Route.REFUSE or self.awaiting_header >= self.pending.max_total:
            connection.close()
            return True
        self.awaiting_header += 1
        balancer = (str(address[0]), int(address[1]))
        task = asyncio.get_running_loop().create_task(
            self._behind_balancer(connection, balancer, context)
        )
        self.track(task)
        return True

    async def _behind_balancer(
        self, connection: socket.socket, balancer: tuple[str, int], context: ssl.SSLContext | None
    ) -> None:
        """The PROXY header first (within acse_timeout); its client address is the peer's
        from then on. With TLS, the handshake follows the header (engine/proxied.py)."""
        timeout = self.timeouts.acse
        try:
            header = await read_proxy_header(connection, timeout)
        except (ProxyHeaderError, TimeoutError, OSError) as exc:
            connection.close()
            self.proxy.header_failed(balancer, failure_reason(exc, timeout))
            return
        finally:
            self.awaiting_header -= 1
        peer = header.source or balancer  # LOCAL, UNKNOWN: the connection's own address
        if context is not None:
            key = (peer[0], peer[1], int(connection.getsockname()[1]))
            if not self.pending.admit(key):
                connection.close()
                return
            await self._tls_handshake(connection, key, context)
            return
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: Acceptor(self, peer=peer), connection
            )
        except OSError as exc:
            connection.close()
            log.warning("connection lost after its PROXY header", error=str(exc))

    def _accept_tls(self, listening: socket.socket, context: ssl.SSLContext, batch: int) -> None:
        """DICOM TLS connections: accepted here and counted as pending from now on, so that a
        peer stuck in the handshake holds a pending slot (network.max_pending_*), bounded by
        network.tls.handshake_timeout; the handshake itself is the loop's."""
        port = int(listening.getsockname()[1])
        for _ in range(batch):
            try:
                connection, address = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("accept failed on the TLS listener", error=str(exc))
                return
            connection.setblocking(False)
            if self.proxy.enabled and self._proxied(connection, address, context):
                continue
            key = (str(address[0]), int(address[1]), port)
            if not self.pending.admit(key):
                connection.close()
                continue
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
                lambda: Acceptor(self, admitted=key, peer=(key[0], key[1])),
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

    def accepting(self) -> bool:
        """Whether the listeners accept (from `start` until `stop_accepting`)."""
        return self._listeners is not None

    def stop_accepting(self) -> None:
        """Stop accepting and close the listening sockets; running associations continue."""
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        listeners, self._listeners = self._listeners, None
        if listeners is not None:
            loop = asyncio.get_running_loop()
            for sock in (listeners.plain, listeners.tls):
                if sock is not None and sock.fileno() >= 0:
                    loop.remove_reader(sock.fileno())
            listeners.close()

    async def drain(self, grace_period: float, interrupted: asyncio.Event) -> bool:
        """Wait up to `grace_period` for the associations to end; False if some remain."""
        deadline = time.monotonic() + grace_period
        while self.live or self.releasing:
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
        """An association to `peer` (over DICOM TLS when the peer is marked `tls`).

        One still being released to the same address is waited for first (ACSE timeout):
        back-to-back C-MOVEs to a destination that takes one association at a time must not
        find it busy with the last one's release.
        """
        releasing = self.releasing.get((peer.host, peer.port))
        if releasing is not None:
            await asyncio.wait({releasing}, timeout=self.timeouts.acse)
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

    def release_later(self, requestor: Requestor, peer: Peer, log: Any) -> None:
        """Release `requestor` (a C-MOVE's sub-association) without anyone waiting for it, so
        that the final C-MOVE response does not wait for the destination's A-RELEASE-RP
        (every sub-operation has had its response by then). `log`: the requester's logger,
        where a failed release is reported. Shutdown's drain waits for these too."""
        key = (peer.host, peer.port)
        task = asyncio.ensure_future(requestor.release())
        self.releasing[key] = task

        def released(done: asyncio.Task[None]) -> None:
            if self.releasing.get(key) is done:
                del self.releasing[key]
            if not done.cancelled() and done.exception() is not None:
                log.warning("sub-association release failed", reason=repr(done.exception()))

        task.add_done_callback(released)

    # -- status --------------------------------------------------------------------------

    def status_snapshot(self) -> dict[str, Any]:
        """What `GET /associations` serves: this engine and its live client handles."""
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
