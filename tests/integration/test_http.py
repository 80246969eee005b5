"""The HTTP interface of a real pacsd: /healthz, /readyz, /metrics, /associations.

A real pacsd on loopback (one process, and two workers), real clients: DCMTK's storescu,
pynetdicom's C-FIND, a rejected association; HTTP through urllib; /metrics parsed by
prometheus_client's own parser. The not-ready cases are real: a free-space minimum above what
the disk has, and a storage root remounted read-only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests import datagen
from tests.harness import PacsdProcess, base_config, echo, pacsd_command
from tests.inspect_archive import dataset_bytes
from tests.integration.test_database_outage import PrivatePostgres, _pg_bin
from tests.qr_scu import FIND, collect, identifier, qr_association
from tests.scu import rejection_of, request

ServerFactory = Callable[..., PacsdProcess]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
HTTP_TIMEOUT_S = 10
SETTLE_S = 15.0  # bound on waiting for associations to be counted as closed
TOOL_TIMEOUT_S = 120
MAX_ECHOES = 200  # with two workers: echoes until worker 1 has served one
POLICIES = [
    {"name": "intruders", "match": {"calling_ae": "INTRUDER"}, "action": "reject",
     "reject_reason": "calling-ae-not-recognised"},
    {"name": "accept-all", "match": {}, "action": "accept",
     "sop_classes": ["verification", "storage", "query-retrieve"], "transfer_syntaxes": ["all"]},
]  # fmt: skip


def get(url: str) -> tuple[int, bytes, str]:
    """GET `url`: (status, body, content type), error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:  # noqa: S310
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def get_json(url: str) -> tuple[int, Any]:
    """GET `url` and parse its JSON body."""
    status, body, content_type = get(url)
    assert content_type.startswith("application/json"), (status, content_type, body)
    return status, json.loads(body)


def scrape(server: PacsdProcess) -> Samples:
    """Every sample of /metrics by (name, sorted labels), through prometheus_client's parser."""
    status, body, content_type = get(f"{server.http_url}/metrics")
    assert status == 200, body
    assert content_type.startswith("text/plain"), content_type
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when absent: a counter not yet incremented)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How much a sample grew between two scrapes."""
    return value(after, name, **labels) - value(before, name, **labels)


def settled_scrape(server: PacsdProcess) -> Samples:
    """A scrape once no association is open (each closed one's bytes are then counted)."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        samples = scrape(server)
        if value(samples, "pacsd_associations_open") == 0:
            return samples
        assert time.monotonic() < deadline, "associations still counted as open"
        time.sleep(0.05)


def assert_json_log(server: PacsdProcess) -> None:
    """Every line pacsd printed is a JSON object (no access log or banner of uvicorn's)."""
    for raw in server.raw_lines:
        assert isinstance(json.loads(raw), dict), raw


def test_healthz_and_readyz_answer_on_a_ready_server(pacsd_server: ServerFactory) -> None:
    """/healthz answers 200 with the version; /readyz 200 with each check ok; unknown paths
    and other methods get JSON errors; nothing but JSON lines on stdout."""
    server = pacsd_server()
    status, health = get_json(f"{server.http_url}/healthz")
    assert status == 200
    assert health["status"] == "ok"
    assert server.process is not None
    assert health["pid"] == server.process.pid
    status, ready = get_json(f"{server.http_url}/readyz")
    assert status == 200, ready
    assert ready["ready"] is True
    assert ready["not_ready"] == []
    assert {name: check["ok"] for name, check in ready["checks"].items()} == {
        "database": True,
        "storage": True,
        "dicom": True,
    }
    assert ready["checks"]["storage"]["free_bytes"] > 0
    status, missing = get_json(f"{server.http_url}/nothing-here")
    assert status == 404
    assert "/readyz" in missing["error"]
    url = f"{server.http_url}/healthz"
    post = urllib.request.Request(url, data=b"", method="POST")  # noqa: S310
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(post, timeout=HTTP_TIMEOUT_S)  # noqa: S310
    assert refused.value.code == 405
    assert server.events("http interface serving")
    assert server.stop() == 0
    assert_json_log(server)


def test_readyz_is_503_naming_storage_below_the_free_space_minimum(
    pacsd_server: ServerFactory,
) -> None:
    """storage.min_free_space above the disk's free space: /readyz answers 503 and names the
    storage check; /healthz still answers 200 (the process serves)."""
    server = pacsd_server(storage={"min_free_space": "1PB"})
    status, ready = get_json(f"{server.http_url}/readyz")
    assert status == 503, ready
    assert ready["ready"] is False
    assert ready["not_ready"] == ["storage"]
    storage = ready["checks"]["storage"]
    assert storage["ok"] is False
    assert "storage.min_free_space" in storage["problem"]
    assert storage["free_bytes"] < storage["min_free_bytes"]
    assert get_json(f"{server.http_url}/healthz")[0] == 200


@pytest.fixture
def tmpfs_root(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs where the first server of `pacsd_server` keeps its storage root."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    root = tmp_path / "server0" / "storage"
    root.mkdir(parents=True)
    command = ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(root)]
    mounted = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield root
    finally:
        if subprocess.run(["umount", str(root)], timeout=30, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(root)], timeout=30, check=False)


