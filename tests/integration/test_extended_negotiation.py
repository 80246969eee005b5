"""SOP Class (Common) Extended Negotiation against a real pacsd (PS3.7 D.3.3.5-6, PS3.4 C.5,
K.5, B.3.1): what the A-ASSOCIATE-AC answers, and the matching each option switches on.

pynetdicom proposes the sub-items and reads pacsd's answer; DCMTK's storescu proposes storage
extended negotiation from an association profile (its findscu cannot propose any, so it
checks the policy rule's `person_name_matching` instead). Every query is run with and without
its option: it must match only with it. Expected results are written from the generated
studies and worklist items below, never computed with pacsd's code.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import (
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
)

from tests import datagen, worklist_data
from tests.conftest import _backends, index_url
from tests.datagen import StudyContext
from tests.harness import PacsdProcess, base_config, pacsd_command
from tests.qr_scu import FIND, GET, MOVE, Responses, collect, identifier
from tests.scu import store_files

UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
VERIFICATION = "1.2.840.10008.1.1"
MWL_FIND = "1.2.840.10008.5.1.4.31"
STORAGE_SERVICE_CLASS = "1.2.840.10008.4.2"
# A storage SOP class under the DICOM root that pacsd cannot name (newer than it).
NEWER_STORAGE = "1.2.840.10008.5.1.4.1.1.999.1"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
# Relational-queries, combined date-time, fuzzy names, timezone adjustment (Table C.5-1).
RELATIONAL, COMBINED, FUZZY, TIMEZONE = (
    b"\x01\x00\x00\x00",
    b"\x00\x01\x00\x00",
    b"\x00\x00\x01\x00",
    b"\x00\x00\x00\x01",
)


@dataclass(frozen=True)
class Study:
    """One generated study: what the queries below look for."""

    key: str  # A, B, C
    patient_id: str
    patient_name: str
    date: str
    time: str
    offset: str | None  # Timezone Offset From UTC of its instances
    modality: str


# A: Jan 1 23:00 at -0500 (Jan 2 05:00 at +0100); B: Jan 2 08:00, no offset; C: Jan 3 10:00 +0100.
STUDIES = [
    Study("A", "XN-1", "Müller^Jürgen", "20240101", "230000", "-0500", "CT"),
    Study("B", "XN-2", "Smith^John", "20240102", "080000", None, "MR"),
    Study("C", "XN-3", "Doe^Jane", "20240103", "100000", "+0100", "CT"),
]
# Worklist steps: W-4 (Müller^Jürgen, Dec 1 23:00) of worklist_data.PLAN gets an offset below.
WORKLIST_OFFSET = "-0500"


@dataclass
class Server:
    """pacsd with the studies stored and the worklist added."""

    server: PacsdProcess


def _policies() -> list[dict[str, Any]]:
    everything = ["verification", "storage", "query-retrieve", "worklist"]
    return [
        {"name": "fuzzy-rule", "match": {"calling_ae": "FUZZYRULE"}, "sop_classes": everything,
         "person_name_matching": "fuzzy"},
        {"name": "ci-rule", "match": {"calling_ae": "CIRULE"}, "sop_classes": everything,
         "person_name_matching": "case-insensitive"},
        {"name": "ct-only", "match": {"calling_ae": "CTONLY"},
         "sop_classes": ["verification", "CTImageStorage", "query-retrieve"],
         "peer_scp_role": ["CTImageStorage"]},
        {"name": "accept-all", "sop_classes": everything, "peer_scp_role": ["storage"]},
    ]  # fmt: skip


def _instances(folder: Path) -> list[Path]:
    """Two instances of each study of STUDIES, with its date, time and offset."""
    paths = []
    for study in STUDIES:
        context = StudyContext(
            patient_id=study.patient_id,
            patient_name=study.patient_name,
            accession_number=f"XACC-{study.key}",
            study_date=study.date,
        )
        for number in (1, 2):
            if study.modality == "CT":
                ds = datagen.ct_image(context, number, 16)
            else:
                ds = datagen.mr_image(context, number)
            ds.StudyTime = study.time
            if study.offset:
                ds.TimezoneOffsetFromUTC = study.offset
            paths.append(datagen.write_part10(ds, folder / f"{study.key}{number}.dcm"))
    return paths


@pytest.fixture(scope="module", params=_backends())
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("extneg")
    with index_url(request.param, root) as url:
        server = PacsdProcess.from_config(root, base_config(root, url, policies=_policies()))
        items = worklist_data.items()
        for item in items:
            if item.PatientID == "W-4":
                item.TimezoneOffsetFromUTC = WORKLIST_OFFSET
        path = worklist_data.write_json(items, root / "items.json")
        added = pacsd_command("worklist", "add", "--config", str(server.config_path), str(path))
        assert added.returncode == 0, added.stderr
        server.start()
        try:
            paths = _instances(root / "files")
            results = store_files(server.host, server.port, paths)
            assert [status for status, _ in results] == [0] * len(paths)
            yield Server(server)
        finally:
            server.stop()


# -- association helpers ----------------------------------------------------------------------


def extended(uid: str, information: bytes) -> SOPClassExtendedNegotiation:
    """A SOP Class Extended Negotiation sub-item (PS3.7 D.3.3.5)."""
    item = SOPClassExtendedNegotiation()
    item.sop_class_uid = uid
    item.service_class_application_information = information
    return item


def common(uid: str, *related: str, service_class: str = STORAGE_SERVICE_CLASS) -> Any:
    """A SOP Class Common Extended Negotiation sub-item (PS3.7 D.3.3.6)."""
    item = SOPClassCommonExtendedNegotiation()
    item.sop_class_uid = uid
    item.service_class_uid = service_class
    item.related_general_sop_class_identification = list(related)
    return item


def associate(
    server: PacsdProcess,
    contexts: list[str],
    calling: str = "EXTNEG",
    ext_neg: list[Any] | None = None,
    handlers: list[Any] | None = None,
) -> Association:
    """An established association proposing `contexts` (uncompressed) and `ext_neg` items."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for uid in contexts:
        ae.add_requested_context(uid, UNCOMPRESSED)
    assoc = ae.associate(
        server.host, server.port, ae_title="PACSD", ext_neg=ext_neg or [], evt_handlers=handlers
    )
    assert assoc.is_established
    return assoc


