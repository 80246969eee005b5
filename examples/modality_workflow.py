"""A modality's day with pacsd, end to end, in pynetdicom: worklist, MPPS, store, commit.

    python examples/modality_workflow.py --host 127.0.0.1 --port 11112 --station CT01 IMAGES...

1. Modality Worklist C-FIND for today's steps of --station; takes the first.
2. MPPS N-CREATE (IN PROGRESS) for that step.
3. C-STORE of IMAGES, rewritten into the step's patient and study (new series and instance UIDs).
4. MPPS N-SET COMPLETED, listing the series and its images.
5. Storage Commitment N-ACTION for those images, then waits (bounded) for the N-EVENT-REPORT on
   the same association and prints what pacsd committed.
Exit code 0 when every image was committed.
"""

from __future__ import annotations

import argparse
import datetime
import queue
import sys
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from pynetdicom import AE, StoragePresentationContexts, evt

MWL = "1.2.840.10008.5.1.4.31"
MPPS = "1.2.840.10008.3.1.2.3.3"
COMMIT = "1.2.840.10008.1.20.1"
COMMIT_INSTANCE = "1.2.840.10008.1.20.1.1"
REPORT_WAIT_S = 60


def worklist_query(station: str, day: str) -> Dataset:
    step = Dataset()
    step.ScheduledStationAETitle = station
    step.ScheduledProcedureStepStartDate = day
    for keyword in ("ScheduledProcedureStepStartTime", "Modality", "ScheduledProcedureStepID"):
        setattr(step, keyword, "")
    step.ScheduledProcedureStepDescription = ""
    ds = Dataset()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
        setattr(ds, keyword, "")
    for keyword in ("AccessionNumber", "RequestedProcedureID", "StudyInstanceUID"):
        setattr(ds, keyword, "")
    ds.RequestedProcedureDescription = ""
    ds.ScheduledProcedureStepSequence = Sequence([step])
    return ds


def mpps_create(item: Dataset, station: str, now: datetime.datetime) -> Dataset:
    step = item.ScheduledProcedureStepSequence[0]
    scheduled = Dataset()
    scheduled.StudyInstanceUID = item.StudyInstanceUID
    scheduled.AccessionNumber = item.AccessionNumber
    scheduled.RequestedProcedureID = item.RequestedProcedureID
    scheduled.RequestedProcedureDescription = item.get("RequestedProcedureDescription", "")
    scheduled.ScheduledProcedureStepID = step.ScheduledProcedureStepID
    scheduled.ScheduledProcedureStepDescription = step.get("ScheduledProcedureStepDescription", "")
    scheduled.ReferencedStudySequence = Sequence()
    scheduled.ScheduledProtocolCodeSequence = Sequence()
    ds = Dataset()
    ds.ScheduledStepAttributesSequence = Sequence([scheduled])
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
        setattr(ds, keyword, item.get(keyword, ""))
    ds.PerformedProcedureStepID = f"PPS{now:%H%M%S}"
    ds.PerformedStationAETitle = station
    ds.PerformedProcedureStepStartDate = f"{now:%Y%m%d}"
    ds.PerformedProcedureStepStartTime = f"{now:%H%M%S}"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepDescription = step.get("ScheduledProcedureStepDescription", "")
    ds.Modality = step.Modality
    for keyword in ("PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime", "StudyID"):
        setattr(ds, keyword, "")
    ds.PerformedSeriesSequence = Sequence()
    return ds


def images_for(item: Dataset, paths: list[Path]) -> tuple[list[Dataset], str]:
    """The images, rewritten into the worklist item's patient and study, as one new series."""
    series_uid = str(generate_uid())
    images: list[Dataset] = []
    for number, path in enumerate(paths, start=1):
        ds = dcmread(path)
        for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "AccessionNumber"):
            setattr(ds, keyword, item.get(keyword, ""))
        ds.SeriesInstanceUID, ds.SOPInstanceUID = series_uid, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number
        images.append(ds)
    return images, series_uid


