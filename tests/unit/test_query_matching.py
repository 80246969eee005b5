"""C-FIND matching (PS3.4 C.2.2.2) translated to SQL and run on a real index database.

The archive of tests/qr_archive.py is stored through pacsd's Archive into a real SQLite file
(and PostgreSQL when PACSD_TEST_DATABASE_URL is set); each test runs identifiers through
`parse_identifier` -> `index.query.find` and compares with a result computed by hand from the
generated entries.
"""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

from pacsd.archive import Archive, IncomingInstance
from pacsd.dicom.find_response import response_dataset, response_json
from pacsd.dicom.matching import MatchOptions, parse_identifier
from pacsd.dicom.qr_models import QUERY_RETRIEVE_LEVEL, Level
from pacsd.index.database import IndexDatabase, create_index_engine
from pacsd.index.query import find, usable_keys
from pacsd.index.schema import ensure_schema
from pacsd.settings import DuplicatePolicy
from pacsd.storage.filesystem import FilesystemStore
from tests import qr_archive
from tests.conftest import _backends, index_url
from tests.qr_archive import Entry


@pytest.fixture(scope="module", params=_backends())
def archive(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[IndexDatabase, list[Entry]]]:
    """The generated archive stored in a fresh index (one per backend, shared by the module)."""
    root = tmp_path_factory.mktemp("qr")
    with index_url(request.param, root) as url:
        database = IndexDatabase(create_index_engine(url))
        ensure_schema(database.engine)
        entries = qr_archive.build(root / "files")
        files = FilesystemStore(root / "storage", 0)
        files.prepare()
        store = Archive(files, database, DuplicatePolicy.KEEP_FIRST)
        for entry in entries:
            store.store(
                IncomingInstance(entry.path, entry.sop_class_uid, entry.sop_instance_uid, "TEST")
            )
        yield database, entries
        database.dispose()


UID_OF = {
    Level.PATIENT: ("PatientID", lambda e: e.patient_id),
    Level.STUDY: ("StudyInstanceUID", lambda e: e.study_uid),
    Level.SERIES: ("SeriesInstanceUID", lambda e: e.series_uid),
    Level.IMAGE: ("SOPInstanceUID", lambda e: e.sop_instance_uid),
}


def identifier(level: Level, charset: str | None = None, **keys: Any) -> Dataset:
    """An identifier as a peer would send it: encoded in `charset`, then decoded again."""
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = level.name
    ds.update({keyword: value for keyword, value in keys.items()})
    if UID_OF[level][0] not in ds:
        setattr(ds, UID_OF[level][0], "")
    return reencoded(ds)


def reencoded(ds: Dataset) -> Dataset:
    """`ds` written as Implicit VR Little Endian in its character set, then read and decoded."""
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = True, True
    write_dataset(buffer, ds)
    decoded = read_dataset(BytesIO(buffer.getvalue()), True, True)
    decoded.decode()
    return decoded


def query(
    archive: tuple[IndexDatabase, list[Entry]],
    level: Level,
    options: MatchOptions | None = None,
    charset: str | None = None,
    **keys: Any,
) -> set[str]:
    """The unique keys of the entities matching `keys` at `level`."""
    database, _entries = archive
    request = identifier(level, charset, **keys)
    parsed = parse_identifier(request, options or MatchOptions(), skip=[QUERY_RETRIEVE_LEVEL])
    usable, refused = usable_keys(parsed, level)
    assert not refused, [key.keyword for key in refused]
    tag = f"{int(request.data_element(UID_OF[level][0]).tag):08X}"
    return {match.header[tag]["Value"][0] for match in find(database, level, usable)}


def expected(archive: tuple[IndexDatabase, list[Entry]], level: Level, keep: Any) -> set[str]:
    """The unique keys at `level` of the entries `keep` accepts (computed independently)."""
    return {UID_OF[level][1](entry) for entry in archive[1] if keep(entry)}


def test_single_value_matching(archive: Any) -> None:
    assert query(archive, Level.STUDY, PatientID="PID-2") == expected(
        archive, Level.STUDY, lambda e: e.patient_id == "PID-2"
    )
    assert query(archive, Level.STUDY, AccessionNumber="ACC-1") == set()


def test_universal_matching_returns_everything(archive: Any) -> None:
    assert query(archive, Level.STUDY, PatientName="") == expected(
        archive, Level.STUDY, lambda e: True
    )
    assert len(query(archive, Level.PATIENT)) == 5


