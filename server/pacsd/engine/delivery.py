"""N-EVENT-REPORTs put on the wire for the services' threads: Storage Commitment, UPS, Printer.

PS3.4 J.3.3: the commitment report goes on the requester's association while it is open (pacsd
is the SCP of its Storage Commitment context and sends the request between the requester's
own; the response comes back by its Message ID), else on a new association to the requester's
address from the AE table, proposing the SCP role for pacsd (PS3.7 D.3.3.4). UPS event reports
(PS3.4 CC.2.4) go the same two ways, on a UPS Event context, to the subscriber's AE title: any
association it has open with this process, else a new one. The Printer's status reports (PS3.4
H.4.6.2.1) go only on open associations of SCUs using the printer, on their Print Management
Meta SOP Class context; on the printing one after the response to the print that found the
status changed. Nothing is retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacsd.dicom.print_attributes import PRINTER_CLASS, PRINTER_INSTANCE
from pacsd.dicom.sop_classes import BASIC_COLOR_PRINT_META, BASIC_GRAYSCALE_PRINT_META
from pacsd.dicom.ups import UPS_EVENT, UPS_PUSH
from pacsd.dimse.commands import N_ACTION_RQ, N_CREATE_RQ, N_SET_RQ
from pacsd.dimse.messages import AcceptedContext, encode_dataset
from pacsd.engine.association import Association
from pacsd.engine.core import Engine
from pacsd.engine.pdu import RoleSelection
from pacsd.engine.requestor import AssociationRefused, Requestor
from pacsd.engine.responses import event_report_request
from pacsd.services.commitment import PUSH_MODEL, WELL_KNOWN_INSTANCE, DeliveryFailed
from pacsd.services.ups import EventReport
from pacsd.settings import Peer

MARGIN_S = 5.0


class EngineDelivery:
    """services.commitment.ReportDelivery on an engine running on `loop`."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop) -> None:
        self.engine = engine
        self.loop = loop

    def _timeout(self) -> float:
        timeouts = self.engine.timeouts
        return timeouts.acse * 2 + timeouts.dimse + self.engine.connect_timeout + MARGIN_S

    def on_same_association(self, association_id: str, report: Dataset, event_type: int) -> bool:
        coroutine = self._same(association_id, report, event_type)
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(self._timeout())

    def on_new_association(self, peer: Peer, report: Dataset, event_type: int) -> None:
        coroutine = self._new(peer, report, event_type)
        asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(self._timeout())

    async def _same(self, association_id: str, report: Dataset, event_type: int) -> bool:
        acceptor = self.engine.live.get(association_id)
        if acceptor is None or acceptor.state != "established":
            return False
        context = _reporting_context(acceptor, PUSH_MODEL)
        if context is None:
            return False
        # The worker may wake before the N-ACTION response is on the wire: the report
        # follows its request's response (PS3.4 J.3.3), so wait for running N-ACTIONs first.
        running = acceptor.running.values()
        actions = [task for request, task in running if request.command.field == N_ACTION_RQ]
        if actions:
            await asyncio.wait(actions, timeout=self.engine.timeouts.dimse)
        try:
            return await _send(acceptor, context, report, event_type) == 0x0000
        except (TimeoutError, ConnectionError):
            return False

    async def _new(self, peer: Peer, report: Dataset, event_type: int) -> None:
        requestor, context = await _open_as_scp(self.engine, peer, PUSH_MODEL, "commitment")
        try:
            try:
                status = await _send(requestor, context, report, event_type)
            except (TimeoutError, ConnectionError):
                raise DeliveryFailed(f"{peer.ae_title} did not answer the report") from None
            if status != 0x0000:
                raise DeliveryFailed(f"{peer.ae_title} did not acknowledge the report")
        finally:
            await requestor.release()


