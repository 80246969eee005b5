"""N-ACTION (print) of a Film Box or of a whole Film Session: films rendered into the session's
job folder (print_jobs.py) as PNGs, the session's PDF rewritten, the job record updated.

Statuses (PS3.4 H.4.1.2.4.2, H.4.2.2.4.2): an image that may be neither demagnified nor cropped
fails the whole action before anything is written (0xC603); a printer whose status is FAILURE
(print_status.py: free space under the print folder below `storage.min_free_space`, or a folder
that takes no files), or a full disk, cannot take the job: "unable to create Print Job SOP
Instance; print queue is full" (0xC601 for the session, 0xC602 for a film box), with the Printer
Status Info in the Error Comment; a film without images prints as an empty page with 0xB602
(session) or 0xB603 (film box); else the first placement warning (0xB604, 0xB609, 0xB60A).
"""

from __future__ import annotations

import errno
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pacsd.dicom.print_attributes import (
    FILM_BOX_EMPTY_PAGE,
    FILM_BOX_QUEUE_FULL,
    PROCESSING_FAILURE,
    SESSION_EMPTY_PAGE,
    SESSION_QUEUE_FULL,
    PrinterProfile,
    PrintRefused,
)
from pacsd.dicom.print_jobs import PDF, PrintJob, now, open_job
from pacsd.dicom.print_render import DensityRange, placements, render_film, save_pdf, save_png
from pacsd.dicom.print_session import FilmBox, FilmSession
from pacsd.dicom.print_status import PrinterStatus, printer_status

_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass(frozen=True)
class PrintOutput:
    """Where printed films go, the free space the storage keeps, and the free space below which
    the printer warns (None: twice `min_free_space`)."""

    folder: Path
    min_free_space: int = 0
    warning_free_space: int | None = None

    def status(self) -> PrinterStatus:
        """The printer's status now (print_status.py)."""
        warning = self.warning_free_space
        warning = 2 * self.min_free_space if warning is None else warning
        return printer_status(self.folder, self.min_free_space, warning)


@dataclass(frozen=True)
class Printed:
    """What an N-ACTION printed: its status and the new files (relative to the job folder)."""

    status: int
    folder: Path
    files: tuple[str, ...]


class FilmPrinter:
    """Renders and keeps films (one instance per pacsd process; no state of its own)."""

    def __init__(self, profile: PrinterProfile, output: PrintOutput) -> None:
        self.profile = profile
        self.output = output

    def print_films(
        self,
        session: FilmSession,
        films: Sequence[FilmBox],
        whole_session: bool,
        origin: Mapping[str, str],
    ) -> Printed:
        """Print `films` of `session` (all of them for a session's N-ACTION)."""
        profile = self.profile
        warnings = [
            placement.status
            for film in films
            for placement in placements(film.page(profile), film.contents(profile))
            if placement is not None and placement.status
        ]  # 0xC603 raised here, before anything is written
        full = SESSION_QUEUE_FULL if whole_session else FILM_BOX_QUEUE_FULL
        printer = self.output.status()
        if printer.failed:
            raise PrintRefused(full, f"printer {printer.info}: {printer.detail}")
        written: list[str] = []
        try:
            job = session.job or open_job(self.output.folder, session.uid, dict(origin))
            session.job = job
            try:
                for film in films:
                    written.append(self._print_one(job, session, film, whole_session))
                job.record["session"] = _session_record(session)
                if profile.pdf:
                    pages = [(job.folder / entry["file"], entry["dpi"]) for entry in job.films]
                    save_pdf(pages, job.folder / PDF, f"pacsd film session {session.uid}")
                    job.record["pdf"] = PDF
            finally:
                job.save()
        except OSError as exc:
            if exc.errno in _DISK_FULL:
                raise PrintRefused(full, f"print queue is full: {exc.strerror}") from None
            raise PrintRefused(PROCESSING_FAILURE, f"films not written: {exc}") from None
        empty = any(film.empty for film in films)
        status = (SESSION_EMPTY_PAGE if whole_session else FILM_BOX_EMPTY_PAGE) if empty else 0
        return Printed(status or (warnings[0] if warnings else 0), job.folder, tuple(written))

    def _print_one(
        self, job: PrintJob, session: FilmSession, film: FilmBox, whole_session: bool
    ) -> str:
        profile = self.profile
        page = film.page(profile)
        contents = film.contents(profile)
        densities = DensityRange(profile.min_density, profile.max_density)
        picture, _ = render_film(page, contents, densities)
        path = job.next_film_path()
        save_png(picture, path, page.dpi)
        attributes = film.attributes
        job.films.append(
            {
                "file": path.name,
                "printed": now(),
                "action": "film-session" if whole_session else "film-box",
                "film_box_uid": film.uid,
                "color": film.color,
                "copies": session.attributes.number_of_copies,
                "image_display_format": attributes.image_display_format,
                "film_orientation": attributes.film_orientation,
                "film_size_id": attributes.film_size_id,
                "magnification_type": attributes.magnification_type,
                "min_density": attributes.min_density,
                "max_density": attributes.max_density,
                "border_density": attributes.border_density,
                "empty_image_density": attributes.empty_image_density,
                "trim": attributes.trim,
                "requested_resolution_id": attributes.requested_resolution_id,
                "dpi": page.dpi,
                "width_px": page.size[0],
                "height_px": page.size[1],
                "image_boxes": len(film.image_boxes),
                "images": sum(1 for content in contents if content is not None),
            }
        )
        return path.name


def _session_record(session: FilmSession) -> dict[str, Any]:
    return {"created": session.created, **asdict(session.attributes)}


def job_header(
    film_session_uid: str, association_id: str, calling: str, called: str, peer: str
) -> dict[str, str]:
    """The first keys of a job record: the session and who printed."""
    return {
        "film_session_uid": film_session_uid,
        "association_id": association_id,
        "calling_ae_title": calling,
        "called_ae_title": called,
        "peer": peer,
        "created": now(),
    }