def find(
    served: Server,
    ds: Dataset,
    information: bytes | None = None,
    model: str = FIND["S"],
    calling: str = "EXTNEG",
) -> Responses:
    """One C-FIND, with `information` as the model's extended negotiation (None: no item)."""
    items = [extended(model, information)] if information is not None else []
    assoc = associate(served.server, [model], calling, items)
    try:
        return collect(assoc.send_c_find(ds, model))
    finally:
        assoc.release()


def studies(found: Responses) -> set[str]:
    """The keys (A, B, C) of the studies found, by accession number."""
    assert found.final_status == 0x0000, hex(found.final_status)
    by_accession = {f"XACC-{study.key}": study.key for study in STUDIES}
    return {by_accession[str(ds.AccessionNumber)] for ds in found.pending()}


def study_query(level: str = "STUDY", **keys: str) -> Dataset:
    return identifier(level, **{"AccessionNumber": "", "StudyInstanceUID": "", **keys})


# -- the A-ASSOCIATE-AC -----------------------------------------------------------------------


def test_the_a_associate_ac_answers_each_proposed_sop_class(served: Server) -> None:
    """PS3.7 D.3.3.5: one reply per SOP class with a sub-item, as long as the offer at most:
    C-FIND 1 for the four options pacsd performs and 0 for the rest (C.5.1.1.2), C-MOVE and
    C-GET relational-retrieval only (C.5.2.1.2), worklist with its reserved bytes 1 (K.5.1.2),
    storage level 2, signature level 3, no coercion (B.3.1.2); none for Verification."""
    items = [
        extended(FIND["S"], b"\x01" * 7),
        extended(MOVE["S"], b"\x01\x01"),
        extended(GET["P"], b"\x01"),
        extended(MWL_FIND, b"\x01\x01\x01\x01"),
        extended(CTImageStorage, bytes((3, 0, 0, 0, 2, 0))),
        extended(VERIFICATION, b"\x01"),
    ]
    contexts = [FIND["S"], MOVE["S"], GET["P"], MWL_FIND, CTImageStorage, MR_IMAGE, VERIFICATION]
    logged = len(served.server.events("extended negotiation"))
    assoc = associate(served.server, contexts, ext_neg=items)
    try:
        agreed = served.server.wait_for("extended negotiation", logged + 1)[-1]["agreed"]
        assert agreed["CTImageStorage"] == {"reply": "020003000000"}
        assert agreed["ModalityWorklistInformationModelFind"]["fuzzy_person_names"] is True
        assert assoc.acceptor.sop_class_extended == {
            FIND["S"]: b"\x01\x01\x01\x01\x00\x00\x00",
            MOVE["S"]: b"\x01\x00",
            GET["P"]: b"\x01",
            MWL_FIND: b"\x01\x01\x01\x01",
            CTImageStorage: bytes((2, 0, 3, 0, 0, 0)),
        }
        shown = _status_contexts(served.server)
        assert shown[FIND["S"]]["extended"] == {
            "relational": True,
            "combined_date_time": True,
            "fuzzy_person_names": True,
            "timezone_adjustment": True,
            "reply": "01010101000000",
        }
        assert "extended" not in shown[MR_IMAGE]
    finally:
        assoc.release()
    plain = associate(served.server, contexts)
    try:
        assert plain.acceptor.sop_class_extended == {}  # none proposed: none answered
    finally:
        plain.release()


