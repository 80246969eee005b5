"""The client side of the status interface: fetch `GET /associations` and format it for people.

`pacsd associations` uses this. The server side is `pacsd.http.app`; the fields are those of
`ClientHandle.snapshot()`. Nothing here changes server state.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

_HEADER = ("ID", "STATE", "AE (CALLING->CALLED)", "PEER", "RULE", "AGE", "CTX", "IN", "OUT")
_OPERATIONS_HEADER = "OPERATIONS (invoked/completed/failed)"


class StatusUnavailable(Exception):
    """The status interface could not be read; the message is one line for the operator."""


@dataclass(frozen=True)
class StatusDocument:
    """One answer of the status interface: the body as received and parsed."""

    text: str
    content: dict[str, Any]


def check_url(url: str) -> str:
    """`url` if it is an http(s) URL with a host; ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http:// URL: {url}")
    return url


def http_url(host: str, port: int, tls: bool = False) -> str:
    """The base URL of an HTTP interface on `host`:`port` (IPv6 in brackets)."""
    host = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{host}:{port}"


def associations_url(url: str) -> str:
    """The association list's URL from `url`: itself when its path ends in /associations,
    else /associations under it (the base URL, http://127.0.0.1:11113, is enough)."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    if path.endswith("/associations"):
        return url
    return urlunsplit(parts._replace(path=f"{path}/associations"))


def fetch_status(
    url: str,
    timeout: float,
    ca_file: Path | None = None,
    credentials: tuple[str, str] | None = None,
) -> StatusDocument:
    """GET `url` (an http(s) URL, see check_url) and parse it; StatusUnavailable on any failure.
    https: the server's certificate is verified against `ca_file` (else the system's CAs);
    `credentials` (user, password) go as HTTP basic authentication."""
    headers = {}
    if credentials is not None:
        token = base64.b64encode(":".join(credentials).encode("utf-8")).decode("ascii")
        headers["Authorization"] = f"Basic {token}"
    context = None
    if urlsplit(url).scheme == "https":
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    try:
        # check_url restricts the scheme to http(s), so no file: or custom opener is reachable.
        request = urllib.request.Request(check_url(url), headers=headers)  # noqa: S310
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:  # noqa: S310
            text = response.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        raise StatusUnavailable(f"{url} answered HTTP {exc.code}: {_error_text(exc)}") from None
    except urllib.error.URLError as exc:
        raise StatusUnavailable(f"status interface unreachable at {url}: {exc.reason}") from None
    except (OSError, http.client.HTTPException, UnicodeDecodeError, ValueError) as exc:
        raise StatusUnavailable(f"status interface unreachable at {url}: {exc}") from None
    try:
        content = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StatusUnavailable(f"{url} did not answer JSON: {exc}") from None
    if not isinstance(content, dict) or not isinstance(content.get("associations"), list):
        raise StatusUnavailable(f"{url} is not a pacsd status interface (no association list)")
    return StatusDocument(text, content)


def _error_text(error: urllib.error.HTTPError) -> str:
    """The `error` field of a pacsd error body, else the HTTP reason phrase."""
    try:
        body = json.loads(error.read().decode("utf-8"))
        return str(body["error"])
    except (OSError, ValueError, KeyError, TypeError):
        return str(error.reason)


def format_status(content: Mapping[str, Any]) -> list[str]:
    """A summary line, then one aligned line per association (or a note that there is none)."""
    associations: list[Mapping[str, Any]] = content["associations"]
    summary = (
        f"{content.get('ae_title', '?')} (pacsd {content.get('pacsd_version', '?')}): "
        f"{len(associations)} association(s) open "
        f"({content.get('associations_accepted', '?')} accepted, "
        f"limit {content.get('max_associations', '?')})"
    )
    if not associations:
        return [summary, "no associations"]
    rows = [(*_HEADER, _OPERATIONS_HEADER), *(association_row(a) for a in associations)]
    return [summary, *_aligned(rows)]


def association_row(association: Mapping[str, Any]) -> tuple[str, ...]:
    """The table cells of one association snapshot (ClientHandle.snapshot())."""
    counters: Mapping[str, Any] = association.get("counters") or {}
    calling = association.get("calling_ae_title") or "-"
    called = association.get("called_ae_title") or "-"
    return (
        str(association.get("association_id", "?")),
        str(association.get("state", "?")),
        f"{calling}->{called}",
        peer_text(str(association.get("peer_address", "?")), association.get("peer_port")),
        str(association.get("rule") or "-"),
        age_text(float(association.get("duration_s") or 0.0)),
        str(len(association.get("accepted_contexts") or [])),
        byte_text(int(counters.get("bytes_received") or 0)),
        byte_text(int(counters.get("bytes_sent") or 0)),
        operations_text(counters.get("services") or {}),
    )


def peer_text(address: str, port: object) -> str:
    """address:port, IPv6 addresses in brackets."""
    host = f"[{address}]" if ":" in address else address
    return f"{host}:{port}"


def age_text(seconds: float) -> str:
    """A duration the way people read it: 4.2s, 3m07s, 2h05m."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def byte_text(size: int) -> str:
    """A byte count in B, KiB, MiB or GiB."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


def operations_text(services: Mapping[str, Mapping[str, Any]]) -> str:
    """Per DIMSE service: `C-STORE 12/12/0` (invoked/completed/failed); `-` when none."""
    parts = [
        f"{name} {c.get('invoked', 0)}/{c.get('completed', 0)}/{c.get('failed', 0)}"
        for name, c in sorted(services.items())
    ]
    return " ".join(parts) or "-"


def _aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as lines with columns padded to their widest cell (the last one unpadded)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    ]


@dataclass(frozen=True)
class NodeStatus:
    """One cluster node's answer for `pacsd associations --all-nodes` (or why there is none)."""

    node: str
    url: str
    content: dict[str, Any] | None
    error: str = ""


def fetch_nodes(
    nodes: Sequence[tuple[str, str]],
    timeout: float,
    ca_file: Path | None = None,
    credentials: tuple[str, str] | None = None,
) -> list[NodeStatus]:
    """GET /associations of each (node name, HTTP base URL), one after the other."""
    answers = []
    for name, base in nodes:
        url = associations_url(base)
        try:
            content = fetch_status(url, timeout, ca_file, credentials).content
        except StatusUnavailable as exc:
            answers.append(NodeStatus(name, url, None, str(exc)))
            continue
        answers.append(NodeStatus(name, url, content))
    return answers


def format_nodes(answers: Sequence[NodeStatus]) -> list[str]:
    """Each node's summary and association table under a line naming the node."""
    lines: list[str] = []
    total = 0
    for answer in answers:
        lines.append(f"node {answer.node} ({answer.url}):")
        if answer.content is None:
            lines.append(f"  unreachable: {answer.error}")
            continue
        total += len(answer.content["associations"])
        lines.extend(f"  {line}" for line in format_status(answer.content))
    reached = sum(1 for answer in answers if answer.content is not None)
    lines.append(f"{total} association(s) open on {reached} of {len(answers)} live node(s)")
    return lines
