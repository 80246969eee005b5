"""The file printer's status (PS3.3 C.13.9) from its print folder, on real folders, and the
Event Information of its N-EVENT-REPORT (PS3.4 H.4.6.2.1)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pacsd.dicom.print_output import PrintOutput
from pacsd.dicom.print_status import READY, PrinterStatus, printer_status
from pacsd.services.print_management import event_information

PETABYTE = 10**15


def test_a_writable_folder_with_room_is_normal(tmp_path: Path) -> None:
    assert printer_status(tmp_path, 0, 0) == READY
    assert (READY.status, READY.info, READY.event_type) == ("NORMAL", "NORMAL", 1)


def test_a_folder_not_made_yet_is_judged_by_the_folder_above(tmp_path: Path) -> None:
    """The print folder is made on the first print: a missing one under a writable folder is
    fine."""
    assert printer_status(tmp_path / "print" / "later", 0, 0) == READY


def test_a_folder_that_cannot_be_made_is_printer_down(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    status = printer_status(blocker / "print", 0, 0)
    assert (status.status, status.info, status.event_type) == ("FAILURE", "PRINTER DOWN", 3)
    assert str(blocker) in status.detail


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_folder_is_printer_down(tmp_path: Path) -> None:
    tmp_path.chmod(0o555)
    try:
        status = printer_status(tmp_path / "print", 0, 0)
    finally:
        tmp_path.chmod(0o755)
    assert (status.status, status.info) == ("FAILURE", "PRINTER DOWN")


def test_free_space_below_the_storage_minimum_is_supply_empty(tmp_path: Path) -> None:
    status = printer_status(tmp_path, PETABYTE, PETABYTE)
    assert (status.status, status.info, status.event_type) == ("FAILURE", "SUPPLY EMPTY", 3)
    assert "bytes free" in status.detail


def test_free_space_below_the_warning_is_supply_low(tmp_path: Path) -> None:
    status = printer_status(tmp_path, 0, PETABYTE)
    assert (status.status, status.info, status.event_type) == ("WARNING", "SUPPLY LOW", 2)


def test_the_warning_is_twice_the_minimum_unless_configured(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    # min_free_space well below the free space, twice it well above (room for other writers)
    assert PrintOutput(tmp_path, int(free * 0.6)).status().status == "WARNING"
    assert PrintOutput(tmp_path, int(free * 0.6), 0).status() == READY
    assert PrintOutput(tmp_path, 0).status() == READY


def test_statuses_differ_by_status_and_info_not_by_the_bytes_free() -> None:
    """A report goes out when the status changes, not when free space moves a little."""
    assert PrinterStatus("WARNING", "SUPPLY LOW", "10 bytes") == PrinterStatus(
        "WARNING", "SUPPLY LOW", "9 bytes"
    )
    assert PrinterStatus("FAILURE", "SUPPLY EMPTY") != PrinterStatus("FAILURE", "PRINTER DOWN")


def test_event_information_of_each_event_type() -> None:
    """PS3.4 H.4.6.2.1: Normal carries none; Warning and Failure Printer Status Info."""
    assert event_information(READY, "PACSD") is None
    failure = event_information(PrinterStatus("FAILURE", "PRINTER DOWN"), "PACSD")
    assert failure is not None
    assert (failure.PrinterStatusInfo, failure.PrinterName) == ("PRINTER DOWN", "PACSD")
