"""Two pacsd nodes on one PostgreSQL archive (cluster.enabled): real `pacsd serve` processes on
loopback, each with its own ports, sharing the database and the storage root.

What is checked: an instance stored through one node is found and retrieved through the other at
once; both register (`pacsd nodes`) and `pacsd associations --all-nodes` asks both; a storage
commitment report that one node was delivering when it was SIGKILLed is delivered by the other
once the dead node's claim lapses (not before); a node killed is listed dead within 3
heartbeats; every node's /metrics shows every node up and its associations as of its last
heartbeat (all its workers' together), down and 0 once stopped; and cluster mode with SQLite is
refused with one line. Needs PostgreSQL
(PACSD_TEST_DATABASE_URL, a fresh database per test); skipped without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.association import Association

from tests import datagen
from tests.conftest import POSTGRES_ENV, index_url
from tests.datagen import TEST_UID_ROOT
from tests.harness import PacsdProcess, base_config
from tests.integration import test_ups as ups
from tests.integration.test_database_outage import PrivatePostgres
from tests.integration.test_http import get, get_json, scrape
from tests.integration.test_http import stoppable_postgres as stoppable_postgres  # a fixture
from tests.qr_scu import FIND, GET, Received, collect, identifier, qr_association
from tests.scu import request, store_files

PUSH = "1.2.840.10008.1.20.1"
WELL_KNOWN = "1.2.840.10008.1.20.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
REQUESTER = "MODALITY"
LEASE_S = 3.0
HEARTBEAT_S = 0.5
TIMEOUT_S = 30
COMMAND_TIMEOUT_S = 60
# A lapsed claim is taken within the lease plus the worker's longest sleep (5 s) and a delivery.
TAKEOVER_BOUND_S = LEASE_S + 5.0 + 7.0
HEARTBEAT_BOUND_S = 10 * HEARTBEAT_S + 5.0  # a few heartbeats, and the scrape's own time
HELD = 3  # associations held open on one node
MAX_HELD = 16  # with two workers: held until worker 1 holds one too


@pytest.fixture
def postgresql_url(tmp_path: Path) -> Iterator[str]:
    """A fresh PostgreSQL database on PACSD_TEST_DATABASE_URL's server, dropped afterwards."""
    if not os.environ.get(POSTGRES_ENV):
        pytest.skip(f"cluster mode needs PostgreSQL: set {POSTGRES_ENV}")
    try:
        with index_url("postgresql", tmp_path) as url:
            yield url
    except ImportError as exc:  # psycopg missing: no PostgreSQL for this run
        pytest.skip(f"no PostgreSQL client: {exc}")


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Cluster:
    """Nodes started for one test on one database and one storage root; all stopped after."""

    folder: Path
    database_url: str
    scp_port: int = field(default_factory=_free_port)
    nodes: list[PacsdProcess] = field(default_factory=list)

    @property
    def storage(self) -> Path:
        return self.folder / "shared-storage"

    def start(
        self,
        name: str,
        peers: dict[str, int] | None = None,
        network: dict[str, Any] | None = None,
        **commitment: Any,
    ) -> PacsdProcess:
        """Start node `name`; `peers`: more AE titles (on loopback) and their ports;
        `network`: settings over the harness's (e.g. workers)."""
        table = {REQUESTER: self.scp_port, **(peers or {})}
        config = base_config(
            self.folder / name,
            self.database_url,
            network=network or {},
            storage={"root": str(self.storage), "min_free_space": "1MB"},
            cluster={
                "enabled": True,
                "node_name": name,
                "lease": LEASE_S,
                "heartbeat": HEARTBEAT_S,
            },
            commitment={"retry_initial": 0.3, "retry_max": 1.0, **commitment},
            peers=[{"ae_title": ae, "host": "127.0.0.1", "port": p} for ae, p in table.items()],
            ups={"retry_initial": 0.2, "retry_max": 0.5},
        )
        node = PacsdProcess.from_config(self.folder / name, config)
        self.nodes.append(node)
        return node.start()

    def stop_all(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.stop()


@pytest.fixture
def cluster(postgresql_url: str, tmp_path: Path) -> Iterator[Cluster]:
    nodes = Cluster(tmp_path, postgresql_url)
    try:
        yield nodes
    finally:
        nodes.stop_all()


def pacsd(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a `pacsd` command (bounded in time)."""
    environment = {k: v for k, v in os.environ.items() if k != "PACSD_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "pacsd", *args],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        env=environment,
        check=False,
    )


def node_states(node: PacsdProcess) -> dict[str, str]:
    """`pacsd nodes --json` through `node`'s configuration: name -> state."""
    done = pacsd("nodes", "--json", "--config", str(node.config_path))
    assert done.returncode == 0, done.stderr
    return {row["name"]: row["state"] for row in json.loads(done.stdout)}


def wait_for_states(node: PacsdProcess, wanted: dict[str, str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (states := node_states(node)) != wanted:
        assert time.monotonic() < deadline, f"nodes {states}, expected {wanted}"
        time.sleep(0.2)


def test_an_instance_stored_through_one_node_is_found_and_retrieved_through_the_other(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Store through A; C-FIND and C-GET through B see it at once (one index, one storage);
    `pacsd nodes` lists both live; `pacsd associations --all-nodes` asks both nodes."""
    node_a = cluster.start("node-a")
    node_b = cluster.start("node-b")
    paths = list(datagen.ct_series(tmp_path / "ct", 2, size=8))
    assert [status for status, _ in store_files(node_a.host, node_a.port, paths)] == [0, 0]
    stored = dcmread(paths[0], stop_before_pixels=True)
    study = str(stored.StudyInstanceUID)
    expected = {str(dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in paths}

    with qr_association(node_b, [FIND["S"]]) as assoc:
        series = str(stored.SeriesInstanceUID)
        keys = identifier(
            "IMAGE", StudyInstanceUID=study, SeriesInstanceUID=series, SOPInstanceUID=""
        )
        found = collect(assoc.send_c_find(keys, FIND["S"]))
    assert found.final_status == 0x0000
    assert found.values("SOPInstanceUID") == expected

    received = Received()
    with qr_association(node_b, [GET["S"]], store_handler=received.on_c_store) as assoc:
        retrieved = collect(assoc.send_c_get(identifier("STUDY", StudyInstanceUID=study), GET["S"]))
    assert retrieved.final_status == 0x0000
    assert set(received.datasets) == expected

    assert node_states(node_b) == {"node-a": "live", "node-b": "live"}
    done = pacsd("associations", "--all-nodes", "--json", "--config", str(node_a.config_path))
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)["nodes"]
    assert sorted(answer["node"] for answer in answers) == ["node-a", "node-b"]
    assert all(answer["error"] is None for answer in answers)
    assert {answer["url"] for answer in answers} == {node_a.status_url, node_b.status_url}


def cluster_gauges(node: PacsdProcess) -> dict[str, dict[str, float]]:
    """`node`'s /metrics, the cluster gauges only: metric name -> {node label: value}."""
    status, body, _content_type = get(f"{node.http_url}/metrics")
    assert status == 200, body
    gauges: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        if family.name.startswith("pacsd_cluster_node_"):
            labelled = {s.labels["node"]: s.value for s in family.samples}
            gauges[family.name] = labelled
    return gauges


def wait_for_gauges(node: PacsdProcess, wanted: dict[str, dict[str, float]]) -> None:
    """Scrape `node` until its cluster gauges are `wanted` (bounded: a few heartbeats)."""
    deadline = time.monotonic() + HEARTBEAT_BOUND_S
    while (gauges := cluster_gauges(node)) != wanted:
        assert time.monotonic() < deadline, f"cluster gauges {gauges}, expected {wanted}"
        time.sleep(0.1)


def hold_associations(node: PacsdProcess, workers: int) -> list[Association]:
    """HELD associations open on `node`; with two workers, more until worker 1 holds one
    (worker 0's /associations lists fewer than are held), so that the count must add up both
    workers'. The caller releases them."""
    held = []
    try:
        while len(held) < HELD or (workers > 1 and _listed_by_worker_0(node) == len(held)):
            assert len(held) < MAX_HELD, "worker 1 never accepted an association"
            assoc = request(node, calling="HOLDER")
            assert assoc.is_established
            held.append(assoc)
    except BaseException:
        for assoc in held:
            assoc.release()
        raise
    return held


def _listed_by_worker_0(node: PacsdProcess) -> int:
    status, document = get_json(node.status_url)
    assert status == 200, document
    return len(document["associations"])


@pytest.mark.parametrize("workers", [1, 2])
def test_every_nodes_metrics_show_each_nodes_associations_and_liveness(
    cluster: Cluster, workers: int
) -> None:
    """Associations held on A (`workers` worker processes) appear on B's /metrics as A's
    `pacsd_cluster_node_associations` within a few heartbeats, every worker's counted once,
    both nodes up; B's own `pacsd_associations_open` stays 0 (different names: summing the
    per-node gauges over the nodes counts each association once). `pacsd nodes` shows the
    count too. Once released and A stopped cleanly: A down with 0 associations."""
    node_a = cluster.start("node-a", network={"workers": workers})
    node_b = cluster.start("node-b")
    held = hold_associations(node_a, workers)
    try:
        count = float(len(held))
        wait_for_gauges(
            node_b,
            {
                "pacsd_cluster_node_up": {"node-a": 1.0, "node-b": 1.0},
                "pacsd_cluster_node_associations": {"node-a": count, "node-b": 0.0},
            },
        )
        assert scrape(node_b)[("pacsd_associations_open", ())] == 0
        assert scrape(node_a)[("pacsd_associations_open", ())] == count
        done = pacsd("nodes", "--json", "--config", str(node_b.config_path))
        assert done.returncode == 0, done.stderr
        listed = {row["name"]: row["associations"] for row in json.loads(done.stdout)}
        assert listed == {"node-a": len(held), "node-b": 0}
    finally:
        for assoc in held:
            assoc.release()
    assert node_a.stop() == 0
    # The stop is written before A exits: B sees it at once, no heartbeat needed.
    assert cluster_gauges(node_b) == {
        "pacsd_cluster_node_up": {"node-a": 0.0, "node-b": 1.0},
        "pacsd_cluster_node_associations": {"node-a": 0.0, "node-b": 0.0},
    }
    table = pacsd("nodes", "--config", str(node_b.config_path))
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split()[:3] == ["NODE", "STATE", "ASSOC"]
    assert sorted(row.split()[:3] for row in rows) == [
        ["node-a", "stopped", "0"],
        ["node-b", "live", "0"],
    ]


@pytest.mark.timeout(240)
def test_metrics_leave_the_cluster_gauges_out_while_the_database_is_down(
    stoppable_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    """PostgreSQL stopped: a node's /metrics still answers 200, its own counters included,
    without the cluster gauges (they are read from the registry); once PostgreSQL is back,
    they return without a restart."""
    stoppable_postgres.create_database("pacsd")
    nodes = Cluster(tmp_path, stoppable_postgres.url("pacsd"))
    try:
        node = nodes.start("node-a")
        up = {"pacsd_cluster_node_up": {"node-a": 1.0}}
        wait_for_gauges(node, {**up, "pacsd_cluster_node_associations": {"node-a": 0.0}})
        stoppable_postgres.stop_immediately()
        started = time.monotonic()
        samples = scrape(node)
        assert time.monotonic() - started < HEARTBEAT_BOUND_S
        assert ("pacsd_associations_open", ()) in samples
        assert not any(name.startswith("pacsd_cluster_node_") for name, _labels in samples)
        stoppable_postgres.start()
        wait_for_gauges(node, {**up, "pacsd_cluster_node_associations": {"node-a": 0.0}})
    finally:
        nodes.stop_all()


@dataclass
class BlockingRequesterScp:
    """The modality's SCP for reports: the first N-EVENT-REPORT is held unanswered until
    `release` (the node sending it is killed meanwhile); later ones are answered Success."""

    port: int
    first_arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    reports: list[tuple[float, str]] = field(default_factory=list)  # (when, Transaction UID)

    def on_event_report(self, event: Any) -> tuple[int, None]:
        transaction = str(event.event_information.TransactionUID)
        self.reports.append((time.monotonic(), transaction))
        if not self.first_arrived.is_set():
            self.first_arrived.set()
            self.release.wait(TIMEOUT_S)
        return 0x0000, None

    def serve(self) -> Any:
        ae = AE(ae_title=REQUESTER)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
        ae.add_supported_context(PUSH, scu_role=False, scp_role=True)
        handlers = [(evt.EVT_N_EVENT_REPORT, self.on_event_report)]
        return ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)


def _request_commitment(node: PacsdProcess, references: list[tuple[str, str]]) -> str:
    """N-ACTION (request commitment) to `node`, then release: the report goes on a new
    association. Returns the Transaction UID."""
    info = Dataset()
    info.TransactionUID = generate_uid(TEST_UID_ROOT)
    items = []
    for sop_class, sop_instance in references:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_instance
        items.append(item)
    info.ReferencedSOPSequence = Sequence(items)
    ae = AE(ae_title=REQUESTER)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
    ae.add_requested_context(PUSH)
    assoc = ae.associate(node.host, node.port, ae_title="PACSD")
    assert assoc.is_established
    try:
        status, _reply = assoc.send_n_action(info, 1, PUSH, WELL_KNOWN)
        assert int(status.Status) == 0x0000
    finally:
        assoc.release()
    return str(info.TransactionUID)


def test_a_killed_nodes_commitment_report_is_delivered_by_another_node(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A takes the request and is delivering its report when it is SIGKILLed: its claim
    holds B off until the lease lapses (A's heartbeat stopped), then B delivers the report
    (same Transaction UID) on a new association, within the lease plus the retry bound. A is
    listed dead within 3 heartbeats, B live."""
    node_a = cluster.start("node-a", report_on_same_association=False)
    node_b = cluster.start("node-b", report_on_same_association=False)
    paths = list(datagen.ct_series(tmp_path / "ct", 1, size=8))
    assert [status for status, _ in store_files(node_a.host, node_a.port, paths)] == [0]
    references = [(CT, str(dcmread(paths[0], stop_before_pixels=True).SOPInstanceUID))]
    requester = BlockingRequesterScp(cluster.scp_port)
    scp = requester.serve()
    try:
        transaction = _request_commitment(node_a, references)
        assert requester.first_arrived.wait(TIMEOUT_S), node_a.output()
        node_a.kill()  # SIGKILL while its report is on the wire, unanswered
        killed_at = time.monotonic()
        requester.release.set()
        wait_for_states(node_b, {"node-a": "dead", "node-b": "live"}, 10 * HEARTBEAT_S + 5)
        delivered = node_b.wait_for("commitment report delivered", timeout=TAKEOVER_BOUND_S)
    finally:
        requester.release.set()
        scp.shutdown()
    assert delivered[0]["transaction_uid"] == transaction
    assert delivered[0]["delivered_on"] == "new association"
    assert [uid for _when, uid in requester.reports] == [transaction, transaction]
    # B waited for A's claim to lapse: A renewed it at most one heartbeat before the kill.
    second_at = requester.reports[1][0]
    assert second_at - killed_at >= LEASE_S - HEARTBEAT_S - 0.5
    assert not node_a.events("commitment report delivered")
    listed = pacsd("commitment", "list", "--all", "--json", "--config", str(node_b.config_path))
    assert [(r["transaction_uid"], r["state"]) for r in json.loads(listed.stdout)] == [
        (transaction, "delivered")
    ]


def test_cluster_mode_with_sqlite_is_refused_with_one_line(tmp_path: Path) -> None:
    """cluster.enabled with a SQLite database.url: `pacsd serve` exits 2 with one line."""
    config = base_config(tmp_path, None, cluster={"enabled": True})
    node = PacsdProcess.from_config(tmp_path, config)
    done = pacsd("serve", "--config", str(node.config_path))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "cluster.enabled needs a PostgreSQL database (database.url)" in lines[0]
    assert "SQLite serves one node only" in lines[0]


def test_ups_event_reports_queued_through_two_nodes_arrive_once_and_in_order(
    cluster: Cluster,
) -> None:
    """A subscriber that is down gets its UPS event reports, caused through node A and node
    B, once it listens: each once, in the order they happened, though both nodes deliver
    (an AE's reports are claimed by one node at a time)."""
    setup = ups.Setup(cluster.folder / "ups", cluster.database_url)
    node_a = cluster.start("node-a", peers=setup.ports)
    node_b = cluster.start("node-b", peers=setup.ports)
    with ups.scu(node_a, setup, "RIS") as ris:
        uid = ups.create(ris)
        assert ups.subscribe(ris, uid, "WATCHER") == 0x0000
    with ups.scu(node_b, setup, "RIS") as ris:
        transaction = ups.claimed(ris, uid)
        assert ups.n_set(ris, uid, ups.progress(transaction, "10")).Status == 0x0000
        assert ups.n_set(ris, uid, ups.progress(transaction, "20")).Status == 0x0000
    with ups.listening(setup, "WATCHER"):
        reports = setup.inbox("WATCHER").take(4)
        assert setup.inbox("WATCHER").quiet(2 * HEARTBEAT_S + 1.0)  # no report twice
    assert ups.states(reports) == [
        (ups.STATE_REPORT, "SCHEDULED"),
        (ups.STATE_REPORT, "IN PROGRESS"),
        (ups.PROGRESS_REPORT, ""),
        (ups.PROGRESS_REPORT, ""),
    ]
    progress = [
        float(r.information.ProcedureStepProgressInformationSequence[0].ProcedureStepProgress)
        for r in reports[2:]
    ]
    assert progress == [10.0, 20.0]
    delivered = node_a.events("UPS event reports delivered") + node_b.events(
        "UPS event reports delivered"
    )
    assert sum(len(line["event_types"]) for line in delivered) >= 4


def test_fsck_repair_is_refused_while_another_holds_the_archive_lock(
    postgresql_url: str, tmp_path: Path
) -> None:
    """`pacsd fsck --repair` takes the archive-wide advisory lock "fsck-repair": while another
    session (another node's repair) holds it, the repair is refused with one line, exit 1;
    once it is free, the repair runs."""
    import psycopg
    from sqlalchemy.engine import make_url

    from pacsd.index.cluster import advisory_key

    config = base_config(tmp_path, postgresql_url, cluster={"enabled": True, "node_name": "x"})
    node = PacsdProcess.from_config(tmp_path, config)
    node.storage_root.mkdir(parents=True)
    assert pacsd("db", "upgrade", "--config", str(node.config_path)).returncode == 0
    conninfo = make_url(postgresql_url).set(drivername="postgresql")
    dsn = conninfo.render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (advisory_key("fsck-repair"),))
        refused = pacsd("fsck", "--repair", "--config", str(node.config_path))
    assert refused.returncode == 1
    problem = [line for line in refused.stderr.splitlines() if "fsck --repair" in line]
    assert problem == [
        "pacsd: another `pacsd fsck --repair` is running on this archive; try again after it"
    ]
    repaired = pacsd("fsck", "--repair", "--config", str(node.config_path))
    assert repaired.returncode == 0, repaired.stderr
