"""This node's membership of a cluster (`cluster.enabled`): the heartbeat thread.

The leading process of each node runs one `NodeHeartbeat`. Every `cluster.heartbeat` seconds it
writes the node's row in `cluster_node` (name, pid, addresses, last_seen, open associations) and
renews the claims the node holds on queued reports (index/cluster.py), so that they outlive
`cluster.lease` only while the node lives. On a clean stop it marks the row stopped (0
associations) and gives its claims back; a node that dies simply stops beating. Database work
only, in its own thread: never on the event loop.

The associations counted are those of `pacsd_associations_open`, the node's own gauge: with
`network.workers` > 1 the heartbeat runs in worker 0, and that gauge adds up every worker's
(prometheus_client's multiprocess files, http/metrics.py), where /associations lists worker 0's
only. A node without an HTTP interface keeps no metrics: its count is NULL (not known).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from pacsd import __version__, metrics
from pacsd.index.cluster import (
    Claim,
    NodeAddress,
    beat,
    list_nodes,
    node_stopped,
)
from pacsd.index.database import IndexDatabase
from pacsd.logs import get_logger
from pacsd.settings import Settings

log = get_logger("pacsd.cluster")
_WILDCARDS = ("", "0.0.0.0", "::")  # noqa: S104 - recognised, not bound


def node_address(dicom_host: str, dicom_port: int | None, http_url: str) -> NodeAddress:
    """Where other nodes and `pacsd associations --all-nodes` reach this one: a wildcard
    listening address is replaced by the hostname."""
    reachable = socket.gethostname() if dicom_host in _WILDCARDS else dicom_host
    shown = f"[{reachable}]" if ":" in reachable else reachable
    for wildcard in ("0.0.0.0", "[::]"):  # noqa: S104
        http_url = http_url.replace(f"//{wildcard}:", f"//{socket.gethostname()}:")
    return NodeAddress(f"{shown}:{dicom_port or 0}", http_url)


class NodeHeartbeat:
    """Registers this node and keeps its row and its claims fresh, in its own thread;
    `associations`: what counts the node's open associations at each beat."""

    def __init__(
        self,
        database: IndexDatabase,
        claim: Claim,
        interval: float,
        address: NodeAddress,
        associations: Callable[[], int | None] = metrics.open_associations,
    ) -> None:
        self.database, self.claim, self.interval, self.address = database, claim, interval, address
        self.associations = associations
        self._started = {
            "pid": os.getpid(),
            "version": __version__[:32],
            "heartbeat": interval,
            "started_at": datetime.now(UTC),
        }
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cluster-heartbeat", daemon=True)

    def start(self) -> None:
        """The first beat now (the node is listed at once), then one every interval."""
        self._warn_if_name_taken()
        # Claims left by an earlier run of this node (it died) stay this node's: its workers
        # make them due at once (index/commitment.due_now, index/ups.due_now).
        try:
            self._beat()
        except Exception:
            log.exception("cluster: first heartbeat failed; retrying every interval")
        log.info(
            "cluster node registered",
            node=self.claim.node,
            lease_s=self.claim.lease,
            heartbeat_s=self.interval,
            dicom_address=self.address.dicom_address,
            http_url=self.address.http_url,
        )
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop beating, mark the node stopped and give its claims back."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        try:
            node_stopped(self.database, self.claim.node)
        except Exception:
            log.exception("cluster: could not mark the node stopped; its claims lapse instead")

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                self._beat()
            except Exception:
                log.exception("cluster heartbeat failed; retrying")

    def _beat(self) -> None:
        try:
            associations = self.associations()
        except Exception:  # the count is a gauge's; the heartbeat itself must go on
            log.exception("cluster: could not count the open associations")
            associations = None
        beat(self.database, self.claim, self.address, self._started, associations)

    def _warn_if_name_taken(self) -> None:
        try:
            nodes = list_nodes(self.database)
        except Exception:
            return
        for node in nodes:
            if node.name == self.claim.node and node.state == "live":
                log.warning(
                    "cluster: a node of this name beat within 3 heartbeats; unless it was this "
                    "node before a restart, set cluster.node_name: nodes must not share a name",
                    node=node.name,
                    other_pid=node.pid,
                    other_address=node.dicom_address,
                )


def start_heartbeat(
    settings: Settings, database: IndexDatabase, dicom: tuple[str, int | None], http_url: str
) -> NodeHeartbeat | None:
    """Cluster mode: register this node and start its heartbeat; None for a single node.
    `dicom`: the listener's host and port; `http_url`: the HTTP interface's ("" if none)."""
    claim = Claim.for_settings(settings.cluster)
    if claim is None:
        return None
    heartbeat = NodeHeartbeat(
        database, claim, settings.cluster.heartbeat, node_address(*dicom, http_url)
    )
    heartbeat.start()
    return heartbeat
