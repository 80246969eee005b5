"""Shared fixtures: index backends, a pacsd server factory, DCMTK availability."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.harness import PacsdProcess, base_config
from tests.shadowed_tools import remove_shadowing_scripts

POSTGRES_ENV = "PACSD_TEST_DATABASE_URL"
DCMTK_TOOLS = ("echoscu", "storescu", "findscu", "getscu", "movescu", "storescp")


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
