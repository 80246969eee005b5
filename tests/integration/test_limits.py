"""limits: a C-STORE over max_dataset_size gets 0xA700 and the association goes on; a PDU
longer than pacsd may receive is aborted before its body is read (PS3.8 9.3.8)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.sop_class import CTImageStorage

from tests import datagen
from tests import fuzz_cases as fz
from tests.harness import PacsdProcess
from tests.inspect_archive import index_rows, stored_files, work_files
from tests.scu import associate, status_of

ServerFactory = Callable[..., PacsdProcess]
MAX_PDU = 16384
NETWORK_TIMEOUT = 20  # long: a refusal must not wait for it


@pytest.fixture
def limited(pacsd_server: ServerFactory, database_url: str) -> PacsdProcess:
    return pacsd_server(
        database_url,
        network={"max_pdu_size": MAX_PDU, "network_timeout": NETWORK_TIMEOUT},
        limits={"max_dataset_size": "256KiB", "max_association_request_size": "16KiB"},
    )


def test_data_set_over_max_dataset_size_gets_out_of_resources_and_association_goes_on(
    limited: PacsdProcess, database_url: str, tmp_path: Path
) -> None:
    """512 KiB of pixels against a 256 KiB limit: 0xA700 with a comment, nothing stored, no
    spool left; the next C-STORE on the same association is stored."""
    study = datagen.StudyContext()
    big = datagen.write_part10(datagen.ct_image(study, 1, 512), tmp_path / "big.dcm")
    small = datagen.write_part10(datagen.ct_image(study, 2, 16), tmp_path / "small.dcm")
    with associate(limited.host, limited.port, [(CTImageStorage, ExplicitVRLittleEndian)]) as assoc:
        refused = assoc.send_c_store(dcmread(big))
        assert status_of(refused) == 0xA700
        assert "maximum of 262144 bytes" in str(refused.ErrorComment)
        assert work_files(limited.storage_root) == []
        assert status_of(assoc.send_c_store(dcmread(small))) == 0x0000
    rows = index_rows(database_url)
    assert [row["sop_instance_uid"] for row in rows] == [str(dcmread(small).SOPInstanceUID)]
    assert len(stored_files(limited.storage_root)) == 1
    assert len(limited.wait_for("dimse", count=2)) >= 2
    refusals = [line for line in limited.events("dimse") if line.get("status") == "0xA700"]
    assert len(refusals) == 1


def _abort_of(reply: fz.Reply) -> tuple[int, int] | None:
    body = reply.first(0x07)
    return None if body is None else (body[2], body[3])


def test_p_data_longer_than_the_offered_maximum_is_aborted_before_its_body(
    limited: PacsdProcess,
) -> None:
    """Only the 6-byte header of a P-DATA-TF one byte over the maximum PDU length is sent:
    pacsd answers A-ABORT (service-provider, invalid parameter value) at once, without
    waiting for a body it will not read, and logs one warning."""
    peer = fz.RawPeer(limited.host, limited.port)
    try:
        assert peer.associate(fz.associate_rq()).first(0x02) is not None
        started = time.monotonic()
        peer.send(fz.p_data(length=MAX_PDU + 1))
        reply = peer.reply(10.0, until=lambda r: r.first(0x07) is not None)
        elapsed = time.monotonic() - started
    finally:
        peer.close()
    assert _abort_of(reply) == (2, 6), reply.summary()
    assert elapsed < 3.0
    warnings = limited.wait_for("PDU longer than pacsd accepts; aborting the association")
    assert (warnings[0]["pdu_length"], warnings[0]["limit"]) == (MAX_PDU + 1, MAX_PDU)


@pytest.mark.parametrize("declared", [16 * 1024 + 1, 0xFFFFFFFF])
def test_association_request_over_the_limit_is_aborted_before_its_body(
    limited: PacsdProcess, declared: int
) -> None:
    """An A-ASSOCIATE-RQ header declaring more than max_association_request_size: A-ABORT
    (2, 6) without waiting for the body; the server goes on answering C-ECHO."""
    peer = fz.RawPeer(limited.host, limited.port)
    try:
        peer.send(fz.pdu(0x01, b"", length=declared))
        reply = peer.reply(3.0, until=lambda r: r.first(0x07) is not None)
    finally:
        peer.close()
    assert _abort_of(reply) == (2, 6), reply.summary()
    with associate(limited.host, limited.port, [(fz.VERIFICATION, fz.IMPLICIT)]) as assoc:
        assert status_of(assoc.send_c_echo()) == 0x0000
