"""Print Management interoperability: DCMTK as the print SCU.

`dcmpsprt` renders an image into a print job (a Stored Print object and Hardcopy Grayscale
images in its database folder), `dcmprscu` sends the job to pacsd the way DCMTK's spooler does:
Printer N-GET, a Presentation LUT, Film Session, Film Box, Image Boxes (12-bit when the printer
takes them), N-ACTION on the film box (or, with --session-print, on the session), N-DELETEs.
The image is black on its left half and white on its right, so the film shows whether each
image landed in its box the right way round.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.conftest import ServerFactory
from tests.datagen import TEST_UID_ROOT
from tests.harness import PacsdProcess, pacsd_command

pytestmark = pytest.mark.usefixtures("dcmtk")
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}  # docs/dicom-notes.md, "Sockets and measurement"
PRINT_TOOLS = ("dcmpsprt", "dcmprscu")


@pytest.fixture
def print_tools() -> None:
    """dcmpsprt and dcmprscu come with DCMTK's other tools (Debian package dcmtk)."""
    missing = [tool for tool in PRINT_TOOLS if shutil.which(tool) is None]
    if missing and os.environ.get("CI"):
        pytest.fail(f"DCMTK print tools missing: {', '.join(missing)}")
    if missing:
        pytest.skip(f"DCMTK print tools missing: {', '.join(missing)}")


@pytest.fixture
def server(pacsd_server: ServerFactory, database_url: str) -> PacsdProcess:
    return pacsd_server(
        database_url, policies=[{"name": "printing", "sop_classes": ["verification", "print"]}]
    )


def half_black_image(path: Path) -> Path:
    """A 256 x 256 8-bit MONOCHROME2 Secondary Capture: black left half, white right half."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid(TEST_UID_ROOT)
    ds.StudyInstanceUID = generate_uid(TEST_UID_ROOT)
    ds.SeriesInstanceUID = generate_uid(TEST_UID_ROOT)
    ds.PatientName, ds.PatientID, ds.Modality = "Print^Test", "PRINT-1", "OT"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 256
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    pixels = np.zeros((256, 256), np.uint8)
    pixels[:, 128:] = 255
    ds.PixelData = pixels.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def configuration(folder: Path, server: PacsdProcess) -> Path:
    """A dcmpstat configuration whose one printer is pacsd (see /etc/dcmtk/dcmpstat.cfg)."""
    for name in ("database", "spool", "log"):
        (folder / name).mkdir()
    text = f"""[[GENERAL]]
[APPLICATION]
LogDirectory = {folder / "log"}
LogFile = general.log
LogLevel = INFO
[PRINT]
Spooler = dcmprscu
Directory = {folder / "spool"}
Sleep = 1
DeletePrintJobs = false
[DATABASE]
Directory = {folder / "database"}
[NETWORK]
aetitle = DCMPRSCU
[[COMMUNICATION]]
[PACSD]
Aetitle = PACSD
Description = pacsd file printer
Hostname = {server.host}
Port = {server.port}
Type = PRINTER
DisplayFormat = 1,1\\2,1\\2,2
FilmSizeID = 8INX10IN\\14INX17IN
MagnificationType = REPLICATE\\BILINEAR\\CUBIC\\NONE
MediumType = PAPER\\BLUE FILM
BorderDensity = BLACK\\WHITE
MaxDensity = 300
MinDensity = 20
MaxPDU = 32768
ImplicitOnly = false
Supports12Bit = true
SupportsPresentationLUT = true
SupportsTrim = true
SupportsDecimateCrop = true
SupportsImageSize = true
"""
    path = folder / "dcmpstat.cfg"
    path.write_text(text, encoding="utf-8")
    return path


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=60, env=DCMTK_ENV, cwd=cwd, check=False
    )
    assert result.returncode == 0, f"{command[0]}: {result.stdout}\n{result.stderr}"
    return result


def spool(tmp_path: Path, config: Path) -> Path:
    """dcmpsprt's print job (STANDARD\\2,1, white border, 8x10 in) of one image twice."""
    image = half_black_image(tmp_path / "image.dcm")
    run(
        [
            "dcmpsprt",
            "-c",
            str(config),
            "-p",
            "PACSD",
            "--layout",
            "2",
            "1",
            "--border",
            "WHITE",
            "--filmsize",
            "8INX10IN",
            str(image),
            str(image),
        ],
        tmp_path,
    )
    [stored_print] = (tmp_path / "database").glob("SP_*.dcm")
    return stored_print


