"""DICOMweb goals of issue 18: QIDO-RS study search and WADO-RS study retrieval, pacsd beside
Orthanc with its DICOMweb plugin (Debian package orthanc-dicomweb), on the same archive.

Both servers hold benchmarks/query.py's archive (32x32x16-bit CT and MR instances, five per
study), fed the same files by DCMTK's storescu, on 127.0.0.1. One HTTP client (requests, one
keep-alive connection per server) alternates between the servers, which one goes first
alternating too:

- QIDO-RS /studies with a StudyDate range (the C-FIND rows' case; see `qido_cases`):
  milliseconds from request to the whole answer read; the Study Instance UIDs answered are
  compared with the plan.
- WADO-RS /studies/{uid} with `transfer-syntax=*` (as stored, PS3.18 8.7.3.5.2): instances/s
  and MB/s of the whole multipart body read; the parts are parsed and their SOP Instance UIDs
  compared with the plan.

Alone: python -m tests.perf --only dicomweb --find-instances 10000
"""

from __future__ import annotations

import io
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests
from pydicom import dcmread

from benchmarks import orthanc
from benchmarks.dcmtk import HOST
from benchmarks.ingest import count_instances
from benchmarks.query import PER_SERIES, Study, plan, write_archive
from tests.harness import PacsdProcess, base_config
from tests.perf.goals import GoalRow
from tests.perf.retrieval import (
    Bench,
    Problems,
    RetrievalOptions,
    Target,
    compare_row,
    ingest_rate,
    save_log_and_stop,
    tidy,
)

HTTP_TIMEOUT_S = 600.0
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@dataclass(frozen=True)
class WebTarget:
    """A server's DICOMweb root and its DICOM side (for ingest)."""

    target: Target
    root: str
    session: requests.Session


def progress(message: str) -> None:
    """Progress goes to stderr."""
    print(f"[dicomweb] {message}", file=sys.stderr, flush=True)


@contextmanager
def web_servers(run_dir: Path) -> Iterator[list[WebTarget]]:
    """pacsd and Orthanc with its DICOMweb plugin, empty; both stopped by their pids."""
    settings = {**orthanc.query_retrieve_settings({}), **orthanc.dicomweb_settings()}
    if "Plugins" not in settings:
        raise RuntimeError(f"Orthanc's DICOMweb plugin is missing ({orthanc.DICOMWEB_PLUGIN})")
    database_url = f"sqlite:///{run_dir / 'pacsd' / 'index.sqlite'}"
    config = base_config(run_dir / "pacsd", database_url)
    pacsd = PacsdProcess.from_config(run_dir / "pacsd", config)
    with ExitStack() as stack:
        stack.callback(save_log_and_stop, pacsd, run_dir / "pacsd.log")
        pacsd.start()
        reference = orthanc.OrthancServer.start(
            orthanc.ORTHANC, run_dir / "orthanc", run_dir / "orthanc.log", settings
        )
        stack.callback(reference.stop)
        sessions = [requests.Session(), requests.Session()]
        for session in sessions:
            stack.callback(session.close)
        yield [
            WebTarget(
                Target("pacsd", pacsd.port, "PACSD", lambda: count_instances(database_url)),
                f"{pacsd.http_url}/dicom-web",
                sessions[0],
            ),
            WebTarget(
                Target("orthanc", reference.port, reference.ae_title, reference.count_instances),
                f"http://{HOST}:{reference.http_port}/dicom-web",
                sessions[1],
            ),
        ]


def turns(webs: list[WebTarget], number: int) -> list[WebTarget]:
    """The servers in turn, the first one changing with every repetition `number`."""
    shift = number % len(webs)
    return [*webs[shift:], *webs[:shift]]


def qido_cases(studies: list[Study], repeat: int) -> Iterator[tuple[str, dict[str, str], set[str]]]:
    """(kind, query parameters, expected study UIDs): the C-FIND rows' StudyDate ranges.

    Not their PatientName wild card: Orthanc 1.10.1 with DICOMweb plugin 1.7 answers [] to
    every study search with a patient-level or wild card key (PatientName=ADA*, PatientName
    exact, PatientID=*, AccessionNumber=* all gave [] here, while StudyDate ranges and
    StudyInstanceUID matched), so there is nothing to compare."""
    years = sorted({study.study_date[:4] for study in studies})
    for number in range(repeat):
        month = f"{years[number % len(years)]}{number % 12 + 1:02d}"
        low, high = f"{month}01", f"{month}28"
        expected = {s.study_uid for s in studies if low <= s.study_date <= high}
        yield "StudyDate range", {"StudyDate": f"{low}-{high}"}, expected


def timed_qido(web: WebTarget, parameters: dict[str, str]) -> tuple[float, set[str]]:
    """One QIDO-RS study search: seconds, Study Instance UIDs answered."""
    started = time.perf_counter()
    response = web.session.get(
        f"{web.root}/studies",
        params={**parameters, "limit": "100000"},
        headers={"Accept": "application/dicom+json"},
        timeout=HTTP_TIMEOUT_S,
    )
    body = response.content
    seconds = time.perf_counter() - started
    response.raise_for_status()
    documents = response.json() if body else []
    return seconds, {str(d["0020000D"]["Value"][0]) for d in documents}


