"""The `policies` section through load_settings: what loads, and one line per mistake."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pacsd.dicom import sop_classes, transfer_syntaxes
from pacsd.policy.engine import AssociationRequest, Policy, decide
from pacsd.settings import ConfigError, load_settings

VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"

THREE_RULES = """\
policies:
  - name: ct-scanner
    match:
      calling_ae: CT1
      address: 10.1.2.0/24
    sop_classes: [verification, CTImageStorage]
    transfer_syntaxes: [uncompressed, lossless]
    operations: [echo, store]
    limits:
      max_associations: 4
  - name: viewer
    match:
      calling_ae: [VIEWER, "WS_*"]
      address: 2001:db8::/32
    sop_classes: [verification, query-retrieve, storage]
    peer_scp_role: storage
    move_destinations: $calling
  - name: everyone-else
    action: reject
    reject_reason: calling-ae-not-recognised
"""


def write(tmp_path: Path, text: str) -> Path:
    """A configuration file holding `text`."""
    path = tmp_path / "pacsd.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def error_line(tmp_path: Path, text: str) -> str:
    """The single error line a configuration produces."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert len(caught.value.lines) == 1, caught.value.lines
    return caught.value.lines[0]


def one_rule(body: str) -> str:
    """A policies section of one accept rule named `a`, with `body` (indented 4) appended."""
    return "policies:\n  - name: a\n" + body


def test_three_rule_file_loads_and_single_values_become_lists(tmp_path: Path) -> None:
    """A valid file gives three rules in order; `calling_ae: CT1` becomes [CT1], etc."""
    policies = load_settings(write(tmp_path, THREE_RULES)).policies
    assert [rule.name for rule in policies] == ["ct-scanner", "viewer", "everyone-else"]
    ct, viewer, rest = policies
    assert ct.match.calling_ae == ["CT1"]
    assert ct.match.address == ["10.1.2.0/24"]
    assert ct.limits.max_associations == 4
    assert viewer.match.calling_ae == ["VIEWER", "WS_*"]
    assert viewer.peer_scp_role == ["storage"]
    assert viewer.move_destinations == ["$calling"]
    assert rest.action == "reject"
    policy = Policy.compile(policies)
    assert decide(AssociationRequest("CT1", "PACSD", "10.1.2.3"), policy).rule == "ct-scanner"
    assert decide(AssociationRequest("WS_7", "PACSD", "2001:db8::7"), policy).rule == "viewer"
    other = decide(AssociationRequest("CT1", "PACSD", "10.9.9.9"), policy)
    assert other.rule == "everyone-else"
    assert not other.accepted


@pytest.mark.parametrize(
    ("body", "key", "problem"),
    [
        ("    sop_classes: [storage:imaging]\n", "policies.0.sop_classes.0",
         "'storage:imaging' is not a SOP class group"),
        ("    sop_classes: [CTImageStorag]\n", "policies.0.sop_classes.0",
         "'CTImageStorag' is not a SOP class group"),
        ("    sop_classes: [storage, '']\n", "policies.0.sop_classes.1",
         "'' is not a SOP class group"),
        ("    sop_classes: storage\n    exclude_sop_classes: [nope]\n",
         "policies.0.exclude_sop_classes.0", "'nope' is not a SOP class group"),
        ("    sop_classes: storage\n    transfer_syntaxes: [uncompressed, lossles]\n",
         "policies.0.transfer_syntaxes.1", "'lossles' is not a transfer syntax group"),
        ("    sop_classes: storage\n    transfer_syntaxes: ['']\n",
         "policies.0.transfer_syntaxes.0", "'' is not a transfer syntax group"),
        ("    sop_classes: storage\n    transfer_syntax_overrides:\n"
         "      - {sop_classes: CTImageStorage, transfer_syntaxes: [jpeg]}\n",
         "policies.0.transfer_syntax_overrides.0.transfer_syntaxes.0",
         "'jpeg' is not a transfer syntax group"),
        ("    match: {address: 10.1.2.3/24}\n    sop_classes: storage\n",
         "policies.0.match.address.0", "10.1.2.3/24 has host bits set"),
        ("    match: {address: [10.0.0.0/8, lan]}\n    sop_classes: storage\n",
         "policies.0.match.address.1", "not an IP address or CIDR network"),
        ("    action: reject\n    reject_reason: go-away\n", "policies.0.reject_reason",
         "Input should be 'no-reason'"),
        ("    sop_classes: storage\n    operations: [store, delete]\n", "policies.0.operations.1",
         "'delete' is not an operation (echo, store,"),
        ("    action: accept\n", "policies.0", "rule 'a' accepts but names no sop_classes"),
        ("    match: {calling_aet: CT1}\n    sop_classes: storage\n",
         "policies.0.match.calling_aet", "unknown key"),
        ("    sop_classes: storage\n    limits: {max_pdu_size: 1024}\n",
         "policies.0.limits.max_pdu_size", "greater than or equal to 4096"),
    ],
    ids=["sop-group", "sop-keyword", "sop-empty", "exclude", "ts-group", "ts-empty",
         "ts-override", "cidr-host-bits", "cidr-garbage", "reject-reason", "operation",
         "accept-without-sop-classes", "match-key", "max-pdu-size"],
)  # fmt: skip
def test_mistake_is_one_line_naming_the_key(
    tmp_path: Path, body: str, key: str, problem: str
) -> None:
    """A wrong value stops loading with one line: file, key path, what is wrong."""
    line = error_line(tmp_path, one_rule(body))
    assert line.startswith(f"{tmp_path / 'pacsd.yaml'}: {key}: "), line
    assert problem in line