def _status_contexts(server: PacsdProcess) -> dict[str, dict[str, Any]]:
    """The accepted contexts of the EXTNEG association, as `pacsd associations --json` shows."""
    with urllib.request.urlopen(server.status_url, timeout=5) as response:  # noqa: S310
        document = json.loads(response.read())
    [association] = [a for a in document["associations"] if a["calling_ae_title"] == "EXTNEG"]
    return {cx["abstract_syntax"]: cx for cx in association["accepted_contexts"]}


# -- C-FIND -----------------------------------------------------------------------------------


def test_relational_queries_lift_the_hierarchy(served: Server) -> None:
    """C.4.1.2.2: with relational-queries a SERIES query by patient name alone, or an IMAGE
    query by study date alone, is answered; without it, 0xA900 (C.4.1.2.1)."""
    series = identifier("SERIES", PatientName="Smith^John", SeriesInstanceUID="", Modality="")
    assert find(served, series).final_status == 0xA900
    found = find(served, series, RELATIONAL)
    assert found.final_status == 0x0000
    assert [str(ds.Modality) for ds in found.pending()] == ["MR"]
    images = identifier("IMAGE", StudyDate="20240103", SOPInstanceUID="", AccessionNumber="")
    assert find(served, images, model=FIND["P"]).final_status == 0xA900
    found = find(served, images, RELATIONAL, model=FIND["P"])
    assert {str(ds.AccessionNumber) for ds in found.pending()} == {"XACC-C"}
    assert len(found.pending()) == 2


def test_combined_date_time_matching(served: Server) -> None:
    """C.2.2.2.5: Jan 1 - Jan 3 with 22:00 - 09:00 is one period when negotiated (A: Jan 1
    23:00, B: Jan 2 08:00); matched apart, the inverted time range matches nothing."""
    ds = study_query(StudyDate="20240101-20240103", StudyTime="2200-0900")
    assert studies(find(served, ds, COMBINED)) == {"A", "B"}
    assert studies(find(served, ds)) == set()
    assert studies(find(served, ds, RELATIONAL)) == set()  # only byte 2 asks for it


def test_fuzzy_semantic_matching_of_person_names(served: Server) -> None:
    """C.2.2.2.1.1: case, accents and component order ignored when negotiated."""
    for name, expected in [("muller", {"A"}), ("john smith", {"B"}), ("DOE", {"C"})]:
        ds = study_query(PatientName=name)
        assert studies(find(served, ds, FUZZY)) == expected, name
        assert studies(find(served, ds)) == set(), name


def test_the_rule_sets_person_name_matching_without_negotiation(served: Server) -> None:
    """`person_name_matching` of the policy rule: fuzzy for FUZZYRULE, case-insensitive for
    CIRULE, the global exact default for the others; negotiated fuzzy wins everywhere."""
    muller, upper = study_query(PatientName="muller"), study_query(PatientName="MÜLLER^JÜRGEN")
    assert studies(find(served, muller, calling="FUZZYRULE")) == {"A"}
    assert studies(find(served, upper, calling="CIRULE")) == {"A"}
    assert studies(find(served, muller, calling="CIRULE")) == set()
    assert studies(find(served, muller, FUZZY, calling="CIRULE")) == {"A"}
    assert studies(find(served, upper)) == set()