def mpps_complete(images: list[Dataset], series_uid: str) -> Dataset:
    series = Dataset()
    series.SeriesInstanceUID = series_uid
    series.ProtocolName = "Example"
    for keyword in ("PerformingPhysicianName", "OperatorsName", "SeriesDescription"):
        setattr(series, keyword, "")
    series.RetrieveAETitle = ""
    series.ReferencedImageSequence = Sequence([reference(ds) for ds in images])
    series.ReferencedNonImageCompositeSOPInstanceSequence = Sequence()
    now = datetime.datetime.now()
    ds = Dataset()
    ds.PerformedProcedureStepStatus = "COMPLETED"
    ds.PerformedProcedureStepEndDate = f"{now:%Y%m%d}"
    ds.PerformedProcedureStepEndTime = f"{now:%H%M%S}"
    ds.PerformedSeriesSequence = Sequence([series])
    return ds


def reference(ds: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    return item


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11112)
    parser.add_argument("--called", default="PACSD", help="pacsd's AE title")
    parser.add_argument("--station", required=True, help="this modality's AE title")
    parser.add_argument("--date", default=f"{datetime.date.today():%Y%m%d}")
    parser.add_argument("images", nargs="+", type=Path)
    args = parser.parse_args(argv)

    reports: queue.Queue[Dataset] = queue.Queue()

    def on_report(event: Any) -> tuple[int, None]:
        reports.put(event.event_information)
        return 0x0000, None

    ae = AE(ae_title=args.station)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for uid in (MWL, MPPS, COMMIT):
        ae.add_requested_context(uid)
    for context in StoragePresentationContexts[:100]:
        ae.add_requested_context(str(context.abstract_syntax))
    handlers: list[Any] = [(evt.EVT_N_EVENT_REPORT, on_report)]
    assoc = ae.associate(args.host, args.port, ae_title=args.called, evt_handlers=handlers)
    if not assoc.is_established:
        print("pacsd did not accept the association", file=sys.stderr)
        return 1
    try:
        query = worklist_query(args.station, args.date)
        items = [
            ds
            for status, ds in assoc.send_c_find(query, MWL)
            if ds is not None and status.Status in (0xFF00, 0xFF01)
        ]
        if not items:
            print(f"no worklist item for {args.station} on {args.date}", file=sys.stderr)
            return 1
        item = items[0]
        print(f"1 worklist: {item.PatientName} {item.AccessionNumber} ({len(items)} found)")
        mpps_uid = generate_uid()
        created = mpps_create(item, args.station, datetime.datetime.now())
        status, _ = assoc.send_n_create(created, MPPS, mpps_uid)
        print(f"2 MPPS N-CREATE: 0x{status.Status:04X}")
        images, series_uid = images_for(item, args.images)
        stored = [assoc.send_c_store(ds).Status for ds in images]
        print(f"3 C-STORE: {sum(1 for s in stored if s == 0)}/{len(images)} stored")
        status, _ = assoc.send_n_set(mpps_complete(images, series_uid), MPPS, mpps_uid)
        print(f"4 MPPS N-SET COMPLETED: 0x{status.Status:04X}")
        request = Dataset()
        request.TransactionUID = generate_uid()
        request.ReferencedSOPSequence = Sequence([reference(ds) for ds in images])
        status, _ = assoc.send_n_action(request, 1, COMMIT, COMMIT_INSTANCE)
        print(f"5 commitment N-ACTION: 0x{status.Status:04X}")
        report = reports.get(timeout=REPORT_WAIT_S)
        committed = len(report.get("ReferencedSOPSequence") or [])
        failed = len(report.get("FailedSOPSequence") or [])
        print(f"  commitment report: {committed} committed, {failed} failed")
        return 0 if committed == len(images) and not failed else 1
    finally:
        assoc.release()


if __name__ == "__main__":
    sys.exit(main())
