"""C-STORE ingest through HAProxy to 1, 2 and 3 pacsd nodes, next to Orthanc on PostgreSQL.

The hosts are network namespaces on one private bridge (tests/netns.py; needs root): `db` (a
private PostgreSQL server, the same for every run, a new database per run), `node1`..`node3`
(pacsd in cluster mode, the same database and one shared storage folder per run), `lb`
(HAProxy, mode tcp, leastconn, `send-proxy-v2`, health checks on /readyz) and `modality`
(DCMTK's storescu).

What is measured
    For each node count N, an empty database and storage; N nodes started, then HAProxy; the
    files (0.5 MB CT: 512x512x16, Explicit VR Little Endian, one series, as benchmarks/ingest.py)
    split into K equal parts, K storescu processes (one association each, TCP_NODELAY=1) started
    at once from the modality's namespace to the balancer. Wall time: from the first storescu's
    start to the last one's exit. instances/s = Success responses / wall time.
    CPU: utime + stime (with the children's, cutime + cstime) of every process of the servers'
    process trees (/proc/PID/stat), read before the first storescu starts and after the last
    exits: pacsd nodes (or Orthanc) and PostgreSQL (postmaster and backends) together, per
    instance stored; HAProxy's separately. The machine's cores are shared by all of them and
    by the clients, so with more nodes than cores the CPU per instance says more than the
    rate does.

The reference
    Orthanc (Debian `orthanc`, with `orthanc-postgresql`'s PostgreSQL index plugin, storage
    on disk) in node1's namespace, one node, its own database on the same PostgreSQL server,
    reached through the same HAProxy without the PROXY header (Orthanc does not read it).
    Orthanc's DICOM server has 4 threads by default and does not fsync its files; pacsd fsyncs
    each file and commits each index row durably.

What is checked
    Nothing about speed. Each run reports storescu's exit codes and the instances indexed
    (pacsd: table `instance`; Orthanc: /statistics); a run that lost one is listed under the
    table and makes the exit code 1.

S3: pacsd nodes here share a POSIX folder; an object-storage variant would start the S3 server
in its own namespace and set each node's storage settings to it (`node_config`'s `storage`).

Run as root from the repository root: python -m benchmarks.cluster_ingest --help
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.dcmtk import count_successes, tool_version
from benchmarks.ingest import BENCH_SIZE, prepare_inputs, split
from benchmarks.report import Workload
from tests.harness import base_config, echo
from tests.netns import (
    NetnsPacsd,
    NetnsPostgres,
    Topology,
    postgres_bin,
    stop_process,
    unavailable,
)

NODES = ("node1", "node2", "node3")
ROLES = (*NODES, "lb", "modality", "db")
DICOM_PORT, HTTP_PORT = 11112, 8080
ORTHANC_DICOM_PORT, ORTHANC_HTTP_PORT = 4242, 8042
ORTHANC = Path("/usr/sbin/Orthanc")
ORTHANC_POSTGRESQL = Path("/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so")
HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin") or "haproxy"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
START_TIMEOUT_S = 60.0


def progress(message: str) -> None:
    """Progress goes to stderr; the table to stdout."""
    print(f"[cluster-ingest] {message}", file=sys.stderr, flush=True)


# --- CPU time of process trees ------------------------------------------------------------


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, utime+stime+cutime+cstime in seconds) of `pid`, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "
    ticks = sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return int(fields[1]), ticks / CLOCK_TICKS


def tree_cpu_seconds(roots: Sequence[int]) -> float:
    """CPU seconds of the processes `roots` and all their descendants, children reaped
    included (a reaped child's time moves into its parent's cutime: the sum is unchanged)."""
    parents: dict[int, list[int]] = {}
    seconds: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            parents.setdefault(stat[0], []).append(int(entry.name))
            seconds[int(entry.name)] = stat[1]
    total, todo, seen = 0.0, list(roots), set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += seconds.get(pid, 0.0)
        todo.extend(parents.get(pid, []))
    return total


# --- the pieces ---------------------------------------------------------------------------


def haproxy_config(lb: str, servers: Sequence[tuple[str, str, int]], proxy: bool) -> str:
    """HAProxy: DICOM on lb:11112, leastconn to `servers` (name, address, port); with
    `proxy`, PROXY v2 and health checks on pacsd's /readyz, else plain TCP checks."""
    checks = (
        "  option httpchk\n  http-check send meth GET uri /readyz\n"
        "  http-check expect status 200\n"
        f"  default-server send-proxy-v2 check check-send-proxy port {HTTP_PORT} inter 1s\n"
        if proxy
        else "  default-server check inter 1s\n"
    )
    listed = "".join(f"  server {name} {address}:{port}\n" for name, address, port in servers)
    return (
        "global\n  maxconn 512\n"
        "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 10m\n"
        "  timeout server 10m\n  retries 3\n  option redispatch\n"
        f"frontend dicom\n  bind {lb}:{DICOM_PORT}\n  default_backend servers\n"
        f"backend servers\n  balance leastconn\n{checks}{listed}"
    )


