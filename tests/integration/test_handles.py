"""Client handles as the status interface (/associations) and `pacsd associations` show them.

A real pacsd, a real pynetdicom SCU: while an association is open the status interface lists
exactly it, with what was negotiated and counted; once it ends, nothing is left.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import (
    AE,
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    build_role,
    evt,
)
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.sop_class import CTImageStorage

from tests import datagen
from tests.harness import VERIFICATION, PacsdProcess, pacsd_command
from tests.inspect_archive import dataset_bytes
from tests.perf.associations import CALLING_AE, EncodedRequests, one_association
from tests.scu import chunked_send, settled, status_of

ServerFactory = Callable[..., PacsdProcess]
Snapshot = dict[str, Any]

STATUS_WAIT_S = 10.0
POLL_INTERVAL_S = 0.05
REACTOR_PARK_S = 0.05  # pynetdicom's reactor sleeps 1 ms per turn: 50 of them
# Under the DICOM root and no SOP class (a UID outside it would be a private storage class, which
# the default policy accepts): PS3.8 Table 9-18 result 3, abstract syntax not supported.
UNKNOWN_SOP_CLASS = "1.2.840.10008.9.9.9"
ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
SERVER_MAX_PDU = 65536
SCU_MAX_PDU = 32768
# CT* may associate for verification and storage (storage peers may also take the SCP role);
# the harness's readiness C-ECHO comes from TESTSCU.
POLICIES = [
    {
        "name": "ct-modalities",
        "match": {"calling_ae": "CT*"},
        "sop_classes": ["verification", "storage"],
        "peer_scp_role": ["storage"],
    },
    {"name": "readiness", "match": {"calling_ae": "TESTSCU"}, "sop_classes": ["verification"]},
]


@pytest.fixture
def server(pacsd_server: ServerFactory, database_url: str) -> PacsdProcess:
    """A pacsd that accepts CT* by the ct-modalities rule and receives PDUs of up to 64 KiB."""
    return pacsd_server(database_url, policies=POLICIES, network={"max_pdu_size": SERVER_MAX_PDU})


def status(server: PacsdProcess) -> Snapshot:
    """GET /associations."""
    with urllib.request.urlopen(server.status_url, timeout=5) as response:  # noqa: S310
        document: Snapshot = json.loads(response.read())
    return document


def wait_for_associations(
    server: PacsdProcess, condition: Callable[[list[Snapshot]], bool], what: str
) -> list[Snapshot]:
    """Poll /associations until `condition` holds for its list, or fail after a deadline."""
    deadline = time.monotonic() + STATUS_WAIT_S
    while True:
        associations: list[Snapshot] = status(server)["associations"]
        if condition(associations):
            return associations
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {STATUS_WAIT_S} s: {associations}")
        time.sleep(POLL_INTERVAL_S)


def the_established_association(server: PacsdProcess) -> Snapshot:
    """The one association listed, once pacsd has recorded its negotiation."""
    [association] = wait_for_associations(
        server,
        lambda found: len(found) == 1 and found[0]["state"] == "established",
        "exactly one established association",
    )
    return association


def wait_until_none_listed(server: PacsdProcess) -> None:
    """Poll until /associations lists nothing."""
    wait_for_associations(server, lambda found: found == [], "an empty association list")


def wait_for_log(server: PacsdProcess, event: str, **fields: Any) -> Snapshot:
    """The first logged line of `event` with `fields`, waiting for it up to a deadline."""
    deadline = time.monotonic() + STATUS_WAIT_S
    while True:
        for line in server.events(event):
            if all(line.get(key) == value for key, value in fields.items()):
                return line
        if time.monotonic() > deadline:
            raise AssertionError(f"no {event!r} line with {fields} within {STATUS_WAIT_S} s")
        time.sleep(POLL_INTERVAL_S)


@dataclass
class WireCount:
    """Bytes of whole PDUs the SCU sent and received, counted by pynetdicom's events."""

    sent: int = 0
    received: int = 0

    def handlers(self) -> list[Any]:
        """Event handlers for AE.associate()."""
        return [(evt.EVT_DATA_SENT, self._on_sent), (evt.EVT_DATA_RECV, self._on_received)]

    def _on_sent(self, event: Event) -> None:
        self.sent += len(event.data)

    def _on_received(self, event: Event) -> None:
        self.received += len(event.data)


def scu(calling: str) -> AE:
    """A pynetdicom AE proposing Verification, CT storage and a SOP class nobody knows."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = 30
    ae.add_requested_context(VERIFICATION, ImplicitVRLittleEndian)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(UNKNOWN_SOP_CLASS, ImplicitVRLittleEndian)
    return ae


@contextmanager
def scu_association(
    server: PacsdProcess, calling: str = "CT1", wire: WireCount | None = None
) -> Iterator[Association]:
    """An established association from `calling`; CT storage proposed with both roles."""
    assoc = scu(calling).associate(
        server.host,
        server.port,
        ae_title="PACSD",
        max_pdu=SCU_MAX_PDU,
        ext_neg=[build_role(CTImageStorage, scu_role=True, scp_role=True)],
        evt_handlers=wire.handlers() if wire else None,
    )
    assert assoc.is_established, "pacsd accepts CT* associations"
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def local_port(assoc: Association) -> int:
    """The SCU's own TCP port: what pacsd sees as the peer port."""
    socket = assoc.dul.socket
    assert socket is not None
    assert socket.socket is not None
    return int(socket.socket.getsockname()[1])