class PrinterEventDelivery:
    """services.print_management.PrinterEvents on an engine running on `loop`."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop) -> None:
        self.engine = engine
        self.loop = loop

    def report(
        self,
        association_id: str,
        event_type: int,
        information: Dataset | None,
        after_message_id: int | None,
    ) -> None:
        coroutine = self._report(association_id, event_type, information, after_message_id)
        try:
            asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        except RuntimeError:  # the loop is closed: pacsd is stopping, nobody to tell
            coroutine.close()

    async def _report(
        self,
        association_id: str,
        event_type: int,
        information: Dataset | None,
        after_message_id: int | None,
    ) -> None:
        acceptor = self.engine.live.get(association_id)
        if acceptor is None:
            return  # the association ended meanwhile
        log = acceptor.handle.log.bind(event_type=event_type)
        # Never before the response to the print that found the change (as for storage
        # commitment, PS3.4 J.3.3: many SCUs do not cope with a report before it).
        running = None if after_message_id is None else acceptor.running.get(after_message_id)
        if running is not None:
            done, _ = await asyncio.wait([running[1]], timeout=self.engine.timeouts.dimse)
            if not done:
                log.warning("printer status not reported: the print did not answer in time")
                return
        context = _printer_context(acceptor)
        if acceptor.state != "established" or context is None:
            log.info("printer status not reported: no association or context for it")
            return
        try:
            status = await _send(
                acceptor, context, information, event_type, PRINTER_CLASS, PRINTER_INSTANCE
            )
        except (TimeoutError, ConnectionError):
            log.warning("printer status report not answered")
            return
        except Exception:
            log.exception("printer status report failed")
            return
        if status != 0x0000:
            log.warning("printer status report refused", status=f"0x{status:04X}")
            return
        log.info("printer status reported")


def _printer_context(assoc: Association) -> AcceptedContext | None:
    """The context a Printer N-EVENT-REPORT goes on: a Print Management Meta SOP Class's
    (PS3.4 H.3; grayscale first), else a Printer SOP Class context of its own."""
    for abstract_syntax in (BASIC_GRAYSCALE_PRINT_META, BASIC_COLOR_PRINT_META, PRINTER_CLASS):
        context = _reporting_context(assoc, abstract_syntax)
        if context is not None:
            return context
    return None


class UpsEventDelivery:
    """services.ups.EventDelivery on an engine running on `loop`."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop) -> None:
        self.engine = engine
        self.loop = loop

    def _timeout(self, reports: int) -> float:
        timeouts = self.engine.timeouts
        return timeouts.acse * 2 + timeouts.dimse * (reports + 1) + self.engine.connect_timeout

    def on_open_association(
        self, ae_title: str, reports: Sequence[EventReport]
    ) -> tuple[int, str] | None:
        coroutine = self._open(ae_title, reports)
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(
            self._timeout(len(reports)) + MARGIN_S
        )

    def on_new_association(self, peer: Peer, reports: Sequence[EventReport]) -> tuple[int, str]:
        coroutine = self._new(peer, reports)
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(
            self._timeout(len(reports)) + MARGIN_S
        )

    async def _open(self, ae_title: str, reports: Sequence[EventReport]) -> tuple[int, str] | None:
        """On the subscriber's newest association with a UPS Event context where pacsd is SCP,
        once the requests running there have answered: the N-ACTION that subscribed is answered
        before its initial report (CC.2.3.3)."""
        candidates = [
            acceptor
            for acceptor in self.engine.live.values()
            if acceptor.handle.calling_ae_title == ae_title
            and acceptor.state == "established"
            and _reporting_context(acceptor, UPS_EVENT) is not None
        ]
        if not candidates:
            return None
        acceptor = max(candidates, key=lambda candidate: candidate.handle.connected_at)
        changing = (N_ACTION_RQ, N_CREATE_RQ, N_SET_RQ)
        running = [
            task for request, task in acceptor.running.values() if request.command.field in changing
        ]
        if running:
            await asyncio.wait(running, timeout=self.engine.timeouts.dimse)
        context = _reporting_context(acceptor, UPS_EVENT)
        if context is None or acceptor.state != "established":
            return None
        return await _send_all(acceptor, context, reports, ae_title)

    async def _new(self, peer: Peer, reports: Sequence[EventReport]) -> tuple[int, str]:
        requestor, context = await _open_as_scp(self.engine, peer, UPS_EVENT, "UPS Event")
        try:
            return await _send_all(requestor, context, reports, peer.ae_title)
        finally:
            await requestor.release()


async def _open_as_scp(
    engine: Engine, peer: Peer, sop_class: str, name: str
) -> tuple[Requestor, AcceptedContext]:
    """A new association to `peer` proposing `sop_class` with pacsd in the SCP role alone
    (PS3.7 D.3.3.4: the side that sends the N-EVENT-REPORTs), and its accepted context;
    DeliveryFailed when refused, or when the peer does not take pacsd as SCP (then released)."""
    syntaxes = [ImplicitVRLittleEndian, ExplicitVRLittleEndian]
    role = RoleSelection(sop_class, scu_role=False, scp_role=True)
    try:
        requestor = await engine.connect(peer, [(sop_class, syntaxes)], [role])
    except AssociationRefused as exc:
        raise DeliveryFailed(f"no association with {peer.ae_title}: {exc}") from None
    context = _reporting_context(requestor, sop_class)
    if context is None:
        await requestor.release()
        raise DeliveryFailed(f"{peer.ae_title} did not accept pacsd as {name} SCP")
    return requestor, context


async def _send_all(
    assoc: Association, context: AcceptedContext, reports: Sequence[EventReport], ae_title: str
) -> tuple[int, str]:
    """Send in order until one is not acknowledged with Success."""
    for sent, report in enumerate(reports):
        try:
            status = await _send(
                assoc,
                context,
                report.information,
                report.event_type,
                UPS_PUSH,  # CC.2.4.3: the Affected SOP Class of every UPS event report
                report.sop_instance_uid,
            )
        except (TimeoutError, ConnectionError):
            return sent, f"{ae_title} did not answer the report"
        if status != 0x0000:
            return sent, f"{ae_title} answered the report 0x{status:04X}"
    return len(reports), ""


def _reporting_context(assoc: Association, abstract_syntax: str) -> AcceptedContext | None:
    return next(
        (
            context
            for context in assoc.contexts.values()
            if context.abstract_syntax == abstract_syntax and context.pacsd_scp
        ),
        None,
    )


async def _send(
    assoc: Association,
    context: AcceptedContext,
    report: Dataset | None,
    event_type: int,
    sop_class_uid: str = PUSH_MODEL,
    sop_instance_uid: str = WELL_KNOWN_INSTANCE,
) -> int:
    data = None if report is None else encode_dataset(report, context.transfer_syntax)
    message_id = assoc.next_message_id()
    command = event_report_request(
        sop_class_uid, sop_instance_uid, event_type, message_id, has_data_set=data is not None
    )
    reply, _data = await assoc.send_request(context.context_id, command, message_id, data)
    return reply.status if reply.status is not None else 0xFFFF
