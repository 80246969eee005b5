"""One peer address cannot take every association slot (network.max_associations_per_address).

Associations from 127.0.0.1 fill its share; the next one from there is rejected transient
(2, 3, 2: local limit exceeded, PS3.8 Table 9-21) while a peer at another loopback address
(127.0.0.2) is still accepted, and the share comes back when an association ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from pynetdicom import AE
from pynetdicom.association import Association

from tests.conftest import ServerFactory
from tests.harness import VERIFICATION, PacsdProcess
from tests.scu import settled

SHARE = 3


def request_from(server: PacsdProcess, address: str, calling: str) -> Association:
    """An association request from a given local (loopback) address."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(VERIFICATION)
    return settled(
        ae.associate(server.host, server.port, ae_title="PACSD", bind_address=(address, 0))
    )


@contextmanager
def held(assoc: Association) -> Iterator[Association]:
    """An established association, released at the end."""
    assert assoc.is_established, "the association was not accepted"
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def test_one_address_is_held_to_its_share_and_others_still_get_in(
    pacsd_server: ServerFactory,
) -> None:
    server = pacsd_server(
        network={"max_associations": 10, "max_associations_per_address": SHARE},
        ready_by_echo=False,
    )
    with ExitStack() as stack:
        flood = [
            stack.enter_context(held(request_from(server, "127.0.0.1", f"FLOOD{n}")))
            for n in range(SHARE)
        ]
        refused = request_from(server, "127.0.0.1", "FLOOD9")
        assert refused.is_rejected
        answer = refused.acceptor.primitive
        assert answer is not None
        assert (answer.result, answer.result_source, answer.diagnostic) == (2, 3, 2)
        with held(request_from(server, "127.0.0.2", "MODALITY")) as other:
            assert int(other.send_c_echo().Status) == 0x0000
        flood[0].release()
        deadline_attempts = 50
        for _ in range(deadline_attempts):  # the slot is given back when the connection closes
            again = request_from(server, "127.0.0.1", "FLOOD9")
            if again.is_established:
                again.release()
                break
        else:
            raise AssertionError("the released share never came back")
    [line] = server.wait_for("association rejected")
    assert "from 127.0.0.1 (network.max_associations_per_address)" in line["reason"]