def test_timezone_query_adjustment(served: Server) -> None:
    """C.2.2.2.1.3: in +0100, study A (Jan 1 23:00 at -0500) is on Jan 2, as is B (no offset:
    read as it is); the Timezone Offset From UTC key is then not matched, and comes back as
    each study stores it. Without the option it is an ordinary key and matches no study."""
    ds = study_query(StudyDate="20240102", TimezoneOffsetFromUTC="+0100")
    found = find(served, ds, TIMEZONE)
    assert studies(found) == {"A", "B"}
    offsets = {str(r.AccessionNumber): str(r.TimezoneOffsetFromUTC) for r in found.pending()}
    assert offsets == {"XACC-A": "-0500", "XACC-B": ""}
    assert studies(find(served, ds)) == set()
    # With combined matching too: 04:00 - 06:00 on Jan 2 in +0100 is A alone.
    window = study_query(StudyDate="20240102", StudyTime="0400-0600", TimezoneOffsetFromUTC="+0100")
    assert studies(find(served, window, b"\x00\x01\x00\x01")) == {"A"}
    assert studies(find(served, window, COMBINED)) == set()


# -- Modality Worklist ------------------------------------------------------------------------


def worklist_query(**keys: str) -> Dataset:
    ds = Dataset()
    ds.PatientName, ds.PatientID = keys.pop("PatientName", ""), ""
    for keyword in list(keys):
        if keyword == "TimezoneOffsetFromUTC":
            ds.TimezoneOffsetFromUTC = keys.pop(keyword)
    step = Dataset()
    step.ScheduledStationAETitle = step.Modality = step.ScheduledProcedureStepStartTime = ""
    step.ScheduledProcedureStepStartDate = keys.pop("date", "")
    ds.ScheduledProcedureStepSequence = Sequence([step])
    return ds


def worklist(served: Server, ds: Dataset, information: bytes | None = None) -> set[str]:
    """The Patient IDs of the worklist items found."""
    found = find(served, ds, information, model=MWL_FIND)
    assert found.final_status == 0x0000
    return {str(item.PatientID) for item in found.pending()}


def test_worklist_fuzzy_names_and_timezone(served: Server) -> None:
    """K.5.1: fuzzy names and timezone adjustment when negotiated; the Timezone Offset From
    UTC key is never matched in a worklist query (K.2.2.2)."""
    assert worklist(served, worklist_query(PatientName="muller"), b"\x01\x01\x01") == {"W-4"}
    assert worklist(served, worklist_query(PatientName="muller")) == set()
    # W-4 is Dec 1 23:00 at -0500: Dec 2 05:00 in +0100, like W-5 (Dec 2 12:00, no offset).
    day = worklist_query(date="20261202", TimezoneOffsetFromUTC="+0100")
    assert worklist(served, day, b"\x01\x01\x00\x01") == {"W-4", "W-5"}
    assert worklist(served, day) == {"W-5"}


# -- retrieve and storage ---------------------------------------------------------------------


