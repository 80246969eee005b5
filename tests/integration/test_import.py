"""`pacsd import PATH...` (issue 19, "Missing tools 1"): a folder that mixes uncompressed and
compressed instances, a copy of one of them, a text file, a truncated and a header-less DICOM
file, plus a DICOMDIR whose files lie nowhere else; the real `pacsd import` command against a
real SQLite index and storage, then a real pacsd serving what it stored.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.fileset import FileSet
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from tests.compressed import write_instance
from tests.datagen import StudyContext, cr_image, ct_series, mr_image, write_part10
from tests.harness import (
    COMMAND_TIMEOUT_S,
    PacsdProcess,
    audit_records,
    base_config,
    pacsd_command,
)
from tests.inspect_archive import dataset_bytes, index_rows, stored_files
from tests.qr_scu import collect, identifier, qr_association

# Transfer syntax -> the image kind tests/compressed.py encodes in it.
SYNTAXES = {
    ImplicitVRLittleEndian: "mono16",
    DeflatedExplicitVRLittleEndian: "mono16",
    ExplicitVRBigEndian: "mono16",
    RLELossless: "mono16",
    JPEGLSLossless: "mono16",
    JPEG2000Lossless: "mono12",
    JPEGBaseline8Bit: "mono8",
}
POLL_S = 0.02


@dataclass
class MixedFolder:
    """What `make_mixed_folder` wrote: the paths to import and what each file should become."""

    arguments: list[Path]
    instances: dict[str, Path] = field(default_factory=dict)  # SOP Instance UID -> file
    duplicates: list[Path] = field(default_factory=list)
    refused: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)

    def total_bytes(self) -> int:
        """Bytes of every file imported."""
        files = [*self.instances.values(), *self.duplicates, *self.refused, *self.skipped]
        return sum(path.stat().st_size for path in files)


def make_mixed_folder(base: Path, plain: int = 6, size: int = 64) -> MixedFolder:
    """`base/mixed` (uncompressed CTs, one instance per transfer syntax of SYNTAXES, a copy, a
    text file, a truncated file, a data set without Part 10 header) and `base/media`, a
    DICOMDIR with its own three images; the arguments name `base/mixed` and the DICOMDIR."""
    mixed, media = base / "mixed", base / "media"
    folder = MixedFolder([mixed, media / "DICOMDIR"])
    for path in ct_series(mixed / "plain", plain, size):
        folder.instances[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
    for number, (syntax, kind) in enumerate(SYNTAXES.items()):
        path = mixed / "compressed" / f"{number:02d}-{syntax.name.replace(' ', '')}.dcm"
        write_instance(path, syntax, kind)
        folder.instances[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
    first = next(iter(folder.instances.values()))
    folder.duplicates.append(Path(shutil.copy(first, mixed / "copy-of-first.dcm")))
    notes = mixed / "README.txt"
    notes.write_text("scanned on the old PACS, 2019\n", encoding="utf-8")
    folder.skipped.append(notes)
    whole = write_part10(cr_image(StudyContext()), base / "whole.dcm")
    truncated = mixed / "truncated.dcm"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    implicit = write_part10(mr_image(StudyContext()), base / "implicit.dcm", ImplicitVRLittleEndian)
    headless = mixed / "headless.dcm"
    headless.write_bytes(
        implicit.read_bytes()[len(implicit.read_bytes()) - len(dataset_bytes(implicit)) :]
    )
    folder.refused += [truncated, headless]
    folder.skipped.append(media / "DICOMDIR")
    file_set = FileSet()
    study = StudyContext(patient_id="PAT-MEDIA")
    for number in range(1, 4):
        dataset = mr_image(study, number)
        write_part10(dataset, base / "staging" / f"mr{number}.dcm")
        file_set.add(base / "staging" / f"mr{number}.dcm")
    file_set.write(media)
    for path in media.rglob("*"):
        if path.is_file() and path.name != "DICOMDIR":
            uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            folder.instances[uid] = path
    return folder


@pytest.fixture
def server_folder(tmp_path: Path) -> Path:
    """A configuration (pacsd.yaml) for a server and imports confined to tmp_path/server."""
    PacsdProcess.from_config(tmp_path / "server", base_config(tmp_path / "server"))
    return tmp_path / "server"


@pytest.fixture
def started() -> Iterator[list[PacsdProcess]]:
    """Servers a test starts; stopped (by pid) whatever happens."""
    servers: list[PacsdProcess] = []
    yield servers
    for server in servers:
        if server.process is not None and server.process.poll() is None:
            server.stop()


def run_import(config: Path, *arguments: str | Path) -> tuple[int, dict[str, Any], str]:
    """`pacsd import --json`: exit status, summary, stderr."""
    result = pacsd_command("import", "--config", str(config), "--json", *map(str, arguments))
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout), result.stderr


def database_url(folder: Path) -> str:
    """The index database of `base_config(folder)`."""
    return f"sqlite:///{folder / 'index.sqlite'}"


def test_import_stores_each_instance_once_with_its_data_set_unchanged(
    tmp_path: Path, server_folder: Path, started: list[PacsdProcess]
) -> None:
    """Each DICOM instance of the mixed folder and of the DICOMDIR is stored once, in its own
    transfer syntax, its data set byte for byte; the copy is a duplicate, the text file and the
    DICOMDIR skipped, the truncated and header-less files refused with their reasons (exit 1);
    the summary says which database and storage root; a real pacsd then finds exactly those
    instances; the run is audited as Data Import. A dry run after it, and a second run, report
    everything as already there without writing."""
    folder = make_mixed_folder(tmp_path / "input")
    config = server_folder / "pacsd.yaml"
    code, summary, stderr = run_import(config, *folder.arguments)
    assert code == 1
    assert (
        f"database {database_url(server_folder)}, storage root {server_folder / 'storage'}"
        in stderr
    )
    counts = summary["counts"]
    assert counts == {
        "stored": len(folder.instances),
        "duplicate": len(folder.duplicates),
        "replaced": 0,
        "refused": len(folder.refused),
        "skipped": len(folder.skipped),
    }, summary
    assert summary["bytes"] == folder.total_bytes()
    refused = {Path(item["path"]).name: item["reason"] for item in summary["refused"]}
    assert set(refused) == {"truncated.dcm", "headless.dcm"}
    assert "(0xC000)" in refused["truncated.dcm"], refused
    assert "without the Part 10 header" in refused["headless.dcm"]
    skipped = {Path(item["path"]).name: item["reason"] for item in summary["skipped"]}
    assert skipped == {"README.txt": "not a DICOM file", "DICOMDIR": skipped["DICOMDIR"]}
    assert skipped["DICOMDIR"].startswith("DICOMDIR")

    rows = index_rows(database_url(server_folder))
    assert sorted(row["sop_instance_uid"] for row in rows) == sorted(folder.instances)
    storage = server_folder / "storage"
    for row in rows:
        original = folder.instances[row["sop_instance_uid"]]
        assert dataset_bytes(storage / row["file_path"]) == dataset_bytes(original), original
        assert row["transfer_syntax_uid"] == str(dcmread(original).file_meta.TransferSyntaxUID)
        assert row["calling_ae_title"] == "PACSD-IMPORT"
    assert len(stored_files(storage)) == len(rows), "no file beside the indexed ones"
    audit = audit_records(server_folder / "audit.jsonl")
    imports = [m for m in audit if m["EventIdentification"]["EventID"]["csd-code"] == "110107"]
    imported = sum(
        sum(c["NumberOfInstances"] for c in m["ParticipantObjectIdentification"][0]["SOPClass"])
        for m in imports
        if m["EventIdentification"]["EventActionCode"] == "C"
        and m["EventIdentification"]["EventOutcomeIndicator"] == 0
    )
    assert imported == len(folder.instances)

    server = PacsdProcess.from_config(server_folder, base_config(server_folder))
    started.append(server.start())
    with qr_association(server, [StudyRootQueryRetrieveInformationModelFind]) as assoc:
        query = identifier("STUDY", StudyInstanceUID="", NumberOfStudyRelatedInstances="")
        found = collect(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
    assert found.final_status == 0x0000
    assert sum(int(ds.NumberOfStudyRelatedInstances) for ds in found.pending()) == len(rows)

    dry = pacsd_command("import", "--config", str(config), "--dry-run", "--no-resume", "--json",
                        *map(str, folder.arguments))  # fmt: skip
    assert dry.returncode == 1, dry.stderr
    dry_counts = json.loads(dry.stdout)["counts"]
    assert dry_counts["duplicate"] == len(folder.instances) + len(folder.duplicates)
    assert dry_counts["stored"] == 0

    again = pacsd_command("import", "--config", str(config), *map(str, folder.arguments))
    assert again.returncode == 1, again.stderr
    done = len(folder.instances) + len(folder.duplicates) + len(folder.skipped)
    assert f"{done} files already done by an earlier run" in again.stdout, again.stdout
    assert f"truncated.dcm: {refused['truncated.dcm']}" in again.stdout
    assert "0 stored, 0 duplicate, 0 replaced, 2 refused, 0 skipped" in again.stdout
    assert len(index_rows(database_url(server_folder))) == len(rows)


def test_dry_run_writes_nothing(tmp_path: Path, server_folder: Path) -> None:
    """--dry-run reports what a real run would do (the same counts and reasons) and leaves no
    database, storage, journal or audit file behind."""
    folder = make_mixed_folder(tmp_path / "input")
    result = pacsd_command("import", "--config", str(server_folder / "pacsd.yaml"), "--dry-run",
                           "--json", *map(str, folder.arguments))  # fmt: skip
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert summary["dry_run"] is True
    assert summary["journal"] is None
    assert summary["counts"]["stored"] == len(folder.instances)
    assert summary["counts"]["duplicate"] == len(folder.duplicates)
    assert len(summary["refused"]) == len(folder.refused)
    assert sorted(p.name for p in server_folder.iterdir()) == ["pacsd.yaml"]


def wait_for_journal_lines(storage: Path, count: int, timeout: float) -> int:
    """Lines in the import journal under `storage`, once there are `count` (bounded wait)."""
    deadline = time.monotonic() + timeout
    lines = 0
    while time.monotonic() < deadline:
        journals = list((storage / ".tmp" / "import").glob("*.jsonl"))
        lines = len(journals[0].read_bytes().splitlines()) if journals else 0
        if lines >= count:
            return lines
        time.sleep(POLL_S)
    raise AssertionError(f"the journal has {lines} lines after {timeout} s, not {count}")


def test_import_killed_then_run_again_finishes_without_loss(
    tmp_path: Path, server_folder: Path
) -> None:
    """An import killed with SIGKILL part way resumes when run again: the files its journal
    lists are not read again, the one under way at most becomes a duplicate, and the index
    ends with each instance exactly once (an orphan file of the killed store at most)."""
    source = tmp_path / "input"
    paths = list(ct_series(source, 300, size=32))
    config = server_folder / "pacsd.yaml"
    environment = {**os.environ}
    environment.pop("PACSD_CONFIG", None)
    command = [sys.executable, "-m", "pacsd", "import", "--config", str(config), "--jobs", "1"]
    process = subprocess.Popen([*command, str(source)], env=environment,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        journaled = wait_for_journal_lines(server_folder / "storage", 30, timeout=30)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(COMMAND_TIMEOUT_S)
    assert process.returncode == -signal.SIGKILL
    assert journaled < len(paths), "the import finished before it was killed"

    code, summary, _ = run_import(config, source)
    assert code == 0
    counts = summary["counts"]
    assert summary["already_done"] >= journaled
    assert summary["already_done"] + counts["stored"] + counts["duplicate"] == len(paths)
    assert counts["duplicate"] <= 1, "only the file under way can have been stored unjournaled"
    rows = index_rows(database_url(server_folder))
    assert len(rows) == len({row["sop_instance_uid"] for row in rows}) == len(paths)
    assert len(stored_files(server_folder / "storage")) - len(rows) <= 1


def test_import_beside_a_running_server_loses_nothing(
    tmp_path: Path, server_folder: Path, started: list[PacsdProcess]
) -> None:
    """While `pacsd import` stores one study into a running pacsd's archive, storescu sends it
    another over DICOM: both studies end complete, files and index rows one to one."""
    imported = list(ct_series(tmp_path / "import", 120, size=32))
    sent = list(ct_series(tmp_path / "sent", 60, size=32))
    server = PacsdProcess.from_config(server_folder, base_config(server_folder))
    started.append(server.start())
    storescu = shutil.which("storescu")
    if storescu is None:
        pytest.skip("DCMTK's storescu is not installed")
    environment = {**os.environ}
    environment.pop("PACSD_CONFIG", None)
    command = [sys.executable, "-m", "pacsd", "import", "--config", str(server.config_path)]
    importer = subprocess.Popen([*command, "--jobs", "2", str(tmp_path / "import")],
                                env=environment, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        sender = subprocess.run(
            [
                storescu,
                "+sd",
                "+r",
                "-aet",
                "MODALITY",
                "-aec",
                "PACSD",
                server.host,
                str(server.port),
                str(tmp_path / "sent"),
            ],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
        out, err = importer.communicate(timeout=COMMAND_TIMEOUT_S)
    finally:
        if importer.poll() is None:
            importer.kill()
            importer.wait(10)
    assert sender.returncode == 0, sender.stderr
    assert importer.returncode == 0, err
    assert "120 stored" in out
    rows = index_rows(database_url(server_folder))
    uids = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in imported + sent}
    assert sorted(row["sop_instance_uid"] for row in rows) == sorted(uids)
    indexed = {row["file_path"] for row in rows}
    assert set(stored_files(server_folder / "storage")) == indexed
