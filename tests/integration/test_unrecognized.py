"""A DIMSE request the SOP class does not define gets 0x0211, and the association goes on."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from tests.datagen import TEST_UID_ROOT
from tests.harness import PacsdProcess

MPPS = "1.2.840.10008.3.1.2.3.3"
COMMITMENT = "1.2.840.10008.1.20.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
MWL = "1.2.840.10008.5.1.4.31"


def test_undefined_requests_answer_0211_and_the_association_goes_on(
    server: PacsdProcess,
) -> None:
    ae = AE(ae_title="ODDSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for uid in (MPPS, COMMITMENT, CT, VERIFICATION, MWL):
        ae.add_requested_context(uid)
    assoc = ae.associate(server.host, server.port, ae_title="PACSD")
    assert assoc.is_established
    try:
        instance = generate_uid(TEST_UID_ROOT)
        status = assoc.send_n_delete(MPPS, instance)  # MPPS has no N-DELETE
        assert status.Status == 0x0211
        status, _ = assoc.send_n_get([0x00100010], COMMITMENT, instance)  # nor has commitment
        assert status.Status == 0x0211
        query = Dataset()
        query.PatientName = ""
        status, _ = assoc.send_n_action(query, 1, MPPS, instance)
        assert status.Status == 0x0211
        responses = list(assoc.send_c_find(query, CT))  # a storage class has no C-FIND
        assert [int(status.Status) for status, _ in responses] == [0x0211]
        assert assoc.send_c_echo().Status == 0x0000  # still associated, still served
    finally:
        assoc.release()
    warnings = server.wait_for("unrecognized operation answered 0x0211", count=4)
    assert {line["request"] for line in warnings} == {"N-DELETE", "N-GET", "N-ACTION", "C-FIND"}
    assert all(line["calling_ae_title"] == "ODDSCU" for line in warnings)


def test_an_n_service_nobody_configured_is_rejected_at_negotiation(server: PacsdProcess) -> None:
    ae = AE(ae_title="PRINTSCU")
    # In groups the default rule grants (print, mpps), but not served by pacsd.
    ae.add_requested_context("1.2.840.10008.5.1.1.14")  # Print Job
    ae.add_requested_context("1.2.840.10008.5.1.1.15")  # Basic Annotation Box
    ae.add_requested_context("1.2.840.10008.3.1.2.3.5")  # MPPS Notification
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate(server.host, server.port, ae_title="PACSD")
    try:
        assert assoc.is_established
        assert {str(c.abstract_syntax) for c in assoc.accepted_contexts} == {VERIFICATION}
        rejected = {str(c.abstract_syntax) for c in assoc.rejected_contexts}
        assert rejected == {
            "1.2.840.10008.5.1.1.14", "1.2.840.10008.5.1.1.15", "1.2.840.10008.3.1.2.3.5"
        }  # fmt: skip
    finally:
        assoc.release()
