"""The extension point for site services: a site's own DIMSE service, served like pacsd's own.

A site package declares an entry point in the group `pacsd.services` (its pyproject.toml):

    [project.entry-points."pacsd.services"]
    ping = "pacsd_site_ping:service"

The object it names is a factory, `service(settings: Settings) -> SiteService`. pacsd loads
only the entry points that the configuration's `extensions` lists, while the configuration
loads (settings.load_settings), once per process: between a first validation, which takes
`site:` names on trust, and the second, which checks them against the groups registered here,
so that a rule may name the site's group. Entry points are looked up only then (with
`extensions` empty, never). Forked workers inherit what was loaded, and a SIGHUP reload keeps it
(a changed `extensions` list takes a restart, like the other sections a reload cannot apply).
The factory runs in `pacsd config check` and `pacsd policy explain` too: it should build the
service and nothing more (no threads, no connections; open those in the handlers, lazily).

A `SiteService` names its group, `site:...`, which a rule grants in `sop_classes` and which is
also the policy operation of its SOP classes (a rule's `operations` may list it); its SOP
classes (UID -> keyword: private ones, or standard ones pacsd has no service for); and its
handlers, one per DIMSE request. Its contexts are negotiated as the built-in services' are
(accepted when the rule grants the group, in uncompressed transfer syntaxes, engine/
negotiation.py); each request runs in the operations executor through the guard
(services/guard.py: the policy's per-request check, 0x0124 when refused, exceptions to
statuses, the `dimse` log line and the audit record); a request it has no handler for
answers 0x0211 Unrecognized Operation (PS3.7 C.5.22). Handlers take pacsd's own `Request` and
`ClientHandle` and return an `OperationResult`, all re-exported here with the command
elements a handler reads (`request.command.number(ACTION_TYPE_ID)`,
`request.command.tags(ATTRIBUTE_IDENTIFIER_LIST)`); `request.dataset()` decodes the data set
(DataSetError when there is none). A `DicomStatusError` (NoSuchAction, ... or a subclass with
its own `status`) answers its status with its message as Error Comment, any other exception
0x0110 Processing Failure, logged with its traceback. Handlers run in executor threads, several
at once: guard shared state with a lock. examples/site_service/ is a complete site package.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, TypeAlias

from pacsd.dicom import sop_classes
from pacsd.dimse import commands as c
from pacsd.dimse.commands import ACTION_TYPE_ID, ATTRIBUTE_IDENTIFIER_LIST, EVENT_TYPE_ID
from pacsd.dimse.messages import DataSetError, Request
from pacsd.errors import (
    DicomStatusError,
    MissingAttribute,
    NoSuchAction,
    NoSuchObjectInstance,
    ProcessingFailure,
)
from pacsd.handle import ClientHandle
from pacsd.services.guard import Operation, OperationResult, StreamOperation, StreamReport
from pacsd.services.ports import OperationPort

if TYPE_CHECKING:
    from pacsd.settings import Settings

__all__ = [
    "ACTION_TYPE_ID",
    "ATTRIBUTE_IDENTIFIER_LIST",
    "ENTRY_POINT_GROUP",
    "EVENT_TYPE_ID",
    "ClientHandle",
    "DataSetError",
    "DicomStatusError",
    "MissingAttribute",
    "NoSuchAction",
    "NoSuchObjectInstance",
    "Operation",
    "OperationPort",
    "OperationResult",
    "ProcessingFailure",
    "Request",
    "SiteService",
    "SiteServiceFactory",
    "StreamOperation",
    "StreamReport",
]

ENTRY_POINT_GROUP = "pacsd.services"
# The requests a site service may answer with one response (PS3.7 10.1: the N-services) and
# with pending responses through an OperationPort (PS3.7 9.1.2: C-FIND).
SINGLE_ANSWER = {
    "N-EVENT-REPORT": c.N_EVENT_REPORT_RQ,
    "N-GET": c.N_GET_RQ,
    "N-SET": c.N_SET_RQ,
    "N-ACTION": c.N_ACTION_RQ,
    "N-CREATE": c.N_CREATE_RQ,
    "N-DELETE": c.N_DELETE_RQ,
}
STREAMING = {"C-FIND": c.C_FIND_RQ}
# (command field, group) -> handler: the engine's two routing tables (Services.simple, .streams).
Routes: TypeAlias = tuple[dict[tuple[int, str], Operation], dict[tuple[int, str], StreamOperation]]


@dataclass(frozen=True)
class SiteService:
    """A site's DIMSE service: its group, its SOP classes and a handler per request.

    `name`: `site:` and 1 to 48 lowercase letters, digits, '.', '_' or '-': the group a rule's
    `sop_classes` grants and the operation the guard asks the policy about.
    `sop_classes`: SOP Class UID -> keyword (a capital letter, then letters and digits), which
    rules and logs use. `handlers`: DIMSE request name ("N-ACTION", ...) -> a handler that
    answers once; `streams`: "C-FIND" -> a handler that sends pending responses through its
    port and leaves the final status in its StreamReport. Raises ValueError when something is
    not valid (or collides with what pacsd serves itself).
    """

    name: str
    sop_classes: Mapping[str, str]
    handlers: Mapping[str, Operation] = field(default_factory=dict)
    streams: Mapping[str, StreamOperation] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "sop_classes", MappingProxyType(dict(self.sop_classes)))
        object.__setattr__(self, "handlers", MappingProxyType(dict(self.handlers)))
        object.__setattr__(self, "streams", MappingProxyType(dict(self.streams)))
        problem = self._problem()
        if problem is not None:
            raise ValueError(f"site service {self.name!r}: {problem}")

    def _problem(self) -> str | None:
        if not isinstance(self.name, str):
            return "name must be text"
        problem = sop_classes.site_name_problem(self.name)
        if problem is not None:
            return problem
        if not self.sop_classes:
            return "no SOP classes"
        for uid, keyword in self.sop_classes.items():
            if not isinstance(uid, str) or not isinstance(keyword, str):
                return "sop_classes maps UIDs (text) to keywords (text)"
            problem = sop_classes.site_class_problem(uid, keyword)
            if problem is not None:
                return problem
        for kind, table, allowed in (
            ("handlers", self.handlers, SINGLE_ANSWER),
            ("streams", self.streams, STREAMING),
        ):
            for request, handler in table.items():
                if request not in allowed:
                    return f"{kind} takes {', '.join(allowed)}, not {request!r}"
                if not callable(handler):
                    return f"the {request} handler is not callable"
        if not self.handlers and not self.streams:
            return "no handlers"
        return None

    def routes(self) -> Routes:
        """Its routes for the engine (engine/operations.Services.simple and .streams)."""
        simple = {(SINGLE_ANSWER[name], self.name): h for name, h in self.handlers.items()}
        streams = {(STREAMING[name], self.name): h for name, h in self.streams.items()}
        return simple, streams


SiteServiceFactory = Callable[["Settings"], SiteService]


class ExtensionError(Exception):
    """A listed extension that cannot be loaded: its entry point name and the problem."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem


