"""User identity negotiation (PS3.7 D.3.3.7) with DCMTK's storescu as the requestor.

storescu 3.6.7 sends a username (-usr), a username and password (-pwd) and asks for a positive
response (-rsp); pacsd's rule requires a verified identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from tests import datagen
from tests.conftest import ServerFactory
from tests.harness import PacsdProcess
from tests.inspect_archive import index_rows
from tests.integration.test_user_identity import PASSWORD, hash_password_cli
from tests.interop.test_dcmtk import run

pytestmark = pytest.mark.usefixtures("dcmtk")


@pytest.fixture
def server(pacsd_server: ServerFactory) -> PacsdProcess:
    """pacsd whose only rule requires a verified user identity."""
    made = hash_password_cli(PASSWORD)
    assert made.returncode == 0, made.stderr
    return pacsd_server(
        identity={"users": [{"username": "modality", "password_hash": made.stdout.strip()}]},
        policies=[
            {
                "name": "authenticated",
                "user_identity": "required",
                "sop_classes": ["verification", "storage"],
            }
        ],
        ready_by_echo=False,
    )


def storescu(server: PacsdProcess, files: Sequence[Path], *identity: str) -> str:
    """storescu's verbose output; raises when it fails (bounded in time)."""
    command = ["storescu", "-v", "-aec", "PACSD", *identity, server.host, str(server.port)]
    result = run([*command, *map(str, files)])
    if result.returncode != 0:
        raise AssertionError(result.stdout + result.stderr)
    return result.stdout + result.stderr


def test_storescu_with_username_and_password_stores(server: PacsdProcess, tmp_path: Path) -> None:
    """-usr/-pwd with -rsp: the association is accepted with a positive response, the files
    are stored, and pacsd logged the verified user."""
    files = list(datagen.ct_series(tmp_path / "in", 2, size=32))
    output = storescu(server, files, "-usr", "modality", "-pwd", PASSWORD, "-rsp")
    assert "Association Accepted" in output
    rows = index_rows(f"sqlite:///{server.config_path.parent / 'index.sqlite'}")
    assert len(rows) == 2
    [verified] = server.wait_for("user identity verified")
    assert verified["username"] == "modality"
    assert PASSWORD not in server.output()


@pytest.mark.parametrize(
    "identity",
    [("-usr", "modality", "-pwd", "wrong"), ("-usr", "intruder", "-pwd", PASSWORD), ()],
    ids=["wrong-password", "unknown-user", "no-identity"],
)
def test_storescu_without_a_verified_identity_is_rejected(
    server: PacsdProcess, tmp_path: Path, identity: tuple[str, ...]
) -> None:
    """A wrong password, an unknown user or no identity at all: storescu sees an
    A-ASSOCIATE-RJ (rejected-permanent) and nothing is stored."""
    files = list(datagen.ct_series(tmp_path / "in", 1, size=32))
    with pytest.raises(AssertionError) as failed:
        storescu(server, files, *identity)
    assert "Association Rejected" in str(failed.value)
    assert "Result: Rejected Permanent" in str(failed.value)
    assert index_rows(f"sqlite:///{server.config_path.parent / 'index.sqlite'}") == []
