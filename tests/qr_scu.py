"""pynetdicom Query/Retrieve clients and a storage SCP for the C-FIND/C-GET/C-MOVE tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    PatientStudyOnlyQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from tests.harness import PacsdProcess

UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
FIND = {
    "P": PatientRootQueryRetrieveInformationModelFind,
    "S": StudyRootQueryRetrieveInformationModelFind,
    "O": PatientStudyOnlyQueryRetrieveInformationModelFind,
}
GET = {
    "P": PatientRootQueryRetrieveInformationModelGet,
    "S": StudyRootQueryRetrieveInformationModelGet,
}
MOVE = {
    "P": PatientRootQueryRetrieveInformationModelMove,
    "S": StudyRootQueryRetrieveInformationModelMove,
}
TIMEOUT_S = 30


def identifier(level: str, **keys: Any) -> Dataset:
    """A Q/R identifier at `level` with `keys` (keyword=value; "" asks for a return key)."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


@dataclass
class Responses:
    """Every response of one C-FIND/C-GET/C-MOVE: statuses and identifiers, in order."""

    statuses: list[Dataset] = field(default_factory=list)
    identifiers: list[Dataset | None] = field(default_factory=list)

    @property
    def final(self) -> Dataset:
        """The final (non-pending) response."""
        return self.statuses[-1]

    @property
    def final_status(self) -> int:
        """The final response's Status."""
        return int(self.final.Status)

    def pending(self) -> list[Dataset]:
        """The identifiers of the pending responses."""
        return [
            ident
            for status, ident in zip(self.statuses, self.identifiers, strict=True)
            if int(status.Status) in (0xFF00, 0xFF01) and ident is not None
        ]

    def values(self, keyword: str) -> set[str]:
        """The set of one key's values over the pending identifiers."""
        return {str(ident.get(keyword, "")) for ident in self.pending()}


def collect(
    responses: Iterator[tuple[Dataset, Dataset | None]],
    on_pending: Callable[[int], None] | None = None,
) -> Responses:
    """Gather a response stream; `on_pending(n)` runs after the n-th pending response."""
    result = Responses()
    for status, ident in responses:
        assert "Status" in status, "no response (association aborted or timed out)"
        result.statuses.append(status)
        result.identifiers.append(ident)
        if on_pending is not None and int(status.Status) in (0xFF00, 0xFF01):
            on_pending(len(result.statuses))
    return result


@contextmanager
def qr_association(
    server: PacsdProcess,
    models: list[str],
    calling: str = "QRSCU",
    store_handler: Callable[[Any], int] | None = None,
    storage_syntaxes: dict[str, list[str]] | None = None,
) -> Iterator[Association]:
    """An association for Q/R `models`; with `store_handler`, also the C-GET storage contexts.

    `storage_syntaxes` maps SOP class UIDs to the only transfer syntaxes offered for them.
    """
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
    for model in models:
        ae.add_requested_context(model, UNCOMPRESSED)
    roles = []
    handlers = []
    if store_handler is not None:
        classes = storage_syntaxes or {}
        for context in StoragePresentationContexts[: 127 - len(models)]:
            uid = str(context.abstract_syntax)
            if classes and uid not in classes:
                continue
            ae.add_requested_context(uid, classes.get(uid, UNCOMPRESSED))
            roles.append(build_role(uid, scp_role=True))
        handlers = [(evt.EVT_C_STORE, store_handler)]
    assoc = ae.associate(
        server.host, server.port, ae_title="PACSD", ext_neg=roles, evt_handlers=handlers
    )
    assert assoc.is_established, "association with pacsd not established"
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def context_id(assoc: Association, abstract_syntax: str) -> int:
    """The accepted context ID for `abstract_syntax`."""
    for context in assoc.accepted_contexts:
        if context.abstract_syntax == abstract_syntax:
            return int(context.context_id)
    raise AssertionError(f"{abstract_syntax} not accepted")


@dataclass
class Received:
    """What a storage SCP received: raw data set bytes and transfer syntax by SOP Instance UID."""

    datasets: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    releases: int = 0
    open_now: int = 0  # associations established and not yet ended
    most_open: int = 0  # the most that were open at once
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_c_store(self, event: Any, status: int = 0x0000, delay: float = 0.0) -> int:
        """Keep the encoded data set exactly as it arrived."""
        if delay:
            time.sleep(delay)
        if status == 0x0000:
            raw = event.request.DataSet.getvalue()
            uid = str(event.request.AffectedSOPInstanceUID)
            with self.lock:
                self.datasets[uid] = (raw, str(event.context.transfer_syntax))
        return status


@contextmanager
def storage_scp(
    ae_title: str,
    received: Received,
    status_of: Callable[[Any], int] | None = None,
    delay: float = 0.0,
    syntaxes: list[str] | None = None,
) -> Iterator[int]:
    """A pynetdicom storage SCP on a free loopback port; yields the port.

    `status_of(event)` picks each C-STORE's status (default success); `delay` slows it down.
    """
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
    for context in StoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, syntaxes or UNCOMPRESSED)

    def on_store(event: Any) -> int:
        status = status_of(event) if status_of else 0x0000
        return received.on_c_store(event, status, delay)

    def on_established(_event: Any) -> None:
        with received.lock:
            received.open_now += 1
            received.most_open = max(received.most_open, received.open_now)

    def on_released(_event: Any) -> None:
        with received.lock:
            received.releases += 1
            received.open_now -= 1

    def on_aborted(_event: Any) -> None:
        with received.lock:
            received.open_now -= 1

    server = ae.start_server(
        ("127.0.0.1", 0),
        block=False,
        evt_handlers=[
            (evt.EVT_C_STORE, on_store),
            (evt.EVT_ESTABLISHED, on_established),
            (evt.EVT_RELEASED, on_released),
            (evt.EVT_ABORTED, on_aborted),
        ],
    )
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
