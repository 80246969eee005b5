"""Crash consistency: SIGKILL pacsd at seeded random moments during parallel C-STOREs, restart
it, repeat; every instance that got 0x0000 must be indexed once with its intact file.

Rounds: PACSD_CRASH_ROUNDS (default 5 in CI); seed: PACSD_CRASH_SEED (default random, printed
so that a failure can be replayed). `python -m tests.perf.crash_soak` runs the same loop longer.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from tests import datagen
from tests.harness import DiskFiles, PacsdProcess, base_config, pacsd_command
from tests.inspect_archive import dataset_bytes, index_rows, work_files
from tests.scu import chunked_send

ROUNDS_ENV = "PACSD_CRASH_ROUNDS"
SEED_ENV = "PACSD_CRASH_SEED"
SENDERS = 3
INSTANCES_PER_SENDER = 40  # per round; more than a round can store at ~50/s
SERIES_SIZE = 25
KILL_AFTER_S = (0.2, 1.5)  # kill this long after the senders start (seeded uniform)
SENDER_TIMEOUT_S = 10.0
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


@dataclass
class CrashLoopResult:
    """What a crash loop did and found."""

    seed: int
    rounds: int = 0
    kills: int = 0
    acknowledged: dict[str, Path] = field(default_factory=dict)  # SOP Instance UID -> source
    attempts: int = 0
    failures_seen: int = 0  # C-STOREs without success: no response, abort, refused
    orphans: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the report."""
        return (
            f"crash loop seed={self.seed}: {self.rounds} rounds, {self.kills} SIGKILLs, "
            f"{self.attempts} C-STOREs sent, {len(self.acknowledged)} acknowledged, "
            f"{self.failures_seen} without success, {len(self.orphans)} orphan files "
            f"(unacknowledged writes) found by fsck, {len(self.problems)} problems"
        )


class _Sender(threading.Thread):
    """One SCU: stores its queue of files over one association until the server dies."""

    def __init__(self, server: PacsdProcess, queue: list[Path], result: CrashLoopResult) -> None:
        super().__init__(daemon=True)
        self.server, self.queue, self.result = server, queue, result
        self.lock = threading.Lock()

    def run(self) -> None:
        ae = AE(ae_title="CRASHSCU")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = SENDER_TIMEOUT_S
        ae.connection_timeout = SENDER_TIMEOUT_S
        ae.add_requested_context(CT_IMAGE, ExplicitVRLittleEndian)
        assoc = ae.associate(self.server.host, self.server.port, ae_title="PACSD")
        if not assoc.is_established:
            return
        try:
            while self.queue and assoc.is_established:
                if not self._store(assoc, self.queue[0]):
                    return  # the server is gone; the file is sent again next round
                self.queue.pop(0)
        finally:
            if assoc.is_established:
                assoc.abort()

    def _store(self, assoc: Any, source: Path) -> bool:
        with self.lock:
            self.result.attempts += 1
        try:
            response = assoc.send_c_store(source)
        except (RuntimeError, OSError):
            response = None
        status = int(response.Status) if response is not None and "Status" in response else None
        if status == 0x0000:
            with self.lock:
                self.result.acknowledged[_sop_instance_uid(source)] = source
            return True
        with self.lock:
            self.result.failures_seen += 1
        return False


def _sop_instance_uid(source: Path) -> str:
    return source.stem  # files are named after their SOP Instance UID