def ct_files(folder: Path, count: int) -> list[Path]:
    """`count` small generated CT images as Part 10 files."""
    study = datagen.StudyContext()
    return [
        datagen.write_part10(datagen.ct_image(study, number, 32), folder / f"ct{number}.dcm")
        for number in range(1, count + 1)
    ]


def test_open_association_is_listed_with_its_negotiation(server: PacsdProcess) -> None:
    """One open association: its AE titles, peer, implementation, PDU sizes, contexts, rule."""
    with scu_association(server, calling="CT1") as assoc:
        association = the_established_association(server)
        assert association["calling_ae_title"] == "CT1"
        assert association["called_ae_title"] == "PACSD"
        assert association["peer_address"] == "127.0.0.1"
        assert association["peer_port"] == local_port(assoc)
        assert association["peer_implementation_class_uid"] == PYNETDICOM_IMPLEMENTATION_UID
        assert association["peer_implementation_version_name"] == (
            PYNETDICOM_IMPLEMENTATION_VERSION
        )
        assert association["peer_max_pdu_size"] == SCU_MAX_PDU
        assert association["local_max_pdu_size"] == SERVER_MAX_PDU
        assert assoc.acceptor.maximum_length == SERVER_MAX_PDU, "what pacsd told the SCU"
        assert association["rule"] == "ct-modalities"
        assert association["username"] is None
        assert_contexts(association, assoc)


def assert_contexts(association: Snapshot, assoc: Association) -> None:
    """Accepted contexts with syntax and pacsd's roles; the unknown SOP class rejected (3)."""
    accepted = {cx["abstract_syntax"]: cx for cx in association["accepted_contexts"]}
    assert set(accepted) == {VERIFICATION, CTImageStorage}
    assert {cx.abstract_syntax for cx in assoc.accepted_contexts} == set(accepted)
    verification, ct = accepted[VERIFICATION], accepted[CTImageStorage]
    assert verification["transfer_syntax"] == ImplicitVRLittleEndian
    assert (verification["pacsd_scp"], verification["pacsd_scu"]) == (True, False)
    assert verification["sop_class"] == "Verification"
    assert ct["transfer_syntax"] == ExplicitVRLittleEndian
    # PS3.7 D.3.3.4: the SCU proposed both roles and the rule lets storage peers be SCP too.
    assert (ct["pacsd_scp"], ct["pacsd_scu"]) == (True, True)
    assert ct["sop_class"] == "CTImageStorage"
    [rejected] = association["rejected_contexts"]
    assert rejected["abstract_syntax"] == UNKNOWN_SOP_CLASS
    assert rejected["result"] == ABSTRACT_SYNTAX_NOT_SUPPORTED
    assert (rejected["pacsd_scp"], rejected["pacsd_scu"]) == (False, False)


def parked(assoc: Any) -> Any:
    """`assoc`, after a pause that lets pynetdicom's reactor park between two requests: its
    requestor race (docs/dicom-notes.md) made the second of two back-to-back C-ECHOs wait
    out its DIMSE timeout once in CI."""
    time.sleep(REACTOR_PARK_S)
    return assoc


def test_counters_match_what_was_sent(server: PacsdProcess, tmp_path: Path) -> None:
    """3 C-ECHO and 2 C-STORE: per-service counts, instances, data set and wire bytes."""
    files = ct_files(tmp_path, 2)
    dataset_sizes = sum(len(dataset_bytes(path)) for path in files)
    wire = WireCount()
    with chunked_send(), scu_association(server, wire=wire) as assoc:
        assert [status_of(parked(assoc).send_c_echo()) for _ in range(3)] == [0x0000] * 3
        assert [status_of(parked(assoc).send_c_store(path)) for path in files] == [0x0000] * 2
        # pacsd counts a PDU it sent after writing it: poll until it has seen the last one.
        [association] = wait_for_associations(
            server,
            lambda found: len(found) == 1 and found[0]["counters"]["bytes_sent"] == wire.received,
            "pacsd's bytes sent equal to the SCU's bytes received",
        )
        scu_sent, scu_received = wire.sent, wire.received
    counters = association["counters"]
    assert counters["services"] == {
        "C-ECHO": {"invoked": 3, "completed": 3, "failed": 0},
        "C-STORE": {"invoked": 2, "completed": 2, "failed": 0},
    }
    assert counters["instances_stored"] == 2
    assert counters["dataset_bytes_stored"] == dataset_sizes, "sent byte for byte"
    assert counters["bytes_received"] == scu_sent, "every PDU the SCU sent, headers included"
    assert counters["bytes_received"] > dataset_sizes
    assert counters["bytes_sent"] == scu_received > 0