def start_haproxy(topology: Topology, config: str, folder: Path) -> subprocess.Popen[Any]:
    """HAProxy in the lb namespace (foreground, by pid), once it listens."""
    path = folder / "haproxy.cfg"
    path.write_text(config, encoding="utf-8")
    with (folder / "haproxy.log").open("wb") as log:  # the child keeps its own descriptor
        process = topology.popen("lb", [HAPROXY, "-db", "-f", str(path)], stdout=log, stderr=log)
    lb = topology.host("lb").address
    deadline = time.monotonic() + START_TIMEOUT_S
    while not echo(lb, DICOM_PORT, called="ANY"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"haproxy does not pass C-ECHO: {(folder / 'haproxy.log')}")
        time.sleep(0.2)
    return process


@dataclass
class ClientRun:
    """K storescu processes at once: wall time, exit codes, Success responses."""

    seconds: float
    exit_codes: list[int | None]
    successes: int


def run_storescu(
    topology: Topology, parts: Sequence[Sequence[Path]], folder: Path, timeout: float
) -> ClientRun:
    """One storescu per part from the modality's namespace to the balancer, all at once."""
    lb = topology.host("lb").address
    logs = [folder / f"storescu-{index}.log" for index in range(len(parts))]
    environment = {**os.environ, "TCP_NODELAY": "1"}
    processes = []
    started = time.perf_counter()
    for index, (files, log_path) in enumerate(zip(parts, logs, strict=True)):
        command = ["storescu", "-v", "-aet", f"BENCHSCU{index}", "-aec", "PACSD", lb]
        command += [str(DICOM_PORT), *map(str, files)]
        with log_path.open("wb") as log:
            processes.append(
                topology.popen(
                    "modality", command, stdout=log, stderr=subprocess.STDOUT, env=environment
                )
            )
    deadline = time.monotonic() + timeout
    codes: list[int | None] = []
    for process in processes:
        try:
            codes.append(process.wait(max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            stop_process(process)
            codes.append(None)
    seconds = time.perf_counter() - started
    return ClientRun(seconds, codes, sum(count_successes(log) for log in logs))


@dataclass
class Result:
    """One run: which server, how many nodes, what it measured."""

    server: str
    nodes: int
    sent: int
    client: ClientRun
    stored: int
    server_cpu: float  # pacsd or Orthanc, and PostgreSQL
    haproxy_cpu: float
    problems: list[str] = field(default_factory=list)

    def check(self) -> Result:
        """Lists what went wrong (the figures are then not valid)."""
        if any(code != 0 for code in self.client.exit_codes):
            self.problems.append(f"storescu exit codes {self.client.exit_codes}")
        if self.client.successes != self.sent:
            self.problems.append(f"{self.client.successes} of {self.sent} answered Success")
        if self.stored != self.sent:
            self.problems.append(f"{self.stored} of {self.sent} indexed")
        return self


class Bench:
    """The topology, the PostgreSQL server, the inputs; one method per kind of run."""

    def __init__(self, topology: Topology, postgres: NetnsPostgres, work: Path, timeout: float):
        self.topology, self.postgres, self.work, self.timeout = topology, postgres, work, timeout

    def measured(
        self, roots: list[int], haproxy: subprocess.Popen[Any], parts: list[Sequence[Path]]
    ) -> tuple[ClientRun, float, float, Path]:
        run_dir = Path(tempfile.mkdtemp(prefix="clients-", dir=self.work))
        servers_before = tree_cpu_seconds([*roots, self.postgres.pid])
        haproxy_before = tree_cpu_seconds([haproxy.pid])
        client = run_storescu(self.topology, parts, run_dir, self.timeout)
        server_cpu = tree_cpu_seconds([*roots, self.postgres.pid]) - servers_before
        haproxy_cpu = tree_cpu_seconds([haproxy.pid]) - haproxy_before
        return client, server_cpu, haproxy_cpu, run_dir

    def pacsd(self, count: int, workload: Workload, associations: int) -> Result:
        """`count` pacsd nodes behind HAProxy on a new database and storage folder."""
        name = f"pacsd_n{count}"
        url = self.postgres.create_database(name)
        folder = self.work / name
        nodes: list[NetnsPacsd] = []
        haproxy: subprocess.Popen[Any] | None = None
        lb = self.topology.host("lb").address
        try:
            for role in NODES[:count]:  # one after the other: the first creates the schema
                address = self.topology.host(role).address
                trusted = {"trusted": [f"{lb}/32"]}
                config = base_config(
                    folder / role,
                    url,
                    network={"host": address, "port": DICOM_PORT, "proxy_protocol": trusted},
                    http={"host": address, "port": HTTP_PORT, "proxy_protocol": trusted},
                    storage={"root": str(folder / "storage"), "min_free_space": "1GB"},
                    cluster={"enabled": True, "node_name": role},
                )
                node = NetnsPacsd.in_host(self.topology.host(role), folder / role, config)
                nodes.append(node)
                node.start(START_TIMEOUT_S)
            servers = [(n, self.topology.host(n).address, DICOM_PORT) for n in NODES[:count]]
            haproxy = start_haproxy(self.topology, haproxy_config(lb, servers, True), folder)
            roots = [node.process.pid for node in nodes if node.process is not None]
            parts = split(workload.files, associations)
            client, server_cpu, haproxy_cpu, _ = self.measured(roots, haproxy, parts)
            stored = self.count_rows(name, "SELECT count(*) FROM instance")
        finally:
            if haproxy is not None:
                stop_process(haproxy)
            for node in nodes:
                if node.process is not None and node.process.poll() is None:
                    node.stop(60)
            shutil.rmtree(folder, ignore_errors=True)
        sent = len(workload.files)
        return Result("pacsd", count, sent, client, stored, server_cpu, haproxy_cpu).check()

    def orthanc(self, workload: Workload, associations: int) -> Result:
        """Orthanc with the PostgreSQL index plugin in node1's namespace, behind HAProxy."""
        name = "orthanc"
        self.postgres.create_database(name)
        folder = self.work / name
        folder.mkdir(parents=True)
        host = self.topology.host("node1")
        config = {
            "Name": "orthanc-cluster-benchmark",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"),
            "StorageCompression": False,
            "DicomAet": "ORTHANC",
            "DicomPort": ORTHANC_DICOM_PORT,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "HttpPort": ORTHANC_HTTP_PORT,
            "RemoteAccessAllowed": True,  # the bridge only: 10.231.X.0/24
            "AuthenticationEnabled": False,
            "SaveJobs": False,
            "Plugins": [str(ORTHANC_POSTGRESQL)],
            "PostgreSQL": {
                "EnableIndex": True,
                "EnableStorage": False,
                "Host": self.postgres.address,
                "Port": self.postgres.port,
                "Database": name,
                "Username": "postgres",
                "Password": "",
            },
        }
        (folder / "orthanc.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        with (folder / "orthanc.log").open("wb") as log:
            server = self.topology.popen(
                "node1", [str(ORTHANC), str(folder / "orthanc.json")], stdout=log, stderr=log
            )
        haproxy: subprocess.Popen[Any] | None = None
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not echo(host.address, ORTHANC_DICOM_PORT, called="ORTHANC"):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Orthanc did not start: {folder / 'orthanc.log'}")
                time.sleep(0.2)
            lb = self.topology.host("lb").address
            servers = [("orthanc", host.address, ORTHANC_DICOM_PORT)]
            haproxy = start_haproxy(self.topology, haproxy_config(lb, servers, False), folder)
            parts = split(workload.files, associations)
            client, server_cpu, haproxy_cpu, _ = self.measured([server.pid], haproxy, parts)
            url = f"http://{host.address}:{ORTHANC_HTTP_PORT}/statistics"
            with urllib.request.urlopen(url, timeout=30) as response:
                stored = int(json.loads(response.read())["CountInstances"])
        finally:
            if haproxy is not None:
                stop_process(haproxy)
            stop_process(server, 30)
            shutil.rmtree(folder / "storage", ignore_errors=True)
        sent = len(workload.files)
        return Result("orthanc", 1, sent, client, stored, server_cpu, haproxy_cpu).check()

    def count_rows(self, database: str, query: str) -> int:
        with psycopg.connect(self.postgres.conninfo(database), connect_timeout=10) as connection:
            row = connection.execute(query).fetchone()
        return int(row[0]) if row else 0


def print_table(results: Sequence[Result], workload: Workload, associations: int) -> None:
    """The figures, one line per run, then any problem."""
    print(
        f"\ningest through HAProxy: {len(workload.files)} x {workload.size_label} CT, "
        f"{associations} associations (storescu), {os.cpu_count()} cores shared by everything"
    )
    header = (
        "server",
        "nodes",
        "ok",
        "stored",
        "seconds",
        "inst/s",
        "MB/s",
        "CPU s/inst",
        "haproxy CPU s",
    )
    rows = [header]
    for result in results:
        megabytes = workload.total_bytes * result.client.successes / len(workload.files) / 1e6
        rows.append(
            (
                result.server,
                str(result.nodes),
                str(result.client.successes),
                str(result.stored),
                f"{result.client.seconds:.1f}",
                f"{result.client.successes / result.client.seconds:.1f}",
                f"{megabytes / result.client.seconds:.1f}",
                f"{result.server_cpu / max(1, result.stored):.4f}",
                f"{result.haproxy_cpu:.1f}",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    for row in rows:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
    print(
        "CPU s/inst: CPU seconds of the server's processes (pacsd nodes or Orthanc) and of "
        "PostgreSQL, per instance stored."
    )
    for result in results:
        for problem in result.problems:
            print(f"PROBLEM {result.server} x{result.nodes}: {problem}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run every configuration once; 0 when every instance was stored everywhere."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster_ingest")
    parser.add_argument("--count", type=int, default=1000, help="CT instances per run (1000)")
    parser.add_argument("--associations", type=int, default=8, help="storescu processes (8)")
    parser.add_argument("--nodes", default="1,2,3", help="pacsd node counts (1,2,3)")
    parser.add_argument("--no-orthanc", action="store_true", help="skip the Orthanc run")
    parser.add_argument("--size", type=int, default=BENCH_SIZE, help="CT rows/columns (512)")
    parser.add_argument("--work", type=Path, default=None, help="work folder (inputs cached)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run (900)")
    args = parser.parse_args(argv)
    counts = [int(part) for part in args.nodes.split(",")]
    if not all(1 <= count <= len(NODES) for count in counts):
        parser.error("--nodes: counts between 1 and 3")
    reason = unavailable()
    bin_dir = postgres_bin()
    if reason or bin_dir is None:
        raise SystemExit(f"cluster_ingest: {reason or 'no PostgreSQL server binaries'}")
    if not args.no_orthanc and not ORTHANC_POSTGRESQL.exists():
        raise SystemExit(f"cluster_ingest: {ORTHANC_POSTGRESQL} missing: apt-get install "
                         "orthanc-postgresql (or --no-orthanc)")  # fmt: skip
    work = args.work or Path(tempfile.mkdtemp(prefix="pacsd-cluster-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    workload = prepare_inputs(work, args.count, args.size)
    progress(f"storescu: {tool_version(Path(shutil.which('storescu') or 'storescu'))}")
    results: list[Result] = []
    with Topology(ROLES) as topology:
        postgres = NetnsPostgres(topology, "db", bin_dir)
        try:
            postgres.start()
            with psycopg.connect(postgres.conninfo(), connect_timeout=10) as connection:
                version = connection.execute("SHOW server_version").fetchone()
            progress(f"PostgreSQL {version[0] if version else '?'} at {postgres.address}")
            bench = Bench(topology, postgres, work / "runs", args.timeout)
            (work / "runs").mkdir(exist_ok=True)
            for count in counts:
                progress(f"pacsd x{count}: {args.count} instances, K={args.associations}")
                results.append(bench.pacsd(count, workload, args.associations))
                progress(f"  {results[-1].client.seconds:.1f} s")
            if not args.no_orthanc:
                progress(f"orthanc x1: {args.count} instances, K={args.associations}")
                results.append(bench.orthanc(workload, args.associations))
                progress(f"  {results[-1].client.seconds:.1f} s")
        finally:
            postgres.stop()
            shutil.rmtree(work / "runs", ignore_errors=True)
            if args.work is None:
                shutil.rmtree(work, ignore_errors=True)
    print_table(results, workload, args.associations)
    return 1 if any(result.problems for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
