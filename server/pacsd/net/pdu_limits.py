"""What one peer may make pacsd receive: the longest PDU and the largest DIMSE message.

pynetdicom reads a PDU by trusting its length field (a 0xFFFFFFFF length makes it buffer up to
4 GiB) and appends every data set fragment to a spool file or memory without bound. pacsd checks
each PDU header against `max_pdu_length` before reading the body (net/reactor.py) and counts
DIMSE fragments as they arrive (net/dimse_limits.py). The limits are process-wide, like
pynetdicom's own `_config`: `install` them once at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass

from pacsd.settings_security import LimitsSettings

# PDU types (PS3.8 9.3.1).
A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07
KNOWN_PDU_TYPES = frozenset(range(0x01, 0x08))
# A-ASSOCIATE-RJ, A-RELEASE-RQ/RP and A-ABORT have a fixed PDU length of 4 (PS3.8 9.3.4,
# 9.3.6, 9.3.7, 9.3.8); a little slack costs nothing and spares a sloppy peer.
FIXED_PDU_CAP = 64
# States in which P-DATA-TF PDUs are expected (PS3.8 9.2, Table 9-10): established, and the
# release and release-collision states, during which data may still arrive.
_DATA_TRANSFER_STATES = frozenset({"Sta6", "Sta7", "Sta8", "Sta9", "Sta10", "Sta11", "Sta12"})
# A-ABORT reason (PS3.8 9.3.8, Table 9-26, source 2 "service-provider"): the PDU length is a
# parameter whose value pacsd cannot accept.
INVALID_PDU_PARAMETER_VALUE = 0x06
SERVICE_PROVIDER = 0x02


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


_installed = [ReceiveLimits()]


def install(limits: ReceiveLimits) -> None:
    """Make `limits` apply to every association of this process from now on."""
    _installed[0] = limits


def current() -> ReceiveLimits:
    """The receive limits in force."""
    return _installed[0]


def max_pdu_length(pdu_type: int, state: str, maximum_length: int, limits: ReceiveLimits) -> int:
    """The largest PDU-length field (bytes after the 6-byte header) pacsd reads in `state`.

    PS3.8 9.3.5 and D.1: the maximum length pacsd announced bounds the variable field of each
    P-DATA-TF PDU it receives, 0 meaning no limit. Before that is negotiated (and for the
    A-ASSOCIATE PDUs), `max_association_request_size` applies.
    """
    if pdu_type == P_DATA_TF and state in _DATA_TRANSFER_STATES:
        return maximum_length or limits.unlimited_pdu_cap
    if pdu_type in (A_ASSOCIATE_RJ, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT):
        return FIXED_PDU_CAP
    return limits.max_association_request_size
