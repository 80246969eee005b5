"""The outgoing queues: Storage Commitment reports and UPS event reports still to deliver.

Read from the index (index/commitment.py, index/ups.py), blocking; the same lists as
`pacsd commitment list` and `pacsd ups list` show.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pacsd.index import commitment, ups
from pacsd.index.database import IndexDatabase


def outgoing(database: IndexDatabase) -> dict[str, Any]:
    """{"commitment": {"pending", "requests"}, "ups_events": {"pending", "subscribers"}}."""
    requests = commitment.list_requests(database)
    reports = ups.list_queues(database)
    return {
        "commitment": {
            "pending": len(requests),
            "requests": [asdict(request) for request in requests],
        },
        "ups_events": {
            "pending": sum(queue.reports for queue in reports),
            "subscribers": [asdict(queue) for queue in reports],
        },
    }
