"""The extension point for site services (pacsd.services), with examples/site_service.

The example package is not installed: the pacsd process gets its folder on PYTHONPATH, and a
`*.dist-info` folder (METADATA and entry_points.txt, the entry points the example's
pyproject.toml declares) in a temporary folder on PYTHONPATH too, which importlib.metadata
reads as it reads an installed distribution's. The lookup pacsd does is the real one.
"""

from __future__ import annotations

import os
import signal
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association

from tests.harness import VERIFICATION, PacsdProcess, base_config, pacsd_command

REPOSITORY = Path(__file__).resolve().parents[2]
EXAMPLE = REPOSITORY / "examples" / "site_service"
EXAMPLE_PING = "1.2.826.0.1.3680043.10.1407.999.1"  # the example's made-up SOP class
COUNTER = f"{EXAMPLE_PING}.1"
GROUP = "site:example-ping"
NUMERIC_VALUE = 0x0040A30A
ABSTRACT_SYNTAX_NOT_SUPPORTED = 3  # PS3.8 Table 9-18
POLICIES = [
    {"name": "pingers", "match": {"calling_ae": "PINGSCU"},
     "sop_classes": ["verification", GROUP]},
    # Granted the SOP class, but not its operation: each request refused (0x0124).
    {"name": "echo-only", "match": {"calling_ae": "ECHOSCU"},
     "sop_classes": ["verification", GROUP], "operations": ["echo"]},
    # Every storage class, private ones included: not the site's SOP class.
    {"name": "others", "sop_classes": ["verification", "storage"]},
]  # fmt: skip
AUDIT_WAIT_S = LOG_WAIT_S = 15.0
REACTOR_PARK_S = 0.05  # pynetdicom's reactor sleeps 1 ms per turn: 50 of them
# Entry points beside the example's that do not give a site service.
MISFITS = {
    "broken-site": "pacsd_site_example:no_such_factory",
    "odd-site": "pacsd_site_example:Pings",  # called with the settings, returns a Pings
}


def site_pythonpath(folder: Path, extra_entry_points: dict[str, str] | None = None) -> str:
    """PYTHONPATH for a pacsd that finds the example as if installed: its source folder and
    a dist-info folder with the entry points of its pyproject.toml (plus `extra`)."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    points = {**project["entry-points"]["pacsd.services"], **(extra_entry_points or {})}
    dist_info = folder / f"pacsd_site_example-{project['version']}.dist-info"
    dist_info.mkdir(parents=True, exist_ok=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n",
        encoding="utf-8",
    )
    lines = ["[pacsd.services]", *(f"{name} = {target}" for name, target in points.items())]
    (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    inherited = os.environ.get("PYTHONPATH")
    return os.pathsep.join([str(EXAMPLE), str(folder), *([inherited] if inherited else [])])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsdProcess]:
    """A pacsd serving the example site service, with two workers: they fork after the
    configuration (and the extension) is loaded, and serve it as loaded."""
    root = tmp_path_factory.mktemp("site")
    pythonpath = site_pythonpath(root / "site-packages")
    config = base_config(
        root / "server",
        network={"workers": 2},
        extensions=["example-ping"],
        policies=POLICIES,
    )
    process = PacsdProcess.from_config(root / "server", config, PYTHONPATH=pythonpath)
    process.start()
    try:
        yield process
    finally:
        process.stop()
        process.kill()


def associate(server: PacsdProcess, calling: str) -> Association:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(EXAMPLE_PING)
    ae.add_requested_context(VERIFICATION)
    return ae.associate(server.host, server.port, ae_title="PACSD")


def ping(assoc: Association, text: str | None = None, action: int = 1) -> tuple[int, Any]:
    information = None
    if text is not None:
        information = Dataset()
        information.TextValue = text
    status, reply = assoc.send_n_action(information, action, EXAMPLE_PING, COUNTER)
    return int(status.Status), reply


def counter(assoc: Association, instance: str = COUNTER) -> tuple[int, Any]:
    status, attributes = assoc.send_n_get([NUMERIC_VALUE], EXAMPLE_PING, instance)
    return int(status.Status), attributes


def site_lines(server: PacsdProcess, calling: str, count: int) -> list[dict[str, Any]]:
    """The `dimse` lines of the example's SOP class from `calling`, once there are `count`."""
    deadline = time.monotonic() + LOG_WAIT_S
    while True:
        lines = [
            line
            for line in server.events("dimse")
            if line.get("sop_class") == "ExamplePingSOPClass"
            and line.get("calling_ae_title") == calling
        ]
        if len(lines) >= count:
            return lines
        assert time.monotonic() < deadline, f"{len(lines)} of {count} lines:\n{server.output()}"
        time.sleep(0.05)


