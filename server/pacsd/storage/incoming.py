"""A C-STORE data set written to its file as its fragments arrive.

The file starts with pacsd's own file meta (built from the request and the presentation
context), so that once the data set is checked it becomes the stored file by a rename: every
received byte is written once. The SHA-256 the index keeps is computed over the same bytes on
the way. A data set beyond `limits.max_dataset_size`, or one the disk has no room for, stops
being written: the file is emptied, the remaining fragments are read and dropped, and the
request is answered 0xA700 (`refused` says why). DIMSE cannot stop a peer in the middle of a
message short of A-ABORT, and an abort would cost the peer every instance queued behind this
one.

A data set of up to KEEP_IN_MEMORY bytes is only held in memory until the I/O thread makes it
durable (`sync`), which creates and writes its file there rather than on the event loop: a
file created in the folder while other threads fsync waited about 0.3 ms for the journal, per
instance, with eight associations storing. A disk with no room for it then fails the store
0xA700 as well (storage/filesystem.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from pathlib import Path

from pacsd.storage.filesystem import FILE_MODE, FULL_DISK_ERRNOS

# A data set up to this size is also kept in memory as it arrives, so that parsing it does not
# read the file back (open, read, close: more than the copy costs for a small instance).
KEEP_IN_MEMORY = 256 * 1024


class IncomingFile:
    """The temporary file of one incoming data set (engine/dimse.py's DataSink)."""

    __slots__ = (
        "_descriptor",
        "_gone",
        "_hasher",
        "_kept",
        "_opened",
        "dataset_size",
        "head_size",
        "limit",
        "path",
        "refused",
        "transfer_syntax",
    )

    def __init__(
        self, folder: Path, head: bytes, limit: int, transfer_syntax: str | None = None
    ) -> None:
        self.path = folder / f"{uuid.uuid4().hex}.part"
        # The transfer syntax of `head`, pacsd's file meta (None: the file brings its own).
        self.transfer_syntax = transfer_syntax
        self.limit = limit
        self.head_size = len(head)
        self.dataset_size = 0  # data set bytes received (also those dropped)
        self.refused: str | None = None
        self._hasher = hashlib.sha256(head)
        self._kept: list[bytes] | None = [head]
        self._descriptor = -1
        self._opened = False  # the file exists (created once the bytes outgrow memory)
        self._gone = False  # moved into the archive, or removed

    def write(self, chunk: memoryview) -> None:
        """Append a fragment's bytes (or count and drop them once refused)."""
        self.dataset_size += len(chunk)
        if self.refused is not None:
            return
        if self.dataset_size > self.limit:
            self._refuse(f"data set larger than the maximum of {self.limit} bytes")
            return
        self._hasher.update(chunk)
        if self._kept is not None and self.head_size + self.dataset_size <= KEEP_IN_MEMORY:
            self._kept.append(bytes(chunk))  # `chunk` is the receive buffer's: copied
            return
        try:
            if not self._opened:
                self._create()  # what memory held so far goes first
            self._kept = None
            self._write_all(chunk)
        except OSError as exc:
            self._refuse(
                "storage is full" if exc.errno in FULL_DISK_ERRNOS else f"storage: {exc.strerror}"
            )

    def _create(self) -> None:
        """Create the file and write what memory holds (its head, the fragments so far)."""
        self._descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        self._opened = True
        for part in self._kept or ():
            self._write_all(part)

    def _write_all(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._descriptor, view)
            view = view[written:]

    def _refuse(self, reason: str) -> None:
        self.refused = reason
        self._kept = None
        if self._descriptor >= 0:  # free the space now; the file goes when the request ends
            with contextlib.suppress(OSError):
                os.ftruncate(self._descriptor, 0)

    def finish(self) -> IncomingFile:
        """The last fragment arrived: the file is complete (not yet durable)."""
        return self

    def contents(self) -> bytes | None:
        """The file's bytes when it was small enough to keep them (KEEP_IN_MEMORY), else None."""
        return b"".join(self._kept) if self._kept is not None else None

    @property
    def size(self) -> int:
        """Bytes in the file: file meta and data set."""
        return self.head_size + self.dataset_size

    @property
    def sha256(self) -> str:
        """SHA-256 of the file's bytes."""
        return self._hasher.hexdigest()

    def materialize(self) -> None:
        """Create the file when memory held its bytes (OSError when the disk has no room)."""
        if not self._opened:
            self._create()

    def sync(self) -> None:
        """Make the file's bytes durable (creating it first when memory held them); OSError
        when the disk has no room, as when it is written."""
        self.materialize()
        os.fsync(self._descriptor)

    @property
    def descriptor(self) -> int:
        """The open, writable descriptor (-1 once closed)."""
        return self._descriptor

    def close(self) -> None:
        """Close the descriptor; the file stays (created first when memory held its bytes, for
        whoever reads it by `path`; not once refused or discarded)."""
        if not self._opened and self.refused is None and not self._gone:
            self._create()
        self._close_descriptor()

    def _close_descriptor(self) -> None:
        descriptor, self._descriptor = self._descriptor, -1
        if descriptor >= 0:
            os.close(descriptor)

    def moved(self) -> None:
        """The storage renamed or uploaded and removed the file: nothing is left to discard."""
        self._gone = True

    def discard(self) -> None:
        """Close and remove the file unless it was kept (idempotent: one unlink at most)."""
        self._close_descriptor()
        if not self._gone:
            self._gone = True
            self._kept = None
            if self._opened:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
