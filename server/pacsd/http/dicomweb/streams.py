"""Bytes of stored files and selections of instances, read in the executor as they are sent.

`range_chunks` reads a file (or ranges of it) in blocks of `CHUNK`, each read in the DICOMweb
executor and the next one started before the current one is handed on, so the disk and the
socket work at the same time and at most two blocks per response are in memory; a file of at
most one block costs one executor call (open, read, close). `instance_batches` reads a
selection's rows from the index a batch at a time. `Transfer` counts what a retrieval sent
and writes its audit message when the stream ends, however it ends.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import BinaryIO

from pacsd.http.access import Requester
from pacsd.http.dicomweb import auditing
from pacsd.http.dicomweb.common import Web, log
from pacsd.http.dicomweb.layout import (
    Layout,
    needs_conversion,
    read_instance_layout,
    read_stream_layout,
)
from pacsd.index.retrieve import Selection, StoredInstance, stored_instances
from pacsd.storage.base import InstanceStore

CHUNK = 1 << 20
ROWS_PER_BATCH = 200
Range = tuple[int, int]  # (offset, length); length -1: to the end of the file


@dataclass(frozen=True)
class ObjectSource:
    """A stored file that is not a local file (an object store's): read by ranged GETs."""

    files: InstanceStore
    relative_path: str


Source = Path | ObjectSource


def source_of(files: InstanceStore, relative_path: str) -> Source:
    """The stored file's local path (the filesystem backend), else its object."""
    local = files.local_path(relative_path)
    return local if local is not None else ObjectSource(files, relative_path)


def local_file(source: Source) -> AbstractContextManager[Path]:
    """A local path with the source's bytes while the context lasts (blocking: executor)."""
    if isinstance(source, Path):
        return nullcontext(source)
    return source.files.local_copy(source.relative_path)


def instance_layout(source: Source, transfer_syntax: str) -> Layout:
    """The Layout of a stored file (blocking: executor): from its path, or from the object's
    reader (ranged GETs with a bounded read-ahead, no copy), or, for a syntax converted first
    (Deflated, Big Endian), from a temporary local copy. FileNotFoundError when missing."""
    if isinstance(source, ObjectSource) and not needs_conversion(transfer_syntax):
        with source.files.open(source.relative_path) as reader:
            return read_stream_layout(reader, transfer_syntax)
    with local_file(source) as path:
        return read_instance_layout(path, transfer_syntax)


def _open_and_read(path: Path, offset: int, length: int) -> tuple[int | None, int, bytes]:
    """(descriptor or None when the file was read whole, file size, the first block)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(descriptor).st_size
        end = size if length < 0 else min(size, offset + length)
        data = os.pread(descriptor, min(CHUNK, max(0, end - offset)), offset)
    except BaseException:
        os.close(descriptor)
        raise
    if offset + len(data) >= end:
        os.close(descriptor)
        return None, size, data
    return descriptor, size, data


def _blocks(ranges: Sequence[Range], size: int) -> list[Range]:
    blocks = []
    for offset, length in ranges:
        end = size if length < 0 else min(size, offset + length)
        blocks += [(start, min(CHUNK, end - start)) for start in range(offset, end, CHUNK)]
    return blocks


async def file_chunks(
    web: Web, path: Source, ranges: Sequence[Range] = ((0, -1),)
) -> AsyncIterator[bytes]:
    """The bytes of `ranges` of the file at `path`, block by block (FileNotFoundError, OSError
    from the executor)."""
    if isinstance(path, ObjectSource):
        async for chunk in _object_chunks(web, path, ranges):
            yield chunk
        return
    first_offset, first_length = ranges[0]
    descriptor, size, data = await web.run(lambda: _open_and_read(path, first_offset, first_length))
    if descriptor is None and len(ranges) == 1:
        yield data
        return
    blocks = _blocks(ranges, size)[1:]
    loop = asyncio.get_running_loop()
    pending: asyncio.Future[bytes] | None = None
    try:
        if descriptor is None:
            descriptor = await web.run(lambda: os.open(path, os.O_RDONLY))
        fd = descriptor
        for number, (offset, length) in enumerate(blocks):
            pending = loop.run_in_executor(web.pool, os.pread, fd, length, offset)
            if data:
                yield data
            data = await pending
            pending = None
            if len(data) < blocks[number][1]:
                raise OSError(f"{path.name}: shorter than its header says")
        yield data
    finally:
        if descriptor is not None:
            opened = descriptor
            if pending is not None and not pending.done():  # a read still holds the file
                pending.add_done_callback(lambda _future: os.close(opened))
            else:
                os.close(opened)


def _read_at(reader: BinaryIO, offset: int, length: int) -> bytes:
    if reader.tell() != offset:
        reader.seek(offset)
    return reader.read(length)


async def _object_chunks(
    web: Web, source: ObjectSource, ranges: Sequence[Range]
) -> AsyncIterator[bytes]:
    """`ranges` of an object, a block per executor call (ranged GETs with read-ahead)."""
    reader = await web.run(lambda: source.files.open(source.relative_path))
    try:
        size = await web.run(lambda: reader.seek(0, os.SEEK_END))
        for offset, length in _blocks(ranges, size):
            data = await web.run(partial(_read_at, reader, offset, length))
            if len(data) < length:
                raise OSError(f"{source.relative_path}: shorter than its size")
            yield data
    finally:
        reader.close()


async def memory_chunks(data: bytes, ranges: Sequence[Range]) -> AsyncIterator[bytes]:
    """`ranges` of `data` (a file converted in memory)."""
    for offset, length in ranges:
        end = len(data) if length < 0 else offset + length
        for start in range(offset, end, CHUNK):
            yield data[start : min(end, start + CHUNK)]


async def one(data: bytes) -> AsyncIterator[bytes]:
    """`data` as a stream of one chunk."""
    yield data


def read_small(paths: Sequence[Path], budget: int = 8 * CHUNK) -> dict[Path, bytes]:
    """The files of `paths` of at most one block each, read whole while their total stays
    within `budget` (blocking): a study of small instances costs one executor call per batch.
    Missing or larger files are left out (they are streamed, or fail, on their own)."""
    found: dict[Path, bytes] = {}
    for path in paths:
        try:
            with path.open("rb") as fp:
                data = fp.read(CHUNK + 1)
        except OSError:
            continue
        if len(data) > CHUNK or len(data) > budget:
            continue
        budget -= len(data)
        found[path] = data
    return found


async def instance_batches(
    web: Web, selection: Selection
) -> AsyncGenerator[list[StoredInstance], None]:
    """The selected instances, a batch of rows per index query (in the executor); all at once
    when the selection was read whole."""
    if selection.rows is not None:
        if selection.rows:
            yield list(selection.rows)
        return
    every = stored_instances(web.context.archive.index, selection, ROWS_PER_BATCH)
    while True:
        batch = await web.query(lambda: list(itertools.islice(every, ROWS_PER_BATCH)))
        if not batch:
            return
        yield batch


@dataclass
class Transfer:
    """What one WADO-RS response sent, audited when it ends (PS3.15 A.5.3.4, as a C-GET)."""

    web: Web
    requester: Requester
    what: str
    study_uid: str
    patient_id: str
    selected: int = 0
    sent: Counter[str] = field(default_factory=Counter)  # SOP class UID -> instances
    failed: int = 0
    complete: bool = False

    def audit(self) -> None:
        """Write the DICOM Instances Transferred message (in the executor)."""
        total = sum(self.sent.values())
        end = "complete" if self.complete else "ended by the client or an error"
        description = (
            f"{self.what}: {self.selected} selected, {total} sent, {self.failed} failed; {end}"
        )
        outcome = auditing.outcome_of_http(200, self.complete and not self.failed)
        studies = {self.study_uid: self.sent}
        patients = {self.study_uid: self.patient_id}
        requester = self.requester
        self.web.emit(
            lambda trail: auditing.retrieve_message(
                trail.source, trail.ae_title, requester, studies, patients, outcome, description
            )
        )
        if not self.complete or self.failed:
            log.info("dicomweb retrieve incomplete", what=self.what, sent=total, failed=self.failed)
