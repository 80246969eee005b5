"""Print Management (PS3.4 H) against a real pacsd, with pynetdicom as the print SCU.

A whole grayscale session (Printer N-GET, Film Session, Film Box STANDARD\\2,2, four Image Boxes,
N-ACTION on the film box and on the session, N-DELETE) printed into PNGs whose tiles show the
images sent, a PDF with a page per film, and `pacsd print list`; a color session; Presentation
LUTs; the film session gone with its association; each validation status with its Attribute
Identifier List or Error Comment; and the printer's status, read from its print folder, answered
by N-GET and reported by N-EVENT-REPORT after the print that found it changed.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image, PdfParser
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.association import Association

from tests.conftest import ServerFactory
from tests.datagen import TEST_UID_ROOT
from tests.harness import VERIFICATION, PacsdProcess, pacsd_command

GRAY_META = "1.2.840.10008.5.1.1.9"
COLOR_META = "1.2.840.10008.5.1.1.18"
FILM_SESSION = "1.2.840.10008.5.1.1.1"
FILM_BOX = "1.2.840.10008.5.1.1.2"
GRAY_BOX = "1.2.840.10008.5.1.1.4"
COLOR_BOX = "1.2.840.10008.5.1.1.4.1"
PRINTER = "1.2.840.10008.5.1.1.16"
PRINTER_INSTANCE = "1.2.840.10008.5.1.1.17"
PRESENTATION_LUT = "1.2.840.10008.5.1.1.23"
PRINTER_CONFIGURATION = "1.2.840.10008.5.1.1.16.376"
PRINTER_CONFIGURATION_INSTANCE = "1.2.840.10008.5.1.1.17.376"
PRINT_JOB = "1.2.840.10008.5.1.1.14"
ANNOTATION_BOX = "1.2.840.10008.5.1.1.15"
TIMEOUT_S = 30
REPORT_WAIT_S = 15  # a report follows its print's response at once; this bounds the wait
QUIET_S = 1.5  # no report within this after a print: none was sent
N_ACTION_RSP, N_EVENT_REPORT_RQ = 0x8130, 0x0100


def policies() -> list[dict[str, Any]]:
    """Printing for everyone; the METAONLY peer's rule names the grayscale meta class alone."""
    return [
        {
            "name": "meta-only",
            "match": {"calling_ae": "METAONLY"},
            "sop_classes": ["verification", GRAY_META],
        },
        {"name": "printing", "sop_classes": ["verification", "print"]},
    ]


@pytest.fixture
def server(pacsd_server: ServerFactory, database_url: str) -> PacsdProcess:
    return pacsd_server(database_url, policies=policies())


@dataclass(frozen=True)
class PrinterReport:
    """A Printer N-EVENT-REPORT pacsd sent: its command set and Event Information."""

    command: Dataset
    information: Dataset | None

    @property
    def event_type(self) -> int:
        return int(self.command.EventTypeID)