@pytest.mark.parametrize("ending", ["release", "abort"])
def test_handle_disappears_when_the_association_ends(server: PacsdProcess, ending: str) -> None:
    """After A-RELEASE or A-ABORT the association is no longer listed."""
    with scu_association(server) as assoc:
        association_id = the_established_association(server)["association_id"]
        assert status_of(assoc.send_c_echo()) == 0x0000
        if ending == "release":
            assoc.release()
        else:
            assoc.abort()
    wait_until_none_listed(server)
    closed = wait_for_log(server, "association closed", association_id=association_id)
    assert closed["state"] == {"release": "released", "abort": "aborted"}[ending]
    assert status(server)["associations_accepted"] == 0, "its slot was given back"


RELEASES = 30


def test_a_peer_closing_as_soon_as_the_release_reply_arrives_is_logged_as_released(
    pacsd_server: ServerFactory,
) -> None:
    """PS3.8 7.2: after the A-RELEASE-RP the requester may close at once. The server's reading
    thread then sees the close before its association thread has finished the release; every
    one of these associations must still end "released", never "aborted"."""
    server = pacsd_server()
    requests = EncodedRequests.for_called("PACSD")
    for _ in range(RELEASES):
        one_association(server.port, requests)  # open, C-ECHO, release, close on the reply
    closed = server.wait_for("association closed", count=RELEASES + 1, timeout=STATUS_WAIT_S)
    ours = [line for line in closed if line.get("calling_ae_title") == CALLING_AE]
    assert len(ours) == RELEASES
    assert [line["state"] for line in ours] == ["released"] * RELEASES


def test_rejected_association_leaves_nothing(
    pacsd_server: ServerFactory, database_url: str
) -> None:
    """With no rule at all every association is rejected, and no handle stays behind."""
    server = pacsd_server(database_url, ready_by_echo=False, policies=[])
    assoc = settled(
        scu("CT1").associate(server.host, server.port, ae_title="PACSD", max_pdu=SCU_MAX_PDU)
    )
    assert assoc.is_rejected
    rejected = wait_for_log(server, "association rejected", calling_ae_title="CT1")
    wait_for_log(server, "association closed", association_id=rejected["association_id"])
    wait_until_none_listed(server)
    assert status(server)["associations_accepted"] == 0


def test_associations_command_shows_the_open_association(server: PacsdProcess) -> None:
    """`pacsd associations --url` prints the server's JSON, or one table line per association."""
    with scu_association(server, calling="CT7") as assoc:
        peer_port = local_port(assoc)
        assert status_of(assoc.send_c_echo()) == 0x0000
        association_id = the_established_association(server)["association_id"]
        as_json = pacsd_command("associations", "--url", server.status_url, "--json")
        table = pacsd_command("associations", "--url", server.status_url)
    assert as_json.returncode == 0, as_json.stderr
    [listed] = json.loads(as_json.stdout)["associations"]
    assert listed["association_id"] == association_id
    assert listed["peer_port"] == peer_port
    assert table.returncode == 0, table.stderr
    assert_table_lists(table.stdout, association_id, peer_port)


def assert_table_lists(table: str, association_id: str, peer_port: int) -> None:
    """A summary line, a header line, and the association's line with its fields."""
    summary, header, *rows = table.splitlines()
    assert summary.startswith("PACSD (pacsd ")
    assert "1 association(s) open" in summary
    assert header.split()[:2] == ["ID", "STATE"]
    [row] = rows
    cells = row.split()
    assert cells[:4] == [association_id, "established", "CT7->PACSD", f"127.0.0.1:{peer_port}"]
    assert cells[4] == "ct-modalities"
    assert cells[6] == "2", "accepted contexts: Verification and CT Image Storage"
    assert row.endswith("C-ECHO 1/1/0")


def test_associations_command_finds_the_status_interface_in_the_configuration(
    server: PacsdProcess, tmp_path: Path
) -> None:
    """Without --url the command reads http.host and http.port from --config."""
    status_port = int(server.status_url.rsplit(":", 1)[1].split("/", 1)[0])
    config = tmp_path / "client.yaml"
    config.write_text(yaml.safe_dump({"http": {"host": "127.0.0.1", "port": status_port}}))
    result = pacsd_command("associations", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["associations"] == []


@pytest.mark.parametrize(
    ("arguments", "config", "message"),
    [
        (
            ["--url", "http://127.0.0.1:1/associations"],
            None,
            "pacsd: status interface unreachable at http://127.0.0.1:1/associations: ",
        ),
        (
            [],
            {"http": {"enabled": False}},
            "pacsd: the HTTP interface is disabled (http.enabled: false)",
        ),
    ],
    ids=["unreachable", "disabled"],
)
def test_associations_command_fails_with_one_line(
    tmp_path: Path, arguments: Sequence[str], config: Snapshot | None, message: str
) -> None:
    """No server listening, or the interface switched off: exit 1 and one line on stderr."""
    if config is not None:
        path = tmp_path / "pacsd.yaml"
        path.write_text(yaml.safe_dump(config))
        arguments = [*arguments, "--config", str(path)]
    result = pacsd_command("associations", *arguments, "--timeout", "2")
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(message)
