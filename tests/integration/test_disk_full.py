"""Disk full: on a real small file system (a tmpfs of a few MB as the storage root), a C-STORE
that finds no space answers 0xA700 and leaves nothing behind, and the server keeps serving.

Mounting needs root: the tests skip with the reason otherwise.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import pytest

from pacsd.errors import OutOfResources
from pacsd.storage.filesystem import FilesystemStore
from tests import datagen
from tests.harness import PacsdProcess, echo
from tests.inspect_archive import assert_index_matches_files, work_files
from tests.scu import associate, chunked_send, file_context, status_of, store_files

TMPFS_SIZE = "4m"
IMAGE_SIZE = 362  # 362 x 362 x 2 bytes: about 263 KB per instance, 15 fit in 4 MB
STORE_BOUND_S = 15.0  # a refused C-STORE answers well within this (no DIMSE timeout hang)
SCU_TIMEOUT_S = 5.0  # the parallel senders: a store takes well under a second here


def _mount_tmpfs(folder: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir(parents=True, exist_ok=True)
    command = ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder)]
    mounted = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")


def _resize(folder: Path, size: str) -> None:
    """Give the file system more room, as an operator adding space would."""
    command = ["mount", "-o", f"remount,size={size}", str(folder)]
    subprocess.run(command, capture_output=True, timeout=30, check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs where the first server of `pacsd_server` keeps its storage root."""
    root = tmp_path / "server0" / "storage"
    _mount_tmpfs(root, TMPFS_SIZE)
    try:
        yield root
    finally:
        if subprocess.run(["umount", str(root)], timeout=30, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(root)], timeout=30, check=False)


def _images(folder: Path, count: int) -> list[Path]:
    study = datagen.StudyContext()
    return [
        datagen.write_part10(datagen.ct_image(study, n, IMAGE_SIZE), folder / f"{n}.dcm")
        for n in range(1, count + 1)
    ]


def _assert_nothing_half_stored(server: PacsdProcess, database_url: str) -> None:
    assert work_files(server.storage_root) == [], "a temporary or spool file was left behind"
    assert_index_matches_files(database_url, server.storage_root)


def test_filesystem_write_hitting_enospc_raises_out_of_resources_and_removes_the_part(
    small_disk: Path,
) -> None:
    """The store's own write: ENOSPC mid-file becomes OutOfResources; no partial file stays."""
    store = FilesystemStore(small_disk, 0)
    store.prepare()
    too_big = io.BytesIO(b"\x5a" * (8 * 1024 * 1024))
    with pytest.raises(OutOfResources, match="storage is full"):
        store.write(PurePosixPath("aa", "bb"), "instance", b"DICM", too_big, 0)
    assert list(store.tmp_dir.iterdir()) == []
    assert not (small_disk / "aa" / "bb").exists() or not any((small_disk / "aa" / "bb").iterdir())
    assert shutil.disk_usage(small_disk).free > 4_000_000, "the space went back"


def test_store_until_the_disk_is_full_then_a700_and_recovery(
    small_disk: Path,
    pacsd_server: Callable[..., PacsdProcess],
    tmp_path: Path,
) -> None:
    """Stores succeed until the disk is full, then answer 0xA700 with nothing half-stored;
    C-ECHO still works, and once there is room again a C-STORE succeeds (no restart)."""
    url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    server = pacsd_server(url, storage={"min_free_space": 0})
    assert server.storage_root == small_disk
    sources = _images(tmp_path / "sources", 24)
    results = store_files(server.host, server.port, sources)
    statuses = [status for status, _ in results]
    stored = statuses.index(0xA700) if 0xA700 in statuses else len(statuses)
    assert stored >= 5, statuses
    assert statuses[:stored] == [0x0000] * stored
    assert set(statuses[stored:]) == {0xA700}, statuses
    _assert_nothing_half_stored(server, url)
    rows = assert_index_matches_files(url, server.storage_root)
    assert len(rows) == stored
    assert echo(server.host, server.port)

    _resize(small_disk, "16m")
    assert store_files(server.host, server.port, sources[stored : stored + 1]) == [(0x0000, "")]
    assert len(assert_index_matches_files(url, server.storage_root)) == stored + 1


