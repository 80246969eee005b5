"""storage/incoming.py: a received data set written once, its bytes kept in memory when small."""

from __future__ import annotations

from pathlib import Path

from pacsd.storage.incoming import KEEP_IN_MEMORY, IncomingFile


def test_a_small_data_set_is_kept_in_memory_as_written(tmp_path: Path) -> None:
    """What `contents` gives is the file's bytes, copied from fragments whose buffer is reused."""
    incoming = IncomingFile(tmp_path, b"META", 1 << 30, "1.2.840.10008.1.2.1")
    buffer = bytearray(b"abcd")
    incoming.write(memoryview(buffer))
    buffer[:] = b"efgh"  # the receive buffer is reused for the next fragment
    incoming.write(memoryview(buffer))
    incoming.close()
    assert incoming.contents() == incoming.path.read_bytes() == b"METAabcdefgh"
    assert incoming.size == 12


def test_a_larger_data_set_is_only_in_its_file(tmp_path: Path) -> None:
    """Beyond KEEP_IN_MEMORY the bytes are read back from the file, not held."""
    incoming = IncomingFile(tmp_path, b"META", 1 << 30)
    block = memoryview(b"x" * (64 * 1024))
    for _ in range(KEEP_IN_MEMORY // len(block) + 1):
        incoming.write(block)
    incoming.close()
    assert incoming.contents() is None
    assert incoming.path.stat().st_size == incoming.size > KEEP_IN_MEMORY


def test_a_refused_data_set_keeps_nothing(tmp_path: Path) -> None:
    """Over the limit: refused, nothing kept; a small one never had a file, a large one's
    file is emptied at once."""
    small = IncomingFile(tmp_path, b"META", 8)
    small.write(memoryview(b"0123456789"))
    small.close()
    assert small.refused is not None
    assert small.contents() is None
    assert not small.path.exists()

    large = IncomingFile(tmp_path, b"META", KEEP_IN_MEMORY + 10)
    large.write(memoryview(b"x" * KEEP_IN_MEMORY))  # beyond memory: now in its file
    assert large.path.stat().st_size == KEEP_IN_MEMORY + 4
    large.write(memoryview(b"0123456789A"))  # one byte over
    large.close()
    assert large.refused is not None
    assert large.path.stat().st_size == 0


def test_a_small_data_set_gets_its_file_when_made_durable(tmp_path: Path) -> None:
    """Held in memory as it arrives (no file on the event loop); `sync`, in the I/O thread,
    creates the file with every byte, and discarding it then removes it."""
    incoming = IncomingFile(tmp_path, b"META", 1 << 30)
    incoming.write(memoryview(b"data"))
    assert not incoming.path.exists()
    incoming.sync()
    incoming.close()
    assert incoming.path.read_bytes() == b"METAdata"
    incoming.discard()
    assert not incoming.path.exists()


def test_discard_removes_the_file_once_and_never_a_kept_one(tmp_path: Path) -> None:
    """Discarding twice removes the file once; after the storage moved it away, discarding
    touches nothing, not even a file that took its name since."""
    dropped = IncomingFile(tmp_path, b"META", 1 << 30)
    dropped.discard()
    assert not dropped.path.exists()
    dropped.path.write_bytes(b"another file of that name")
    dropped.discard()
    assert dropped.path.exists()

    kept = IncomingFile(tmp_path, b"META", 1 << 30)
    kept.close()
    kept.path.rename(tmp_path / "archived.dcm")
    kept.moved()
    kept.path.write_bytes(b"another file of that name")
    kept.discard()
    assert kept.path.exists()
    assert (tmp_path / "archived.dcm").read_bytes() == b"META"
