"""`pacsd policy explain` on the shipped hospital example: the answers an operator relies on."""

from __future__ import annotations

from pathlib import Path

from tests.harness import pacsd_command

HOSPITAL = Path(__file__).resolve().parents[2] / "config" / "examples" / "hospital.yaml"


def explain(*args: str) -> tuple[int, list[str]]:
    """Run the command on the hospital example: (exit status, output lines)."""
    result = pacsd_command("policy", "explain", "--config", str(HOSPITAL), *args)
    assert not result.stderr, result.stderr
    return result.returncode, result.stdout.splitlines()


def test_ct_scanner_may_store_lossless_ct() -> None:
    """CT1 from its subnet: accepted by ct-scanner, JPEG 2000 lossless accepted, store allowed."""
    status, lines = explain(
        "--calling-ae", "CT1", "--address", "10.1.2.3",
        "--sop", "CTImageStorage", "--ts", "JPEG2000Lossless", "--operation", "store",
    )  # fmt: skip
    assert status == 0
    assert "rule 'ct-scanner' matches" in lines
    assert "decision: ACCEPT: rule 'ct-scanner' accepts" in lines
    assert any(
        line.startswith("  1. 1.2.840.10008.1.2.1 Explicit VR Little Endian") for line in lines
    )
    assert any("transfer syntax JPEG2000Lossless: accepted, preference" in line for line in lines)
    assert "operation store: allowed: allowed by rule 'ct-scanner'" in lines


def test_ct_scanner_may_not_send_lossy_or_mr() -> None:
    """Lossy JPEG and MR images are refused for the CT scanner: exit status 3."""
    status, lines = explain(
        "--calling-ae", "CT1", "--address", "10.1.2.3",
        "--sop", "CTImageStorage", "--ts", "JPEGBaseline8Bit",
    )  # fmt: skip
    assert status == 3
    assert "  transfer syntax JPEGBaseline8Bit: REJECTED (not in the rule's transfer syntaxes)" in (
        lines
    )
    status, lines = explain(
        "--calling-ae", "CT1", "--address", "10.1.2.3", "--sop", "MRImageStorage"
    )
    assert status == 3
    assert any("MRImageStorage" in line and "REJECTED (not granted" in line for line in lines)


def test_ct1_from_another_address_is_everyone_else() -> None:
    """The CT's AE title from outside its subnet falls through to the reject rule."""
    status, lines = explain("--calling-ae", "CT1", "--address", "10.9.9.9")
    assert status == 3
    assert "rule 'ct-scanner' does not match: address 10.9.9.9 is not in 10.1.2.0/24" in lines
    assert "rule 'everyone-else' matches" in lines
    assert lines[-1] == (
        "decision: REJECT (result=1 source=1 reason=3): "
        "rule 'everyone-else' rejects (calling-ae-not-recognised)"
    )


def test_viewer_moves_only_to_itself() -> None:
    """VIEWER may C-MOVE to VIEWER and not to another AE; it may not store."""
    viewer = ("--calling-ae", "VIEWER", "--address", "10.1.5.20")
    status, lines = explain(*viewer, "--operation", "move", "--destination", "VIEWER")
    assert status == 0
    assert "operation move to VIEWER: allowed: allowed by rule 'viewer'" in lines
    status, lines = explain(*viewer, "--operation", "move", "--destination", "CT1")
    assert status == 3
    assert any("move destination 'CT1' is not allowed" in line for line in lines)
    status, lines = explain(*viewer, "--sop", "CTImageStorage", "--operation", "store")
    assert status == 3
    assert any(
        "SOP class CTImageStorage" in line and "peer may also be SCP" in line for line in lines
    )
    assert any(line.startswith("operation store: REFUSED (0x0124") for line in lines)


def test_unknown_names_are_usage_errors() -> None:
    """An unknown SOP class or a malformed address: exit 2 with the reason."""
    result = pacsd_command(
        "policy", "explain", "--config", str(HOSPITAL),
        "--calling-ae", "CT1", "--address", "10.1.2.3", "--sop", "CTImageStorrage",
    )  # fmt: skip
    assert result.returncode == 2
    assert "'CTImageStorrage' is not a SOP class group" in result.stderr
    result = pacsd_command(
        "policy", "explain", "--config", str(HOSPITAL), "--calling-ae", "CT1", "--address", "ten"
    )
    assert result.returncode == 2
    assert "--address" in result.stderr


def test_person_name_matching_is_shown() -> None:
    """The rule's person name matching: here the global default."""
    status, lines = explain("--calling-ae", "VIEWER", "--address", "10.1.5.20")
    assert status == 0
    assert (
        "  person name matching (C-FIND, unless fuzzy matching is negotiated): exact "
        "(query.person_name_case_insensitive)"
    ) in lines