# Entry point name -> the site service it made, in load order; filled at start-up only.
_loaded: dict[str, SiteService] = {}
_sealed = False  # the engine's routes were taken: nothing more is loaded in this process


def load(names: Sequence[str], settings: Settings) -> None:
    """Load the site services of the entry points `names` and register their SOP classes.

    Each name is loaded once per process; once the daemon composed its services (`routes`),
    names not loaded yet are left for a restart. Raises ExtensionError for the first one that
    is not installed, does not import, fails, or returns something that is not a SiteService.
    """
    wanted = [name for name in dict.fromkeys(names) if name not in _loaded]
    if not wanted or _sealed:
        return
    # Only when asked: the scan of every installed distribution's metadata took ~9 ms here.
    from importlib.metadata import entry_points

    found = {point.name: point for point in entry_points(group=ENTRY_POINT_GROUP)}
    for name in wanted:
        point = found.get(name)
        if point is None:
            installed = ", ".join(sorted(found)) or "none"
            raise ExtensionError(
                name,
                f"no entry point of that name in group {ENTRY_POINT_GROUP} "
                f"(installed: {installed})",
            )
        _loaded[name] = _made_by(name, point.value, point.load, settings)


def _made_by(
    name: str, target: str, load_factory: Callable[[], object], settings: Settings
) -> SiteService:
    """The site service the entry point's factory makes, registered in sop_classes."""
    try:
        factory = load_factory()
    except Exception as exc:
        raise ExtensionError(name, f"{target} does not import: {_one_line(exc)}") from None
    if not callable(factory):
        raise ExtensionError(name, f"{target} is not a factory (not callable)")
    try:
        service = factory(settings)
    except Exception as exc:
        raise ExtensionError(name, f"factory {target} failed: {_one_line(exc)}") from None
    if not isinstance(service, SiteService):
        raise ExtensionError(
            name,
            f"factory {target} returned {type(service).__name__}, "
            "not a pacsd.extensions.SiteService",
        )
    try:
        sop_classes.register_site_group(service.name, service.sop_classes)
    except ValueError as exc:
        raise ExtensionError(name, str(exc)) from None
    return service


def _one_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def loaded() -> dict[str, SiteService]:
    """The site services loaded in this process, by entry point name."""
    return dict(_loaded)


def routes() -> Routes:
    """Every loaded site service's routes, for the engine; nothing is loaded after this."""
    global _sealed
    _sealed = True
    simple: dict[tuple[int, str], Operation] = {}
    streams: dict[tuple[int, str], StreamOperation] = {}
    for service in _loaded.values():
        one, many = service.routes()
        simple.update(one)
        streams.update(many)
    return simple, streams
