"""Run a real `pacsd serve` for tests and benchmarks, on an ephemeral loopback port.

The server binds port 0 and logs its real port in the "listening" line, so parallel runs never
race for a port; readiness is a successful C-ECHO, never a fixed sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from pacsd.dicom.sop_classes import VERIFICATION as VERIFICATION_SOP_CLASS
from pacsd.echo import send_echo
from tests.inspect_archive import stored_files

VERIFICATION = VERIFICATION_SOP_CLASS  # for the tests that propose it
START_TIMEOUT_S = 30.0
STACK_DUMP_WAIT_S = 1.0  # after SIGUSR1, for faulthandler to print every thread's stack
OUTPUT_TAIL_LINES = 200  # of a server that did not stop, in the error
COMMAND_TIMEOUT_S = 60.0


def free_loopback_host() -> str:
    """Tests and benchmarks only ever use loopback."""
    return "127.0.0.1"


def base_config(root: Path, database_url: str | None = None, **overrides: Any) -> dict[str, Any]:
    """A configuration for a server confined to `root` on an ephemeral loopback port."""
    config: dict[str, Any] = {
        "ae_title": "PACSD",
        "network": {"host": free_loopback_host(), "port": 0, "acse_timeout": 10},
        "http": {"host": free_loopback_host(), "port": 0},
        "database": {"url": database_url or f"sqlite:///{root / 'index.sqlite'}"},
        "storage": {"root": str(root / "storage"), "min_free_space": "1MB"},
        "logging": {"format": "json", "level": "INFO"},
        "daemon": {"shutdown_grace_period": 10},
        # Never ./var/audit.jsonl in the checkout: the audit trail stays under the test's root.
        "audit": {"file": str(root / "audit.jsonl")},
    }
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(config.get(section), dict):
            config[section] = {**config[section], **values}
        else:
            config[section] = values
    return config


@dataclass
class PacsdProcess:
    """A `pacsd serve` child process and the JSON lines it logged."""

    config_path: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[str] | None = None
    host: str = ""
    port: int = 0
    tls_port: int = 0  # the DICOM TLS listener's port (network.tls.enabled), else 0
    http_url: str = ""  # the HTTP interface's base URL, e.g. http://127.0.0.1:41234
    status_url: str = ""  # its GET /associations
    lines: list[dict[str, Any]] = field(default_factory=list)
    raw_lines: list[str] = field(default_factory=list)
    _listening: threading.Event = field(default_factory=threading.Event)
    _index_ready: threading.Event = field(default_factory=threading.Event)
    _reader: threading.Thread | None = None

    @classmethod
    def from_config(cls, folder: Path, config: dict[str, Any], **env: str) -> PacsdProcess:
        """Write `config` to `folder/pacsd.yaml` and prepare (not start) a server for it."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "pacsd.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return cls(config_path=path, env=env)

    def start(self, timeout: float = START_TIMEOUT_S, ready_by_echo: bool = True) -> PacsdProcess:
        """Start the server; wait until it answers C-ECHO (or only until it listens)."""
        environment = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        environment.pop("PACSD_CONFIG", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pacsd", "serve", "--config", str(self.config_path)],
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
                # Logged before the port opens: a missing line means start-up went wrong.
                if not self._index_ready.wait(timeout):
                    raise RuntimeError(f"pacsd's index was not ready:\n{self.output()}")
        except BaseException:
            self.kill()
            raise
        return self

    def _read_output(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.raw_lines.append(raw.rstrip("\n"))
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                continue
            self.lines.append(line)
            if line.get("event") == "http interface listening":
                self.http_url = str(line["url"])
                self.status_url = f"{self.http_url}/associations"
            if line.get("event") == "index database ready":
                self._index_ready.set()
            if line.get("event") == "listening":
                self.host, self.port = line["host"], int(line["port"])
                self.tls_port = int(line.get("tls_port") or 0)
                self._listening.set()

    @property
    def storage_root(self) -> Path:
        """The storage root of a server configured by `base_config`."""
        return self.config_path.parent / "storage"

    def index_database_links(self) -> frozenset[str]:
        """What /proc/<pid>/fd shows for the descriptors of a SQLite index's connections (the
        database and its write-ahead log; empty for another database). Its pool keeps up to
        `database.pool_size` connections, one more whenever reads overlap (a report worker's
        poll during a request), so their count is not a leak: the resource tests leave them
        out of their baseline."""
        config = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
        url = str(config.get("database", {}).get("url", ""))
        if not url.startswith("sqlite:///"):
            return frozenset()
        database = os.path.realpath(url.removeprefix("sqlite:///"))
        return frozenset(database + suffix for suffix in ("", "-wal", "-journal"))

    def descriptors(self) -> tuple[int, int]:
        """(the process's open descriptors but the index pool's, the index pool's): the
        resource tests compare the first with a baseline and bound the second."""
        assert self.process is not None
        folder = f"/proc/{self.process.pid}/fd"
        index = self.index_database_links()
        links = [descriptor_target(f"{folder}/{fd}") for fd in os.listdir(folder)]
        pooled = sum(link in index for link in links)
        return len(links) - pooled, pooled

    def output(self) -> str:
        """Everything the server printed so far."""
        return "\n".join(self.raw_lines)

    def events(self, name: str) -> list[dict[str, Any]]:
        """The logged lines whose event is `name`."""
        return [line for line in self.lines if line.get("event") == name]

    def wait_for(self, event: str, count: int = 1, timeout: float = 15.0) -> list[dict[str, Any]]:
        """The logged lines named `event`, once there are `count` of them (bounded wait)."""
        deadline = time.monotonic() + timeout
        while len(lines := self.events(event)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {count} {event!r} lines in {timeout} s:\n{self.output()}")
            time.sleep(0.05)
        return lines

    def accepted_associations(self, count: int = 1, timeout: float = 15.0) -> list[dict[str, Any]]:
        """The lines of accepted associations that ended (at INFO pacsd logs one per association,
        "association closed", with the rule and contexts), once there are `count` of them."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [
                line
                for line in self.events("association closed")
                if line.get("state") in ("released", "aborted")
            ]
            if len(lines) >= count:
                return lines
            if time.monotonic() > deadline:
                raise AssertionError(f"no {count} accepted associations in {timeout} s")
            time.sleep(0.05)

    def send_signal(self, signum: int) -> None:
        """Signal the server process (by its own pid)."""
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.process is None:
            raise RuntimeError("pacsd was never started")
        if self.process.poll() is not None:
            return self.returncode()
        self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for exit (killing it after `timeout`, with its threads' stacks in the error);
        returns the exit code."""
        assert self.process is not None
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            self.process.send_signal(signal.SIGUSR1)  # pacsd prints every thread's stack
            time.sleep(STACK_DUMP_WAIT_S)
            self.kill()
            if self._reader is not None:
                self._reader.join(timeout=5)
            tail = "\n".join(self.raw_lines[-OUTPUT_TAIL_LINES:])
            raise RuntimeError(
                f"pacsd did not exit within {timeout} s; its last output and stacks:\n{tail}"
            ) from exc
        if self._reader is not None:
            self._reader.join(timeout=5)
        return self.returncode()

    def kill(self) -> None:
        """SIGKILL the server (cleanup of a failed test)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def returncode(self) -> int:
        """The exit code (the process must have ended)."""
        assert self.process is not None
        assert self.process.returncode is not None
        return self.process.returncode


class StoredFiles(Protocol):
    """An archive's instance files by the relative path the index keeps (`file_path`), read
    and changed from outside the server, wherever its storage backend keeps them: `DiskFiles`
    under the storage root, s3_server.BucketFiles as objects in a bucket."""

    def read(self, relative: str) -> bytes | None:
        """The stored bytes (None: missing)."""
        ...

    def local(self, relative: str) -> Path:
        """A local path holding the stored bytes, for readers that need a path."""
        ...

    def write(self, relative: str, data: bytes) -> None:
        """Store `data` at `relative` (a damaged or stray file, for fsck)."""
        ...

    def remove(self, relative: str) -> None:
        """Delete the stored file."""
        ...

    def listing(self) -> dict[str, str]:
        """{relative path: sha256} of every stored file (work folders left out)."""
        ...

    def quarantined(self, location: str) -> dict[str, str]:
        """{relative path: sha256} of what fsck --repair moved to `location` (as it reports
        it: a folder, or a key prefix), the local manifest left out."""
        ...


@dataclass
class DiskFiles:
    """An archive's instance files under its storage root (the filesystem backend)."""

    root: Path

    def read(self, relative: str) -> bytes | None:
        """The file's bytes (None: missing)."""
        stored = self.root / relative
        return stored.read_bytes() if stored.is_file() else None

    def local(self, relative: str) -> Path:
        """The file itself."""
        return self.root / relative

    def write(self, relative: str, data: bytes) -> None:
        """Write the file (and its folders)."""
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def remove(self, relative: str) -> None:
        """Delete the file."""
        (self.root / relative).unlink()

    def listing(self) -> dict[str, str]:
        """{relative path: sha256} of the files under the root, work folders left out."""
        return stored_files(self.root)

    def quarantined(self, location: str) -> dict[str, str]:
        """{relative path: sha256} of a quarantine folder, which must be below
        `<root>/.quarantine/`."""
        folder = Path(location)
        assert folder.parent == self.root / ".quarantine", location
        kept = stored_files(folder)
        kept.pop("manifest.jsonl", None)
        return kept


def descriptor_target(path: str) -> str:
    """What a /proc/<pid>/fd entry points at ("" when it closed meanwhile)."""
    try:
        return os.readlink(path)
    except FileNotFoundError:  # closed between listdir and readlink
        return ""


def audit_records(path: Path) -> list[dict[str, Any]]:
    """The messages of an audit file (JSON lines) written so far. A server may be appending a
    line while it is read: a last line without its newline is not complete yet, and left out."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def wait_for_echo(host: str, port: int, timeout: float) -> None:
    """Poll C-ECHO until it succeeds or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if echo(host, port):
            return
        time.sleep(0.1)
    raise TimeoutError(f"no C-ECHO answer from {host}:{port} within {timeout} s")


def echo(host: str, port: int, calling: str = "TESTSCU", called: str = "PACSD") -> bool:
    """One association, one C-ECHO (pacsd's own client); True when it succeeds."""
    status, _ = send_echo(host, port, calling, called, timeout=5)
    return status == 0x0000


def pacsd_command(
    *args: str, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run `python -m pacsd <args>` to completion (bounded), PACSD_CONFIG cleared."""
    environment = {**os.environ, **env}
    environment.pop("PACSD_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "pacsd", *args],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        cwd=cwd,
        env=environment,
        check=False,
    )
