"""A site service's description is checked before pacsd registers anything of it.

Nothing here registers a site group (that is process-wide, once at start-up): the integration
test tests/integration/test_site_service.py runs a real pacsd with the example package.
"""

from __future__ import annotations

from typing import Any

import pytest

from pacsd import extensions
from pacsd.dimse import commands as c
from pacsd.extensions import ClientHandle, OperationResult, Request, SiteService
from pacsd.settings import load_settings

PRIVATE = "1.2.826.0.1.3680043.10.1407.999.1"
INSTANCE_AVAILABILITY = "1.2.840.10008.5.1.4.33"  # PS3.4 R: a service pacsd has none for


def answer(request: Request, handle: ClientHandle) -> OperationResult:
    return OperationResult(0x0000)


def site(**fields: Any) -> SiteService:
    values: dict[str, Any] = {
        "name": "site:example",
        "sop_classes": {PRIVATE: "ExampleSOPClass"},
        "handlers": {"N-ACTION": answer},
        **fields,
    }
    return SiteService(**values)


def test_a_valid_site_service_routes_its_requests_under_its_group() -> None:
    service = site(
        sop_classes={PRIVATE: "ExampleSOPClass", INSTANCE_AVAILABILITY: "SiteIANSOPClass"},
        handlers={"N-ACTION": answer, "N-GET": answer, "N-EVENT-REPORT": answer},
        streams={"C-FIND": lambda request, handle, report, port: None},
    )
    simple, streams = service.routes()
    assert set(simple) == {
        (c.N_ACTION_RQ, "site:example"),
        (c.N_GET_RQ, "site:example"),
        (c.N_EVENT_REPORT_RQ, "site:example"),
    }
    assert set(streams) == {(c.C_FIND_RQ, "site:example")}


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"name": "example"}, "is not site: followed by"),
        ({"name": "site:Example"}, "is not site: followed by"),
        ({"sop_classes": {}}, "no SOP classes"),
        ({"sop_classes": {"1.2.x": "A"}}, "is not a UID"),
        ({"sop_classes": {"1.2.840.10008.5.1.4.1.1.2": "SiteCT"}}, "a SOP class pacsd serves"),
        ({"sop_classes": {"1.2.840.10008.1.20.1": "SiteCommit"}}, "a SOP class pacsd serves"),
        ({"sop_classes": {"1.2.840.10008.99.1": "Site"}}, "names no SOP class the standard"),
        ({"sop_classes": {PRIVATE: "example"}}, "is not a capital letter"),
        ({"sop_classes": {PRIVATE: "CTImageStorage"}}, "names another SOP class"),
        ({"handlers": {"C-STORE": answer}}, "not 'C-STORE'"),
        ({"handlers": {}, "streams": {"N-GET": answer}}, "not 'N-GET'"),
        ({"handlers": {}}, "no handlers"),
        ({"handlers": {"N-GET": "answer"}}, "the N-GET handler is not callable"),
    ],
    ids=["no-prefix", "capitals", "no-classes", "not-uid", "storage", "commitment",
         "unknown-standard", "keyword-case", "keyword-taken", "c-store", "stream-n-get",
         "no-handlers", "not-callable"],
)  # fmt: skip
def test_an_invalid_site_service_is_refused_naming_the_problem(
    fields: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValueError, match="site service") as raised:
        site(**fields)
    assert problem in str(raised.value)


def test_an_entry_point_that_is_not_installed_is_named() -> None:
    with pytest.raises(extensions.ExtensionError) as raised:
        extensions.load(["no-such-site"], load_settings(None))
    assert raised.value.name == "no-such-site"
    assert "no entry point of that name in group pacsd.services" in raised.value.problem
    assert extensions.loaded() == {}
