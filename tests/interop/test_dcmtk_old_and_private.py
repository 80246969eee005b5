"""Storage SOP classes a default pacsd must take from old and vendor equipment (issue 17): the
retired Ultrasound Image Storage class and a private SOP class, sent by DCMTK's dcmsend (which
proposes each file's SOP class; storescu proposes only a built-in list, without these),
stored as sent, found by findscu and retrieved by a pynetdicom C-GET byte for byte."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt

from tests import datagen
from tests.harness import PacsdProcess
from tests.inspect_archive import assert_index_matches_files, dataset_bytes
from tests.interop.test_dcmtk import dcmtk_command, run
from tests.qr_scu import GET, identifier

pytestmark = pytest.mark.usefixtures("dcmtk")
TIMEOUT_S = 30


def _files(folder: Path) -> list[Path]:
    study = datagen.StudyContext(patient_id="OLD-1")
    return [
        datagen.write_part10(datagen.us_image_retired(study, 1), folder / "us1.dcm"),
        datagen.write_part10(datagen.us_image_retired(study, 2), folder / "us2.dcm"),
        datagen.write_part10(datagen.private_object(study, 3), folder / "private.dcm"),
    ]


def test_retired_and_private_storage_classes_under_the_default_policy(
    server: PacsdProcess, database_url: str, tmp_path: Path
) -> None:
    files = _files(tmp_path / "in")
    result = run([*dcmtk_command(server, "dcmsend", "-v"), *map(str, files)])
    assert result.returncode == 0, result.stderr
    assert "with status SUCCESS  : 3" in result.stderr, result.stderr
    rows = assert_index_matches_files(database_url, server.storage_root)
    stored = {row["sop_instance_uid"]: row for row in rows}
    sent = {str(dcmread(path).SOPInstanceUID): path for path in files}
    assert set(stored) == set(sent)
    for uid, path in sent.items():
        kept = server.storage_root / stored[uid]["file_path"]
        assert dataset_bytes(kept) == dataset_bytes(path), path.name

    found = run(
        [
            *dcmtk_command(server, "findscu", "-S", "-k", "QueryRetrieveLevel=IMAGE"),
            "-k", "StudyInstanceUID=" + str(dcmread(files[0]).StudyInstanceUID),
            "-k", "SeriesInstanceUID=" + str(dcmread(files[0]).SeriesInstanceUID),
            "-k", "SOPClassUID", "-k", "SOPInstanceUID",
        ]
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    for uid in sent:
        assert uid in found.stderr, found.stderr
    classes = [line for line in found.stderr.splitlines() if "(0008,0016)" in line]
    assert sum("RETIRED_UltrasoundImageStorage" in line for line in classes) == 2, classes
    assert sum(datagen.PRIVATE_SOP_CLASS in line for line in classes) == 1, classes

    received: dict[str, bytes] = {}

    def on_store(event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        received[uid] = bytes(event.encoded_dataset(include_meta=False))
        return 0x0000

    ae = AE(ae_title="GETSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
    ae.add_requested_context(GET["S"], [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    roles = []
    for sop_class in (datagen.ULTRASOUND_IMAGE_RETIRED, datagen.PRIVATE_SOP_CLASS):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian])
        roles.append(build_role(sop_class, scp_role=True))
    assoc = ae.associate(
        server.host,
        server.port,
        ae_title="PACSD",
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    try:
        query = identifier("STUDY", StudyInstanceUID=str(dcmread(files[0]).StudyInstanceUID))
        statuses = [int(status.Status) for status, _ in assoc.send_c_get(query, GET["S"])]
    finally:
        assoc.release()
    assert statuses[-1] == 0x0000, [f"0x{s:04X}" for s in statuses]
    assert set(received) == set(sent)
    for uid, path in sent.items():
        assert received[uid] == dataset_bytes(path), path.name
