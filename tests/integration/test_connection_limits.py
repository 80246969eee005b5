"""Connections that have not associated yet: per-address and total caps, ARTIM, and the
socket options pacsd sets on accepted connections (network.*)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from pacsd.engine.pending import PendingConnections
from pacsd.engine.sockets import SocketOptions
from tests.conftest import ServerFactory
from tests.harness import PacsdProcess, echo
from tests.scu import established

WAIT_S = 15.0


def status(server: PacsdProcess) -> dict[str, Any]:
    """The status interface's snapshot."""
    with urllib.request.urlopen(server.status_url, timeout=5) as response:  # noqa: S310
        return dict(json.load(response))


def eventually(check: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """Poll `check` until it holds, bounded by `timeout`."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def resources(server: PacsdProcess) -> tuple[int, int]:
    """(threads, open file descriptors but the index pool's) of the server process."""
    assert server.process is not None
    return len(os.listdir(f"/proc/{server.process.pid}/task")), server.descriptors()[0]


def settled_resources(server: PacsdProcess, quiet_s: float = 0.5) -> tuple[int, int]:
    """`resources` once start-up has settled: unchanged for `quiet_s` (the report workers
    open their index connections once a new database's schema exists, after the port
    answers C-ECHO)."""
    deadline = time.monotonic() + WAIT_S
    last, since = resources(server), time.monotonic()
    while time.monotonic() - since < quiet_s and time.monotonic() < deadline:
        time.sleep(0.05)
        now = resources(server)
        if now != last:
            last, since = now, time.monotonic()
    return last


def back_to_baseline(server: PacsdProcess, baseline: tuple[int, int]) -> None:
    """Wait until the process has no more threads and descriptors than at `baseline`."""

    def settled() -> bool:
        return all(now <= then for now, then in zip(resources(server), baseline, strict=True))

    eventually(settled, f"threads and descriptors back to {baseline}: {resources(server)}")


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """True when the server closes `sock` (EOF or reset) within `timeout`."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_pending_cap_per_address_refuses_at_once_until_artim_closes_the_idle_ones(
    pacsd_server: ServerFactory,
) -> None:
    """With max_pending_per_address idle sockets open, further connections from that address
    (a real C-ECHO too) are closed at once, with one warning line; ARTIM closes the idle ones,
    then C-ECHO works again and threads and descriptors are back to their baseline."""
    server = pacsd_server(network={"max_pending_per_address": 4, "acse_timeout": 3})
    baseline = settled_resources(server)
    idle = [socket.create_connection((server.host, server.port)) for _ in range(4)]
    try:
        eventually(lambda: status(server)["pending_connections"] == 4, "4 pending")
        extra = [socket.create_connection((server.host, server.port)) for _ in range(3)]
        for sock in extra:
            assert closed_by_server(sock, 1.0), "a connection beyond the cap is closed at once"
            sock.close()
        assert not echo(server.host, server.port), "the cap holds for real clients too"
        warnings = server.wait_for("connection closed: too many connections not yet associated")
        assert status(server)["pending_connections_refused"] == 4
        assert len(warnings) == 1, "a flood is counted, not logged line by line"
        assert warnings[0]["max_pending_per_address"] == 4
        # ARTIM (PS3.8 9.1.5): no A-ASSOCIATE-RQ within acse_timeout closes the connection.
        for sock in idle:
            assert closed_by_server(sock, 3 + 5)
    finally:
        for sock in idle:
            sock.close()
    eventually(lambda: status(server)["pending_connections"] == 0, "none pending")
    assert echo(server.host, server.port)
    back_to_baseline(server, baseline)


def test_closed_and_associated_connections_stop_counting(pacsd_server: ServerFactory) -> None:
    """A connection stops being pending when its peer closes it (once the server sees the
    close) or when it associates: with caps of 2, closed sockets and two open associations
    plus a C-ECHO never hit the cap."""
    server = pacsd_server(network={"max_pending_per_address": 2, "max_pending_connections": 2})
    for _ in range(5):
        socket.create_connection((server.host, server.port)).close()
        eventually(lambda: status(server)["pending_connections"] == 0, "a closed one released")
    with established(server), established(server):  # two associated: not pending
        assert echo(server.host, server.port)
        # The server releases the count after its A-ASSOCIATE-AC has left: a fast client can
        # finish its whole echo before that line runs.
        eventually(lambda: status(server)["pending_connections"] == 0, "associated released")
    assert status(server)["pending_connections_refused"] == 0


def test_total_cap_counts_every_address() -> None:
    """max_pending_connections caps all addresses together; release makes room again."""
    pending = PendingConnections(max_total=2, max_per_address=16)
    assert pending.admit(("10.0.0.1", 1000, 104))
    assert pending.admit(("10.0.0.2", 1000, 104))
    assert not pending.admit(("10.0.0.3", 1000, 104))
    pending.release(("10.0.0.1", 1000, 104))
    pending.release(("10.0.0.1", 1000, 104))  # twice: counted once
    assert pending.admit(("10.0.0.3", 1000, 104))
    assert pending.count() == 2
    assert pending.refused == 1


def test_socket_options_on_a_real_socket() -> None:
    """SocketOptions sets TCP_NODELAY, SO_KEEPALIVE and the buffer sizes (Linux doubles
    the buffer values it reports, for its bookkeeping: socket(7))."""
    with socket.create_server(("127.0.0.1", 0)) as listening:
        client = socket.create_connection(listening.getsockname())
        accepted, _ = listening.accept()
        with client, accepted:
            SocketOptions(True, True, 262_144, 131_072).apply(accepted)
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * 262_144
            assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * 131_072
            SocketOptions(False, False).apply(accepted)
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
            assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0


def test_accepted_connections_inherit_the_listeners_options() -> None:
    """What `apply_listening` sets before listen() holds on each accepted connection (Linux),
    which is why the engine does not set it again per connection."""
    with socket.socket() as listening:
        options = SocketOptions(True, True, 262_144, 131_072)
        options.apply_listening(listening)
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        client = socket.create_connection(listening.getsockname())
        accepted, _ = listening.accept()
        with client, accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * 262_144
    assert not options.per_connection
    assert SocketOptions(tcp_nodelay=False).per_connection


@pytest.mark.skipif(not os.path.exists("/usr/bin/ss"), reason="needs ss (iproute2)")
def test_accepted_connections_carry_the_configured_options(pacsd_server: ServerFactory) -> None:
    """Seen from outside with ss: pacsd's side of an association has a keepalive timer and
    the configured send and receive buffers."""
    network = {"tcp_keepalive": True, "send_buffer_size": 300_000, "receive_buffer_size": 200_000}
    server = pacsd_server(network=network)
    with established(server) as assoc:
        local_port = assoc.requestor.port
        output = subprocess.run(
            ["ss", "-tnmo", "state", "established", f"( sport = :{server.port} )"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    lines = output.splitlines()
    mine = [i for i, line in enumerate(lines) if f":{local_port} " in line + " "]
    assert mine, output
    described = " ".join(lines[mine[0] : mine[0] + 2])
    assert "timer:(keepalive" in described, described
    assert "rb400000" in described, described  # the kernel doubles SO_RCVBUF (socket(7))
    assert "tb600000" in described, described
