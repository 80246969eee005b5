"""An example pacsd site service: Example Ping, a made-up private SOP class.

pacsd finds `service` through the entry point `example-ping` of the group `pacsd.services`
(pyproject.toml) when the configuration lists it in `extensions`, and calls it with the
validated settings. What it returns says which SOP class the site serves, under which policy
group and operation (`site:example-ping`), and which handler answers each DIMSE request.
Handlers run in pacsd's executor threads; pacsd's guard asks the policy before each one and
turns the DicomStatusErrors they raise into statuses.
"""

from __future__ import annotations

import threading

from pydicom.dataset import Dataset

from pacsd.extensions import (
    ACTION_TYPE_ID,
    ClientHandle,
    NoSuchAction,
    NoSuchObjectInstance,
    OperationResult,
    Request,
    SiteService,
)
from pacsd.settings import Settings

# Made up for this example (not registered to anything): a site uses a UID root of its own.
EXAMPLE_PING = "1.2.826.0.1.3680043.10.1407.999.1"
COUNTER_INSTANCE = f"{EXAMPLE_PING}.1"  # the one SOP instance: the ping counter
PING = 1  # Action Type ID of the ping action
SUCCESS = 0x0000


class Pings:
    """The pings this process answered (handlers run in several threads at once)."""

    def __init__(self, ae_title: str) -> None:
        self.ae_title = ae_title
        self.count = 0
        self._lock = threading.Lock()

    def on_n_action(self, request: Request, handle: ClientHandle) -> OperationResult:
        """Action Type 1, ping: an Action Reply with a pong and the count so far."""
        _the_counter(request)
        action = request.command.number(ACTION_TYPE_ID)
        if action != PING:
            raise NoSuchAction(f"action type {action} is not ping (1)")
        # Action Information is optional: a Text Value in it is sent back with the pong.
        information = request.dataset() if request.command.has_data_set else Dataset()
        message = str(information.get("TextValue", ""))
        with self._lock:
            self.count += 1
            count = self.count
        reply = Dataset()
        reply.TextValue = f"pong from {self.ae_title} {message}".strip()
        reply.NumericValue = str(count)
        handle.log.info("ping answered", count=count)
        return OperationResult(SUCCESS, outcome="pong", dataset=reply)

    def on_n_get(self, request: Request, handle: ClientHandle) -> OperationResult:
        """The counter's one attribute, Numeric Value (an empty or any list: it)."""
        _the_counter(request)
        with self._lock:
            count = self.count
        attributes = Dataset()
        attributes.NumericValue = str(count)
        return OperationResult(SUCCESS, dataset=attributes)


def _the_counter(request: Request) -> None:
    if request.sop_instance_uid != COUNTER_INSTANCE:
        raise NoSuchObjectInstance(f"no instance {request.sop_instance_uid} (the counter only)")


def service(settings: Settings) -> SiteService:
    """The entry point's factory: the site service, built from pacsd's settings."""
    pings = Pings(settings.ae_title)
    return SiteService(
        name="site:example-ping",
        sop_classes={EXAMPLE_PING: "ExamplePingSOPClass"},
        handlers={"N-ACTION": pings.on_n_action, "N-GET": pings.on_n_get},
        description="Example Ping: N-ACTION ping, N-GET of the ping counter",
    )