def test_the_site_sop_class_is_negotiated_and_its_handlers_answer(server: PacsdProcess) -> None:
    """A rule granting site:example-ping: the context is accepted, N-ACTION ping answers an
    Action Reply, N-GET the counter; wrong action and instance get the handler's statuses."""
    assoc = associate(server, "PINGSCU")
    assert assoc.is_established
    try:
        accepted = {str(context.abstract_syntax) for context in assoc.accepted_contexts}
        assert accepted == {EXAMPLE_PING, VERIFICATION}
        status, before = counter(assoc)
        assert status == 0x0000
        status, reply = ping(assoc, "hello")
        assert status == 0x0000
        assert reply.TextValue == "pong from PACSD hello"
        assert int(reply.NumericValue) == int(before.NumericValue) + 1
        status, reply = ping(assoc)  # no Action Information
        assert (status, reply.TextValue) == (0x0000, "pong from PACSD")
        status, after = counter(assoc)
        assert (status, int(after.NumericValue)) == (0x0000, int(before.NumericValue) + 2)
        assert ping(assoc, action=7)[0] == 0x0123  # No Such Action
        assert counter(assoc, f"{EXAMPLE_PING}.2")[0] == 0x0112  # No Such Object Instance
    finally:
        assoc.release()
    lines = site_lines(server, "PINGSCU", count=6)
    assert {line["operation"] for line in lines} == {"N-ACTION", "N-GET"}
    assert {line["status"] for line in lines} >= {"0x0000", "0x0123", "0x0112"}
    loaded = server.events("site service loaded")
    assert [(line["extension"], line["service"]) for line in loaded] == [("example-ping", GROUP)]


def test_a_request_the_site_has_no_handler_for_answers_0211(server: PacsdProcess) -> None:
    """N-SET and N-DELETE are not the example's: 0x0211, logged, and the association goes on."""
    assoc = associate(server, "PINGSCU")
    assert assoc.is_established
    try:
        modification = Dataset()
        modification.TextValue = "x"
        status, _ = assoc.send_n_set(modification, EXAMPLE_PING, COUNTER)
        assert int(status.Status) == 0x0211
        assert int(assoc.send_n_delete(EXAMPLE_PING, COUNTER).Status) == 0x0211
        assert ping(assoc)[0] == 0x0000
    finally:
        assoc.release()
    warnings = server.wait_for("unrecognized operation answered 0x0211", count=2)
    assert {line["request"] for line in warnings if line["calling_ae_title"] == "PINGSCU"} == {
        "N-SET",
        "N-DELETE",
    }


def test_a_rule_without_the_group_rejects_the_context(server: PacsdProcess) -> None:
    """`storage` covers every private SOP class, but not a site service's: result 3."""
    assoc = associate(server, "VIEWER")
    assert assoc.is_established
    try:
        rejected = {str(c.abstract_syntax): c.result for c in assoc.rejected_contexts}
        assert rejected == {EXAMPLE_PING: ABSTRACT_SYNTAX_NOT_SUPPORTED}
    finally:
        assoc.release()


