"""config/examples/hospital.yaml, served by a real pacsd, does what its comments promise.

The example's addresses are hospital subnets; here the peers come from loopback, so only the
address matchers and the bind address are changed, and the rules are otherwise the shipped ones.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit
from pynetdicom import build_role
from pynetdicom.sop_class import CTImageStorage, MRImageStorage

from tests import datagen
from tests.harness import VERIFICATION, PacsdProcess
from tests.scu import UNCOMPRESSED, established, rejection_of, request

ServerFactory = Callable[..., PacsdProcess]
HOSPITAL = Path(__file__).resolve().parents[2] / "config" / "examples" / "hospital.yaml"


def hospital_policies() -> list[dict[str, Any]]:
    """The shipped rules, with their address matchers pointed at loopback."""
    rules: list[dict[str, Any]] = yaml.safe_load(HOSPITAL.read_text(encoding="utf-8"))["policies"]
    for rule in rules:
        if "address" in rule.get("match", {}):
            rule["match"]["address"] = "127.0.0.1"
    return rules


def test_hospital_example(pacsd_server: ServerFactory, tmp_path: Path) -> None:
    """CT stores lossless CT only; the viewer may not store but may be SCP; others rejected."""
    server = pacsd_server(policies=hospital_policies(), ready_by_echo=False)
    ct = datagen.write_part10(
        datagen.ct_image(datagen.StudyContext(), size=64), tmp_path / "ct.dcm"
    )
    contexts = [
        (CTImageStorage, [JPEG2000Lossless, ExplicitVRLittleEndian]),
        (CTImageStorage, [JPEGBaseline8Bit]),
        (MRImageStorage, UNCOMPRESSED),
        (VERIFICATION, UNCOMPRESSED),
    ]
    with established(server, calling="CT1", contexts=contexts) as assoc:
        results = {cx.context_id: cx.result for cx in assoc.rejected_contexts}
        assert results == {3: 0x04, 5: 0x03}  # lossy JPEG: syntax; MR: abstract syntax
        [chosen] = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == CTImageStorage]
        assert chosen.transfer_syntax[0] == ExplicitVRLittleEndian  # uncompressed preferred
        assert int(assoc.send_c_store(ct).Status) == 0x0000

    role = [build_role(CTImageStorage, scu_role=True, scp_role=True)]
    storage = [(CTImageStorage, UNCOMPRESSED), (VERIFICATION, UNCOMPRESSED)]
    with established(server, calling="VIEWER", contexts=storage, roles=role) as assoc:
        [context] = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == CTImageStorage]
        assert context.as_scp  # C-GET can send it images on this association
        assert int(assoc.send_c_store(ct).Status) == 0x0124  # but it may not store
        assert int(assoc.send_c_echo().Status) == 0x0000

    assert rejection_of(request(server, calling="INTRUDER")) == (1, 1, 3)
    rejected = server.wait_for("association rejected")  # the log line may trail the answer
    assert [line["rule"] for line in rejected] == ["everyone-else"]
