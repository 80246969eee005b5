"""pynetdicom clients for tests: a Storage SCU that sends Part 10 files byte for byte, and
association helpers for the policy tests."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.dsutils import split_dataset
from pynetdicom.pdu_primitives import A_ASSOCIATE

from tests.harness import VERIFICATION, PacsdProcess


@contextmanager
def chunked_send() -> Iterator[None]:
    """Send data sets straight from their files (no decode/re-encode): bytes stay identical.

    pynetdicom then takes the C-STORE's Affected SOP Class/Instance UIDs from the file meta.
    """
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def file_context(path: Path) -> tuple[str, str]:
    """(SOP class, transfer syntax) from a Part 10 file's meta."""
    meta, _ = split_dataset(path)
    return str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)


@contextmanager
def associate(
    host: str,
    port: int,
    contexts: Sequence[tuple[str, str]],
    calling: str = "TESTSCU",
    called: str = "PACSD",
    timeout: float = 30,
) -> Iterator[Association]:
    """An established association proposing one context per (abstract, transfer) syntax."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    for abstract, transfer in dict.fromkeys(contexts):
        ae.add_requested_context(abstract, [transfer])
    assoc = ae.associate(host, port, ae_title=called)
    if not assoc.is_established:
        raise ConnectionError(f"association with {host}:{port} not established")
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def status_of(response: Dataset | None) -> int | None:
    """The Status of a DIMSE response (None when no response arrived)."""
    if response is None or "Status" not in response:
        return None
    return int(response.Status)


# One turn of pynetdicom's reactor loop is a 1 ms sleep and a few checks (_run_reactor).
REACTOR_TURN_S = 0.003


def park_reactor(assoc: Association) -> Association:
    """`assoc`, its reactor thread parked for real before the next send_*.

    pynetdicom's requestor race (docs/dicom-notes.md): send_* closes the reactor's checkpoint
    and goes on as soon as the reactor reads "paused", which it may still read from the turn
    it is leaving; it then takes the response to the new request ("Received unexpected C-STORE
    service message") and send_* waits out its DIMSE timeout. Closing the checkpoint for
    longer than one turn first leaves the reactor waiting on it; send_* finds it so.
    """
    assoc._reactor_checkpoint.clear()
    time.sleep(REACTOR_TURN_S)
    return assoc


def store_files(
    host: str, port: int, paths: Sequence[Path], calling: str = "TESTSCU"
) -> list[tuple[int | None, str]]:
    """C-STORE each file over one association: [(status, error comment)] in order."""
    contexts = [file_context(path) for path in paths] + [(VERIFICATION, "1.2.840.10008.1.2")]
    results: list[tuple[int | None, str]] = []
    with chunked_send(), associate(host, port, contexts, calling=calling) as assoc:
        for path in paths:
            response = park_reactor(assoc).send_c_store(path)
            comment = str(response.get("ErrorComment", "")) if response else ""
            results.append((status_of(response), comment))
    return results


UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


def request(
    server: PacsdProcess,
    calling: str = "TESTSCU",
    called: str = "PACSD",
    contexts: list[tuple[str, list[str]]] | None = None,
    ext_neg: list[Any] | None = None,
    roles: list[Any] | None = None,
) -> Association:
    """Ask pacsd for an association; the caller releases it."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    for abstract, syntaxes in contexts or [(VERIFICATION, UNCOMPRESSED)]:
        ae.add_requested_context(abstract, syntaxes)
    return settled(
        ae.associate(
            server.host, server.port, ae_title=called, ext_neg=[*(ext_neg or []), *(roles or [])]
        )
    )


def settled(assoc: Association) -> Association:
    """`assoc` as the peer answered it, working around a pynetdicom 3.0 race.

    pynetdicom's requestor thread checks that its socket is still connected after it sent the
    A-ASSOCIATE-RQ (acse.py, ACSE._negotiate_as_requestor); when the acceptor answers faster
    than that thread is scheduled again, its DUL thread has already received the
    A-ASSOCIATE-RJ, queued the rejection and closed the socket (AE-4), and the requestor
    reports an abort instead. The rejection is still in the DUL's queue: take it from there.
    """
    if assoc.is_aborted and not assoc.is_rejected:
        answer = assoc.dul.receive_pdu(wait=False)
        if isinstance(answer, A_ASSOCIATE) and answer.result in (0x01, 0x02):
            assoc.acceptor.primitive = answer
            assoc.is_rejected, assoc.is_aborted = True, False
    return assoc


def rejection_of(assoc: Association) -> tuple[int, int, int]:
    """(result, source, reason) of an A-ASSOCIATE-RJ."""
    assert assoc.is_rejected, "the association was not rejected"
    answer = assoc.acceptor.primitive
    assert answer is not None
    return int(answer.result), int(answer.result_source), int(answer.diagnostic)


@contextmanager
def established(server: PacsdProcess, **kwargs: Any) -> Iterator[Association]:
    """An association that must be accepted; released afterwards."""
    assoc = request(server, **kwargs)
    assert assoc.is_established, "the association was not accepted"
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