class _Sources:
    """Each sender's queue of files to store, topped up before every round."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.studies = [datagen.StudyContext(patient_id=f"CRASH-{n}") for n in range(SENDERS)]
        self.made = 0
        self.queues: list[list[Path]] = [[] for _ in range(SENDERS)]

    def top_up(self, per_sender: int) -> None:
        """Fill every queue to `per_sender` files (unacknowledged ones stay and are resent)."""
        for study, queue in zip(self.studies, self.queues, strict=True):
            while len(queue) < per_sender:
                self.made += 1
                if self.made % SERIES_SIZE == 1:
                    study.series_instance_uid = datagen.generate_uid(datagen.TEST_UID_ROOT)
                ds = datagen.ct_image(study, self.made, size=8)
                queue.append(datagen.write_part10(ds, self.folder / f"{ds.SOPInstanceUID}.dcm"))


def _start(config_path: Path) -> PacsdProcess:
    """A fresh server process on the same configuration (new port, same archive)."""
    return PacsdProcess(config_path=config_path).start()


def _check_work_folders_empty(storage_root: Path, result: CrashLoopResult) -> None:
    left = work_files(storage_root)
    if left:
        result.problems.append(f"work files left after restart: {left}")


def run_crash_loop(
    folder: Path,
    database_url: str | None,
    rounds: int,
    seed: int,
    per_sender: int = INSTANCES_PER_SENDER,
    log: Callable[[str], None] = print,
    storage: dict[str, Any] | None = None,
    read_stored: Callable[[str], bytes | None] | None = None,
) -> CrashLoopResult:
    """Store, SIGKILL at a random moment, restart, `rounds` times; then check the archive.
    `storage`: more storage settings (an object store); `read_stored`: a stored file's bytes
    by its relative path (None: missing), when they are not under the storage root."""
    chooser = random.Random(seed)
    result = CrashLoopResult(seed=seed)
    config = base_config(folder, database_url, storage={"min_free_space": "1MB", **(storage or {})})
    server = PacsdProcess.from_config(folder, config)
    sources = _Sources(folder / "sources")
    with chunked_send():
        for _ in range(rounds):
            sources.top_up(per_sender)
            server = _start(server.config_path)
            _check_work_folders_empty(server.storage_root, result)
            senders = [_Sender(server, queue, result) for queue in sources.queues]
            for sender in senders:
                sender.start()
            time.sleep(chooser.uniform(*KILL_AFTER_S))  # the seeded kill moment, not a sync
            server.kill()
            result.kills += 1
            result.rounds += 1
            for sender in senders:
                sender.join(SENDER_TIMEOUT_S * 3)
                if sender.is_alive():
                    result.problems.append("a sender did not stop after the kill")
            log(f"round {result.rounds}: {len(result.acknowledged)} acknowledged so far")
        server = _start(server.config_path)
        _check_work_folders_empty(server.storage_root, result)
        if server.stop() != 0:
            result.problems.append("pacsd did not stop cleanly after the loop")
    url = database_url or f"sqlite:///{folder / 'index.sqlite'}"
    _check_archive(server, url, result, read_stored)
    return result


def _check_archive(
    server: PacsdProcess,
    database_url: str,
    result: CrashLoopResult,
    read_stored: Callable[[str], bytes | None] | None = None,
) -> None:
    """Every acknowledged instance indexed once, file intact; fsck finds only orphans."""
    read = read_stored or DiskFiles(server.storage_root).read
    scratch = server.config_path.parent / "stored.dcm"
    rows = index_rows(database_url)
    by_uid: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_uid.setdefault(row["sop_instance_uid"], []).append(row)
    for uid, source in result.acknowledged.items():
        found = by_uid.get(uid, [])
        if len(found) != 1:
            result.problems.append(f"acknowledged {uid} indexed {len(found)} times")
            continue
        data = read(found[0]["file_path"])
        if data is None:
            result.problems.append(f"acknowledged {uid}: file missing")
        elif hashlib.sha256(data).hexdigest() != found[0]["file_sha256"]:
            result.problems.append(f"acknowledged {uid}: file differs from its checksum")
        elif scratch.write_bytes(data) and dataset_bytes(scratch) != dataset_bytes(source):
            result.problems.append(f"acknowledged {uid}: stored data set differs from sent")
    _check_with_fsck(server, result)


def _fsck(server: PacsdProcess, *args: str) -> tuple[int, dict[str, Any]]:
    run = pacsd_command(
        "fsck", "--config", str(server.config_path), "--json", "--min-age", "0", *args
    )
    return run.returncode, json.loads(run.stdout) if run.stdout else {"stderr": run.stderr}


def _check_with_fsck(server: PacsdProcess, result: CrashLoopResult) -> None:
    """fsck may find files whose row never committed (never acknowledged), nothing else."""
    _, report = _fsck(server)
    for problem in report.get("problems", []):
        if problem["kind"] != "orphan-file":
            result.problems.append(f"fsck: {problem}")
        else:
            result.orphans.append(problem)
    code, repaired = _fsck(server, "--repair")
    if code != 0:
        result.problems.append(f"fsck --repair exit {code}: {repaired}")
    code, after = _fsck(server)
    if code != 0 or not after.get("clean"):
        result.problems.append(f"fsck after --repair not clean: {after}")
    if after.get("instances", 0) < len(result.acknowledged):
        result.problems.append("fsck --repair removed acknowledged instances")


def _rounds() -> int:
    return int(os.environ.get(ROUNDS_ENV, "5"))


def _seed() -> int:
    return int(os.environ.get(SEED_ENV) or secrets.randbelow(2**32))


@pytest.mark.timeout(180)
def test_acknowledged_instances_survive_sigkill_at_random_moments(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL during parallel C-STOREs, restart, repeat: nothing acknowledged is lost or
    damaged, work folders are empty after each restart, fsck finds only unacknowledged files."""
    seed = _seed()
    with capsys.disabled():
        print(f"\ncrash loop: {ROUNDS_ENV}={_rounds()} {SEED_ENV}={seed}")
    result = run_crash_loop(tmp_path / "crash", database_url, _rounds(), seed, log=lambda _: None)
    with capsys.disabled():
        print(result.summary())
    assert result.problems == [], f"seed {seed}: {result.problems[:10]}"
    assert result.kills == _rounds()
    assert result.acknowledged, "no instance was acknowledged: the loop tested nothing"
