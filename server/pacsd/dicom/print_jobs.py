"""Print jobs kept on disk: one folder per film session that printed, under the print folder.

`<print folder>/<UTC date of its first print>/<Film Session SOP Instance UID>/` holds
`film-0001.png`, `film-0002.png`, ... (one per film printed, in order), `session.pdf` (every film
the session printed, one page each) and `job.json`, the record `pacsd print list` reads: who
printed, the film session's attributes (copies, priority, medium, destination, label, owner) and
each film (its file, film box, format, film size, orientation, densities, images). The UID is
checked to be a UID (digits and dots) before it names a folder; a second session that reuses it
on the same day gets a suffix. Each file is written whole or not at all (temporary file, fsync,
rename), so a crash leaves the previous version.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pacsd.storage.filesystem import PRINT_DIR

RECORD = "job.json"
FOLDER = PRINT_DIR  # under the storage root, unless print.folder says otherwise
PDF = "session.pdf"
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
_DATE = re.compile(r"^[0-9]{8}$")


def print_folder(configured: Path | None, storage_root: Path) -> Path:
    """Where print jobs are kept: `print.folder`, else <storage root>/print."""
    return configured if configured is not None else storage_root / FOLDER


def is_uid(text: str) -> bool:
    """True for a syntactically valid UID (PS3.5 9.1), at most 64 characters."""
    return len(text) <= 64 and _UID.match(text) is not None


def now() -> str:
    """The current UTC time, ISO 8601 with seconds."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class PrintJob:
    """One film session's output folder and its record."""

    folder: Path
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def films(self) -> list[dict[str, Any]]:
        """The films printed, in order."""
        films: list[dict[str, Any]] = self.record.setdefault("films", [])
        return films

    def next_film_path(self) -> Path:
        """Where the next film's PNG goes."""
        return self.folder / f"film-{len(self.films) + 1:04d}.png"

    def save(self) -> None:
        """Write the record whole (temporary file, fsync, rename, fsync of the folder)."""
        self.record["updated"] = now()
        partial = self.folder / f".{RECORD}.part"
        with partial.open("w", encoding="utf-8") as stream:
            json.dump(self.record, stream, indent=2, sort_keys=False)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(partial, self.folder / RECORD)
        sync_folder(self.folder)


def sync_folder(folder: Path) -> None:
    """fsync a directory, so that a rename in it survives a crash."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def open_job(root: Path, film_session_uid: str, record: dict[str, Any]) -> PrintJob:
    """A new job folder for a film session's first print (the day's folder made if needed)."""
    if not is_uid(film_session_uid):
        raise ValueError(f"{film_session_uid!r} is not a UID")
    day = root / datetime.now(UTC).strftime("%Y%m%d")
    day.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 1000):
        name = film_session_uid if attempt == 1 else f"{film_session_uid}-{attempt}"
        folder = day / name
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        sync_folder(day)
        return PrintJob(folder, {**record, "folder": str(folder)})
    raise FileExistsError(f"no free job folder for {film_session_uid} in {day}")


def read_jobs(root: Path) -> Iterator[dict[str, Any]]:
    """Every job record under `root`, newest day first; unreadable records are skipped."""
    if not root.is_dir():
        return
    days = sorted((entry for entry in root.iterdir() if _DATE.match(entry.name)), reverse=True)
    for day in days:
        records = []
        for folder in day.iterdir():
            try:
                records.append(json.loads((folder / RECORD).read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
        records.sort(key=lambda record: str(record.get("updated", "")), reverse=True)
        yield from records
