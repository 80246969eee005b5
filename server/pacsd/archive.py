"""The archive: stores a received instance in files and index, or refuses it with a reason.

Blob first, index second, compensate: the file is durable before its index row is written, the
row is committed before the peer hears success, and a failed index write removes the new file.
Nothing here knows about the network; services/storage.py adapts C-STORE to the archive.

A data set received over DICOM arrives in a file that already starts with pacsd's file meta
(storage/incoming.py): once checked it becomes the stored file by a rename (`store_received`).
A Part 10 file from elsewhere (an import) is copied behind pacsd's file meta (`store`).
"""

from __future__ import annotations

import enum
import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from sqlalchemy.exc import OperationalError

from pacsd.dicom.instance import ParsedInstance, parse_part10
from pacsd.dicom.part10 import Part10Layout, encode_file_meta
from pacsd.errors import DatasetMismatch, DuplicateRejected, OutOfResources
from pacsd.index.database import CommitInDoubt, IndexDatabase
from pacsd.index.ingest import IngestOutcome, InstanceRecord
from pacsd.index.writer import IndexWriter
from pacsd.settings import DuplicatePolicy
from pacsd.settings_security import LimitsSettings
from pacsd.storage.base import InstanceStore, StoredFile
from pacsd.storage.filesystem import instance_directory, uid_hash
from pacsd.storage.incoming import IncomingFile

# A received file up to this size is parsed from memory (bigger ones: from the file, whose
# bulk values are skipped, never read).
_READ_WHOLE = 4 * 1024 * 1024
# The spool's preamble and file meta (PS3.10 7.1) come on top of the data set.
_MAX_FILE_META_SIZE = 64 * 1024


@dataclass(frozen=True)
class IncomingInstance:
    """A Part 10 file to store, with what the C-STORE request (or the importer) said of it."""

    spool_path: Path
    sop_class_uid: str
    sop_instance_uid: str
    calling_ae_title: str


class StoreOutcome(enum.Enum):
    """What the archive did with an instance it accepted."""

    STORED = "stored"
    DUPLICATE_KEPT_FIRST = "duplicate-kept-first"
    REPLACED = "replaced"


@dataclass(frozen=True)
class StoreResult:
    """The outcome of a successful store and how many data set bytes arrived."""

    outcome: StoreOutcome
    dataset_size: int
    transfer_syntax_uid: str
    study_instance_uid: str = ""
    patient_id: str = ""


