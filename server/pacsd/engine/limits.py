"""What one peer may make pacsd receive: the longest PDU and the largest DIMSE message.

A PDU's length field is checked against these before its body is read (engine/framing.py),
and DIMSE fragments are counted as they arrive (engine/dimse.py, services/storage.py): a
0xFFFFFFFF length or an endless data set never makes pacsd buffer what it announces.
"""

from __future__ import annotations

from dataclasses import dataclass

from pacsd.settings_security import LimitsSettings


@dataclass(frozen=True)
class ReceiveLimits:
    """Bounds on what a peer can make pacsd read and hold."""

    max_association_request_size: int = 1024**2
    max_dataset_size: int = 4 * 1024**3
    # A maximum PDU length of 0 means "unlimited" (PS3.8 D.1); pacsd still stops here.
    unlimited_pdu_cap: int = 64 * 1024**2
    # A command set is a handful of elements (PS3.7 E.1); nothing legitimate comes near this.
    max_command_size: int = 64 * 1024
    # Data sets other than C-STORE's (identifiers, N-ACTION/N-CREATE/N-SET) are held in memory.
    max_memory_dataset_size: int = 64 * 1024**2

    @classmethod
    def from_settings(cls, limits: LimitsSettings) -> ReceiveLimits:
        """The receive limits configured under `limits:`."""
        return cls(
            max_association_request_size=int(limits.max_association_request_size),
            max_dataset_size=int(limits.max_dataset_size),
        )
