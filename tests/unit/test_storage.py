"""The filesystem store: safe paths, atomic and durable writes, free-space refusal."""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path, PurePosixPath

import pytest

from pacsd.errors import OutOfResources
from pacsd.storage.filesystem import FilesystemStore, instance_directory, uid_hash
from pacsd.storage.incoming import KEEP_IN_MEMORY, IncomingFile

HOSTILE_UIDS = ["../../x", "a/b", "/etc/passwd", "..", "1.2.3\x00evil", "9" * 200, "", "ü.1"]


@pytest.fixture
def store(tmp_path: Path) -> FilesystemStore:
    """An empty, prepared store."""
    files = FilesystemStore(tmp_path / "storage", min_free_space=0)
    files.prepare()
    return files


@pytest.mark.parametrize("uid", HOSTILE_UIDS)
def test_paths_are_hashes_whatever_the_uid(uid: str) -> None:
    """Every path component is hex of fixed length: no traversal, no separators, no length."""
    directory = instance_directory(uid, uid)
    assert all(re.fullmatch(r"[0-9a-f]+", part) for part in directory.parts)
    assert [len(part) for part in directory.parts] == [2, 30, 32]
    assert re.fullmatch(r"[0-9a-f]{32}", uid_hash(uid))


def test_distinct_uids_get_distinct_paths() -> None:
    """Different series never share a directory, whatever their UIDs look like."""
    directories = {instance_directory("1.2.3", uid) for uid in HOSTILE_UIDS}
    assert len(directories) == len(HOSTILE_UIDS)


@pytest.mark.parametrize("uid", HOSTILE_UIDS)
def test_written_file_stays_under_the_root(store: FilesystemStore, uid: str) -> None:
    """Writing under hostile UIDs lands below the root and reads back identical."""
    stored = store.write(instance_directory(uid, uid), uid_hash(uid), b"HEAD", io.BytesIO(b"xy"), 1)
    path = store.absolute(stored.relative_path)
    assert path.is_relative_to(store.root)
    assert path.read_bytes() == b"HEADy"
    assert stored.size == 5
    assert stored.sha256 == hashlib.sha256(b"HEADy").hexdigest()


@pytest.mark.parametrize(
    "relative", ["../outside.dcm", "/etc/passwd", ".", "", "a/../../b", "ab/cd/../../../x.dcm"]
)
def test_absolute_refuses_paths_outside_the_root(store: FilesystemStore, relative: str) -> None:
    """A path from the index that leaves the root is refused, not opened or deleted."""
    with pytest.raises(ValueError, match="outside the storage root"):
        store.absolute(relative)


class FailingSource(io.BytesIO):
    """An input stream that breaks after some bytes, as a dropped disk or socket would."""

    def read(self, size: int | None = -1) -> bytes:
        if self.tell() > 0:
            raise OSError("input went away")
        return super().read(4)


def test_failed_write_leaves_no_partial_file(store: FilesystemStore) -> None:
    """If writing fails midway, neither the final file nor the temporary file remains."""
    directory = PurePosixPath("aa", "bb", "cc")
    with pytest.raises(OSError, match="input went away"):
        store.write(directory, "instance", b"HEAD", FailingSource(b"0123456789"), 0)
    assert list(store.tmp_dir.iterdir()) == []
    assert not (store.root / "aa").exists(), "nothing was placed in the store"


def test_every_write_gets_its_own_file(store: FilesystemStore) -> None:
    """The same bytes written twice (two associations, one instance) give two files."""
    directory = PurePosixPath("aa", "bb", "cc")
    first = store.write(directory, "i", b"H", io.BytesIO(b"data"), 0)
    second = store.write(directory, "i", b"H", io.BytesIO(b"data"), 0)
    assert first.relative_path != second.relative_path
    assert first.sha256 == second.sha256
    store.remove(second.relative_path)
    assert store.absolute(first.relative_path).read_bytes() == b"Hdata"
    assert list(store.tmp_dir.iterdir()) == []


@pytest.mark.parametrize("size", [100, KEEP_IN_MEMORY + 1])
def test_keep_puts_a_received_file_in_place_whole_and_closed(
    store: FilesystemStore, size: int
) -> None:
    """A received data set, held in memory or already in its file, ends at its final path
    with every byte and the SHA-256 of them; nothing stays in .tmp, no descriptor stays open,
    and discarding it afterwards (as every request's end does) leaves the kept file alone."""
    incoming = IncomingFile(store.tmp_dir, b"HEAD", 1 << 30)
    payload = bytes(range(256)) * (size // 256 + 1)
    incoming.write(memoryview(payload[:size]))
    kept = store.keep(incoming, PurePosixPath("aa", "bb", "cc"), "instance")
    incoming.discard()
    stored = store.absolute(kept.relative_path).read_bytes()
    assert stored == b"HEAD" + payload[:size]
    assert kept.size == len(stored)
    assert kept.sha256 == hashlib.sha256(stored).hexdigest()
    assert incoming.descriptor == -1
    assert list(store.tmp_dir.iterdir()) == []


def test_prepare_removes_leftovers_of_an_interrupted_run(tmp_path: Path) -> None:
    """Temporary and spool files from a crash are removed at start-up; stored files stay."""
    files = FilesystemStore(tmp_path / "storage", min_free_space=0)
    files.prepare()
    (files.tmp_dir / "x.part").write_bytes(b"half")
    (files.spool_dir / "tmp1.dcm").write_bytes(b"half")
    kept = files.write(PurePosixPath("aa", "bb", "cc"), "i", b"H", io.BytesIO(b"d"), 0)
    assert files.prepare() == 2
    assert list(files.tmp_dir.iterdir()) == list(files.spool_dir.iterdir()) == []
    assert files.absolute(kept.relative_path).read_bytes() == b"Hd"


def test_free_space_below_minimum_is_out_of_resources(tmp_path: Path) -> None:
    """The minimum free space is enforced before writing (0xA700)."""
    files = FilesystemStore(tmp_path, min_free_space=10**18)
    with pytest.raises(OutOfResources) as caught:
        files.ensure_free_space(1000)
    assert caught.value.status == 0xA700
    FilesystemStore(tmp_path, min_free_space=0).ensure_free_space(1000)


def test_remove_deletes_and_tolerates_absence(store: FilesystemStore) -> None:
    """remove() makes a file absent, whether or not it was there."""
    stored = store.write(PurePosixPath("aa", "bb", "cc"), "i", b"H", io.BytesIO(b"d"), 0)
    store.remove(stored.relative_path)
    store.remove(stored.relative_path)
    assert not store.absolute(stored.relative_path).exists()
