"""Non-ASCII text through every place where pacsd keeps a data set as DICOM JSON and reads it
back: the header of a stored instance (C-FIND answers), worklist items (worklist C-FIND) and
performed procedure steps (tests/integration/test_mpps.py). Each in a single-byte character
set, in UTF-8 and in ISO 2022 code extensions (PS3.5 H.3.1's example name), sent by pynetdicom.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from tests import datagen, worklist_data
from tests.conftest import ServerFactory
from tests.datagen import TEST_UID_ROOT
from tests.harness import PacsdProcess, pacsd_command
from tests.qr_scu import FIND, collect, identifier, qr_association
from tests.scu import store_files

MWL_FIND = "1.2.840.10008.5.1.4.31"

# charset key: (Specific Character Set, Patient's Name, Study Description)
TEXTS: dict[str, tuple[str | list[str], str, str]] = {
    "ISO_IR 100": ("ISO_IR 100", "Müller^Jürgen", "Thorax, Übersicht"),
    "ISO_IR 192": ("ISO_IR 192", "Müller^Jürgen=ミュラー", "胸部 CT, Übersicht"),
    "ISO 2022 IR 87": (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう", "胸部ＣＴ"),
}


def _policies() -> list[dict[str, Any]]:
    return [
        {"name": "all", "sop_classes": ["verification", "storage", "query-retrieve", "worklist"]}
    ]


@pytest.fixture
def server(pacsd_server: ServerFactory, database_url: str) -> PacsdProcess:
    return pacsd_server(database_url, policies=_policies())


@pytest.mark.parametrize("charset", list(TEXTS))
def test_a_stored_instance_s_texts_come_back_from_c_find(
    server: PacsdProcess, tmp_path: Path, charset: str
) -> None:
    """Stored in `charset`, found in its own character set and in UTF-8: the same texts."""
    specific, name, description = TEXTS[charset]
    study = datagen.StudyContext(patient_id="PID-CS", patient_name=name)
    ds = datagen.ct_image(study, size=8)
    ds.SpecificCharacterSet = specific
    ds.StudyDescription = description
    path = datagen.write_part10(ds, tmp_path / "ct.dcm")
    assert store_files(server.host, server.port, [path]) == [(0x0000, "")]
    for query_charset in (specific, "ISO_IR 192"):
        keys = identifier(
            "STUDY", PatientID="PID-CS", PatientName="", StudyDescription="", StudyInstanceUID=""
        )
        keys.SpecificCharacterSet = query_charset
        with qr_association(server, [FIND["S"]]) as assoc:
            found = collect(assoc.send_c_find(keys, FIND["S"]))
        assert found.final_status == 0x0000
        [answer] = found.pending()
        assert str(answer.PatientName) == name, query_charset
        assert answer.StudyDescription == description, query_charset


def test_a_non_ascii_name_matches_across_character_sets(
    server: PacsdProcess, tmp_path: Path
) -> None:
    """A name stored in ISO 2022 IR 87 is found by a UTF-8 query on its ideographic part."""
    specific, name, _ = TEXTS["ISO 2022 IR 87"]
    study = datagen.StudyContext(patient_id="PID-JP", patient_name=name)
    ds = datagen.ct_image(study, size=8)
    ds.SpecificCharacterSet = specific
    path = datagen.write_part10(ds, tmp_path / "ct.dcm")
    assert store_files(server.host, server.port, [path]) == [(0x0000, "")]
    keys = identifier("PATIENT", PatientID="", PatientName="Yamada*")
    keys.SpecificCharacterSet = "ISO_IR 192"
    with qr_association(server, [FIND["P"]]) as assoc:
        found = collect(assoc.send_c_find(keys, FIND["P"]))
    assert found.final_status == 0x0000
    assert [str(answer.PatientName) for answer in found.pending()] == [name]


def _worklist_item(specific: str | list[str], name: str, description: str) -> Dataset:
    item = Dataset()
    item.SpecificCharacterSet = specific
    item.PatientName = name
    item.PatientID = f"W-{len(name)}"
    item.AccessionNumber = "WACC-CS"
    item.RequestedProcedureID = "RP-CS"
    item.RequestedProcedureDescription = description
    item.StudyInstanceUID = generate_uid(TEST_UID_ROOT)
    step = Dataset()
    step.ScheduledStationAETitle = "CT01"
    step.ScheduledProcedureStepStartDate = "20261206"
    step.ScheduledProcedureStepStartTime = "080000"
    step.Modality = "CT"
    step.ScheduledProcedureStepID = "SPS-CS"
    step.ScheduledProcedureStepDescription = description
    item.ScheduledProcedureStepSequence = Sequence([step])
    return item


@pytest.mark.parametrize("charset", list(TEXTS))
def test_a_worklist_item_s_texts_come_back_from_worklist_c_find(
    server: PacsdProcess, tmp_path: Path, charset: str
) -> None:
    """`pacsd worklist add` (DICOM JSON) and a worklist C-FIND: the same texts."""
    specific, name, description = TEXTS[charset]
    item = _worklist_item(specific, name, description)
    items = worklist_data.write_json([item], tmp_path / "items.json")
    added = pacsd_command("worklist", "add", "--config", str(server.config_path), str(items))
    assert added.returncode == 0, added.stderr
    keys = Dataset()
    keys.SpecificCharacterSet = "ISO_IR 192"
    keys.PatientName = ""
    keys.PatientID = item.PatientID
    keys.RequestedProcedureDescription = ""
    step = Dataset()
    step.ScheduledProcedureStepDescription = ""
    step.ScheduledStationAETitle = ""
    keys.ScheduledProcedureStepSequence = Sequence([step])
    with qr_association(server, [MWL_FIND]) as assoc:
        found = collect(assoc.send_c_find(keys, MWL_FIND))
    assert found.final_status == 0x0000
    [answer] = found.pending()
    assert str(answer.PatientName) == name
    assert answer.RequestedProcedureDescription == description
    assert answer.ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription == description
