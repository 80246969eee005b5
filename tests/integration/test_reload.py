"""SIGHUP reloads the policies: new associations follow them, running ones keep their decision."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage

from tests import datagen
from tests.harness import VERIFICATION, PacsdProcess
from tests.scu import settled

ServerFactory = Callable[..., PacsdProcess]


def accepting(prefix: str) -> list[dict[str, Any]]:
    """Rules that accept calling AE titles starting with `prefix` and reject everyone else."""
    return [
        {
            "name": f"{prefix.lower()}-peers",
            "match": {"calling_ae": f"{prefix}*"},
            "sop_classes": ["verification", "storage"],
        },
        {"name": "everyone-else", "action": "reject", "reject_reason": "calling-ae-not-recognised"},
    ]


def rewrite(server: PacsdProcess, **changes: Any) -> None:
    """Change top-level sections of the server's configuration file in place."""
    config = yaml.safe_load(server.config_path.read_text(encoding="utf-8"))
    config.update(changes)
    server.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")


def associate(server: PacsdProcess, calling: str) -> Association:
    """Request an association proposing verification and CT storage."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(VERIFICATION)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    return settled(ae.associate(server.host, server.port, ae_title="PACSD"))


def accepted(server: PacsdProcess, calling: str) -> bool:
    """True when `calling` gets an association (released at once)."""
    assoc = associate(server, calling)
    if assoc.is_established:
        assoc.release()
        return True
    assert assoc.is_rejected
    return False


def test_sighup_applies_new_rules_to_new_associations_only(
    pacsd_server: ServerFactory, tmp_path: Path
) -> None:
    """After SIGHUP the new rules decide; an association opened before keeps working."""
    server = pacsd_server(policies=accepting("OLD"), ready_by_echo=False)
    running = associate(server, "OLD1")
    assert running.is_established
    try:
        rewrite(server, policies=accepting("NEW"))
        server.send_signal(signal.SIGHUP)
        [reloaded] = server.wait_for("configuration reloaded")
        assert reloaded["rules"] == ["new-peers", "everyone-else"]
        assert accepted(server, "NEW1")
        assert not accepted(server, "OLD2")
        # The running association was decided under the old rules and keeps that decision.
        assert int(running.send_c_echo().Status) == 0x0000
        image = datagen.write_part10(
            datagen.ct_image(datagen.StudyContext(), size=64), tmp_path / "ct.dcm"
        )
        assert int(running.send_c_store(image).Status) == 0x0000
    finally:
        running.release()


def test_sighup_with_an_invalid_file_keeps_the_running_configuration(
    pacsd_server: ServerFactory,
) -> None:
    """A file with a mistake is refused with the key that is wrong; the old rules stay."""
    server = pacsd_server(policies=accepting("OLD"), ready_by_echo=False)
    broken = accepting("NEW")
    broken[0]["sop_classes"] = ["verification", "CTImageStorrage"]
    rewrite(server, policies=broken)
    server.send_signal(signal.SIGHUP)
    [refused] = server.wait_for("reload refused; the previous configuration stays in force")
    assert "policies.0.sop_classes.1" in refused["error"]
    assert "CTImageStorrage" in refused["error"]
    assert accepted(server, "OLD1")
    assert not accepted(server, "NEW1")
    # A later valid file is taken, and the server kept serving throughout.
    rewrite(server, policies=accepting("NEW"))
    server.send_signal(signal.SIGHUP)
    server.wait_for("configuration reloaded")
    assert accepted(server, "NEW1")
    assert server.process is not None
    assert server.process.poll() is None


def test_sighup_names_sections_that_need_a_restart(pacsd_server: ServerFactory) -> None:
    """Changing the port is not applied by a reload, and the log says so."""
    server = pacsd_server(policies=accepting("OLD"), ready_by_echo=False)
    config = yaml.safe_load(server.config_path.read_text(encoding="utf-8"))
    rewrite(server, network={**config["network"], "port": 1})
    server.send_signal(signal.SIGHUP)
    [pending] = server.wait_for("these sections changed and need a restart to apply")
    assert pending["sections"] == ["network"]
    assert accepted(server, "OLD1")  # still listening where it was
