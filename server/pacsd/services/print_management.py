"""Print Management SCP (PS3.4 Annex H): a printer that prints films into files.

Served on the Basic Grayscale and Basic Color Print Management Meta SOP Classes' contexts:
Basic Film Session (N-CREATE, N-SET, N-ACTION, N-DELETE), Basic Film Box (N-CREATE, N-SET,
N-ACTION, N-DELETE), Basic Grayscale / Color Image Box (N-SET) and Printer (N-GET, and the
N-EVENT-REPORT of its status below); on their own contexts, Presentation LUT (N-CREATE,
N-DELETE) and Printer Configuration Retrieval (N-GET). A request a SOP class does not define
answers 0x0211 (H.4: each class's DIMSE Service Group).
pacsd creates no Print Job and no Annotation Box instance, so their requests name no instance
(0x0112).

The objects of an association live in memory (dicom/print_session.PrintState) and end with it;
printing writes PNG and PDF files and a job record under the print folder (dicom/print_output).

The Printer's status comes from the print folder (dicom/print_status: NORMAL, WARNING SUPPLY
LOW, FAILURE SUPPLY EMPTY or PRINTER DOWN); its N-GET answers it as it is now. The SCP reports
each change of it with an N-EVENT-REPORT to the SCUs whose associations use the printer
(H.4.6.2.1.2). pacsd looks when a film session or film box prints: each association that has
sent a print request here was last told NORMAL (at its start) or what its last report said, and
hears of the new status when it differs. The report goes through `PrinterEvents`, which the
engine implements: on the association's Print Management Meta SOP Class context, where pacsd is
the SCP, the side that sends N-EVENT-REPORT (no role selection), and on the printing
association only after the N-ACTION's response. A peer that does not acknowledge it is logged;
nothing is retried, and the print's answer does not depend on it.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from pacsd import __version__
from pacsd.dicom.part10 import IMPLEMENTATION_CLASS_UID
from pacsd.dicom.print_attributes import (
    COLOR_IMAGE_BOX,
    FILM_BOX,
    FILM_SESSION,
    GRAYSCALE_IMAGE_BOX,
    MAGNIFICATION_TYPES,
    NO_FILM_BOX,
    NO_SUCH_ACTION,
    PRESENTATION_LUT,
    PRINT_ACTION,
    PRINTER_CLASS,
    PRINTER_CONFIGURATION,
    PRINTER_INSTANCE,
    PROCESSING_FAILURE,
    UNRECOGNIZED_OPERATION,
    PrinterProfile,
    PrintRefused,
)
from pacsd.dicom.print_jobs import print_folder
from pacsd.dicom.print_output import FilmPrinter, PrintOutput, job_header
from pacsd.dicom.print_session import FilmBox, FilmSession, PrintState
from pacsd.dicom.print_status import NORMAL, READY, PrinterStatus
from pacsd.dicom.sop_classes import BASIC_COLOR_PRINT_META, BASIC_GRAYSCALE_PRINT_META
from pacsd.dimse.commands import (
    ACTION_TYPE_ID,
    ATTRIBUTE_IDENTIFIER_LIST,
    N_ACTION_RQ,
    N_CREATE_RQ,
    N_DELETE_RQ,
    N_GET_RQ,
    N_SET_RQ,
)
from pacsd.dimse.messages import Request
from pacsd.handle import ClientHandle
from pacsd.logs import get_logger
from pacsd.services.guard import Operation, OperationResult
from pacsd.settings import Settings

UID_ROOT = f"{IMPLEMENTATION_CLASS_UID}.5."
_IMAGE_BOXES = (GRAYSCALE_IMAGE_BOX, COLOR_IMAGE_BOX)
_ENDED = frozenset({"released", "aborted", "rejected"})

log = get_logger("pacsd.print")


def _refuse_operation(request: Request) -> PrintRefused:
    return PrintRefused(
        UNRECOGNIZED_OPERATION, f"{request.name} is not a service of {request.sop_class_uid}"
    )


def _attributes(request: Request) -> Dataset:
    """The request's attribute list (an empty one when it has none)."""
    if not isinstance(request.data, bytes) or not request.data:
        return Dataset()
    try:
        dataset = request.dataset()
        dataset.decode()
    except Exception as exc:
        raise PrintRefused(PROCESSING_FAILURE, f"attribute list cannot be decoded: {exc}") from None
    return dataset