def test_wildcards_match_case_sensitively_by_default(archive: Any) -> None:
    assert query(archive, Level.PATIENT, PatientName="Doe*") == {"PID-1"}
    assert query(archive, Level.PATIENT, PatientName="*Jane") == {"PID-1"}
    assert query(archive, Level.PATIENT, PatientName="D?e^J*") == {"PID-1"}
    assert query(archive, Level.PATIENT, PatientName="doe^john") == {"PID-5"}
    assert query(archive, Level.STUDY, AccessionNumber="ACC-1*") == expected(
        archive, Level.STUDY, lambda e: e.accession.startswith("ACC-1")
    )


def test_person_names_can_match_case_insensitively(archive: Any) -> None:
    options = MatchOptions(person_name_case_insensitive=True)
    assert query(archive, Level.PATIENT, options, PatientName="doe*") == {"PID-1", "PID-5"}
    assert query(archive, Level.PATIENT, options, PatientName="DOE^JANE") == {"PID-1"}
    assert query(archive, Level.PATIENT, options, PatientName="müller*") == {"PID-3", "PID-4"}
    # Only PN ignores case: other VRs stay exact (PS3.4 C.2.2.2.1).
    assert query(archive, Level.STUDY, options, AccessionNumber="acc-101") == set()


def test_like_metacharacters_are_literal(archive: Any) -> None:
    assert query(archive, Level.PATIENT, PatientName="Doe%") == set()
    assert query(archive, Level.PATIENT, PatientName="D_e*") == set()


def test_list_of_uid_matching(archive: Any) -> None:
    studies = sorted({e.study_uid for e in archive[1]})[:2]
    assert query(archive, Level.STUDY, StudyInstanceUID=studies) == set(studies)


def test_date_ranges_closed_and_open(archive: Any) -> None:
    def dates(low: str, high: str) -> set[str]:
        return expected(archive, Level.STUDY, lambda e: low <= e.study_date <= high)

    assert query(archive, Level.STUDY, StudyDate="20240101-20240103") == dates(
        "20240101", "20240103"
    )
    assert query(archive, Level.STUDY, StudyDate="-20240101") == dates("0", "20240101")
    assert query(archive, Level.STUDY, StudyDate="20240104-") == dates("20240104", "9")
    assert query(archive, Level.STUDY, StudyDate="20240315") == dates("20240315", "20240315")


def test_time_range(archive: Any) -> None:
    assert query(archive, Level.STUDY, StudyTime="0800-1000") == expected(
        archive, Level.STUDY, lambda e: "080000" <= e.study_time <= "100000"
    )
    # A partial upper bound covers its whole hour (23 -> 23:59:59.999999).
    assert query(archive, Level.STUDY, StudyTime="23-") == expected(
        archive, Level.STUDY, lambda e: e.study_time >= "230000"
    )


def test_combined_date_time_range(archive: Any) -> None:
    """C.2.2.2.5: with combined date-time matching (negotiated, C.5.1.1), 20240101-20240103
    with 1000-0900 is Jan 1 10:00 .. Jan 3 09:00."""
    combined = MatchOptions(combined_date_time=True)
    found = query(
        archive, Level.STUDY, combined, StudyDate="20240101-20240103", StudyTime="1000-0900"
    )
    assert found == expected(
        archive,
        Level.STUDY,
        lambda e: "20240101100000" <= e.study_date + e.study_time <= "20240103090000",
    )
    assert len(found) == 2  # matched separately, the inverted time range would match nothing


def test_sequence_matching_with_one_item(archive: Any) -> None:
    def codes(value: str) -> Sequence:
        item = Dataset()
        item.CodeValue = value
        item.CodeMeaning = ""
        return Sequence([item])

    assert query(archive, Level.STUDY, ProcedureCodeSequence=codes("CT-CHEST")) == expected(
        archive, Level.STUDY, lambda e: "CT-CHEST" in e.procedure_codes
    )
    assert query(archive, Level.STUDY, ProcedureCodeSequence=codes("CT-*")) == expected(
        archive, Level.STUDY, lambda e: any(c.startswith("CT-") for c in e.procedure_codes)
    )


@pytest.mark.parametrize("charset", ["ISO_IR 100", "ISO_IR 192"])
def test_identifier_in_either_charset_matches_values_stored_in_either(
    archive: Any, charset: str
) -> None:
    # PID-3 was stored in ISO_IR 100, PID-4 in ISO_IR 192.
    assert query(archive, Level.PATIENT, charset=charset, PatientName="Müller*") == {
        "PID-3",
        "PID-4",
    }
    assert query(archive, Level.PATIENT, charset=charset, PatientName="Müller^Jürgen") == {"PID-3"}


