"""The counting points' sinks: what happens before prometheus_client is imported is not lost."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pacsd import metrics
from pacsd.http.metrics import PrometheusSink, Snapshot, install, render


@pytest.fixture
def restore_sink() -> Iterator[None]:
    """Leave the process's sink as it was (a do-nothing Sink)."""
    yield
    metrics.use(metrics.Sink())


def samples(sink: PrometheusSink) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The rendered scrape, parsed by prometheus_client's parser."""
    text = render(sink, None, Snapshot(123, 0, 0)).decode("utf-8")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.usefixtures("restore_sink")
def test_early_events_are_handed_to_the_prometheus_sink() -> None:
    """Events counted by an EarlySink reach the Prometheus sink installed after them."""
    metrics.use(metrics.EarlySink())
    metrics.association_established()
    metrics.association_rejected(1, 1, 3)
    metrics.operation_finished("C-STORE", 0x0000, 0.004)
    metrics.index_batch_written(3)
    metrics.connection_ended(True, 1000, 200)
    sink = install(None)
    metrics.use(sink)
    metrics.operation_finished("C-STORE", 0xA700, 0.002)
    found = samples(sink)
    assert found[("pacsd_associations_accepted_total", ())] == 1
    assert found[("pacsd_associations_open", ())] == 0
    rejected = (
        ("reason", "calling-ae-title-not-recognized"),
        ("result", "permanent"),
        ("source", "service-user"),
    )
    assert found[("pacsd_associations_rejected_total", rejected)] == 1
    stored = (("operation", "C-STORE"), ("status", "0x0000"))
    refused = (("operation", "C-STORE"), ("status", "0xA700"))
    assert found[("pacsd_dimse_operations_total", stored)] == 1
    assert found[("pacsd_dimse_operations_total", refused)] == 1
    assert found[("pacsd_dimse_duration_seconds_count", (("operation", "C-STORE"),))] == 2
    assert found[("pacsd_index_write_batch_size_sum", ())] == 3
    assert found[("pacsd_received_bytes_total", ())] == 1000
    assert found[("pacsd_sent_bytes_total", ())] == 200
    assert found[("pacsd_storage_free_bytes", ())] == 123


def test_early_sink_keeps_a_bounded_number_of_events() -> None:
    """Without a Prometheus sink ever installed, memory stays bounded."""
    early = metrics.EarlySink()
    for _ in range(early.MAX_EVENTS + 10):
        early.association_established()
    assert len(early.events) == early.MAX_EVENTS


def test_scrape_time_gauges_are_left_out_when_unknown() -> None:
    """A database that did not answer leaves its gauges out instead of failing the scrape."""
    text = render(install(None), None, Snapshot(5, None, None)).decode("utf-8")
    assert "pacsd_storage_free_bytes 5.0" in text
    assert "pacsd_storage_commitment_reports_pending" not in text
