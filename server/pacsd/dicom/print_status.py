"""The file printer's status (PS3.3 C.13.9 Printer Module), read from its print folder.

A film printer's status says whether it can take a job; a file printer's depends on the folder
it prints into. Printer Status (2110,0010) and Printer Status Info (2110,0020), the latter one of
the Defined Terms of PS3.3 C.13.9.1 that honestly describe a file printer:
- FAILURE, PRINTER DOWN: the print folder cannot take files (it, or the nearest folder above it
  that exists, is no directory or is not writable, e.g. on a read-only file system);
- FAILURE, SUPPLY EMPTY: its file system has less free space than the storage keeps
  (`storage.min_free_space`): the printer's "film" is disk space;
- WARNING, SUPPLY LOW: less free space than `print.warning_free_space` (by default twice
  `storage.min_free_space`);
- NORMAL, NORMAL otherwise.
The Printer's N-GET answers it (PS3.4 H.4.6.2.2) and its changes are reported to the SCUs with
N-EVENT-REPORT, Event Type ID 1 Normal, 2 Warning, 3 Failure (PS3.4 H.4.6.2.1).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

NORMAL, WARNING, FAILURE = "NORMAL", "WARNING", "FAILURE"  # PS3.3 C.13.9, Enumerated Values
PRINTER_DOWN, SUPPLY_EMPTY, SUPPLY_LOW = "PRINTER DOWN", "SUPPLY EMPTY", "SUPPLY LOW"  # C.13.9.1
# PS3.4 H.4.6.2.1: the Printer's Event Type ID of each status.
EVENT_TYPES = {NORMAL: 1, WARNING: 2, FAILURE: 3}


@dataclass(frozen=True)
class PrinterStatus:
    """Printer Status, Printer Status Info, and what caused them (for logs and Error Comments);
    two are equal when their status and info are: a change of free space alone is no change."""

    status: str = NORMAL
    info: str = NORMAL
    detail: str = field(default="", compare=False)

    @property
    def event_type(self) -> int:
        """The Event Type ID of the N-EVENT-REPORT telling this status (PS3.4 H.4.6.2.1)."""
        return EVENT_TYPES[self.status]

    @property
    def failed(self) -> bool:
        return self.status == FAILURE


READY = PrinterStatus()


def printer_status(folder: Path, min_free_space: int, warning_free_space: int) -> PrinterStatus:
    """The status of a printer printing into `folder` (made on the first print if missing)."""
    try:
        existing = next(path for path in (folder, *folder.parents) if path.exists())
    except (StopIteration, OSError) as exc:
        return PrinterStatus(FAILURE, PRINTER_DOWN, f"print folder {folder} unreachable: {exc}")
    if not existing.is_dir():
        return PrinterStatus(FAILURE, PRINTER_DOWN, f"{existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        return PrinterStatus(FAILURE, PRINTER_DOWN, f"print folder {existing} is not writable")
    try:
        free = shutil.disk_usage(existing).free
    except OSError as exc:
        return PrinterStatus(FAILURE, PRINTER_DOWN, f"free space of {existing} unknown: {exc}")
    if free < min_free_space:
        detail = f"{free} bytes free under {existing}, storage keeps {min_free_space}"
        return PrinterStatus(FAILURE, SUPPLY_EMPTY, detail)
    if free < warning_free_space:
        detail = f"{free} bytes free under {existing}, warning below {warning_free_space}"
        return PrinterStatus(WARNING, SUPPLY_LOW, detail)
    return READY
