"""The archive keeps a spool that already carries pacsd's file meta as the stored file itself
(a hard link, no copy), and copies any other spool behind pacsd's file meta."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from pacsd.archive import Archive, IncomingInstance, StoreOutcome
from pacsd.dicom.part10 import IMPLEMENTATION_CLASS_UID, encode_file_meta, read_layout
from pacsd.index.database import IndexDatabase, create_index_engine
from pacsd.index.models import Instance
from pacsd.index.schema import ensure_schema
from pacsd.settings import DuplicatePolicy
from pacsd.storage.filesystem import FILE_MODE, FilesystemStore
from tests.datagen import StudyContext, ct_image, write_part10


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    index = IndexDatabase(create_index_engine(f"sqlite:///{tmp_path / 'index.sqlite'}"))
    ensure_schema(index.engine)
    files = FilesystemStore(tmp_path / "storage", 0)
    files.prepare()
    yield Archive(files, index, DuplicatePolicy.KEEP_FIRST)
    index.dispose()


def spool_with_pacsd_head(archive: Archive, name: str) -> tuple[Path, IncomingInstance, bytes]:
    """A spool as the receive path writes it: pacsd's file meta, then the data set."""
    dataset = ct_image(StudyContext(), size=16)
    source = write_part10(dataset, archive.files.root.parent / f"{name}-source.dcm")
    with source.open("rb") as fp:
        layout = read_layout(fp)
        fp.seek(layout.dataset_offset)
        body = fp.read()
    syntax = str(layout.transfer_syntax_uid)
    head = encode_file_meta(dataset.SOPClassUID, dataset.SOPInstanceUID, syntax, "CT1")
    spool = archive.files.spool_dir / f"{name}.dcm"
    spool.write_bytes(head + body)
    spool.chmod(0o600)  # as tempfile creates it
    incoming = IncomingInstance(spool, dataset.SOPClassUID, dataset.SOPInstanceUID, "CT1")
    return spool, incoming, head + body


def stored_path(archive: Archive, sop_instance_uid: str) -> Path:
    with archive.index.reading() as session:
        row = session.query(Instance).filter_by(sop_instance_uid=sop_instance_uid).one()
        assert (
            row.file_sha256
            == hashlib.sha256(archive.files.absolute(row.file_path).read_bytes()).hexdigest()
        )
        return archive.files.absolute(row.file_path)


def test_a_spool_with_pacsds_head_becomes_the_stored_file(archive: Archive) -> None:
    spool, incoming, content = spool_with_pacsd_head(archive, "a")
    assert archive.store(incoming).outcome is StoreOutcome.STORED
    stored = stored_path(archive, incoming.sop_instance_uid)
    assert os.path.samefile(spool, stored)  # linked, not copied
    assert stored.read_bytes() == content
    assert stat.S_IMODE(stored.stat().st_mode) == FILE_MODE
    spool.unlink()  # as the receive path does after the handler
    assert stored.read_bytes() == content


def test_a_spool_with_another_head_is_copied_behind_pacsds(archive: Archive) -> None:
    dataset = ct_image(StudyContext(), size=16)
    spool = write_part10(dataset, archive.files.spool_dir / "b.dcm")  # pydicom's file meta
    incoming = IncomingInstance(spool, dataset.SOPClassUID, dataset.SOPInstanceUID, "CT1")
    assert archive.store(incoming).outcome is StoreOutcome.STORED
    stored = stored_path(archive, incoming.sop_instance_uid)
    assert not os.path.samefile(spool, stored)
    meta = dcmread(stored, stop_before_pixels=True).file_meta
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert meta.SourceApplicationEntityTitle == "CT1"


def test_a_duplicate_spool_leaves_the_first_file_alone(archive: Archive) -> None:
    _, incoming, content = spool_with_pacsd_head(archive, "c")
    archive.store(incoming)
    first = stored_path(archive, incoming.sop_instance_uid)
    again = archive.files.spool_dir / "c-again.dcm"
    again.write_bytes(content)
    resend = IncomingInstance(again, incoming.sop_class_uid, incoming.sop_instance_uid, "CT1")
    assert archive.store(resend).outcome is StoreOutcome.DUPLICATE_KEPT_FIRST
    assert stored_path(archive, incoming.sop_instance_uid) == first
    assert first.read_bytes() == content
    assert again.exists()  # the spool is the receive path's to remove
    series_folder = first.parent
    assert [path.name for path in series_folder.iterdir()] == [first.name]
