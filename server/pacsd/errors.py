"""Domain errors that carry the DIMSE status a peer should receive.

Storage, index and DICOM helpers raise these; `services.guard` is the one place that turns them
into responses. Messages become the response's Error Comment (0000,0902), LO: 64 characters.
"""

from __future__ import annotations

from collections.abc import Sequence


class DicomStatusError(Exception):
    """A failure with a DIMSE status (PS3.7 Annex C) and a short comment for the peer.

    `error_id` (0000,0903) and `tags` (the offending attributes, for an Attribute Identifier
    List) are sent where the response can carry them.
    """

    status: int = 0xC000
    error_id: int | None = None
    tags: Sequence[int] = ()

    def __init__(self, comment: str) -> None:
        super().__init__(comment)
        self.comment = comment


class OutOfResources(DicomStatusError):
    """PS3.4 B.2.3: Refused: Out of Resources (disk space, database unavailable)."""

    status = 0xA700


class DatasetMismatch(DicomStatusError):
    """PS3.4 B.2.3: Error: Data Set does not match SOP Class (or the request's UIDs)."""

    status = 0xA900


class CannotUnderstand(DicomStatusError):
    """PS3.4 B.2.3: Error: Cannot understand (the data set cannot be parsed)."""

    status = 0xC000


class DuplicateRejected(DicomStatusError):
    """PS3.7 C.5: Duplicate SOP Instance (0x0111), used by the `reject` duplicate policy."""

    status = 0x0111


class ProcessingFailure(DicomStatusError):
    """PS3.7 C.5.9: Processing Failure (0x0110)."""

    status = 0x0110


class NoSuchObjectInstance(DicomStatusError):
    """PS3.7 C.5.10: No Such Object Instance (0x0112)."""

    status = 0x0112


class MissingAttribute(DicomStatusError):
    """PS3.7 C.5.13: Missing Attribute (0x0120)."""

    status = 0x0120


class NoSuchAction(DicomStatusError):
    """PS3.7 C.5.23: No Such Action (0x0123)."""

    status = 0x0123


class UnrecognizedOperation(DicomStatusError):
    """PS3.7 C.5.22: Unrecognized Operation (0x0211): not a service of this SOP class."""

    status = 0x0211


class NotAuthorized(DicomStatusError):
    """PS3.7 C.5.21: Refused: Not Authorized (0x0124): the policy forbids this operation."""

    status = 0x0124