def test_parallel_stores_racing_for_the_last_space_get_success_or_a700(
    small_disk: Path,
    pacsd_server: Callable[..., PacsdProcess],
    tmp_path: Path,
) -> None:
    """Three associations filling the disk at once (the free-space check cannot see what the
    others are about to write, so writes do hit ENOSPC, in the spool or in the store): each
    answer is 0x0000 or 0xA700, every success is indexed with its intact file, nothing partial
    remains."""
    url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    server = pacsd_server(url, storage={"min_free_space": 0})
    batches = [_images(tmp_path / f"sender{n}", 8) for n in range(3)]
    results: list[tuple[int | None, str]] = []

    timings: list[tuple[int | None, float]] = []

    def send(batch: list[Path]) -> None:
        contexts = [file_context(batch[0])]
        with associate(server.host, server.port, contexts, timeout=SCU_TIMEOUT_S) as assoc:
            for source in batch:
                started = time.monotonic()
                try:
                    response = assoc.send_c_store(source)
                except RuntimeError:  # aborted: the rest of this batch is never sent
                    response = None
                comment = str(response.get("ErrorComment", "")) if response else ""
                results.append((status_of(response), comment))
                timings.append((status_of(response), time.monotonic() - started))

    threads = [threading.Thread(target=send, args=(batch,)) for batch in batches]
    with chunked_send():
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(STORE_BOUND_S * 8)
    assert len(results) == 24
    assert max(took for _, took in timings) < SCU_TIMEOUT_S, "a C-STORE waited for a timeout"
    statuses = {status for status, _ in results}
    assert statuses <= {0x0000, 0xA700}, results
    assert 0xA700 in statuses
    acknowledged = sum(1 for status, _ in results if status == 0x0000)
    _assert_nothing_half_stored(server, url)
    assert len(assert_index_matches_files(url, server.storage_root)) == acknowledged
    assert echo(server.host, server.port)


def _spool_cannot_fit(
    small_disk: Path, pacsd_server: Callable[..., PacsdProcess], tmp_path: Path
) -> tuple[PacsdProcess, str, list[tuple[int | None, str]], float]:
    """Fill the disk to less than one instance, store one: (server, url, results, seconds)."""
    url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    server = pacsd_server(url, storage={"min_free_space": 0})
    source = _images(tmp_path / "sources", 1)
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - 100_000))
    started = time.monotonic()
    try:
        results = store_files(server.host, server.port, source)
    except ConnectionError:
        results = [(None, "association lost")]
    elapsed = time.monotonic() - started
    filler.unlink()
    return server, url, results, elapsed


def test_receiving_into_a_full_spool_fails_fast_and_cleans_up(
    small_disk: Path,
    pacsd_server: Callable[..., PacsdProcess],
    tmp_path: Path,
) -> None:
    """The write of a received data set (storage/incoming.py) hits ENOSPC: the C-STORE fails
    at once (no hang), no spool or temporary file stays, nothing is indexed, C-ECHO still works."""
    server, url, results, elapsed = _spool_cannot_fit(small_disk, pacsd_server, tmp_path)
    assert elapsed < STORE_BOUND_S
    assert results[0][0] != 0x0000
    _assert_nothing_half_stored(server, url)
    assert assert_index_matches_files(url, server.storage_root) == []
    assert echo(server.host, server.port)


def test_receiving_into_a_full_spool_answers_a700(
    small_disk: Path,
    pacsd_server: Callable[..., PacsdProcess],
    tmp_path: Path,
) -> None:
    """A spool that cannot take the data set answers Out of Resources, like a full store."""
    _, _, results, _ = _spool_cannot_fit(small_disk, pacsd_server, tmp_path)
    assert results[0][0] == 0xA700