def _remount(root: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(root)], timeout=30, check=True)


def test_readyz_is_503_while_the_storage_root_is_read_only(
    tmpfs_root: Path, pacsd_server: ServerFactory
) -> None:
    """A storage root remounted read-only: /readyz 503 naming storage as not writable; once
    it is writable again, 200 without a restart."""
    server = pacsd_server(storage={"min_free_space": "1KB"})
    assert get_json(f"{server.http_url}/readyz")[0] == 200
    _remount(tmpfs_root, "ro")
    try:
        status, ready = get_json(f"{server.http_url}/readyz")
    finally:
        _remount(tmpfs_root, "rw")
    assert status == 503, ready
    assert ready["not_ready"] == ["storage"]
    assert "not writable" in ready["checks"]["storage"]["problem"]
    assert get_json(f"{server.http_url}/readyz")[0] == 200


@pytest.fixture
def stoppable_postgres() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL cluster the test may stop (test_database_outage.py's)."""
    bin_dir = _pg_bin()
    if bin_dir is None or not (bin_dir / "pg_ctl").exists():
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL as postgres")
    folder = Path(tempfile.mkdtemp(prefix="pacsd-pg-"))  # not under pytest's root-only tmp
    folder.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    cluster = PrivatePostgres(bin_dir, folder, port)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(RuntimeError):  # already stopped
            cluster.stop_immediately()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.timeout(240)
def test_readyz_is_503_naming_the_database_while_it_is_down(
    stoppable_postgres: PrivatePostgres, pacsd_server: ServerFactory
) -> None:
    """PostgreSQL stopped: /readyz answers 503 naming the database (within its timeout);
    once PostgreSQL is back, 200 again without a restart."""
    stoppable_postgres.create_database("pacsd")
    server = pacsd_server(stoppable_postgres.url("pacsd"))
    assert get_json(f"{server.http_url}/readyz")[0] == 200
    stoppable_postgres.stop_immediately()
    status, ready = get_json(f"{server.http_url}/readyz")
    assert status == 503, ready
    assert ready["not_ready"] == ["database"]
    assert ready["checks"]["database"]["problem"]
    assert get_json(f"{server.http_url}/healthz")[0] == 200
    stoppable_postgres.start()
    deadline = time.monotonic() + SETTLE_S  # the pool replaces its broken connections
    while get_json(f"{server.http_url}/readyz")[0] != 200:
        assert time.monotonic() < deadline, "not ready again after PostgreSQL came back"
        time.sleep(0.2)


def storescu(server: PacsdProcess, files: list[Path]) -> None:
    """DCMTK's storescu: every file over one association, each answered Success."""
    if shutil.which("storescu") is None:
        pytest.skip("DCMTK's storescu is not installed")
    command = ["storescu", "-aet", "DCMTKSCU", "-aec", "PACSD", server.host, str(server.port)]
    result = subprocess.run(
        [*command, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        env={**os.environ, "TCP_NODELAY": "1"},
        check=False,
    )
    assert result.returncode == 0, result.stderr


def echoes_until_both_workers_served(server: PacsdProcess, workers: int) -> int:
    """C-ECHO associations until a worker other than 0 has accepted one (two workers), so
    that the scrape must add up both workers' files; how many were made."""
    made = 0
    while workers > 1 and made < MAX_ECHOES:
        assert echo(server.host, server.port)
        made += 1
        if any(line.get("worker") == 1 for line in server.accepted_associations(0)):
            return made
    assert workers == 1, "worker 1 never accepted an association"
    assert echo(server.host, server.port)
    return made + 1


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_count_what_was_done(
    pacsd_server: ServerFactory, tmp_path: Path, workers: int
) -> None:
    """After a storescu of 5 files, a C-FIND, a rejected association and some C-ECHOs, the
    counters grew by exactly that much, whichever worker served them."""
    server = pacsd_server(network={"workers": workers}, policies=POLICIES)
    before = settled_scrape(server)
    files = list(datagen.ct_series(tmp_path / "in", 5, size=16))
    storescu(server, files)
    with qr_association(server, [FIND["S"]]) as assoc:
        query = identifier("STUDY", StudyInstanceUID="")
        found = collect(assoc.send_c_find(query, FIND["S"]))
    assert found.final_status == 0x0000
    assert len(found.pending()) == 1
    assert rejection_of(request(server, calling="INTRUDER")) == (1, 1, 3)
    echoes = echoes_until_both_workers_served(server, workers)
    after = settled_scrape(server)

    def grew(name: str, **labels: str) -> float:
        return delta(before, after, name, **labels)

    assert grew("pacsd_associations_accepted_total") == 2 + echoes
    rejected = {"result": "permanent", "source": "service-user"}
    reason = "calling-ae-title-not-recognized"
    assert grew("pacsd_associations_rejected_total", **rejected, reason=reason) == 1
    ok = "0x0000"
    assert grew("pacsd_dimse_operations_total", operation="C-STORE", status=ok) == 5
    assert grew("pacsd_dimse_operations_total", operation="C-FIND", status=ok) == 1
    assert grew("pacsd_dimse_operations_total", operation="C-ECHO", status=ok) == echoes
    assert grew("pacsd_dimse_duration_seconds_count", operation="C-STORE") == 5
    assert grew("pacsd_dimse_duration_seconds_count", operation="C-FIND") == 1
    assert grew("pacsd_dimse_duration_seconds_sum", operation="C-STORE") > 0
    assert grew("pacsd_index_write_batch_size_sum") == 5
    assert 1 <= grew("pacsd_index_write_batches_total") <= 5
    assert grew("pacsd_index_write_batch_size_count") == grew("pacsd_index_write_batches_total")
    assert grew("pacsd_received_bytes_total") >= sum(len(dataset_bytes(f)) for f in files)
    assert grew("pacsd_sent_bytes_total") > 0
    assert value(after, "pacsd_associations_open") == 0
    assert value(after, "pacsd_storage_free_bytes") > 0
    assert ("pacsd_storage_commitment_reports_pending", ()) in after
    assert value(after, "pacsd_storage_commitment_reports_pending") == 0
    assert value(after, "pacsd_ups_event_reports_pending") == 0


def test_associations_open_gauge_counts_an_open_association(pacsd_server: ServerFactory) -> None:
    """While an association is open the gauge says 1; after its release, 0."""
    server = pacsd_server()
    settled_scrape(server)
    assoc = request(server, calling="HOLDER")
    assert assoc.is_established
    try:
        assert value(scrape(server), "pacsd_associations_open") == 1
    finally:
        assoc.release()
    assert value(settled_scrape(server), "pacsd_associations_open") == 0


def test_associations_command_takes_the_base_url(pacsd_server: ServerFactory) -> None:
    """`pacsd associations --url` accepts the HTTP interface's base URL (with or without a
    trailing slash) as well as the full /associations URL."""
    server = pacsd_server()
    for url in (server.http_url, f"{server.http_url}/", server.status_url):
        result = pacsd_command("associations", "--url", url, "--json")
        assert result.returncode == 0, (url, result.stderr)
        assert isinstance(json.loads(result.stdout)["associations"], list)


def test_status_section_still_configures_the_http_interface(tmp_path: Path) -> None:
    """The old `status:` section serves the HTTP interface, with a warning at start-up."""
    config = base_config(tmp_path)
    config["status"] = config.pop("http")
    server = PacsdProcess.from_config(tmp_path, config)
    server.start()
    try:
        assert get_json(f"{server.http_url}/healthz")[0] == 200
        assert server.wait_for("the `status` section is the old name of `http`: rename it")
    finally:
        assert server.stop() == 0


def test_status_and_http_sections_together_are_refused(tmp_path: Path) -> None:
    """Both names at once: `config check` names the conflict."""
    path = tmp_path / "pacsd.yaml"
    path.write_text(yaml.safe_dump({"http": {"port": 8080}, "status": {"port": 8081}}))
    result = pacsd_command("config", "check", str(path))
    assert result.returncode == 2
    assert "status: the old name of http; keep only http" in result.stderr


def test_http_port_in_use_stops_start_up_with_one_line(tmp_path: Path) -> None:
    """The HTTP port is bound before anything is served: a port in use stops start-up (exit
    2) with a line naming the http section and the address."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = int(taken.getsockname()[1])
        config = base_config(tmp_path, http={"port": port})
        path = tmp_path / "pacsd.yaml"
        path.write_text(yaml.safe_dump(config))
        result = pacsd_command("serve", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2, result.stdout
    assert f"pacsd: http: cannot listen on 127.0.0.1:{port}" in result.stderr


def test_metrics_dir_loses_an_earlier_runs_counts(
    pacsd_server: ServerFactory, tmp_path: Path
) -> None:
    """With workers and http.metrics_dir, start-up removes the metric files an earlier run
    left (they would be added to the counts); the folder stays after the stop."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    (folder / "counter_999999.db").write_bytes(b"an earlier run's counts")
    server = pacsd_server(network={"workers": 2}, http={"metrics_dir": str(folder)})
    assert value(settled_scrape(server), "pacsd_associations_open") == 0
    assert not (folder / "counter_999999.db").exists()
    assert server.stop() == 0
    assert folder.is_dir(), "a configured folder stays"


def test_metrics_dir_with_other_files_stops_start_up(tmp_path: Path) -> None:
    """A metrics folder holding files that are not pacsd's metric files is refused (exit 2,
    one line): pacsd would read them as metrics, and it deletes nothing else."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    (folder / "index.db").write_bytes(b"someone else's")
    config = base_config(tmp_path, network={"workers": 2}, http={"metrics_dir": str(folder)})
    path = tmp_path / "pacsd.yaml"
    path.write_text(yaml.safe_dump(config))
    result = pacsd_command("serve", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2, result.stdout
    assert "http.metrics_dir" in result.stderr
    assert "index.db" in result.stderr
    assert (folder / "index.db").read_bytes() == b"someone else's"