@pytest.mark.usefixtures("print_tools")
@pytest.mark.parametrize("session_print", [False, True])
def test_dcmprscu_prints_a_dcmpsprt_job(
    server: PacsdProcess, tmp_path: Path, session_print: bool
) -> None:
    """A job spooled by dcmpsprt (STANDARD\\2,1, white border, 8x10 in) and sent by dcmprscu is
    printed by pacsd: one PNG with both images, the right halves white."""
    config = configuration(tmp_path, server)
    stored_print = spool(tmp_path, config)
    options = ["--copies", "2", "--label", "interop", "--medium-type", "PAPER"]
    options += ["--session-print"] if session_print else []
    run(["dcmprscu", "-c", str(config), "-p", "PACSD", *options, str(stored_print)], tmp_path)

    listed = pacsd_command("print", "list", "--json", "--config", str(server.config_path))
    assert listed.returncode == 0, listed.stderr
    [job] = json.loads(listed.stdout)
    assert job["calling_ae_title"] == "DCMPRSCU"
    assert job["session"]["number_of_copies"] == 2
    assert job["session"]["film_session_label"] == "interop"
    [film] = job["films"]
    assert film["action"] == ("film-session" if session_print else "film-box")
    assert (film["image_display_format"], film["film_size_id"]) == ("STANDARD\\2,1", "8INX10IN")
    assert (film["images"], film["border_density"]) == (2, "WHITE")
    with Image.open(Path(job["folder"]) / film["file"]) as picture:
        pixels = np.asarray(picture)
    assert pixels.shape == (1500, 1200)  # 8x10 in at 150 dpi
    middle = pixels[750]
    for box in range(2):  # each box is about 600 pixels wide; its image fills its width
        left, right = box * 600, (box + 1) * 600
        assert middle[left + 150] < 20  # the black half
        assert middle[right - 150] > 235  # the white half
    assert pixels[5, 5] == 255  # the white border
    log = [line for line in server.events("dimse") if line["calling_ae_title"] == "DCMPRSCU"]
    assert {line["status"] for line in log} == {"0x0000"}
    assert "PresentationLUT" in {line["sop_class"] for line in log}


@pytest.mark.usefixtures("print_tools")
def test_dcmprscu_takes_a_printer_warning_after_its_print(
    pacsd_server: ServerFactory, database_url: str, tmp_path: Path
) -> None:
    """With less free space than print.warning_free_space the film prints, and the Printer
    N-EVENT-REPORT (Event Type 2, SUPPLY LOW) that follows the N-ACTION's response reaches
    dcmprscu while it waits for its next response: it acknowledges it and finishes the job."""
    server = pacsd_server(
        database_url,
        policies=[{"name": "printing", "sop_classes": ["verification", "print"]}],
        print={"warning_free_space": "1PB"},
    )
    config = configuration(tmp_path, server)
    stored_print = spool(tmp_path, config)
    run(["dcmprscu", "-c", str(config), "-p", "PACSD", str(stored_print)], tmp_path)
    listed = pacsd_command("print", "list", "--json", "--config", str(server.config_path))
    assert listed.returncode == 0, listed.stderr
    [job] = json.loads(listed.stdout)
    assert len(job["films"]) == 1
    [reported] = server.wait_for("printer status reported")
    assert (reported["event_type"], reported["calling_ae_title"]) == (2, "DCMPRSCU")