def test_series_and_image_levels(archive: Any) -> None:
    study = next(e.study_uid for e in archive[1] if e.accession == "ACC-101")
    assert query(archive, Level.SERIES, StudyInstanceUID=study, Modality="MR") == expected(
        archive, Level.SERIES, lambda e: e.study_uid == study and e.modality == "MR"
    )
    assert query(archive, Level.SERIES, Modality=["CT", "MR"]) == expected(
        archive, Level.SERIES, lambda e: True
    )
    series = next(e.series_uid for e in archive[1] if e.accession == "ACC-101")
    found = query(archive, Level.IMAGE, SeriesInstanceUID=series, InstanceNumber="2")
    assert len(found) == 1
    assert found <= expected(archive, Level.IMAGE, lambda e: e.series_uid == series)


# PS3.4 C.2.2.2.4 allows wild cards in CS keys; pydicom's value validation does not know that.
@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")
def test_keys_without_index_column_match_on_the_header(archive: Any) -> None:
    assert query(archive, Level.IMAGE, PhotometricInterpretation="MONO*", Rows=8) == expected(
        archive, Level.IMAGE, lambda e: True
    )
    assert query(archive, Level.IMAGE, Rows=9) == set()


def test_modalities_in_study_matches_any_series(archive: Any) -> None:
    assert query(archive, Level.STUDY, ModalitiesInStudy="MR") == expected(
        archive,
        Level.STUDY,
        lambda e: any(o.study_uid == e.study_uid and o.modality == "MR" for o in archive[1]),
    )


def test_responses_carry_every_requested_key_and_the_computed_ones(archive: Any) -> None:
    database, _entries = archive
    request = identifier(
        Level.STUDY,
        AccessionNumber="ACC-101",
        PatientName="",
        StudyDescription="",
        ModalitiesInStudy="",
        SOPClassesInStudy="",
        NumberOfStudyRelatedSeries="",
        NumberOfStudyRelatedInstances="",
        NumberOfPatientRelatedStudies="",
        InstitutionName="",  # not stored: returned empty
        ProcedureCodeSequence=[],
    )
    keys = parse_identifier(request, MatchOptions(), skip=[QUERY_RETRIEVE_LEVEL])
    usable, _refused = usable_keys(keys, Level.STUDY)
    [match] = list(find(database, Level.STUDY, usable))
    response = response_dataset(response_json(keys, match.header, match.computed), [])
    assert response.PatientName == "Doe^Jane"
    assert response.StudyDescription == "Study ACC-101"
    assert list(response.ModalitiesInStudy) == ["CT", "MR"]
    assert len(response.SOPClassesInStudy) == 2
    assert response.NumberOfStudyRelatedSeries == 2
    assert response.NumberOfStudyRelatedInstances == 4
    assert response.NumberOfPatientRelatedStudies == 2
    assert "InstitutionName" in response
    assert response.InstitutionName == ""
    assert response.ProcedureCodeSequence[0].CodeValue == "CT-CHEST"
    assert "StudyDate" not in response  # nothing that was not asked for


def test_keys_below_the_query_level_are_refused_not_matched(archive: Any) -> None:
    request = identifier(Level.STUDY, SOPInstanceUID="1.2.3", Modality="CT")
    keys = parse_identifier(request, MatchOptions(), skip=[QUERY_RETRIEVE_LEVEL])
    _usable, refused = usable_keys(keys, Level.STUDY)
    assert {key.keyword for key in refused} == {"SOPInstanceUID", "Modality"}


def test_results_stream_in_batches(archive: Any) -> None:
    database, entries = archive
    matches = list(find(database, Level.IMAGE, [], batch_size=4))
    assert len(matches) == len(entries)


def test_response_charset_follows_the_values(archive: Any) -> None:
    database, _entries = archive
    for charset, name, wanted in [
        ("ISO_IR 100", "Müller^Jürgen", "ISO_IR 100"),
        (None, "Müller^Jürgen", "ISO_IR 192"),
        ("ISO_IR 100", "Doe^Jane", "ISO_IR 100"),
    ]:
        request = identifier(Level.PATIENT, charset, PatientName=name)
        keys = parse_identifier(request, MatchOptions(), skip=[QUERY_RETRIEVE_LEVEL])
        [match] = list(find(database, Level.PATIENT, usable_keys(keys, Level.PATIENT)[0]))
        terms = [charset] if charset else []
        response = response_dataset(response_json(keys, match.header, match.computed), terms)
        assert response.SpecificCharacterSet == wanted
        assert reencoded(response).PatientName == name