def test_a_request_the_rule_does_not_allow_is_refused_logged_and_audited(
    server: PacsdProcess,
) -> None:
    """The group granted, the operation not: 0x0124, as for a built-in service."""
    assoc = associate(server, "ECHOSCU")
    assert assoc.is_established
    try:
        assert ping(assoc)[0] == 0x0124
        # pynetdicom's requestor race (docs/dicom-notes.md): its reactor, woken by the last
        # answer, can take the next one if it comes back at once; let the reactor park first.
        time.sleep(REACTOR_PARK_S)
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
    refusals = server.wait_for("operation refused by policy")
    assert any(line["calling_ae_title"] == "ECHOSCU" for line in refusals)
    deadline = time.monotonic() + AUDIT_WAIT_S
    audit_file = server.config_path.parent / "audit.jsonl"
    while not any(
        f"N-ACTION {EXAMPLE_PING} refused by policy" in text
        for text in audit_file.read_text(encoding="utf-8").splitlines()
    ):
        assert time.monotonic() < deadline, "no audit record of the refused N-ACTION"
        time.sleep(0.05)


def test_a_reload_keeps_the_site_service(server: PacsdProcess) -> None:
    """SIGHUP validates the policies naming site:example-ping again, and the service stays."""
    reloads = len(server.events("configuration reloaded"))
    server.send_signal(signal.SIGHUP)
    server.wait_for("configuration reloaded", count=reloads + 1)
    assoc = associate(server, "PINGSCU")
    assert assoc.is_established
    try:
        assert ping(assoc)[0] == 0x0000
    finally:
        assoc.release()


def write_config(folder: Path, **overrides: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pacsd.yaml"
    path.write_text(yaml.safe_dump(base_config(folder, **overrides)), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("listed", "problem"),
    [
        ("no-such-site", "no entry point of that name in group pacsd.services"),
        ("broken-site", "pacsd_site_example:no_such_factory does not import: AttributeError"),
        ("odd-site", "factory pacsd_site_example:Pings returned Pings, not a pacsd.extensions"),
    ],
    ids=["not-installed", "not-importable", "not-a-site-service"],
)
def test_an_extension_that_cannot_be_loaded_fails_config_check_in_one_line(
    tmp_path: Path, listed: str, problem: str
) -> None:
    """Not installed, not importable, or not giving a SiteService: exit 2 and one line naming
    the file, the key and the extension."""
    pythonpath = site_pythonpath(tmp_path / "site-packages", MISFITS)
    path = write_config(tmp_path / "config", extensions=[listed])
    result = pacsd_command("config", "check", str(path), PYTHONPATH=pythonpath)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"pacsd: {path}: extensions: {listed}: "), lines[0]
    assert problem in lines[0]


def test_a_site_group_needs_its_extension(tmp_path: Path) -> None:
    """A policy naming site:example-ping without `extensions` fails, and says why."""
    policies = [{"name": "pingers", "sop_classes": [GROUP]}]
    path = write_config(tmp_path / "config", policies=policies)
    result = pacsd_command(
        "config", "check", str(path), PYTHONPATH=site_pythonpath(tmp_path / "site-packages")
    )
    assert result.returncode == 2, result.stderr
    assert "policies.0.sop_classes.0" in result.stderr
    assert "names no site service of a loaded extension" in result.stderr


def test_policy_explain_knows_the_site_service(tmp_path: Path) -> None:
    """`pacsd policy explain` loads the extensions: the group, its SOP class, its operation."""
    pythonpath = site_pythonpath(tmp_path / "site-packages")
    path = write_config(tmp_path / "config", extensions=["example-ping"], policies=POLICIES)
    common = ("policy", "explain", "--config", str(path), "--address", "127.0.0.1")
    result = pacsd_command(
        *common, "--calling-ae", "PINGSCU", "--sop", GROUP, "--operation", GROUP,
        PYTHONPATH=pythonpath,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SOP class ExamplePingSOPClass ({EXAMPLE_PING}): accepted" in result.stdout
    assert f"operation {GROUP}: allowed" in result.stdout
    refused = pacsd_command(
        *common, "--calling-ae", "ECHOSCU", "--operation", GROUP, PYTHONPATH=pythonpath
    )
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "REFUSED (0x0124 Not Authorized)" in refused.stdout
    check = pacsd_command("config", "show", "--config", str(path), PYTHONPATH=pythonpath)
    assert yaml.safe_load(check.stdout)["extensions"] == ["example-ping"]
