"""The read-only status interface: live client handles as JSON over HTTP on a loopback address.

`GET /associations` lists every live handle (HandleSnapshot fields); `pacsd associations` is its
client. Nothing here changes state, and nothing patient-related is served: AE titles, addresses,
negotiated contexts and counters only.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pacsd import __version__
from pacsd.logs import get_logger

log = get_logger("pacsd.status")

Snapshot = Callable[[], dict[str, Any]]


def associations_url(host: str, port: int) -> str:
    """The URL of the association list served on `host`:`port`."""
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/associations"


class _Handler(BaseHTTPRequestHandler):
    server: _StatusServer
    server_version = f"pacsd/{__version__}"

    def do_GET(self) -> None:
        """Serve the one resource there is."""
        path = self.path.split("?", 1)[0].rstrip("/")
        if path != "/associations":
            self._send(404, {"error": "not found; try /associations"})
            return
        try:
            body = self.server.snapshot()
        except Exception:
            log.exception("status snapshot failed")
            self._send(500, {"error": "snapshot failed; see the server log"})
            return
        self._send(200, body)

    def _send(self, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body, indent=1).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged: operators poll this."""


class _StatusServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        super().__init__(address, _Handler)


class StatusServer:
    """Serves `snapshot()` at /associations until stopped."""

    def __init__(self, host: str, port: int, snapshot: Snapshot) -> None:
        self._server = _StatusServer((host, port), snapshot)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="pacsd-status"
        )

    @property
    def address(self) -> tuple[str, int]:
        """The bound host and port."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