def test_duplicate_rule_names_are_an_error(tmp_path: Path) -> None:
    """Two rules with the same name (limits and logs key on it) stop loading."""
    text = "policies:\n  - {name: a, sop_classes: storage}\n  - {name: a, sop_classes: storage}\n"
    line = error_line(tmp_path, text)
    assert line.startswith(f"{tmp_path / 'pacsd.yaml'}: ")
    assert "policies: rule name used twice: a" in line


def test_embedded_default_accepts_any_peer_for_every_service() -> None:
    """No file: any peer is accepted for verification, storage, Q/R, worklist, MPPS, storage
    commitment, UPS and print, SCP role for storage."""
    policy = Policy.compile(load_settings(None).policies)
    decision = decide(AssociationRequest("ANYONE", "WHATEVER", "2001:db8::99"), policy)
    assert decision.accepted
    grant = decision.grant
    assert grant is not None
    assert {VERIFICATION, CT_IMAGE, STUDY_ROOT_FIND, STUDY_ROOT_MOVE, STUDY_ROOT_GET} <= (
        grant.sop_classes
    )
    assert grant.operations == {
        "echo", "store", "find", "get", "move", "worklist", "mpps", "commit", "ups", "print"
    }  # fmt: skip
    assert grant.peer_scp == sop_classes.groups()["storage"]
    assert VERIFICATION not in grant.peer_scp
    assert grant.move_destinations == ("*",)


NEWER_SYNTAX_NAMES = ["JPEGXLLossless", "JPEGXLJPEGRecompression", "JPEGXL",
                      "DeflatedImageFrameCompression", "JPEG2000Lossless", ""]  # fmt: skip
RESOLVE_ALL = """
import json, sys
from pacsd.dicom import transfer_syntaxes
def attempt(token):
    try:
        return list(transfer_syntaxes.resolve(token))
    except ValueError:
        return None
print(json.dumps({"pynetdicom": "pynetdicom" in sys.modules,
                  "resolved": [attempt(token) for token in sys.argv[1:]]}))
"""


def test_transfer_syntax_names_do_not_depend_on_pynetdicom_being_imported() -> None:
    """`pacsd config check` (no pynetdicom) resolves JPEG XL names as the server does."""
    child = subprocess.run(
        [sys.executable, "-c", RESOLVE_ALL, *NEWER_SYNTAX_NAMES],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    without = json.loads(child.stdout)
    assert without["pynetdicom"] is False
    importlib.import_module("pynetdicom")  # this process: with it, whose UID names differ
    resolved = [list(transfer_syntaxes.resolve(name)) for name in NEWER_SYNTAX_NAMES[:-1]]
    assert without["resolved"] == [*resolved, None]
    assert resolved[0] == ["1.2.840.10008.1.2.4.110"]


def test_numeric_ae_titles_and_long_tls_subjects_are_accepted(tmp_path: Path) -> None:
    """`calling_ae: 104` is the AE title "104"; a TLS subject may be long and carry escapes."""
    subject = "CN=ct1.radiology.example-hospital.org,OU=Radiology,O=Example Hospital\\, Inc,C=DE"
    path = tmp_path / "pacsd.yaml"
    path.write_text(
        "policies:\n"
        f"  - name: a\n    match: {{calling_ae: 104, tls_subject: '{subject}'}}\n"
        "    sop_classes: [verification]\n",
        encoding="utf-8",
    )
    [rule] = load_settings(path).policies
    assert rule.match.calling_ae == ["104"]
    assert rule.match.tls_subject == [subject]
