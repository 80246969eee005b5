"""What the archive and every reader of stored files need from a storage backend.

Two backends satisfy `InstanceStore`: `FilesystemStore` (files under one root, the default)
and `S3Store` (objects in an S3-compatible bucket, storage/s3.py). Both keep a local work
folder (`root`: `.spool/` for data sets being received, `.tmp/` for files being written), and
both name a stored instance by the same relative path (storage/filesystem.instance_directory
plus a random suffix), which the index keeps in `file_path`.

Readers prefer `local_path` (the filesystem: sendfile, pread, pydicom on the path, exactly as
before); when it is None (S3) they use `open` (ranged reads with a bounded read-ahead): a
C-STORE sub-operation sending the stored data set (the engine reads its blocks in an executor
thread), WADO-RS metadata, bulk data, frames, rendered images and thumbnails. `local_copy` (a
temporary file fetched by ranged reads, removed afterwards) is left for code that needs a path:
transcoding, removing bulk data, extracting frames (dicom/transcode.py, dicom/frames.py read
paths only).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pacsd.settings import StorageSettings
    from pacsd.storage.incoming import IncomingFile


class StorageUnavailable(OSError):
    """The store did not answer (an object store unreachable): nothing can be judged missing."""


@dataclass(frozen=True)
class StoredFile:
    """A durable file in the store."""

    relative_path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class StoredObject:
    """One stored file or object as a listing sees it (fsck)."""

    relative_path: str
    modified: float  # seconds since the epoch


class InstanceStore(Protocol):
    """A place instance files are kept durably and read back."""

    root: Path  # the local work folder (the files themselves, for the filesystem backend)
    min_free_space: int

    @property
    def tmp_dir(self) -> Path:
        """Where files are written before they are kept."""
        ...

    @property
    def spool_dir(self) -> Path:
        """Where incoming data sets are received before they are checked."""
        ...

    def prepare(self) -> int:
        """Create the work folders; remove leftovers of an interrupted run (their count)."""
        ...

    def ensure_free_space(self, incoming_bytes: int) -> None:
        """Refuse (OutOfResources) when there is no room for `incoming_bytes` more."""
        ...

    def write(
        self, directory: PurePosixPath, stem: str, head: bytes, source: BinaryIO, offset: int
    ) -> StoredFile:
        """Durably keep `head` + `source[offset:]` as `<directory>/<stem>-<n>.dcm`."""
        ...

    def keep(self, incoming: IncomingFile, directory: PurePosixPath, stem: str) -> StoredFile:
        """Durably keep a received file as `<directory>/<stem>-<n>.dcm`."""
        ...

    def remove(self, relative_path: str) -> None:
        """Delete a stored file (missing is fine)."""
        ...

    def local_path(self, relative_path: str) -> Path | None:
        """The stored file's path on this machine, or None when it is not a local file."""
        ...

    def open(self, relative_path: str) -> BinaryIO:
        """The stored file, readable and seekable (FileNotFoundError when missing)."""
        ...

    def local_copy(self, relative_path: str) -> AbstractContextManager[Path]:
        """A local path holding the stored file's bytes while the context lasts."""
        ...

    def size(self, relative_path: str) -> int:
        """The stored file's size in bytes (FileNotFoundError when missing)."""
        ...

    def exists(self, relative_path: str) -> bool:
        """Whether the stored file is there."""
        ...

    def stored_objects(self) -> Iterator[StoredObject]:
        """Every instance file or object of the store, work folders left out (fsck)."""
        ...

    def free_space(self) -> int | None:
        """Bytes free where files are kept; None when the backend has no such limit (S3)."""
        ...

    def check_ready(self) -> None:
        """Raise OSError when the store cannot take or serve files now (readiness)."""
        ...


QUARANTINE_PREFIX = "quarantine/"  # fsck --repair moves objects below it (fsck/repair.py)


@runtime_checkable
class ObjectQuarantine(Protocol):
    """A store whose files are objects (S3): fsck's quarantine moves them to another key."""

    def key(self, relative_path: str) -> str:
        """The object key of a relative path."""
        ...

    def quarantine(self, relative_path: str, target: str) -> None:
        """Move the object at `relative_path` to `target` (relative too)."""
        ...


def open_store(storage: StorageSettings, *, min_free_space: int | None = None) -> InstanceStore:
    """The store the `storage` settings configure (boto3 is imported only for the s3 backend)."""
    from pacsd.storage.filesystem import FilesystemStore

    floor = int(storage.min_free_space) if min_free_space is None else min_free_space
    if storage.backend == "s3":
        from pacsd.storage.s3 import S3Store

        return S3Store(storage.root, floor, storage.s3)
    return FilesystemStore(storage.root, floor)