class PrinterEvents(Protocol):
    """How the engine sends a Printer N-EVENT-REPORT to an SCU (PS3.4 H.4.6.2.1)."""

    def report(
        self,
        association_id: str,
        event_type: int,
        information: Dataset | None,
        after_message_id: int | None,
    ) -> None:
        """Send it on that (acceptor) association, once the response to its request
        `after_message_id` (None: no request to wait for) is on the wire. Returns at once: the
        engine sends, waits for the N-EVENT-REPORT-RSP and logs what went wrong."""
        ...


def event_information(printer: PrinterStatus, printer_name: str) -> Dataset | None:
    """PS3.4 H.4.6.2.1.1: Warning and Failure carry Printer Status Info (and, type 3, Printer
    Name); Normal carries nothing."""
    if printer.status == NORMAL:
        return None
    ds = Dataset()
    ds.PrinterStatusInfo = printer.info
    ds.PrinterName = printer_name
    return ds


class PrintService:
    """The Print Management SCP's N-services; one `PrintState` per association."""

    def __init__(self, profile: PrinterProfile, output: PrintOutput) -> None:
        self.profile = profile
        self.output = output
        self.printer = FilmPrinter(profile, output)
        self.events: PrinterEvents | None = None  # the engine's, set before it serves
        self._states: dict[str, PrintState] = {}
        self._handles: dict[str, weakref.ref[ClientHandle]] = {}
        self._told: dict[str, PrinterStatus] = {}  # the printer status each association knows
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> PrintService:
        """The service `settings` describe: its `print` section, the print folder under the
        storage root unless `print.folder` names one, and the storage's free space to keep."""
        section = settings.print
        profile = PrinterProfile(
            name=section.printer_name,
            standard_dpi=section.standard_dpi,
            high_dpi=section.high_dpi,
            film_size_id=section.film_size_id,
            medium_type=section.medium_type,
            magnification_type=section.magnification_type,
            border_density=section.border_density,
            empty_image_density=section.empty_image_density,
            min_density=section.min_density,
            max_density=section.max_density,
            max_session_memory=int(section.max_session_memory),
            pdf=section.pdf,
        )
        folder = print_folder(section.folder, settings.storage.root)
        warning = section.warning_free_space
        output = PrintOutput(
            folder,
            int(settings.storage.min_free_space),
            None if warning is None else int(warning),
        )
        return cls(profile, output)

    def routes(self) -> dict[tuple[int, str], Operation]:
        """The engine's routes to this service (Services.simple)."""
        return {
            (N_CREATE_RQ, "print"): self.on_n_create,
            (N_SET_RQ, "print"): self.on_n_set,
            (N_ACTION_RQ, "print"): self.on_n_action,
            (N_DELETE_RQ, "print"): self.on_n_delete,
            (N_GET_RQ, "print"): self.on_n_get,
        }

    @contextmanager
    def _state(self, request: Request, handle: ClientHandle) -> Iterator[PrintState]:
        """The association's print objects, locked for one operation."""
        with self._lock:
            self._forget_ended()
            state = self._states.get(handle.association_id)
            if state is None:
                state = PrintState(self.profile, UID_ROOT)
                self._states[handle.association_id] = state
                self._handles[handle.association_id] = weakref.ref(handle)
                self._told[handle.association_id] = READY  # PS3.4 H.4.6.2.1: changes are told
                weakref.finalize(handle, self._discard, handle.association_id)
        with state.lock:
            state.little_endian = bool(UID(request.context.transfer_syntax).is_little_endian)
            yield state

    def _discard(self, association_id: str) -> None:
        """The handle is gone (garbage collected): so are its objects. No lock: this may run
        in any thread, even one holding `_lock`; dict.pop is atomic."""
        self._handles.pop(association_id, None)
        self._told.pop(association_id, None)
        _ended(association_id, self._states.pop(association_id, None))

    def _forget_ended(self) -> None:
        """Drop the objects of associations that ended (PS3.4 H.4.1: with the association)."""
        for association_id, reference in list(self._handles.items()):
            handle = reference()
            if handle is not None and handle.state not in _ENDED:
                continue
            self._handles.pop(association_id, None)
            self._told.pop(association_id, None)
            _ended(association_id, self._states.pop(association_id, None))

    def on_n_create(self, request: Request, handle: ClientHandle) -> OperationResult:
        """N-CREATE of a Film Session, a Film Box or a Presentation LUT."""
        sop_class, requested = request.sop_class_uid, request.sop_instance_uid
        if sop_class not in (FILM_SESSION, FILM_BOX, PRESENTATION_LUT):
            raise _refuse_operation(request)
        attributes = _attributes(request)
        with self._state(request, handle) as state:
            if sop_class == FILM_SESSION:
                session, status = state.create_session(requested, attributes)
                handle.log.info("film session created", film_session_uid=session.uid)
                return OperationResult(
                    status, dataset=_session_dataset(session), affected_sop_instance_uid=session.uid
                )
            if sop_class == FILM_BOX:
                color = request.context.abstract_syntax == BASIC_COLOR_PRINT_META
                film_box, status = state.create_film_box(requested, attributes, color)
                assert state.session is not None
                dataset = _film_box_dataset(film_box, state.session.uid)
                return OperationResult(
                    status, dataset=dataset, affected_sop_instance_uid=film_box.uid
                )
            uid = state.create_lut(requested, attributes)
            return OperationResult(0x0000, affected_sop_instance_uid=uid)

    def on_n_set(self, request: Request, handle: ClientHandle) -> OperationResult:
        """N-SET of the Film Session, a Film Box or an Image Box."""
        sop_class, uid = request.sop_class_uid, request.sop_instance_uid
        if sop_class not in (FILM_SESSION, FILM_BOX, *_IMAGE_BOXES):
            raise _refuse_operation(request)
        attributes = _attributes(request)
        with self._state(request, handle) as state:
            if sop_class == FILM_SESSION:
                session, status = state.set_session(uid, attributes)
                return OperationResult(status, dataset=_session_dataset(session))
            if sop_class == FILM_BOX:
                film_box, status = state.set_film_box(uid, attributes)
                assert state.session is not None
                dataset = _film_box_dataset(film_box, state.session.uid, with_boxes=False)
                return OperationResult(status, dataset=dataset)
            box, status = state.set_image_box(uid, sop_class, attributes)
            return OperationResult(status, outcome=f"image box {box.position} set")

    def on_n_action(self, request: Request, handle: ClientHandle) -> OperationResult:
        """N-ACTION print (Action Type ID 1) of the Film Session or of a Film Box."""
        sop_class, uid = request.sop_class_uid, request.sop_instance_uid
        if sop_class not in (FILM_SESSION, FILM_BOX):
            raise _refuse_operation(request)
        action = request.command.number(ACTION_TYPE_ID)
        if action != PRINT_ACTION:
            raise PrintRefused(NO_SUCH_ACTION, f"action type {action} (only 1: print)")
        try:
            with self._state(request, handle) as state:
                films: list[FilmBox]
                if sop_class == FILM_SESSION:
                    session = state.film_session(uid)
                    films = list(session.film_boxes.values())
                    if not films:
                        raise PrintRefused(NO_FILM_BOX, "the film session has no film box")
                else:
                    films = [state.film_box(uid)]
                    assert state.session is not None
                    session = state.session
                printed = self.printer.print_films(
                    session, films, sop_class == FILM_SESSION, self._origin(session, handle)
                )
        finally:
            self._tell_status(request, handle)  # printed or not: the printer was used
        handle.log.info(
            "films printed",
            film_session_uid=session.uid,
            films=list(printed.files),
            folder=str(printed.folder),
            copies=session.attributes.number_of_copies,
        )
        return OperationResult(printed.status, outcome=f"{len(printed.files)} film(s) printed")

    def _tell_status(self, request: Request, handle: ClientHandle) -> None:
        """PS3.4 H.4.6.2.1.2: tell each association using the printer of a change of its status;
        on `handle`'s own, after the response to `request`."""
        now = self.output.status()
        with self._lock:
            self._forget_ended()
            told = [aid for aid, known in list(self._told.items()) if known != now]
            for association_id in told:
                self._told[association_id] = now
        if not told:
            return
        handle.log.info(
            "printer status changed",
            printer_status=now.status,
            printer_status_info=now.info,
            detail=now.detail,
            associations=len(told),
        )
        events = self.events
        if events is None:
            return
        information = event_information(now, self.profile.name)
        for association_id in told:
            after = request.message_id if association_id == handle.association_id else None
            events.report(association_id, now.event_type, information, after)

    @staticmethod
    def _origin(session: FilmSession, handle: ClientHandle) -> dict[str, str]:
        peer = f"{handle.peer_address}:{handle.peer_port}"
        calling, called = handle.calling_ae_title, handle.called_ae_title
        return job_header(session.uid, handle.association_id, calling, called, peer)

    def on_n_delete(self, request: Request, handle: ClientHandle) -> OperationResult:
        """N-DELETE of the Film Session, a Film Box or a Presentation LUT."""
        sop_class, uid = request.sop_class_uid, request.sop_instance_uid
        if sop_class not in (FILM_SESSION, FILM_BOX, PRESENTATION_LUT):
            raise _refuse_operation(request)
        with self._state(request, handle) as state:
            if sop_class == FILM_SESSION:
                state.delete_session(uid)
                handle.log.info("film session deleted", film_session_uid=uid)
            elif sop_class == FILM_BOX:
                state.delete_film_box(uid)
            else:
                state.delete_lut(uid)
        return OperationResult(0x0000)

    def on_n_get(self, request: Request, handle: ClientHandle) -> OperationResult:
        """N-GET of the Printer (H.4.6) or of the Printer Configuration (H.4.11)."""
        sop_class, uid = request.sop_class_uid, request.sop_instance_uid
        if sop_class not in (PRINTER_CLASS, PRINTER_CONFIGURATION):
            raise _refuse_operation(request)
        with self._state(request, handle) as state:
            state.check_instance(uid, sop_class)
        if uid == PRINTER_INSTANCE:
            everything = self._printer_dataset(self.output.status())
        else:
            everything = self._configuration_dataset()
        wanted = request.command.tags(ATTRIBUTE_IDENTIFIER_LIST)
        return OperationResult(0x0000, dataset=_selected(everything, wanted))

    def _printer_dataset(self, printer: PrinterStatus) -> Dataset:
        """PS3.4 H.4.6.2.2 (Printer N-GET): the status now; a file printer has no calibration."""
        ds = Dataset()
        ds.PrinterStatus = printer.status
        ds.PrinterStatusInfo = printer.info
        ds.PrinterName = self.profile.name
        ds.Manufacturer = "pacsd"
        ds.ManufacturerModelName = "pacsd file printer"
        ds.DeviceSerialNumber = ""
        ds.SoftwareVersions = __version__
        ds.DateOfLastCalibration = ""
        ds.TimeOfLastCalibration = ""
        return ds

    def _configuration_dataset(self) -> Dataset:
        """PS3.4 Table H.4-26: one item per Meta SOP Class this printer serves."""
        profile = self.profile
        items = []
        for meta in (BASIC_GRAYSCALE_PRINT_META, BASIC_COLOR_PRINT_META):
            item = Dataset()
            item.SOPClassesSupported = [meta, PRESENTATION_LUT, PRINTER_CONFIGURATION]
            item.MaximumMemoryAllocation = 0  # Memory Allocation is not supported
            item.MemoryBitDepth = 16 if meta == BASIC_GRAYSCALE_PRINT_META else 8
            item.PrintingBitDepth = 8
            medium = Dataset()
            medium.ItemNumber = 1
            medium.MediumType = profile.medium_type
            medium.FilmSizeID = profile.film_size_id
            medium.MinDensity = profile.min_density
            medium.MaxDensity = profile.max_density
            item.MediaInstalledSequence = Sequence([medium])
            item.OtherMediaAvailableSequence = Sequence()
            item.SupportedImageDisplayFormatsSequence = Sequence()  # any STANDARD, ROW, COL
            item.DefaultMagnificationType = profile.magnification_type
            item.OtherMagnificationTypesAvailable = [
                kind for kind in MAGNIFICATION_TYPES if kind != profile.magnification_type
            ]
            item.DefaultPrinterResolutionID = "STANDARD"
            item.MaximumCollatedFilms = 0  # no limit
            item.DecimateCropResult = "DECIMATE"
            items.append(item)
        ds = Dataset()
        ds.PrinterConfigurationSequence = Sequence(items)
        return ds


