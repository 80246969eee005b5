"""net/reactor.Checkpoint: `parked` says whether a thread is blocked on the cleared checkpoint.

services/retrieve.pause_reactor trusts it to know that the association's reactor is held off
the DIMSE queue before a C-STORE sub-operation is sent: `parked` must be set only while a
thread is really blocked, and cleared as soon as it is woken.
"""

import threading

from pacsd.net.reactor import Checkpoint

WAIT_S = 5.0


def test_a_set_checkpoint_lets_a_waiter_through_without_parking_it() -> None:
    checkpoint = Checkpoint()
    checkpoint.set()
    assert checkpoint.wait(WAIT_S) is True
    assert checkpoint.is_set()
    assert not checkpoint.parked.is_set()


def test_parked_while_blocked_and_no_longer_once_set() -> None:
    checkpoint = Checkpoint()
    results: list[bool] = []
    waiter = threading.Thread(target=lambda: results.append(checkpoint.wait(WAIT_S)))
    waiter.start()
    assert checkpoint.parked.wait(WAIT_S)  # the waiter is blocked
    checkpoint.set()
    assert not checkpoint.parked.is_set()  # woken at once, before it even runs again
    waiter.join(WAIT_S)
    assert results == [True]
    assert not checkpoint.parked.is_set()


def test_cleared_again_before_the_woken_waiter_returns_is_not_parked_until_it_waits_again() -> None:
    """The race pause_reactor guards against: set, then clear before the reactor has run."""
    checkpoint = Checkpoint()
    passes: list[bool] = []
    through = threading.Event()

    def reactor() -> None:
        passes.append(checkpoint.wait(WAIT_S))
        through.set()
        passes.append(checkpoint.wait(WAIT_S))

    thread = threading.Thread(target=reactor)
    thread.start()
    assert checkpoint.parked.wait(WAIT_S)
    checkpoint.set()
    checkpoint.clear()  # the next send pauses the reactor again at once
    assert through.wait(WAIT_S)  # it went through once (it was woken)...
    assert checkpoint.parked.wait(WAIT_S)  # ...and is blocked again
    assert not checkpoint.is_set()
    checkpoint.set()
    thread.join(WAIT_S)
    assert passes == [True, True]


def test_a_wait_that_times_out_leaves_it_unparked() -> None:
    checkpoint = Checkpoint()
    assert checkpoint.wait(0.01) is False
    assert not checkpoint.parked.is_set()
    assert not checkpoint.is_set()
