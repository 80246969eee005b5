"""DIMSE messages of bounded size, and no spool file left behind by a message never served.

pynetdicom's DIMSE provider appends every fragment of a message (PS3.8 Annex E) to the command
set, a C-STORE spool file or an in-memory data set, without bound. `LimitedDIMSE` counts them:

- a C-STORE data set beyond `max_dataset_size`, or one whose spool write fails because the
  disk is full, stops being written: the spool is emptied, the remaining fragments are read and
  discarded, and the request still reaches the handler, which answers 0xA700
  (services/storage.py asks `refused_dataset`). Refusing without reading the
  rest is impossible short of A-ABORT (DIMSE has no way to stop a peer mid-message), and an
  abort would cost the peer its association and every instance queued behind this one;
- a command set beyond `max_command_size`, any other data set beyond `max_memory_dataset_size`,
  a data set fragment before its command, or a new command inside a data set is a protocol
  error (PS3.7 6.3.1, PS3.8 E.2): `DimseProtocolError` makes the DUL abort the association.

A C-STORE spool starts with pacsd's own file meta instead of pynetdicom's (rewritten before
the first data set fragment), so that the archive can keep the spool file itself as the stored
file rather than copying it (archive.py).
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
from pathlib import Path
from typing import Any

from pynetdicom import evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import P_DATA

from pacsd.dicom.part10 import encode_file_meta
from pacsd.logs import get_logger
from pacsd.net import pdu_limits
from pacsd.net.commands import Message, Unsupported

log = get_logger("pacsd.dimse")
_COMMAND = 0x01  # PS3.8 E.2 message control header: bit 0 command, bit 1 last fragment
_LAST = 0x02
_FULL_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class DimseProtocolError(Exception):
    """A peer broke the DIMSE message structure; the association is aborted."""


class LimitedDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, fed one fragment at a time through size checks."""

    def __init__(self, assoc: Any) -> None:
        super().__init__(assoc)
        self.limits = pdu_limits.current()
        # spool path -> why its data set was discarded, for the C-STORE handler to refuse.
        self.refused: dict[str, str] = {}
        self._command_bytes = 0
        self._dataset_bytes = 0
        self._discarding = False
        self._head_written = False

    def receive_primitive(self, primitive: P_DATA) -> None:
        """Pass each PDV of a P-DATA-TF on, unless it breaks a limit (PS3.8 9.3.5.1)."""
        for context_id, fragment in list(primitive.presentation_data_value_list):
            admitted = self._admit(bytes(fragment))
            if admitted is None:
                continue
            single = P_DATA()
            single.presentation_data_value_list = [[context_id, admitted]]  # type: ignore[list-item]
            try:
                super().receive_primitive(single)
            except OSError as exc:
                if exc.errno not in _FULL_DISK_ERRNOS or not self._spooling():
                    raise
                self._spool_full(context_id, admitted)
            if self.message is None:  # the message is complete and queued
                self._command_bytes = self._dataset_bytes = 0
                self._discarding = self._head_written = False
            elif not self._head_written and self._spooling():
                self._head_written = True
                self._write_pacsd_head(self.message)

    def send_msg(self, primitive: Any, context_id: int) -> None:
        """pynetdicom's, with the command set packed by net/commands.py when it can be."""
        if self.assoc.get_handlers(evt.EVT_DIMSE_SENT):
            super().send_msg(primitive, context_id)  # someone wants pynetdicom's message
            return
        try:
            message = Message.of(primitive)
        except Unsupported:
            super().send_msg(primitive, context_id)
            return
        for pdata in message.fragments(context_id, self.maximum_pdu_size):
            self.dul.send_pdu(pdata)

    def _admit(self, fragment: bytes) -> bytes | None:
        """The fragment to hand to pynetdicom, a stand-in for it, or None to drop it."""
        if not fragment:
            raise DimseProtocolError("a PDV without message control header")
        message = self.message
        command_done = message is not None and message.context_id is not None
        if fragment[0] & _COMMAND:
            if command_done:
                raise DimseProtocolError("a command fragment inside a data set")
            self._command_bytes += len(fragment) - 1
            if self._command_bytes > self.limits.max_command_size:
                raise DimseProtocolError("command set longer than pacsd accepts")
            return fragment
        if message is None or not command_done:
            raise DimseProtocolError("a data set fragment before its command")
        self._dataset_bytes += len(fragment) - 1
        if message._data_set_file is None:  # held in memory: not a C-STORE
            if self._dataset_bytes > self.limits.max_memory_dataset_size:
                raise DimseProtocolError("data set longer than pacsd holds in memory")
            return fragment
        if self._dataset_bytes <= self.limits.max_dataset_size and not self._discarding:
            return fragment
        if not self._discarding:
            limit = self.limits.max_dataset_size
            self._start_discarding(message, f"data set larger than the maximum of {limit} bytes")
            log.warning(
                "C-STORE data set exceeds limits.max_dataset_size; discarding the rest",
                max_dataset_size=limit,
            )
        return _end_only(fragment)

    def _write_pacsd_head(self, message: DIMSEMessage) -> None:
        """Replace the file meta pynetdicom just wrote to a new spool by pacsd's (the data set
        has not started): the file meta a stored file gets, from the request's UIDs, the
        context's transfer syntax and the calling AE title."""
        spool: Any = message._data_set_file
        command = message.command_set
        assoc: Any = self.assoc
        try:
            context = assoc._accepted_cx[message.context_id]
            calling = str(assoc.requestor.primitive.calling_ae_title).strip()
            head = encode_file_meta(
                str(command.AffectedSOPClassUID),
                str(command.AffectedSOPInstanceUID),
                str(context.transfer_syntax[0]),
                calling,
            )
        except (AttributeError, KeyError, IndexError, TypeError):
            return  # pynetdicom's file meta stays; the archive then copies the data set
        spool.seek(0)
        spool.truncate()
        spool.write(head)
        spool.flush()

    def _spooling(self) -> bool:
        message = self.message
        return message is not None and message._data_set_file is not None

    def _spool_full(self, context_id: int, fragment: bytes) -> None:
        """The spool write of a data set fragment found the disk full: discard the data set
        (which frees its space) and let its last fragment end the message, refused."""
        message = self.message
        assert message is not None
        if not self._discarding:
            self._start_discarding(message, "storage is full")
            log.warning("C-STORE spool write failed: disk full; discarding the data set")
        end = _end_only(fragment)
        if end is not None:
            single = P_DATA()
            single.presentation_data_value_list = [[context_id, end]]  # type: ignore[list-item]
            super().receive_primitive(single)
            if self.message is None:
                self._command_bytes = self._dataset_bytes = 0
                self._discarding = False

    def _start_discarding(self, message: DIMSEMessage, reason: str) -> None:
        spool: Any = message._data_set_file
        if spool is not None:  # keep the file (pynetdicom closes and removes it), empty it
            descriptor = spool.file.fileno()
            os.ftruncate(descriptor, 0)  # first: frees the space a failed flush still needs
            with contextlib.suppress(OSError):
                spool.flush()  # what a failed flush left in the buffer, into the empty file
            os.ftruncate(descriptor, 0)
            spool.seek(0)
        self.refused[str(message._data_set_path)] = reason
        self._discarding = True

    def discard_partial_message(self) -> None:
        """Remove the spool file of a message that will never complete (the DUL has ended)."""
        message, self.message = self.message, None
        if message is not None:
            _remove_spool(message._data_set_file, message._data_set_path)
            self.refused.pop(str(message._data_set_path), None)

    def discard_unserved(self) -> None:
        """Remove the spool files of complete messages the association never served."""
        while True:
            try:
                _, primitive = self.msg_queue.get(block=False)
            except queue.Empty:
                return
            discard_spool(primitive)


def _end_only(fragment: bytes) -> bytes | None:
    """A discarded data set fragment: only the last one still goes on (its header alone),
    because it ends the message so that the handler can refuse it."""
    return fragment[:1] if fragment[0] & _LAST else None


def discard_spool(primitive: Any) -> None:
    """Close and remove a received C-STORE's spool file, if it still exists."""
    _remove_spool(
        getattr(primitive, "_dataset_file", None), getattr(primitive, "_dataset_path", None)
    )


def _remove_spool(spool: Any, path: Any) -> None:
    if spool is not None:
        with contextlib.suppress(OSError):
            spool.close()
    if isinstance(path, (str, Path)):
        with contextlib.suppress(OSError):
            os.unlink(path)


def refused_dataset(event: Event) -> str | None:
    """Why a C-STORE's data set was discarded while it arrived, or None if it was not."""
    table: dict[str, str] | None = getattr(event.assoc.dimse, "refused", None)
    if not table:
        return None
    return table.pop(str(event.dataset_path), None)
