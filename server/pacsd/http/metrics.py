"""pacsd's metrics in prometheus_client, and `GET /metrics` in the Prometheus text format.

`PrometheusSink` receives what the counting points report (pacsd.metrics) and keeps it in
prometheus_client metrics, with the label children bound once and kept in plain dicts, so that
a C-STORE costs a dict lookup and an increment. With `network.workers` > 1 every worker keeps
its values in files of prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by
the supervisor before the fork: pacsd.http.launch) and worker 0's /metrics adds them up.

Some values are read at scrape time instead of counted: the pending storage commitment and UPS
event reports (two COUNT queries on the index) and the free space of the storage root
(`Snapshot`, taken in an executor by the caller: nothing here runs on the event loop).

In cluster mode (`cluster.enabled`) the snapshot also holds the node registry as the index has
it (index/cluster.list_nodes): every node's /metrics shows `pacsd_cluster_node_up` and
`pacsd_cluster_node_associations` for every node, read from the database, under names of their
own. Summing `pacsd_associations_open` over the scraped nodes counts each association once;
the cluster gauges are the same values seen from each node, to be read from any one node (or
deduplicated by `max by (node)`), never summed over the scrapes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from pacsd import __version__
from pacsd.metrics import Sink, rejection_labels

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: a C-STORE of a small instance takes about a millisecond, a large one or a broad
# C-FIND seconds.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)  # index/writer.py writes at most 64 rows at once
TIMED_OPERATIONS = frozenset({"C-STORE", "C-FIND"})
OPEN_ASSOCIATIONS = "pacsd_associations_open"


class PrometheusSink(Sink):
    """The process's metrics; `registry` is None in multiprocess mode (values in files)."""

    def __init__(
        self, registry: CollectorRegistry | None, multiprocess_dir: Path | None = None
    ) -> None:
        self.registry = registry
        self.multiprocess_dir = multiprocess_dir
        self.open = Gauge(
            OPEN_ASSOCIATIONS,
            "DICOM associations established and not yet ended",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.accepted = Counter(
            "pacsd_associations_accepted", "Associations accepted", registry=registry
        )
        self.rejected = Counter(
            "pacsd_associations_rejected",
            "Associations rejected, by A-ASSOCIATE-RJ result, source and reason (PS3.8 9.3.4)",
            ["result", "source", "reason"],
            registry=registry,
        )
        self.operations = Counter(
            "pacsd_dimse_operations",
            "DIMSE operations answered, by operation and status",
            ["operation", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "pacsd_dimse_duration_seconds",
            "Time from a request's arrival in its service to its answer (C-STORE, C-FIND)",
            ["operation"],
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        self.received = Counter(
            "pacsd_received_bytes", "Bytes received on DICOM connections", registry=registry
        )
        self.sent = Counter(
            "pacsd_sent_bytes", "Bytes sent on DICOM connections", registry=registry
        )
        self.batches = Counter(
            "pacsd_index_write_batches", "Group commits of instance rows", registry=registry
        )
        self.batch_size = Histogram(
            "pacsd_index_write_batch_size",
            "Instance rows per group commit",
            registry=registry,
            buckets=BATCH_BUCKETS,
        )
        # Label children bound once: .labels() takes a lock and builds a key each time.
        self._rejected: dict[tuple[int, int, int], Counter] = {}
        self._operations: dict[tuple[str, int], Counter] = {}
        self._latency = {name: self.latency.labels(name) for name in TIMED_OPERATIONS}

    def association_established(self) -> None:
        self.accepted.inc()
        self.open.inc()

    def association_rejected(self, result: int, source: int, reason: int) -> None:
        key = (result, source, reason)
        child = self._rejected.get(key)
        if child is None:
            child = self._rejected[key] = self.rejected.labels(*rejection_labels(*key))
        child.inc()

    def connection_ended(self, established: bool, received: int, sent: int) -> None:
        if established:
            self.open.dec()
        if received:
            self.received.inc(received)
        if sent:
            self.sent.inc(sent)

    def operation_finished(self, operation: str, status: int, seconds: float) -> None:
        key = (operation, status)
        child = self._operations.get(key)
        if child is None:
            child = self._operations[key] = self.operations.labels(operation, f"0x{status:04X}")
        child.inc()
        timed = self._latency.get(operation)
        if timed is not None:
            timed.observe(seconds)

    def index_batch_written(self, size: int) -> None:
        self.batches.inc()
        self.batch_size.observe(size)

    def open_associations(self) -> int:
        """`pacsd_associations_open` as /metrics shows it: this process's value, or with
        workers every live worker's added up (their livesum gauge files; blocking)."""
        if self.multiprocess_dir is None:
            return int(sum(s.value for m in self.open.collect() for s in m.samples))
        files = [str(path) for path in self.multiprocess_dir.glob("gauge_livesum_*.db")]
        merged = MultiProcessCollector.merge(files, accumulate=False)  # type: ignore[no-untyped-call]
        return int(sum(s.value for m in merged if m.name == OPEN_ASSOCIATIONS for s in m.samples))


def install(multiprocess_dir: Path | None) -> PrometheusSink:
    """The process's sink: in-process values, or files under `multiprocess_dir` (workers)."""
    if multiprocess_dir is not None:
        return PrometheusSink(None, multiprocess_dir)
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)  # CPU, memory, open files of this process
    return PrometheusSink(registry)


@dataclass(frozen=True)
class NodeGauges:
    """One cluster node as the registry has it: `up` (live), its open associations as of its
    last heartbeat (None: not known; 0 once stopped)."""

    node: str
    up: bool
    associations: int | None


@dataclass(frozen=True)
class Snapshot:
    """Values read at scrape time; None when they could not be read (database down)."""

    storage_free_bytes: int | None
    commitment_pending: int | None
    ups_events_pending: int | None
    # Cluster mode: every registered node; None for a single node or when the database did
    # not answer in time (the gauges are left out, the scrape goes on).
    cluster: Sequence[NodeGauges] | None = None


class _ScrapeTime(Collector):
    """The gauges read at scrape time, and pacsd's version."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("pacsd_build_info", "pacsd's version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        values = (
            ("pacsd_storage_free_bytes", "Free space of the storage root's file system",
             self.snapshot.storage_free_bytes),
            ("pacsd_storage_commitment_reports_pending",
             "Storage commitment requests whose report is not yet delivered",
             self.snapshot.commitment_pending),
            ("pacsd_ups_event_reports_pending", "UPS event reports not yet delivered",
             self.snapshot.ups_events_pending),
        )  # fmt: skip
        for name, documentation, value in values:
            if value is not None:
                yield GaugeMetricFamily(name, documentation, value=value)
        if self.snapshot.cluster is not None:
            yield from _cluster_families(self.snapshot.cluster)


def _cluster_families(nodes: Sequence[NodeGauges]) -> Iterator[Metric]:
    """The registry's view (the same from every node): not to be summed over the scrapes."""
    up = GaugeMetricFamily(
        "pacsd_cluster_node_up",
        "1 for a cluster node that beat within 3 heartbeats, 0 for one dead or stopped "
        "(the node registry, read from the index at scrape time)",
        labels=["node"],
    )
    associations = GaugeMetricFamily(
        "pacsd_cluster_node_associations",
        "A cluster node's open associations, every worker's, as of its last heartbeat "
        "(0 once stopped; absent while dead or not known)",
        labels=["node"],
    )
    for node in nodes:
        up.add_metric([node.node], 1 if node.up else 0)
        if node.associations is not None:
            associations.add_metric([node.node], node.associations)
    yield up
    yield associations


def render(sink: PrometheusSink, multiprocess_dir: Path | None, snapshot: Snapshot) -> bytes:
    """The text of one scrape (blocking: reads the workers' files in multiprocess mode)."""
    registry = CollectorRegistry()
    if multiprocess_dir is not None:
        MultiProcessCollector(registry, path=str(multiprocess_dir))  # type: ignore[no-untyped-call]
    else:
        assert sink.registry is not None
        registry.register(_Delegate(sink.registry))
    registry.register(_ScrapeTime(snapshot))
    return generate_latest(registry)


class _Delegate(Collector):
    """Another registry's metrics inside the scrape's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()
