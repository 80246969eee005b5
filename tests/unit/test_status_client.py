"""The association list's URL as `pacsd associations --url` builds it (issue 19, edge 6)."""

from __future__ import annotations

import pytest

from pacsd.metrics import rejection_labels
from pacsd.status_client import associations_url, http_url


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("http://127.0.0.1:11113", "http://127.0.0.1:11113/associations"),
        ("http://127.0.0.1:11113/", "http://127.0.0.1:11113/associations"),
        ("http://127.0.0.1:11113/associations", "http://127.0.0.1:11113/associations"),
        ("http://127.0.0.1:11113/associations/", "http://127.0.0.1:11113/associations/"),
        ("https://proxy.example/pacsd/", "https://proxy.example/pacsd/associations"),
        ("http://[::1]:11113?x=1", "http://[::1]:11113/associations?x=1"),
    ],
)
def test_base_url_or_full_url(given: str, used: str) -> None:
    """The base URL gets /associations appended; a URL that names it is kept."""
    assert associations_url(given) == used


def test_http_url_brackets_ipv6() -> None:
    """An IPv6 host is written in brackets."""
    assert http_url("::1", 11113) == "http://[::1]:11113"
    assert http_url("127.0.0.1", 11113) == "http://127.0.0.1:11113"


@pytest.mark.parametrize(
    ("codes", "labels"),
    [
        ((1, 1, 3), ("permanent", "service-user", "calling-ae-title-not-recognized")),
        ((2, 3, 2), ("transient", "service-provider-presentation", "local-limit-exceeded")),
        ((1, 2, 2), ("permanent", "service-provider-acse", "protocol-version-not-supported")),
        ((1, 1, 5), ("permanent", "service-user", "5")),
    ],
)
def test_rejection_labels_name_ps3_8_codes(
    codes: tuple[int, int, int], labels: tuple[str, str, str]
) -> None:
    """A-ASSOCIATE-RJ codes become the names of PS3.8 Table 9-21; reserved ones stay numbers."""
    assert rejection_labels(*codes) == labels