def test_date_and_time_ranges_match_independently_by_default(archive: Any) -> None:
    """C.5.1.1: without combined date-time matching the two ranges apply on their own: each
    of the days, from 08:00 to 10:30."""
    found = query(archive, Level.STUDY, StudyDate="20240101-20240103", StudyTime="0800-1030")
    assert found == expected(
        archive,
        Level.STUDY,
        lambda e: "20240101" <= e.study_date <= "20240103" and "080000" <= e.study_time <= "103000",
    )
    assert len(found) == 3
    assert (
        query(archive, Level.STUDY, StudyDate="20240101-20240103", StudyTime="1000-0900") == set()
    )


def _mr_in_study(archive: Any, entry: Entry) -> bool:
    return any(o.study_uid == entry.study_uid and o.modality == "MR" for o in archive[1])


@pytest.mark.parametrize("level", [Level.STUDY, Level.SERIES, Level.IMAGE])
def test_study_keys_match_at_lower_levels(archive: Any, level: Level) -> None:
    """Relational-queries (C.4.1.3.2): keys of the levels above match the entity's parents,
    without their unique keys; ModalitiesInStudy and SOPClassesInStudy look at the whole
    study even when the outer query joins the entity's own series."""
    assert query(archive, level, ModalitiesInStudy="MR") == expected(
        archive, level, lambda e: _mr_in_study(archive, e)
    )
    mr_class = next(e.sop_class_uid for e in archive[1] if e.modality == "MR")
    assert query(archive, level, SOPClassesInStudy=mr_class) == expected(
        archive, level, lambda e: _mr_in_study(archive, e)
    )
    if level > Level.STUDY:  # the CT series (instances) of the studies that have an MR one
        assert query(archive, level, ModalitiesInStudy="MR", Modality="CT") == expected(
            archive, level, lambda e: _mr_in_study(archive, e) and e.modality == "CT"
        )


@pytest.mark.parametrize("level", [Level.SERIES, Level.IMAGE])
def test_patient_and_study_keys_at_series_and_image_level(archive: Any, level: Level) -> None:
    found = query(archive, level, PatientName="Doe*", StudyDate="20240101-20240320")
    assert found == expected(
        archive,
        level,
        lambda e: e.patient_name.startswith("Doe") and "20240101" <= e.study_date <= "20240320",
    )
    assert len({e.study_uid for e in archive[1] if UID_OF[level][1](e) in found}) == 2
    assert query(archive, level, AccessionNumber="ACC-201", PatientID="PID-2") == expected(
        archive, level, lambda e: e.accession == "ACC-201"
    )


def test_fuzzy_person_names_in_the_index(archive: Any) -> None:
    """C.2.2.2.1.1 fuzzy semantic matching: case, accents and order do not matter; the index
    does not narrow such a key in SQL, the matcher decides on every candidate."""
    fuzzy = MatchOptions(fuzzy_person_names=True)
    assert query(archive, Level.PATIENT, fuzzy, PatientName="muller") == {"PID-3", "PID-4"}
    assert query(archive, Level.PATIENT, fuzzy, PatientName="john doe") == {"PID-5"}
    assert query(archive, Level.PATIENT, fuzzy, PatientName="DOE") == {"PID-1", "PID-5"}
    assert query(archive, Level.STUDY, fuzzy, PatientName="jurgen mull*") == expected(
        archive, Level.STUDY, lambda e: e.patient_id == "PID-3"
    )
    assert query(archive, Level.PATIENT, PatientName="muller") == set()  # exact by default


def test_timezone_adjustment_leaves_values_without_an_offset(archive: Any) -> None:
    """The generated instances carry no Timezone Offset From UTC: read in any timezone they
    match as they are, and the widened date conditions lose nothing."""
    database, _entries = archive
    request = identifier(Level.STUDY, StudyDate="20240102-20240103", StudyTime="")
    keys = parse_identifier(request, MatchOptions(), skip=[QUERY_RETRIEVE_LEVEL])
    for zone in (None, -720, 0, 840):
        found = {
            match.header["0020000D"]["Value"][0]
            for match in find(database, Level.STUDY, keys, zone=zone)
        }
        assert found == expected(
            archive, Level.STUDY, lambda e: e.study_date in ("20240102", "20240103")
        )