class PrintScu:
    """A pynetdicom association to pacsd's printer that keeps every message's command set
    (pynetdicom does not return an N-CREATE response's SOP Instance UID or Attribute
    Identifier List) and the N-EVENT-REPORTs pacsd sends, answered `report_status`."""

    def __init__(
        self, server: PacsdProcess, calling: str = "PRINTSCU", report_status: int = 0x0000
    ) -> None:
        self.commands: list[Dataset] = []
        self.reports: queue.Queue[PrinterReport] = queue.Queue()
        self.report_status = report_status
        ae = AE(ae_title=calling)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
        for sop_class in (
            GRAY_META,
            COLOR_META,
            PRESENTATION_LUT,
            PRINTER_CONFIGURATION,
            VERIFICATION,
        ):
            ae.add_requested_context(sop_class)
        handlers = [
            (evt.EVT_DIMSE_RECV, self._received),
            (evt.EVT_N_EVENT_REPORT, self._report),
        ]
        self.assoc: Association = ae.associate(
            server.host, server.port, ae_title="PACSD", evt_handlers=handlers
        )
        assert self.assoc.is_established

    def _received(self, event: evt.Event) -> None:
        self.commands.append(event.message.command_set)  # type: ignore[attr-defined]

    def _report(self, event: evt.Event) -> tuple[int, None]:
        request = event.request
        information = event.event_information if request.EventInformation is not None else None
        command = Dataset()
        for keyword in ("AffectedSOPClassUID", "AffectedSOPInstanceUID", "EventTypeID"):
            setattr(command, keyword, getattr(request, keyword))
        self.reports.put(PrinterReport(command, information))
        return self.report_status, None

    def next_report(self, timeout: float = REPORT_WAIT_S) -> PrinterReport:
        return self.reports.get(timeout=timeout)

    def no_report(self) -> bool:
        """True when no report comes within QUIET_S."""
        try:
            self.reports.get(timeout=QUIET_S)
        except queue.Empty:
            return True
        return False

    def printer(self) -> tuple[str, str]:
        """Printer N-GET: (Printer Status, Printer Status Info)."""
        status, printer = self.assoc.send_n_get(
            [0x21100010, 0x21100020], PRINTER, PRINTER_INSTANCE, meta_uid=GRAY_META
        )
        assert status.Status == 0x0000
        assert printer is not None
        return str(printer.PrinterStatus), str(printer.PrinterStatusInfo)

    @property
    def last(self) -> Dataset:
        """The command set of the last response."""
        responses = [command for command in self.commands if command.CommandField & 0x8000]
        return responses[-1]

    def answered_before_reported(self) -> bool:
        """Whether the message pacsd sent just before its last N-EVENT-REPORT-RQ was an
        N-ACTION response (the print's)."""
        fields = [int(command.CommandField) for command in self.commands]
        last_report = len(fields) - 1 - fields[::-1].index(N_EVENT_REPORT_RQ)
        return last_report > 0 and fields[last_report - 1] == N_ACTION_RSP

    def create(
        self,
        attributes: Dataset | None,
        sop_class: str,
        meta: str = GRAY_META,
        uid: str | None = None,
    ) -> tuple[int, Dataset | None, str]:
        """N-CREATE; (status, attribute list, the UID pacsd answered)."""
        # An empty data set goes as none: pynetdicom 3.0 announces an empty one as present.
        attributes = attributes if attributes else None
        status, answer = self.assoc.send_n_create(attributes, sop_class, uid, meta_uid=meta)
        return int(status.Status), answer, str(self.last.get("AffectedSOPInstanceUID", ""))

    def session(self, **values: Any) -> str:
        status, _, uid = self.create(dataset(**values), FILM_SESSION)
        assert status == 0x0000
        return uid

    def film_box(
        self, session_uid: str, layout: str, meta: str = GRAY_META, **values: Any
    ) -> tuple[str, list[str]]:
        """A Film Box; its UID and its Image Boxes' UIDs by position."""
        status, answer, uid = self.create(film_box(session_uid, layout, **values), FILM_BOX, meta)
        assert status == 0x0000, self.last
        assert answer is not None
        return uid, [
            str(item.ReferencedSOPInstanceUID) for item in answer.ReferencedImageBoxSequence
        ]

    def set_image(
        self, uid: str, position: int, item: Dataset, meta: str = GRAY_META, **values: Any
    ) -> Dataset:
        color = meta == COLOR_META
        key = "BasicColorImageSequence" if color else "BasicGrayscaleImageSequence"
        request = dataset(ImageBoxPosition=position, **values)
        setattr(request, key, Sequence([item]))
        status, _ = self.assoc.send_n_set(
            request, COLOR_BOX if color else GRAY_BOX, uid, meta_uid=meta
        )
        return status

    def action(self, sop_class: str, uid: str, action_type: int = 1) -> Dataset:
        status, _ = self.assoc.send_n_action(None, action_type, sop_class, uid, meta_uid=GRAY_META)
        return status

    def release(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()


@pytest.fixture
def scu(server: PacsdProcess) -> Iterator[PrintScu]:
    client = PrintScu(server)
    yield client
    client.release()


def dataset(**values: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def film_box(session_uid: str, layout: str, **values: Any) -> Dataset:
    reference = dataset(ReferencedSOPClassUID=FILM_SESSION, ReferencedSOPInstanceUID=session_uid)
    return dataset(
        ImageDisplayFormat=layout, ReferencedFilmSessionSequence=Sequence([reference]), **values
    )


def gray_image(value: int, bits_stored: int = 8, size: int = 64) -> Dataset:
    """A uniform MONOCHROME2 image of `value`."""
    item = dataset(
        SamplesPerPixel=1,
        PhotometricInterpretation="MONOCHROME2",
        Rows=size,
        Columns=size,
        BitsAllocated=8 if bits_stored == 8 else 16,
        BitsStored=bits_stored,
        HighBit=bits_stored - 1,
        PixelRepresentation=0,
    )
    dtype = np.uint8 if bits_stored == 8 else np.dtype("<u2")
    item.PixelData = np.full((size, size), value, dtype).tobytes()
    return item


def color_image(rgb: tuple[int, int, int], size: int = 32) -> Dataset:
    """A uniform RGB image, color-by-plane (PS3.3 C.13.5)."""
    planes = np.stack([np.full((size, size), channel, np.uint8) for channel in rgb])
    return dataset(
        SamplesPerPixel=3,
        PhotometricInterpretation="RGB",
        PlanarConfiguration=1,
        Rows=size,
        Columns=size,
        BitsAllocated=8,
        BitsStored=8,
        HighBit=7,
        PixelRepresentation=0,
        PixelData=planes.tobytes(),
    )


def tags_of(command: Dataset) -> list[int]:
    """The Attribute Identifier List (0000,1005) of a response, as a list of tags."""
    value = command.AttributeIdentifierList
    return (
        [int(tag) for tag in value]
        if isinstance(value, list | tuple | MultiValue)
        else [int(value)]
    )


def jobs(server: PacsdProcess) -> list[dict[str, Any]]:
    listed = pacsd_command("print", "list", "--json", "--config", str(server.config_path))
    assert listed.returncode == 0, listed.stderr
    records: list[dict[str, Any]] = json.loads(listed.stdout)
    return records


def film(server: PacsdProcess, name: str) -> NDArray[np.float64]:
    [job] = jobs(server)
    with Image.open(Path(job["folder"]) / name) as picture:
        return np.asarray(picture, dtype=np.float64)


def quadrant_means(pixels: NDArray[np.float64], columns: int, rows: int) -> list[Any]:
    """The mean about the centre of each of columns x rows equal tiles, by rows."""
    height, width = pixels.shape[:2]
    means = []
    for row in range(rows):
        for column in range(columns):
            y = int((row + 0.5) * height / rows)
            x = int((column + 0.5) * width / columns)
            window = pixels[y - 40 : y + 40, x - 40 : x + 40]
            means.append(window.mean(axis=(0, 1)).round(1).tolist())
    return means


def test_a_whole_grayscale_session(server: PacsdProcess, scu: PrintScu) -> None:
    """Printer N-GET, Film Session, Film Box STANDARD\\2,2, four images, print the film box and
    the session, delete: two PNGs whose tiles show the images, a PDF of two pages, the job."""
    status, printer = scu.assoc.send_n_get(
        [0x21100010, 0x21100030], PRINTER, PRINTER_INSTANCE, meta_uid=GRAY_META
    )
    assert status.Status == 0x0000
    assert printer is not None
    assert (printer.PrinterStatus, printer.PrinterName) == ("NORMAL", "PACSD")

    session = scu.session(NumberOfCopies=2, FilmSessionLabel="chest", MediumType="PAPER")
    film_box_uid, boxes = scu.film_box(session, "STANDARD\\2,2")
    assert len(boxes) == 4
    images = [gray_image(30), gray_image(90), gray_image(150), gray_image(3276, bits_stored=12)]
    for position, (uid, item) in enumerate(zip(boxes, images, strict=True), start=1):
        assert scu.set_image(uid, position, item).Status == 0x0000
    assert scu.action(FILM_BOX, film_box_uid).Status == 0x0000
    assert scu.action(FILM_SESSION, session).Status == 0x0000
    assert scu.assoc.send_n_delete(FILM_SESSION, session, meta_uid=GRAY_META).Status == 0x0000

    [job] = jobs(server)
    assert job["film_session_uid"] == session
    assert job["calling_ae_title"] == "PRINTSCU"
    assert job["session"]["number_of_copies"] == 2
    assert job["session"]["medium_type"] == "PAPER"
    assert [entry["action"] for entry in job["films"]] == ["film-box", "film-session"]
    assert job["films"][0]["images"] == 4
    folder = Path(job["folder"])
    assert folder.parent.parent == server.storage_root / "print"
    for name in ("film-0001.png", "film-0002.png"):
        pixels = film(server, name)
        assert pixels.shape == (2550, 2100)  # 14x17 in at 150 dpi, portrait
        assert quadrant_means(pixels, 2, 2) == pytest.approx([30, 90, 150, 204], abs=1)
    with PdfParser.PdfParser(str(folder / "session.pdf")) as pdf:
        assert len(pdf.pages) == 2
    table = pacsd_command("print", "list", "--config", str(server.config_path))
    assert table.returncode == 0
    assert "PRINTSCU" in table.stdout
    assert "STANDARD\\2,2" in table.stdout


def test_polarity_reverse_and_landscape(server: PacsdProcess, scu: PrintScu) -> None:
    """Polarity REVERSE prints the image's complement; LANDSCAPE turns the film."""
    session = scu.session()
    film_box_uid, [box] = scu.film_box(
        session, "STANDARD\\1,1", FilmOrientation="LANDSCAPE", FilmSizeID="8INX10IN"
    )
    assert scu.set_image(box, 1, gray_image(40), Polarity="REVERSE").Status == 0x0000
    assert scu.action(FILM_BOX, film_box_uid).Status == 0x0000
    pixels = film(server, "film-0001.png")
    assert pixels.shape == (1200, 1500)
    assert quadrant_means(pixels, 1, 1) == pytest.approx([215], abs=1)


def test_color_session(server: PacsdProcess, scu: PrintScu) -> None:
    """The Basic Color Print Management Meta SOP Class: color image boxes, an RGB film."""
    session = scu.session()
    film_box_uid, boxes = scu.film_box(session, "STANDARD\\2,1", meta=COLOR_META)
    assert scu.commands[-1].AffectedSOPClassUID == FILM_BOX
    for position, (uid, rgb) in enumerate(zip(boxes, [(255, 0, 0), (0, 0, 255)], strict=True), 1):
        assert scu.set_image(uid, position, color_image(rgb), meta=COLOR_META).Status == 0
    status, _ = scu.assoc.send_n_action(None, 1, FILM_BOX, film_box_uid, meta_uid=COLOR_META)
    assert status.Status == 0x0000
    pixels = film(server, "film-0001.png")
    assert pixels.shape == (2550, 2100, 3)
    assert quadrant_means(pixels, 2, 1) == [[255.0, 0.0, 0.0], [0.0, 0.0, 255.0]]
    [job] = jobs(server)
    assert job["films"][0]["color"] is True


def test_a_grayscale_box_is_no_color_box(scu: PrintScu) -> None:
    """A Color Image Box N-SET naming a grayscale box: Class-Instance Conflict (0x0119)."""
    session = scu.session()
    _, [box] = scu.film_box(session, "STANDARD\\1,1")
    status = scu.set_image(box, 1, color_image((1, 2, 3)), meta=COLOR_META)
    assert status.Status == 0x0119


def test_presentation_lut(server: PacsdProcess, scu: PrintScu) -> None:
    """A Presentation LUT created on its own context, used by a film box, deleted."""
    lut = dataset(PresentationLUTShape="INVERSE")
    status, _, lut_uid = scu.create(lut, PRESENTATION_LUT, meta=PRESENTATION_LUT)
    assert status == 0x0000
    session = scu.session()
    reference = dataset(ReferencedSOPClassUID=PRESENTATION_LUT, ReferencedSOPInstanceUID=lut_uid)
    film_box_uid, [box] = scu.film_box(
        session, "STANDARD\\1,1", ReferencedPresentationLUTSequence=Sequence([reference])
    )
    assert scu.set_image(box, 1, gray_image(60)).Status == 0x0000
    assert scu.action(FILM_BOX, film_box_uid).Status == 0x0000
    assert quadrant_means(film(server, "film-0001.png"), 1, 1) == pytest.approx([195], abs=1)
    deleted = scu.assoc.send_n_delete(PRESENTATION_LUT, lut_uid, meta_uid=PRESENTATION_LUT)
    assert deleted.Status == 0x0000
    status, _, _ = scu.create(Dataset(), PRESENTATION_LUT, meta=PRESENTATION_LUT)
    assert status == 0x0120
    assert tags_of(scu.last) == [0x20500020, 0x20500010]


def test_film_session_ends_with_its_association(server: PacsdProcess) -> None:
    """PS3.4 H.4.1: the session is gone once its association ends; another association cannot
    reach it (0x0112), and pacsd forgets it."""
    first = PrintScu(server)
    session = first.session()
    first.release()
    second = PrintScu(server)
    try:
        status, _ = second.assoc.send_n_set(
            dataset(NumberOfCopies=3), FILM_SESSION, session, meta_uid=GRAY_META
        )
        assert status.Status == 0x0112
    finally:
        second.release()
    [ended] = server.wait_for("film session ended with its association")
    assert ended["film_session_uid"] == session


def test_a_rule_granting_the_meta_class_alone_may_print(server: PacsdProcess) -> None:
    """The guard authorises Film Session and Film Box messages by the meta class granted."""
    client = PrintScu(server, calling="METAONLY")
    try:
        session = client.session()
        film_box_uid, [box] = client.film_box(session, "STANDARD\\1,1")
        assert client.set_image(box, 1, gray_image(10)).Status == 0x0000
        assert client.action(FILM_BOX, film_box_uid).Status == 0x0000
    finally:
        client.release()


def test_printer_configuration_and_unserved_classes(scu: PrintScu) -> None:
    """Printer Configuration Retrieval N-GET; a Print Job names nothing (pacsd makes none);
    an N-GET of a Film Box is no service of its class (0x0211)."""
    status, configuration = scu.assoc.send_n_get(
        [], PRINTER_CONFIGURATION, PRINTER_CONFIGURATION_INSTANCE, meta_uid=PRINTER_CONFIGURATION
    )
    assert status.Status == 0x0000
    assert configuration is not None
    [gray, color] = configuration.PrinterConfigurationSequence
    assert GRAY_META in gray.SOPClassesSupported
    assert color.MediaInstalledSequence[0].MaxDensity == 300
    status, _ = scu.assoc.send_n_get([], PRINTER, "1.2.3.4", meta_uid=GRAY_META)
    assert status.Status == 0x0112
    session = scu.session()
    film_box_uid, _ = scu.film_box(session, "STANDARD\\1,1")
    status, _ = scu.assoc.send_n_get([], FILM_BOX, film_box_uid, meta_uid=GRAY_META)
    assert status.Status == 0x0211


@pytest.mark.parametrize(
    ("attributes", "status", "tags"),
    [
        ({"MediumType": "GLASS"}, 0x0106, [0x20000030]),
        ({"PrintPriority": "ASAP"}, 0x0106, [0x20000020]),
        ({"MemoryAllocation": "2048"}, 0xB600, None),
        ({"PatientName": "Doe^J"}, 0x0105, [0x00100010]),
    ],
)
def test_film_session_statuses(
    scu: PrintScu, attributes: dict[str, Any], status: int, tags: list[int] | None
) -> None:
    """Film Session N-CREATE: invalid values 0x0106, unknown attributes 0x0105 (each with its
    Attribute Identifier List), a memory allocation 0xB600 (the session is made)."""
    answered, _, _ = scu.create(dataset(**attributes), FILM_SESSION)
    assert answered == status
    if tags is not None:
        assert tags_of(scu.last) == tags
        assert scu.last.ErrorComment


def test_second_film_session_is_refused(scu: PrintScu) -> None:
    """One film session per association: the second N-CREATE answers 0x0110."""
    scu.session()
    status, _, _ = scu.create(Dataset(), FILM_SESSION)
    assert status == 0x0110
    assert "Film Session exists" in scu.last.ErrorComment


@pytest.mark.parametrize(
    ("layout", "values", "status", "tags"),
    [
        ("CUSTOM\\3", {}, 0x0106, [0x20100010]),
        ("STANDARD\\2", {}, 0x0106, [0x20100010]),
        ("STANDARD\\1,1", {"FilmSizeID": "35MM"}, 0x0106, [0x20100050]),
        ("STANDARD\\1,1", {"SmoothingType": "SHARP"}, 0x0105, [0x20100080]),
        ("STANDARD\\1,1", {"MinDensity": 200, "MaxDensity": 100}, 0x0106, [0x20100120, 0x20100130]),
        ("STANDARD\\1,1", {"MaxDensity": 400}, 0xB605, None),
        ("", {}, 0x0121, [0x20100010]),
    ],
)
def test_film_box_statuses(
    scu: PrintScu, layout: str, values: dict[str, Any], status: int, tags: list[int] | None
) -> None:
    """Film Box N-CREATE: formats pacsd cannot lay out, values it cannot honour, unsupported
    attributes, densities beyond the printer (0xB605: created with the printer's)."""
    session = scu.session()
    answered, answer, _ = scu.create(film_box(session, layout, **values), FILM_BOX)
    assert answered == status
    if tags is not None:
        assert tags_of(scu.last) == tags
    else:
        assert answer is not None
        assert answer.MaxDensity == 300


def test_film_box_needs_its_session(scu: PrintScu) -> None:
    """Film Box N-CREATE without the Referenced Film Session Sequence: 0x0120; naming a session
    of no association: 0x0106."""
    session = scu.session()
    status, _, _ = scu.create(dataset(ImageDisplayFormat="STANDARD\\1,1"), FILM_BOX)
    assert status == 0x0120
    assert tags_of(scu.last) == [0x20100500]
    status, _, _ = scu.create(film_box(session + "1", "STANDARD\\1,1"), FILM_BOX)
    assert status == 0x0106


def test_image_box_statuses(scu: PrintScu) -> None:
    """Image Box N-SET: wrong position and unsupported pixels 0x0106 with their tags; an image
    too large with FAIL 0xC603, cropped 0xB609; an unknown box 0x0112; a film box's UID named
    as an image box 0x0119."""
    session = scu.session()
    film_box_uid, [box] = scu.film_box(session, "STANDARD\\1,1")
    wrong = scu.set_image(box, 2, gray_image(1))
    assert (wrong.Status, tags_of(wrong)) == (0x0106, [0x20200010])
    ten_bits = gray_image(1)
    ten_bits.BitsStored = 10
    odd = scu.set_image(box, 1, ten_bits)
    assert (odd.Status, tags_of(odd)) == (0x0106, [0x00280101])
    huge = {"RequestedImageSize": "2000", "RequestedDecimateCropBehavior": "FAIL"}
    assert scu.set_image(box, 1, gray_image(1), **huge).Status == 0xC603
    huge["RequestedDecimateCropBehavior"] = "CROP"
    assert scu.set_image(box, 1, gray_image(1), **huge).Status == 0xB609
    assert scu.set_image(TEST_UID_ROOT + "77", 1, gray_image(1)).Status == 0x0112
    assert scu.set_image(film_box_uid, 1, gray_image(1)).Status == 0x0119


def test_print_statuses(scu: PrintScu) -> None:
    """N-ACTION: a session without film boxes 0xC600, an empty film 0xB603 (printed), an empty
    page in a session 0xB602, an action other than print 0x0123."""
    session = scu.session()
    assert scu.action(FILM_SESSION, session).Status == 0xC600
    film_box_uid, _ = scu.film_box(session, "STANDARD\\2,2")
    assert scu.action(FILM_BOX, film_box_uid).Status == 0xB603
    assert scu.action(FILM_SESSION, session).Status == 0xB602
    assert scu.action(FILM_BOX, film_box_uid, action_type=2).Status == 0x0123
    assert scu.action(FILM_BOX, str(generate_uid())).Status == 0x0112


def test_print_job_and_annotation_box_contexts_are_rejected(server: PacsdProcess) -> None:
    """pacsd creates no Print Job and no Basic Annotation Box (its N-ACTION answers no
    Referenced Print Job Sequence), so it rejects their contexts (PS3.8 result 3): an SCU then
    knows not to ask for them, while the Meta SOP Class proposed beside them is accepted."""
    ae = AE(ae_title="JOBS")
    for sop_class in (PRINT_JOB, ANNOTATION_BOX, GRAY_META):
        ae.add_requested_context(sop_class)
    assoc = ae.associate(server.host, server.port, ae_title="PACSD")
    try:
        assert assoc.is_established
        assert {str(c.abstract_syntax) for c in assoc.accepted_contexts} == {GRAY_META}
        rejected = {str(c.abstract_syntax): c.result for c in assoc.rejected_contexts}
        assert rejected == {PRINT_JOB: 3, ANNOTATION_BOX: 3}
    finally:
        assoc.release()


def one_film(scu: PrintScu) -> tuple[str, str]:
    """A film session with one film box holding one image: (session UID, film box UID)."""
    session = scu.session()
    film_box_uid, [box] = scu.film_box(session, "STANDARD\\1,1")
    assert scu.set_image(box, 1, gray_image(100)).Status == 0x0000
    return session, film_box_uid


def test_a_printer_with_room_is_normal_and_reports_nothing(scu: PrintScu) -> None:
    """The usual printer (more free space than twice storage.min_free_space): N-GET answers
    NORMAL, a print succeeds, and no N-EVENT-REPORT follows (NORMAL is what the SCU knows)."""
    assert scu.printer() == ("NORMAL", "NORMAL")
    _, film_box_uid = one_film(scu)
    assert scu.action(FILM_BOX, film_box_uid).Status == 0x0000
    assert scu.no_report()


def test_no_room_fails_the_print_and_reports_failure_after_its_answer(
    pacsd_server: ServerFactory, database_url: str
) -> None:
    """storage.min_free_space above the disk's real free space: the Printer N-GET answers
    FAILURE / SUPPLY EMPTY; a film box's print answers 0xC602 and writes nothing, and then (never
    before that answer) pacsd sends the Printer N-EVENT-REPORT, Event Type 3 Failure, with
    Printer Status Info. The session's print, the status unchanged, answers 0xC601 and is not
    reported again."""
    server = pacsd_server(database_url, policies=policies(), storage={"min_free_space": "1PB"})
    scu = PrintScu(server)
    try:
        assert scu.printer() == ("FAILURE", "SUPPLY EMPTY")
        session, film_box_uid = one_film(scu)
        answer = scu.action(FILM_BOX, film_box_uid)
        assert answer.Status == 0xC602
        assert str(answer.ErrorComment).startswith("printer SUPPLY EMPTY")
        report = scu.next_report()
        assert scu.answered_before_reported()
        assert report.event_type == 3
        assert report.command.AffectedSOPClassUID == PRINTER
        assert report.command.AffectedSOPInstanceUID == PRINTER_INSTANCE
        assert report.information is not None
        assert report.information.PrinterStatusInfo == "SUPPLY EMPTY"
        assert report.information.PrinterName == "PACSD"
        assert scu.action(FILM_SESSION, session).Status == 0xC601
        assert scu.no_report()
        assert scu.printer() == ("FAILURE", "SUPPLY EMPTY")
    finally:
        scu.release()
    [reported] = server.wait_for("printer status reported")
    assert reported["event_type"] == 3
    assert not (server.storage_root / "print").exists()


def test_every_association_using_the_printer_hears_of_the_change(
    pacsd_server: ServerFactory, database_url: str
) -> None:
    """PS3.4 H.4.6.2.1.2: the report goes to every SCU whose association uses the printer, not
    only to the one whose print found the change."""
    server = pacsd_server(database_url, policies=policies(), storage={"min_free_space": "1PB"})
    watcher, printing = PrintScu(server, calling="WATCHER"), PrintScu(server)
    try:
        assert watcher.printer() == ("FAILURE", "SUPPLY EMPTY")  # uses the printer
        _, film_box_uid = one_film(printing)
        assert printing.action(FILM_BOX, film_box_uid).Status == 0xC602
        assert printing.next_report().event_type == 3
        assert watcher.next_report().event_type == 3
    finally:
        watcher.release()
        printing.release()


def test_low_space_warns_and_a_refused_report_changes_nothing(
    pacsd_server: ServerFactory, database_url: str
) -> None:
    """Free space below print.warning_free_space (above storage.min_free_space): the print
    succeeds, then a report with Event Type 2 Warning, SUPPLY LOW. The SCU answers the report
    0x0110: pacsd logs it, and the association and the printer go on."""
    server = pacsd_server(database_url, policies=policies(), print={"warning_free_space": "1PB"})
    scu = PrintScu(server, report_status=0x0110)
    try:
        _, film_box_uid = one_film(scu)
        assert scu.action(FILM_BOX, film_box_uid).Status == 0x0000
        report = scu.next_report()
        assert scu.answered_before_reported()
        assert report.event_type == 2
        assert report.information is not None
        assert report.information.PrinterStatusInfo == "SUPPLY LOW"
        [refused] = server.wait_for("printer status report refused")
        assert refused["status"] == "0x0110"
        assert scu.printer() == ("WARNING", "SUPPLY LOW")
        assert scu.action(FILM_BOX, film_box_uid).Status == 0x0000
        assert scu.no_report()  # told once, refused or not
    finally:
        scu.release()
    [job] = jobs(server)
    assert len(job["films"]) == 2


def test_a_print_folder_that_takes_no_files_then_is_repaired(
    pacsd_server: ServerFactory, database_url: str, tmp_path: Path
) -> None:
    """print.folder under a path that is a file, so the folder cannot be made: FAILURE /
    PRINTER DOWN, the print answers 0xC602 and Event Type 3 follows. Once the path is a
    directory, the next print on the same association succeeds and Event Type 1 Normal follows,
    with no Event Information; N-GET answers NORMAL."""
    blocker = tmp_path / "films"
    blocker.write_text("not a folder", encoding="utf-8")
    folder = blocker / "print"
    server = pacsd_server(database_url, policies=policies(), print={"folder": str(folder)})
    scu = PrintScu(server)
    try:
        assert scu.printer() == ("FAILURE", "PRINTER DOWN")
        _, film_box_uid = one_film(scu)
        assert scu.action(FILM_BOX, film_box_uid).Status == 0xC602
        report = scu.next_report()
        assert report.event_type == 3
        assert report.information is not None
        assert report.information.PrinterStatusInfo == "PRINTER DOWN"
        blocker.unlink()
        blocker.mkdir()
        assert scu.action(FILM_BOX, film_box_uid).Status == 0x0000
        report = scu.next_report()
        assert scu.answered_before_reported()
        assert report.event_type == 1
        assert not report.information
        assert scu.printer() == ("NORMAL", "NORMAL")
    finally:
        scu.release()
    assert len(list(folder.glob("*/*/film-0001.png"))) == 1


def _mount(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["mount", *arguments], capture_output=True, text=True, timeout=30, check=False
    )


@pytest.fixture
def print_mount(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs of its own for the print folder (mounting needs root: skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder = tmp_path / "print-mount"
    folder.mkdir()
    mounted = _mount("-t", "tmpfs", "-o", "size=64m,mode=0755", "tmpfs", str(folder))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], timeout=30, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], timeout=30, check=False)


def test_a_read_only_print_folder_is_a_printer_down(
    pacsd_server: ServerFactory, database_url: str, print_mount: Path
) -> None:
    """The print folder's file system remounted read-only (root writes anywhere else): the
    print answers 0xC602 and Event Type 3 PRINTER DOWN follows; remounted read-write, the next
    print succeeds and Event Type 1 follows."""
    server = pacsd_server(database_url, policies=policies(), print={"folder": str(print_mount)})
    scu = PrintScu(server)
    try:
        _, film_box_uid = one_film(scu)
        assert _mount("-o", "remount,ro", str(print_mount)).returncode == 0
        assert scu.action(FILM_BOX, film_box_uid).Status == 0xC602
        report = scu.next_report()
        assert scu.answered_before_reported()
        assert report.event_type == 3
        assert report.information is not None
        assert report.information.PrinterStatusInfo == "PRINTER DOWN"
        assert scu.printer() == ("FAILURE", "PRINTER DOWN")
        assert _mount("-o", "remount,rw", str(print_mount)).returncode == 0
        assert scu.action(FILM_BOX, film_box_uid).Status == 0x0000
        assert scu.next_report().event_type == 1
        assert scu.printer() == ("NORMAL", "NORMAL")
    finally:
        scu.release()
