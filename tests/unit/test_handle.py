"""The client handle: counters that add up across threads, and its JSON snapshot."""

from __future__ import annotations

import threading

from pacsd.handle import ClientHandle, NegotiatedContext


def test_counters_per_service_survive_concurrent_updates() -> None:
    """Invoked/completed/failed per DIMSE service and byte counts add up across threads."""
    handle = ClientHandle.connect("::1", 4242)

    def work() -> None:
        for _ in range(500):
            handle.operation_started("C-STORE")
            handle.operation_finished("C-STORE", failed=False, stored=True, size=10)
            handle.data_received(100)
            handle.data_sent(1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    handle.operation_started("C-ECHO")
    handle.operation_finished("C-ECHO", failed=True)
    counters = handle.snapshot()["counters"]
    assert counters["services"] == {
        "C-STORE": {"invoked": 2000, "completed": 2000, "failed": 0},
        "C-ECHO": {"invoked": 1, "completed": 1, "failed": 1},
    }
    assert counters["instances_stored"] == 2000
    assert counters["dataset_bytes_stored"] == 20000
    assert (counters["bytes_received"], counters["bytes_sent"]) == (200000, 2000)


def test_snapshot_splits_accepted_and_rejected_contexts() -> None:
    """The snapshot names SOP classes and keeps roles and results."""
    handle = ClientHandle.connect("127.0.0.1", 5)
    handle.contexts = [
        NegotiatedContext(1, "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", 0, True, True),
        NegotiatedContext(3, "1.2.3.4", "1.2.840.10008.1.2", 3),
    ]
    snapshot = handle.snapshot()
    [accepted] = snapshot["accepted_contexts"]
    assert accepted["sop_class"] == "CTImageStorage"
    assert (accepted["pacsd_scu"], accepted["pacsd_scp"]) == (True, True)
    assert [cx["result"] for cx in snapshot["rejected_contexts"]] == [3]
