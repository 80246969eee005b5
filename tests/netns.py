"""Separate hosts on one machine: Linux network namespaces on a private bridge (iproute2).

A `Topology` makes, for one test or benchmark run, a bridge in the root namespace and one
namespace per role (`pacsd-t<pid>-node1`, `...-lb`, `...-modality`, `...-db`, ...), each joined
to the bridge by a veth pair, with its own address in a private /24, 10.231.X.0/24 (X derived
from the pid, the next free one if another run holds it). The root namespace (the test process)
is 10.231.X.1 on the bridge: it reaches every host directly, as an administrator's machine
would. Loopback is up in each namespace; hosts reach each other over the /24's connected route
(there is no default route: nothing leaves the bridge).

Processes run inside with `ip netns exec NAME ...`, which execs the command: the Popen's pid is
the process's own, and each is stopped by that pid. On leaving the `with` block, also after a
failure, every process started is stopped, any other process still in one of the namespaces (a
daemon such as PostgreSQL's postmaster, which pg_ctl forks) is killed by its pid, and the
namespaces and links are deleted. Namespaces and bridges left by a run whose process no longer
exists (a SIGKILLed pytest) are removed when the next topology is made.

Needs root and a kernel that allows `ip netns add`; `unavailable()` says why not, for a skip.
Also here: `NetnsPostgres` (a private PostgreSQL server inside a namespace) and `NetnsPacsd`
(`pacsd serve` inside a namespace).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.harness import PacsdProcess, wait_for_echo

IP = shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin") or "ip"
PREFIX = "pacsd-t"  # namespace names: pacsd-t<pid>[<label>]-<role>
LINK_PREFIX = "pt"  # links (15 characters at most): pt<pid><label>br, pt<pid><label>v<i>
FIRST_OCTET, SECOND_OCTET = 10, 231
COMMAND_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


class NetnsError(RuntimeError):
    """An `ip` command failed."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGS` (bounded); NetnsError with its output when it fails and `check`."""
    done = subprocess.run(
        [IP, *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
    )
    if check and done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done


def unavailable() -> str | None:
    """Why network namespaces cannot be used here (for pytest.skip), or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which(IP) is None:
        return "iproute2's `ip` is not installed"
    probe = f"{PREFIX}{os.getpid()}probe-x"
    try:
        added = ip("netns", "add", probe, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns add` cannot run: {exc}"
    if added.returncode != 0:
        return f"`ip netns add` fails here: {added.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


def our_namespaces() -> list[str]:
    """Every namespace of any run of this helper (name starts with pacsd-t)."""
    listed = ip("netns", "list", check=False).stdout.splitlines()
    return [line.split()[0] for line in listed if line.startswith(PREFIX)]


def our_links() -> list[str]:
    """Every link of the root namespace named like this helper's (pt<digits>...)."""
    listed = ip("-o", "link", "show", check=False).stdout.splitlines()
    names = [line.split(":")[1].strip().split("@")[0] for line in listed if ":" in line]
    return [name for name in names if re.fullmatch(rf"{LINK_PREFIX}\d+[a-z]*(br|v\d+)", name)]


def _pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def remove_stale() -> None:
    """Delete the namespaces and links of runs whose process no longer exists."""
    for name in our_namespaces():
        match = re.match(rf"{PREFIX}(\d+)", name)
        if match and not _pid_alive(int(match[1])):
            _kill_namespace_processes(name)
            ip("netns", "del", name, check=False)
    for link in our_links():
        match = re.match(rf"{LINK_PREFIX}(\d+)", link)
        if match and not _pid_alive(int(match[1])):
            ip("link", "del", link, check=False)


def _kill_namespace_processes(namespace: str) -> list[int]:
    """SIGKILL, by pid, every process still inside `namespace`; their pids."""
    pids = [int(pid) for pid in ip("netns", "pids", namespace, check=False).stdout.split()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while any(_pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids


def _subnet_in_use(third: int) -> bool:
    prefix = f"{FIRST_OCTET}.{SECOND_OCTET}.{third}."
    return prefix in ip("-4", "-o", "addr", "show", check=False).stdout or prefix in (
        ip("-4", "route", "show", check=False).stdout
    )


def choose_subnet(pid: int) -> int:
    """X of 10.231.X.0/24: from the pid, else the next one no address or route uses."""
    for step in range(224):
        third = 16 + (pid + step) % 224
        if not _subnet_in_use(third):
            return third
    raise NetnsError("no free 10.231.X.0/24 for a test topology")


@dataclass
class Host:
    """One namespace: its role, name and address on the bridge."""

    role: str
    namespace: str
    address: str

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside this host (ip netns exec execs it: same pid)."""
        return [IP, "netns", "exec", self.namespace, *argv]


class Topology:
    """A bridge and one namespace per role; everything is removed on exit, even on failure.

    `label`: a few lowercase letters, so that one process can hold two topologies at once.
    """

    def __init__(self, roles: Sequence[str], label: str = "") -> None:
        assert re.fullmatch(r"[a-z]{0,3}", label), "label: up to 3 lowercase letters"
        assert len(set(roles)) == len(roles), "roles must differ"
        assert len(roles) < 200, "one /24"
        self.pid = os.getpid()
        self.tag = f"{PREFIX}{self.pid}{label}"
        self.link_tag = f"{LINK_PREFIX}{self.pid}{label}"
        self.bridge = f"{self.link_tag}br"
        self.roles = list(roles)
        self.third = 0
        self.hosts: dict[str, Host] = {}
        self.processes: list[subprocess.Popen[Any]] = []
        self._created_namespaces: list[str] = []
        self._created_links: list[str] = []

    # --- life cycle --------------------------------------------------------------------

    def __enter__(self) -> Topology:
        try:
            self.create()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.destroy()

    @property
    def gateway(self) -> str:
        """The root namespace's address on the bridge (the test process)."""
        return self._address(1)

    @property
    def network(self) -> str:
        """The topology's /24."""
        return f"{FIRST_OCTET}.{SECOND_OCTET}.{self.third}.0/24"

    def _address(self, last: int) -> str:
        return f"{FIRST_OCTET}.{SECOND_OCTET}.{self.third}.{last}"

    def create(self) -> None:
        """Make the bridge, the namespaces, their veth pairs and addresses."""
        remove_stale()
        self.third = choose_subnet(self.pid)
        ip("link", "add", self.bridge, "type", "bridge")
        self._created_links.append(self.bridge)
        ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for index, role in enumerate(self.roles):
            namespace = f"{self.tag}-{role}"
            ip("netns", "add", namespace)
            self._created_namespaces.append(namespace)
            outside = f"{self.link_tag}v{index}"
            ip("link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", namespace)
            self._created_links.append(outside)
            ip("link", "set", outside, "master", self.bridge)
            ip("link", "set", outside, "up")
            address = self._address(10 + index)
            ip("-n", namespace, "link", "set", "lo", "up")
            ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
            ip("-n", namespace, "link", "set", "eth0", "up")
            self.hosts[role] = Host(role, namespace, address)

    def add_address(self, role: str, last: int) -> str:
        """A second address 10.231.X.`last` on a host (e.g. another client on it)."""
        address = self._address(last)
        ip("-n", self.hosts[role].namespace, "addr", "add", f"{address}/24", "dev", "eth0")
        return address

    def destroy(self) -> None:
        """Stop every process (by pid), kill what else runs inside, delete namespaces, links."""
        for process in reversed(self.processes):
            stop_process(process)
        for namespace in self._created_namespaces:
            _kill_namespace_processes(namespace)
            ip("netns", "del", namespace, check=False)
        for link in self._created_links:
            if ip("link", "show", link, check=False).returncode == 0:
                ip("link", "del", link, check=False)
        self._created_namespaces.clear()
        self._created_links.clear()

    def leftovers(self) -> list[str]:
        """This topology's namespaces and links that still exist (empty after destroy)."""
        namespaces = [name for name in our_namespaces() if name.startswith(f"{self.tag}-")]
        links = [name for name in our_links() if name.startswith(self.link_tag)]
        return namespaces + links

    # --- processes ---------------------------------------------------------------------

    def host(self, role: str) -> Host:
        """The host of `role`."""
        return self.hosts[role]

    def popen(self, role: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` inside `role`'s namespace; stopped by its pid at the end at the latest."""
        process: subprocess.Popen[Any] = subprocess.Popen(self.hosts[role].command(argv), **kwargs)
        self.processes.append(process)
        return process

    def run(
        self, role: str, argv: Sequence[str], timeout: float = COMMAND_TIMEOUT_S, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside `role`'s namespace to completion (bounded), output captured."""
        return subprocess.run(
            self.hosts[role].command(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kwargs,
        )


def stop_process(process: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM `process` (by its pid), SIGKILL after `timeout`, and reap it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


@contextlib.contextmanager
def topology(roles: Sequence[str], label: str = "") -> Iterator[Topology]:
    """A `Topology` for the block (the same as `with Topology(roles):`)."""
    with Topology(roles, label) as made:
        yield made


# --- PostgreSQL inside a namespace ---------------------------------------------------------


def postgres_bin() -> Path | None:
    """The directory of initdb/pg_ctl: Debian's versioned folders, else the PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class NetnsPostgres:
    """A throw-away PostgreSQL server in `host`'s namespace, listening on its address:5432,
    run as user postgres (trust authentication: private addresses only, removed after)."""

    topology: Topology
    role: str
    bin_dir: Path
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pacsd-pg-")))
    port: int = 5432
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        """Where the server listens."""
        return self.topology.host(self.role).address

    @property
    def data(self) -> Path:
        """The data directory."""
        return self.folder / "data"

    def _run(self, argv: Sequence[str], in_namespace: bool = False) -> None:
        command = ["runuser", "-u", "postgres", "--", *argv]
        if in_namespace:
            command = self.topology.host(self.role).command(command)
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=60, check=False, cwd="/"
        )
        if done.returncode != 0:
            raise NetnsError(f"{argv[0]} failed: {done.stdout}{done.stderr}")

    def start(self) -> NetnsPostgres:
        """initdb, then pg_ctl start inside the namespace, waiting until it accepts."""
        self.folder.chmod(0o755)
        shutil.chown(self.folder, "postgres", "postgres")
        initdb = [str(self.bin_dir / "initdb"), "-D", str(self.data), "-A", "trust"]
        self._run([*initdb, "-U", "postgres", "-E", "UTF8", "--no-sync"])
        with (self.data / "pg_hba.conf").open("a", encoding="utf-8") as hba:
            hba.write(f"host all all {self.topology.network} trust\n")  # the bridge only
        wanted = {"max_connections": "300", **self.settings}
        options = f"-p {self.port} -c listen_addresses={self.address} "
        options += f"-c unix_socket_directories={self.folder} "
        options += " ".join(f"-c {key}={value}" for key, value in wanted.items())
        pg_ctl = [str(self.bin_dir / "pg_ctl"), "start", "-D", str(self.data), "-w", "-t", "60"]
        self._run([*pg_ctl, "-l", str(self.folder / "postgres.log"), "-o", options], True)
        return self

    @property
    def pid(self) -> int:
        """The postmaster's pid (from postmaster.pid)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        """pg_ctl stop -m fast, then remove the folder (the topology kills what remains)."""
        with contextlib.suppress(NetnsError, subprocess.TimeoutExpired):
            if (self.data / "postmaster.pid").exists():
                pg_ctl = [str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data)]
                self._run([*pg_ctl, "-m", "fast", "-t", "30"], True)
        shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str) -> str:
        """A pacsd database URL for `database` on this server."""
        return f"postgresql+psycopg://postgres@{self.address}:{self.port}/{database}"

    def conninfo(self, database: str = "postgres") -> str:
        """A libpq connection string."""
        return f"host={self.address} port={self.port} user=postgres dbname={database}"

    def create_database(self, name: str) -> str:
        """CREATE DATABASE `name`; its pacsd URL."""
        import psycopg

        with psycopg.connect(self.conninfo(), autocommit=True, connect_timeout=10) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


# --- pacsd inside a namespace --------------------------------------------------------------


@dataclass
class NetnsPacsd(PacsdProcess):
    """`pacsd serve` inside a namespace (`ip netns exec NAME python -m pacsd serve`)."""

    namespace_command: list[str] = field(default_factory=list)

    @classmethod
    def in_host(cls, host: Host, folder: Path, config: dict[str, Any]) -> NetnsPacsd:
        """Prepare (not start) a node on `host` with `config` written to folder/pacsd.yaml."""
        prepared = PacsdProcess.from_config(folder, config)
        return cls(config_path=prepared.config_path, namespace_command=host.command([]))

    def start(self, timeout: float = 60.0, ready_by_echo: bool = True) -> NetnsPacsd:
        """Start the node; wait until it logs "listening", then until it answers C-ECHO."""
        environment = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        environment.pop("PACSD_CONFIG", None)
        serve = [sys.executable, "-m", "pacsd", "serve", "--config", str(self.config_path)]
        self.process = subprocess.Popen(
            [*self.namespace_command, *serve],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=environment,
            cwd=self.config_path.parent,
        )
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()
        try:
            if not self._listening.wait(timeout):
                raise RuntimeError(f"pacsd did not start:\n{self.output()}")
            if ready_by_echo:
                wait_for_echo(self.host, self.port, timeout)
        except BaseException:
            self.kill()
            raise
        return self
