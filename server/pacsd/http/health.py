"""Readiness (`GET /readyz`) and the values /metrics reads at scrape time.

Ready means: the index database answers a trivial query, the storage root takes a new file and
has more free space than `storage.min_free_space`, and the DICOM listeners accept. The database
and the file system are asked in the HTTP side's own small executors, each answer bounded by a
timeout, so that a database that stops answering costs a blocked executor thread, never the
event loop; what did not answer in time is not ready.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from pacsd.http.metrics import Snapshot
from pacsd.index import queues
from pacsd.index.database import IndexDatabase
from pacsd.storage.base import InstanceStore

CHECK_TIMEOUT_S = 3.0
T = TypeVar("T")


@dataclass(frozen=True)
class Check:
    """One readiness check's outcome: what it found, or what is wrong."""

    ok: bool
    detail: dict[str, Any]


class Health:
    """The readiness checks of one process (the one serving HTTP)."""

    def __init__(
        self,
        index: IndexDatabase,
        files: InstanceStore,
        dicom_listening: Callable[[], bool],
        timeout: float = CHECK_TIMEOUT_S,
    ) -> None:
        self.index = index
        self.files = files
        self.dicom_listening = dicom_listening
        self.timeout = timeout
        # Bounded (STYLE): a hung database holds at most these threads; later checks time out.
        self.database_pool = ThreadPoolExecutor(2, thread_name_prefix="pacsd-http-db")
        self.file_pool = ThreadPoolExecutor(2, thread_name_prefix="pacsd-http-files")

    async def _bounded(self, pool: ThreadPoolExecutor, call: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(pool, call), self.timeout)

    async def ready(self) -> tuple[bool, dict[str, Any]]:
        """Whether this pacsd is ready, and each check's outcome (JSON-ready)."""
        database, storage = await asyncio.gather(self._database(), self._storage())
        dicom = Check(self.dicom_listening(), {})
        if not dicom.ok:
            dicom.detail["problem"] = "the DICOM listeners are closed (stopping)"
        checks = {"database": database, "storage": storage, "dicom": dicom}
        not_ready = [name for name, check in checks.items() if not check.ok]
        document = {
            "ready": not not_ready,
            "not_ready": not_ready,
            "checks": {name: {"ok": c.ok, **c.detail} for name, c in checks.items()},
        }
        return not not_ready, document

    async def _database(self) -> Check:
        try:
            await self._bounded(self.database_pool, lambda: queues.answers(self.index))
        except TimeoutError:
            return Check(False, {"problem": f"no answer within {self.timeout:g} s"})
        except Exception as exc:
            return Check(False, {"problem": _one_line(exc)})
        return Check(True, {"backend": self.index.backend})

    async def _storage(self) -> Check:
        try:
            return await self._bounded(self.file_pool, self._storage_now)
        except TimeoutError:
            return Check(False, {"problem": f"no answer within {self.timeout:g} s"})

    def _storage_now(self) -> Check:
        """Free space against the minimum, then a file created and removed in the root's
        temporary folder, where every received instance starts (blocking)."""
        files = self.files
        try:
            free = shutil.disk_usage(files.root).free
        except OSError as exc:
            return Check(False, {"problem": f"storage root unusable: {exc.strerror or exc}"})
        detail: dict[str, Any] = {"free_bytes": free, "min_free_bytes": files.min_free_space}
        if free < files.min_free_space:
            detail["problem"] = "free space below storage.min_free_space"
            return Check(False, detail)
        probe = files.tmp_dir / f"ready-{secrets.token_hex(8)}.probe"
        try:
            descriptor = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(descriptor, b"pacsd")
            finally:
                os.close(descriptor)
            os.unlink(probe)
        except OSError as exc:
            detail["problem"] = f"storage root not writable: {exc.strerror or exc}"
            return Check(False, detail)
        try:
            files.check_ready()  # an object store: a HEAD on its bucket
        except OSError as exc:
            detail["problem"] = f"storage not reachable: {_one_line(exc)}"
            return Check(False, detail)
        return Check(True, detail)

    async def in_file_pool(self, call: Callable[[], T]) -> T:
        """`call()` in the file executor, bounded by the check timeout."""
        return await self._bounded(self.file_pool, call)

    async def scrape_values(self) -> Snapshot:
        """The free space and queue depths for /metrics; None for what did not answer."""

        def free_space() -> int:
            return shutil.disk_usage(self.files.root).free

        async def depths() -> tuple[int, int] | None:
            try:
                return await self._bounded(
                    self.database_pool, lambda: queues.queue_depths(self.index)
                )
            except Exception:
                return None  # the database is down: /readyz says so; these gauges are absent

        async def free() -> int | None:
            try:
                return await self._bounded(self.file_pool, free_space)
            except Exception:
                return None

        queued, free_bytes = await asyncio.gather(depths(), free())
        commitment, ups_events = queued if queued is not None else (None, None)
        return Snapshot(free_bytes, commitment, ups_events)

    def close(self) -> None:
        """Let the executors' threads end (a hung check is left to finish by itself)."""
        self.database_pool.shutdown(wait=False, cancel_futures=True)
        self.file_pool.shutdown(wait=False, cancel_futures=True)


def _one_line(exc: BaseException) -> str:
    """An exception as one short line (database errors run over several, with SQL)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}"[:300]