def _ended(association_id: str, state: PrintState | None) -> None:
    """Log the end of an association's film session (whoever dropped its objects first)."""
    if state is not None and state.session is not None:
        log.info(
            "film session ended with its association",
            association_id=association_id,
            film_session_uid=state.session.uid,
            film_boxes=len(state.session.film_boxes),
        )


def _selected(everything: Dataset, wanted: tuple[int, ...]) -> Dataset:
    """N-GET: the attributes asked for (all when the list is empty); one the object lacks comes
    back empty when the dictionary knows its VR."""
    if not wanted:
        return everything
    result = Dataset()
    for tag in wanted:
        if tag in everything:
            result[tag] = everything[tag]
        else:
            try:
                result.add_new(tag, dictionary_VR(tag), None)
            except KeyError:
                continue
    return result


def _session_dataset(session: FilmSession) -> Dataset:
    """The Film Session's attributes as in force (the N-CREATE / N-SET response)."""
    values = session.attributes
    ds = Dataset()
    ds.NumberOfCopies = values.number_of_copies
    ds.PrintPriority = values.print_priority
    ds.MediumType = values.medium_type
    ds.FilmDestination = values.film_destination
    if values.film_session_label:
        ds.FilmSessionLabel = values.film_session_label
    if values.owner_id:
        ds.OwnerID = values.owner_id
    return ds


