"""What the archive holds: counts, bytes, per modality and per SOP class, and free space.

A handful of aggregate statements over the index (one read connection) and one statvfs of the
storage root; blocking, for an executor thread or the command line.
"""

from __future__ import annotations

import shutil
from typing import Any

from sqlalchemy import func, select

from pacsd.admin.browse import iso_time
from pacsd.dicom.sop_classes import sop_class_keyword
from pacsd.index.database import IndexDatabase
from pacsd.index.models import Instance, Patient, Series, Study
from pacsd.storage.base import InstanceStore


def statistics(database: IndexDatabase, files: InstanceStore) -> dict[str, Any]:
    """The archive's counts and sizes, and its storage root's space (JSON-ready)."""
    per_modality = (
        select(
            Series.modality,
            func.count(Series.pk.distinct()),
            func.count(Instance.pk),
            func.coalesce(func.sum(Instance.file_size), 0),
        )
        .select_from(Series)
        .join(Instance, Instance.series_fk == Series.pk)
        .group_by(Series.modality)
        .order_by(Series.modality)
    )
    per_class = (
        select(
            Instance.sop_class_uid,
            func.count(Instance.pk),
            func.coalesce(func.sum(Instance.file_size), 0),
        )
        .group_by(Instance.sop_class_uid)
        .order_by(Instance.sop_class_uid)
    )
    totals = select(
        func.count(Instance.pk),
        func.coalesce(func.sum(Instance.file_size), 0),
        func.min(Instance.received_at),
        func.max(Instance.received_at),
    )
    with database.reading_connection() as connection:
        counts = {
            name: int(connection.execute(select(func.count()).select_from(table)).scalar_one())
            for name, table in (("patients", Patient), ("studies", Study), ("series", Series))
        }
        instances, size, first, last = connection.execute(totals).one()
        modalities = {
            modality or "": {"series": int(series), "instances": int(count), "bytes": int(b)}
            for modality, series, count, b in connection.execute(per_modality)
        }
        classes = {
            uid: {"keyword": sop_class_keyword(uid), "instances": int(count), "bytes": int(b)}
            for uid, count, b in connection.execute(per_class)
        }
    return {
        **counts,
        "instances": int(instances),
        "bytes": int(size),
        "first_received": iso_time(first),
        "last_received": iso_time(last),
        "modalities": modalities,
        "sop_classes": classes,
        "database": database.backend,
        "storage": storage_space(files),
    }


def storage_space(files: InstanceStore) -> dict[str, Any]:
    """The storage root's size, free space and the configured minimum (bytes); with an
    object store, the local work folder's (the bucket has no free space to report)."""
    try:
        usage = shutil.disk_usage(files.root)
    except OSError as exc:
        return {"root": str(files.root), "problem": exc.strerror or repr(exc)}
    return {
        "root": str(files.root),
        "total_bytes": usage.total,
        "free_bytes": usage.free,
        "min_free_bytes": files.min_free_space,
    }
