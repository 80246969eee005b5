"""The read-only status interface: live client handles as JSON over HTTP on a loopback address.

`GET /associations` lists every live handle (ClientHandle.snapshot fields); `pacsd associations`
is its client. It runs on the engine's event loop (the snapshot is taken there, where the
handles change), answers one request per connection and changes nothing. Nothing
patient-related is served: AE titles, addresses, negotiated contexts and counters only.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from pacsd import __version__
from pacsd.logs import get_logger

log = get_logger("pacsd.status")

Snapshot = Callable[[], dict[str, Any]]
MAX_REQUEST_HEAD = 16 * 1024
REQUEST_TIMEOUT_S = 10.0


def associations_url(host: str, port: int) -> str:
    """The URL of the association list served on `host`:`port`."""
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/associations"


class StatusServer:
    """Serves `snapshot()` at /associations until stopped."""

    def __init__(self, host: str, port: int, snapshot: Snapshot) -> None:
        self.host, self.port = host, port
        self.snapshot = snapshot
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound host and port."""
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> None:
        """Listen."""
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=MAX_REQUEST_HEAD
        )

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            status, body = self._answer(head.split(b"\r\n", 1)[0].decode("latin-1"))
            payload = json.dumps(body, indent=1).encode("utf-8")
            writer.write(
                f"HTTP/1.1 {status}\r\nServer: pacsd/{__version__}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                "Connection: close\r\n\r\n".encode("latin-1")
                + payload
            )
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT_S)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # not an HTTP request we answer
        except OSError:
            pass
        finally:
            writer.close()

    def _answer(self, request_line: str) -> tuple[str, dict[str, Any]]:
        parts = request_line.split()
        if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
            return "405 Method Not Allowed", {"error": "only GET"}
        path = parts[1].split("?", 1)[0].rstrip("/")
        if path != "/associations":
            return "404 Not Found", {"error": "not found; try /associations"}
        try:
            return "200 OK", self.snapshot()
        except Exception:
            log.exception("status snapshot failed")
            return "500 Internal Server Error", {"error": "snapshot failed; see the server log"}