def _film_box_dataset(film_box: FilmBox, session_uid: str, with_boxes: bool = True) -> Dataset:
    """The Film Box's attributes as in force; after N-CREATE with the Referenced Image Box
    Sequence, one item per Image Box by position (PS3.4 H.4.2.2.1)."""
    values = film_box.attributes
    ds = Dataset()
    ds.ImageDisplayFormat = values.image_display_format
    ds.FilmOrientation = values.film_orientation
    ds.FilmSizeID = values.film_size_id
    ds.MagnificationType = values.magnification_type
    ds.MaxDensity = values.max_density
    ds.MinDensity = values.min_density
    ds.BorderDensity = values.border_density
    ds.EmptyImageDensity = values.empty_image_density
    ds.Trim = values.trim
    ds.RequestedResolutionID = values.requested_resolution_id
    session = Dataset()
    session.ReferencedSOPClassUID = FILM_SESSION
    session.ReferencedSOPInstanceUID = session_uid
    ds.ReferencedFilmSessionSequence = Sequence([session])
    if values.presentation_lut_uid:
        lut = Dataset()
        lut.ReferencedSOPClassUID = PRESENTATION_LUT
        lut.ReferencedSOPInstanceUID = values.presentation_lut_uid
        ds.ReferencedPresentationLUTSequence = Sequence([lut])
    if values.illumination is not None:
        ds.Illumination = values.illumination
    if values.reflected_ambient_light is not None:
        ds.ReflectedAmbientLight = values.reflected_ambient_light
    if with_boxes:
        references = []
        for box in film_box.image_boxes:
            item = Dataset()
            item.ReferencedSOPClassUID = box.sop_class
            item.ReferencedSOPInstanceUID = box.uid
            references.append(item)
        ds.ReferencedImageBoxSequence = Sequence(references)
    return ds