def test_relational_retrieval_is_accepted_and_works(served: Server) -> None:
    """C.5.2.1.2 / C.5.3.1: relational-retrieval 1; a SERIES C-GET of the Patient Root model
    by Series Instance UID alone delivers the series."""
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="EXTNEG")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(GET["P"], UNCOMPRESSED)
    ae.add_requested_context(CTImageStorage, UNCOMPRESSED)
    assoc = ae.associate(
        served.server.host,
        served.server.port,
        ae_title="PACSD",
        ext_neg=[extended(GET["P"], b"\x01\x01"), build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    try:
        assert assoc.acceptor.sop_class_extended == {GET["P"]: b"\x01\x00"}
        series = find(
            served,
            study_query("SERIES", AccessionNumber="XACC-C", SeriesInstanceUID=""),
            RELATIONAL,
        )
        [series_uid] = [str(ds.SeriesInstanceUID) for ds in series.pending()]
        ds = identifier("SERIES", SeriesInstanceUID=series_uid)
        responses = collect(assoc.send_c_get(ds, GET["P"]))
        assert responses.final_status == 0x0000
        assert len(received) == 2
    finally:
        assoc.release()


def _newer_instance(folder: Path) -> tuple[Path, str]:
    context = StudyContext(patient_id="XN-9", accession_number="XACC-NEW")
    ds = datagen.ct_image(context, 1, 16)
    ds.SOPClassUID = NEWER_STORAGE
    return datagen.write_part10(ds, folder / "newer.dcm"), context.study_instance_uid


def test_a_newer_storage_class_is_stored_as_its_related_general_class(
    served: Server, tmp_path: Path
) -> None:
    """PS3.4 B.3.1.4 / PS3.7 D.3.3.6: for CTONLY (CT images only) a storage SOP class pacsd
    does not know is accepted when its common extended negotiation names CT Image Storage as
    related general class (not when it names only MR, or nothing); the instance is stored and
    found; the AC carries no common extended negotiation item."""
    path, study_uid = _newer_instance(tmp_path)
    for items in (
        [],
        [common(NEWER_STORAGE, MR_IMAGE)],
        [common(NEWER_STORAGE, CTImageStorage, service_class="1.2.840.10008.4.99")],
    ):
        refused = associate(served.server, [NEWER_STORAGE, VERIFICATION], "CTONLY", items)
        try:
            assert {cx.abstract_syntax for cx in refused.accepted_contexts} == {VERIFICATION}
        finally:
            refused.release()
    items = [common(NEWER_STORAGE, MR_IMAGE, CTImageStorage)]
    assoc = associate(served.server, [NEWER_STORAGE], "CTONLY", items)
    try:
        assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [NEWER_STORAGE]
        assert assoc.acceptor.sop_class_common_extended == {}
        status = assoc.send_c_store(dcmread(path))
        assert int(status.Status) == 0x0000
    finally:
        assoc.release()
    found = find(
        served,
        identifier(
            "IMAGE",
            StudyInstanceUID=study_uid,
            SOPClassUID="",
            SeriesInstanceUID=str(dcmread(path).SeriesInstanceUID),
            SOPInstanceUID="",
        ),
    )
    assert [str(ds.SOPClassUID) for ds in found.pending()] == [NEWER_STORAGE]


# -- DCMTK ------------------------------------------------------------------------------------

STORESCU_PROFILE = """
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LittleEndianExplicit
TransferSyntax2 = LittleEndianImplicit

[[PresentationContexts]]
[StoreContexts]
PresentationContext1 = CTImageStorage\\Uncompressed

[[ExtendedNegotiation]]
[StorageLevel]
ExtendedNegotiation1 = CTImageStorage\\030000000200

[[Profiles]]
[Store]
PresentationContexts = StoreContexts
ExtendedNegotiation = StorageLevel
"""


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.usefixtures("dcmtk")
def test_storescu_reads_pacsd_s_storage_answer(served: Server, tmp_path: Path) -> None:
    """DCMTK storescu proposes B.3.1.1 (SCU only, may coerce) from an association profile and
    prints pacsd's answer: level 2, signature level 3, no coercion."""
    config = tmp_path / "store.cfg"
    config.write_text(STORESCU_PROFILE, encoding="utf-8")
    ds = datagen.ct_image(StudyContext(patient_id="XN-8", accession_number="XACC-DCMTK"), 1, 16)
    path = datagen.write_part10(ds, tmp_path / "ct.dcm")
    server = served.server
    result = _run(
        "storescu", "-d", "-aet", "DCMTKSCU", "-aec", "PACSD", "-xf", str(config), "Store",
        server.host, str(server.port), str(path),
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    accepted = output.split("Accepted Extended Negotiation:", 2)[2]
    assert "[0x02, 0x00, 0x03, 0x00, 0x00, 0x00]" in accepted.split("END A-ASSOCIATE-AC")[0]


@pytest.mark.usefixtures("dcmtk")
def test_findscu_gets_the_rule_s_fuzzy_name_matching(served: Server, tmp_path: Path) -> None:
    """findscu cannot negotiate (DCMTK 3.6.7 has no option for it): the rule's
    `person_name_matching: fuzzy` gives it fuzzy matching all the same."""
    server = served.server

    def found(calling: str) -> set[str]:
        folder = tmp_path / calling
        folder.mkdir()
        result = _run(
            "findscu", "-S", "-X", "-od", str(folder), "-aet", calling, "-aec", "PACSD",
            "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=muller", "-k", "AccessionNumber",
            server.host, str(server.port),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return {str(dcmread(path).AccessionNumber) for path in folder.glob("rsp*.dcm")}

    assert found("FUZZYRULE") == {"XACC-A"}
    assert found("DCMTKSCU") == set()