class Archive:
    """Files plus index, under one duplicate policy."""

    def __init__(
        self,
        files: InstanceStore,
        index: IndexDatabase,
        duplicate_policy: DuplicatePolicy,
        limits: LimitsSettings | None = None,
    ) -> None:
        self.files = files
        self.index = index
        self.duplicate_policy = duplicate_policy
        self.limits = limits or LimitsSettings()
        self.writer = IndexWriter(index)

    def store(self, incoming: IncomingInstance) -> StoreResult:
        """Store the Part 10 file `incoming` durably (a copy behind pacsd's file meta), or
        raise a DicomStatusError saying why not."""
        with incoming.spool_path.open("rb") as spool:
            spool_size = incoming.spool_path.stat().st_size
            self._check_size(spool_size)
            self.files.ensure_free_space(spool_size)
            parsed = self._parse(spool)
            _check_matches_request(incoming, parsed)
            stored = self._write_file(incoming, parsed, spool)
        return self._indexed(incoming, parsed, stored)

    def store_received(self, received: IncomingFile, incoming: IncomingInstance) -> StoreResult:
        """Store a data set received into `received` (its file meta is pacsd's: built from
        the request, which the checks below hold the data set to): check, rename into
        place, fsync, index. The caller discards `received` whatever happens."""
        if received.refused is not None:
            raise OutOfResources(received.refused)
        self.files.ensure_free_space(received.size)  # as for a copy: room for it once more
        # pacsd wrote the file meta: its layout is known, not read back.
        syntax = received.transfer_syntax
        layout = Part10Layout(syntax, received.head_size, received.size) if syntax else None
        kept = received.contents()
        if kept is not None:
            parsed = self._parse(io.BytesIO(kept), layout)
        else:
            with open(received.path, "rb") as spool:
                if received.size <= _READ_WHOLE:  # one read: the element walk never syscalls
                    parsed = self._parse(io.BytesIO(spool.read()), layout)
                else:
                    parsed = self._parse(spool, layout)
        _check_matches_request(incoming, parsed)
        attributes = parsed.attributes
        directory = instance_directory(
            attributes.study_instance_uid, attributes.series_instance_uid
        )
        stored = self.files.keep(received, directory, uid_hash(attributes.sop_instance_uid))
        return self._indexed(incoming, parsed, stored)

    def _parse(self, spool: BinaryIO, layout: Part10Layout | None = None) -> ParsedInstance:
        return parse_part10(
            spool, int(self.limits.max_inflated_size), self.limits.max_inflate_ratio, layout
        )

    def _indexed(
        self, incoming: IncomingInstance, parsed: ParsedInstance, stored: StoredFile
    ) -> StoreResult:
        outcome = self._index(incoming, parsed, stored)
        attributes = parsed.attributes
        return StoreResult(
            outcome,
            parsed.dataset_size,
            str(parsed.layout.transfer_syntax_uid),
            attributes.study_instance_uid,
            attributes.patient_id,
        )

    def _check_size(self, spool_size: int) -> None:
        """limits.max_dataset_size, for data sets that did not arrive over the network (the
        receive path stops writing long before: storage/incoming.py)."""
        limit = int(self.limits.max_dataset_size)
        if spool_size > limit + _MAX_FILE_META_SIZE:
            raise OutOfResources(f"data set larger than the maximum of {limit} bytes")

    def _write_file(
        self, incoming: IncomingInstance, parsed: ParsedInstance, spool: BinaryIO
    ) -> StoredFile:
        attributes = parsed.attributes
        head = encode_file_meta(
            attributes.sop_class_uid,
            attributes.sop_instance_uid,
            str(parsed.layout.transfer_syntax_uid),
            incoming.calling_ae_title,
        )
        directory = instance_directory(
            attributes.study_instance_uid, attributes.series_instance_uid
        )
        stem = uid_hash(attributes.sop_instance_uid)
        return self.files.write(directory, stem, head, spool, parsed.layout.dataset_offset)

    def _index(
        self, incoming: IncomingInstance, parsed: ParsedInstance, stored: StoredFile
    ) -> StoreOutcome:
        record = InstanceRecord(
            attributes=parsed.attributes,
            transfer_syntax_uid=str(parsed.layout.transfer_syntax_uid),
            file_path=stored.relative_path,
            file_size=stored.size,
            file_sha256=stored.sha256,
            received_at=datetime.now(UTC),
            calling_ae_title=incoming.calling_ae_title,
            header=parsed.header,
        )
        replace = self.duplicate_policy is DuplicatePolicy.OVERWRITE
        try:
            with _index_errors():
                result = self.writer.record(record, replace=replace)
        except CommitInDoubt as exc:
            # The row may exist and point to this file: keep it (an orphan for `pacsd fsck`
            # at worst), so that a resend under keep-first cannot find a row without a file.
            raise OutOfResources("index database failed while committing") from exc
        except BaseException:
            self.files.remove(stored.relative_path)
            raise
        if result.outcome is IngestOutcome.ALREADY_PRESENT:
            # Known already: the file just written goes (no read before the write, so that a
            # store costs one index transaction; duplicates are the rare case).
            self.files.remove(stored.relative_path)
            if self.duplicate_policy is DuplicatePolicy.REJECT:
                raise DuplicateRejected("SOP Instance UID already stored")
            return StoreOutcome.DUPLICATE_KEPT_FIRST
        if result.superseded_file_path is None:
            return StoreOutcome.STORED
        self.files.remove(result.superseded_file_path)
        return StoreOutcome.REPLACED


def _check_matches_request(incoming: IncomingInstance, parsed: ParsedInstance) -> None:
    """PS3.4 B.2.3: the data set must be the instance the C-STORE request announced."""
    attributes = parsed.attributes
    if attributes.sop_class_uid != incoming.sop_class_uid:
        raise DatasetMismatch("SOP Class UID differs from Affected SOP Class UID")
    if attributes.sop_instance_uid != incoming.sop_instance_uid:
        raise DatasetMismatch("SOP Instance UID differs from Affected SOP Instance")


@contextmanager
def _index_errors() -> Iterator[None]:
    """Turn an unreachable or failing index database into Out of Resources (peers retry)."""
    try:
        yield
    except OperationalError as exc:
        raise OutOfResources("index database unavailable") from exc