def parts(response: requests.Response, body: bytes) -> list[bytes]:
    """The contents of a multipart/related body's parts."""
    content_type = response.headers["Content-Type"]
    boundary = next(
        p.split("=", 1)[1].strip('"')
        for p in (part.strip() for part in content_type.split(";"))
        if p.lower().startswith("boundary=")
    )
    found = []
    for piece in body.split(b"--" + boundary.encode())[1:]:
        if piece.startswith(b"--"):
            break
        _head, _, content = piece.partition(b"\r\n\r\n")
        found.append(content[:-2] if content.endswith(b"\r\n") else content)
    return found


def timed_wado(web: WebTarget, study: Study) -> tuple[float, int, set[str]]:
    """One WADO-RS study retrieval: seconds, bytes, SOP Instance UIDs received."""
    started = time.perf_counter()
    response = web.session.get(
        f"{web.root}/studies/{study.study_uid}",
        headers={"Accept": AS_STORED},
        timeout=HTTP_TIMEOUT_S,
    )
    body = response.content
    seconds = time.perf_counter() - started
    response.raise_for_status()
    received = {str(dcmread(io.BytesIO(part)).SOPInstanceUID) for part in parts(response, body)}
    return seconds, len(body), received


def qido_rows(bench: Bench, webs: list[WebTarget], repeat: int) -> list[GoalRow]:
    """QIDO-RS latency per kind of query."""
    samples: dict[str, dict[str, list[float]]] = {}
    matches: dict[str, list[int]] = {}
    cases = [*qido_cases(bench.studies, 2), *qido_cases(bench.studies, repeat)]
    for number, (kind, parameters, expected) in enumerate(cases):
        for web in turns(webs, number):
            check = bench.problems.about(f"{web.target.name} QIDO-RS {kind} {parameters}")
            seconds, found = timed_qido(web, parameters)
            check.check(found == expected, f"{len(found)} studies, {len(expected)} due")
            if number >= 2:  # the first two queries warm up, unmeasured
                per_kind = samples.setdefault(kind, {})
                per_kind.setdefault(web.target.name, []).append(seconds * 1e3)
                matches.setdefault(kind, []).append(len(expected))
    return [
        compare_row(
            f"QIDO-RS study search, {kind}, {bench.size:,} instances",
            "ms",
            by_target,
            higher_is_better=False,
            note=f"{sum(matches[kind]) / len(matches[kind]):.0f} matches (mean); requests, "
            "one keep-alive connection each; Orthanc DICOMweb plugin",
        )
        for kind, by_target in samples.items()
    ]


def wado_rows(bench: Bench, webs: list[WebTarget], repeat: int) -> list[GoalRow]:
    """WADO-RS retrieval of one study: instances/s and MB/s."""
    studies = bench.studies
    rates: dict[str, list[float]] = {}
    throughput: dict[str, list[float]] = {}
    for number in range(repeat + 1):
        study = studies[(number * 7) % len(studies)]
        for web in turns(webs, number):
            check = bench.problems.about(f"{web.target.name} WADO-RS study {study.study_uid}")
            seconds, size, received = timed_wado(web, study)
            check.check(received == set(study.sop_uids), f"{len(received)} instances received")
            if number:  # the first retrieval warms up, unmeasured
                rates.setdefault(web.target.name, []).append(len(study.sop_uids) / seconds)
                throughput.setdefault(web.target.name, []).append(size / seconds / 1e6)
    note = (
        f"{PER_SERIES} instances of 32x32x16 bits per study, transfer-syntax=* (as stored); "
        "requests, whole body read and parsed"
    )
    return [
        compare_row(
            f"WADO-RS retrieve one study, {bench.size:,} instances",
            "instances/s",
            rates,
            True,
            note,
        ),
        compare_row(
            f"WADO-RS retrieve one study, {bench.size:,} instances",
            "MB/s",
            throughput,
            True,
            note,
        ),
    ]


def dicomweb_goals(
    work: Path, options: RetrievalOptions, repeat: int = 20
) -> tuple[list[GoalRow], list[str]]:
    """The DICOMweb rows on the first --find-instances archive size; (rows, problems)."""
    orthanc.ensure_installed()
    problems = Problems()
    size = options.find_instances[0]
    studies = plan(size)
    files = write_archive(work / "inputs" / f"archive-{size}", studies)
    run_dir = work / "runs" / f"dicomweb-{size}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    with web_servers(run_dir) as webs:
        bench = Bench(options, problems, [web.target for web in webs], run_dir, studies)
        for web in webs:
            progress(f"{web.target.name}: archive of {len(files)} instances")
            rate = ingest_rate(bench, web.target, files, "archive")
            progress(f"{web.target.name}: {rate:.0f} instances/s")
        rows = [*qido_rows(bench, webs, repeat), *wado_rows(bench, webs, repeat)]
    tidy(run_dir, options, problems)
    return rows, problems.found
