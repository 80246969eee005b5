"""Where audit messages go: a JSON-lines file of their own, and optionally a syslog collector.

Writing an audit message never fails a DICOM operation: errors are counted and reported to the
service log at most once a minute. The file gets one `write` per message on a descriptor opened
with O_APPEND (so lines of several pacsd processes never interleave), no fsync unless
`audit.fsync` asks for it: then a thread of the sink's own fsyncs the file right after each
write (several writes of one moment share one fsync), so that the event loop, which audits
association events, never waits for the disk. Syslog messages (RFC 5424, built by
rfc5424-logging-handler) leave from a thread of their own through a bounded queue, so a slow
or absent collector delays no association; when the queue is full a message is dropped and counted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import threading
import time
from pathlib import Path
from typing import Any

from rfc5424logging import Rfc5424SysLogHandler, transport  # type: ignore[import-untyped]

from pacsd.logs import get_logger
from pacsd.settings_security import SyslogSettings

log = get_logger("pacsd.audit")

FILE_MODE = 0o600
REPORT_INTERVAL_S = 60.0
SYNC_JOIN_S = 5.0
SYSLOG_QUEUE_SIZE = 1000
SYSLOG_TIMEOUT_S = 5.0
# IHE ITI TF-2 3.20.6 (Record Audit Event over syslog, RFC 5424): facility 10 (authpriv,
# security/authorization), severity 5 (notice): PRI <85>.
AUTHPRIV = 10
MSGID = "DICOM+RFC3881"


class FailureReport:
    """Counts write failures of one sink and logs them, rate-limited."""

    def __init__(self, sink: str) -> None:
        self.sink = sink
        self.failures = 0
        self._unreported = 0
        self._last_report = float("-inf")
        self._lock = threading.Lock()

    def failed(self, error: BaseException) -> None:
        """Count one failure; log it unless one was logged within REPORT_INTERVAL_S."""
        with self._lock:
            self.failures += 1
            self._unreported += 1
            now = time.monotonic()
            if now - self._last_report < REPORT_INTERVAL_S:
                return
            count, self._unreported, self._last_report = self._unreported, 0, now
        log.error("audit messages not written", sink=self.sink, count=count, error=str(error))


class FileSink:
    """Appends one line per message to the audit file (mode 0600, parent folders created)."""

    def __init__(self, path: Path, fsync: bool = False) -> None:
        self.path = path
        self.fsync = fsync
        self.report = FailureReport("file")
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._open()
        self._dirty = threading.Condition()
        self._unsynced = False
        self._closing = False
        self._syncer: threading.Thread | None = None
        if fsync:
            self._syncer = threading.Thread(target=self._sync_loop, name="pacsd-audit-fsync")
            self._syncer.daemon = True
            self._syncer.start()

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
            self._fd = os.open(self.path, flags, FILE_MODE)
        except OSError as exc:
            self._fd = None
            self.report.failed(exc)

    def write(self, line: bytes) -> None:
        """Append `line` (one JSON document and a newline); never raises."""
        with self._lock:
            if self._fd is None:
                self._open()
            if self._fd is None:
                return
            try:
                _write_all(self._fd, line)
            except OSError as exc:
                self.report.failed(exc)
                return
        if self._syncer is not None:
            with self._dirty:
                self._unsynced = True
                self._dirty.notify()

    def _sync_loop(self) -> None:
        while True:
            with self._dirty:
                while not self._unsynced and not self._closing:
                    self._dirty.wait()
                if not self._unsynced:
                    return  # closing, nothing left to sync
                self._unsynced = False
            # A descriptor of its own, so that writers (the loop) never wait for the fsync
            # and a reopen (SIGHUP) may close the sink's meanwhile.
            try:
                with self._lock:
                    fd = None if self._fd is None else os.dup(self._fd)
            except OSError as exc:
                self.report.failed(exc)
                continue
            if fd is None:
                continue
            try:
                os.fsync(fd)
            except OSError as exc:
                self.report.failed(exc)
            finally:
                os.close(fd)

    def reopen(self) -> None:
        """Close and open the file again (after logrotate moved it away)."""
        with self._lock:
            self._close()
            self._open()

    def close(self) -> None:
        """Close the file (after the last fsync, when `fsync` asks for them)."""
        if self._syncer is not None:
            with self._dirty:
                self._closing = True
                self._dirty.notify()
            self._syncer.join(SYNC_JOIN_S)
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError as exc:
                self.report.failed(exc)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class SyslogSink:
    """Sends each message as an RFC 5424 syslog message (UDP, or TCP with octet counting)."""

    def __init__(self, settings: SyslogSettings, hostname: str) -> None:
        self.settings = settings
        self.hostname = hostname
        self.report = FailureReport("syslog")
        self.dropped = 0
        self._queue: queue.Queue[bytes | None] = queue.Queue(SYSLOG_QUEUE_SIZE)
        self._handler: Any = None
        self._thread = threading.Thread(target=self._run, name="pacsd-audit-syslog", daemon=True)
        self._thread.start()

    def write(self, body: bytes) -> None:
        """Queue one message body for sending; never blocks, never raises."""
        try:
            self._queue.put_nowait(body)
        except queue.Full as exc:
            self.dropped += 1
            self.report.failed(exc)

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued (bounded by `timeout`), then close the connection."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (body := self._queue.get()) is not None:
            try:
                self._send(body)
            except Exception as exc:  # any transport error: count, reconnect next time
                self.report.failed(exc)
                self._disconnect()
        self._disconnect()

    def _send(self, body: bytes) -> None:
        if self._handler is None:
            self._handler = self._connect()
        record = logging.LogRecord("pacsd.audit", logging.INFO, "", 0, body.decode(), None, None)
        record.levelname = "NOTICE"  # severity 5
        record.msgid = MSGID
        self._handler.transport.transmit(self._handler.build_msg(record))

    def _connect(self) -> Any:
        settings = self.settings
        tcp = settings.protocol == "tcp"
        return Rfc5424SysLogHandler(
            address=(settings.host, settings.port),
            facility=AUTHPRIV,
            socktype=socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM,
            # RFC 6587 3.4.1 / RFC 5425 4.3: octet counting, safe for any message body.
            framing=transport.FRAMING_OCTET_COUNTING,
            msg_as_utf8=True,
            hostname=self.hostname,
            appname=settings.app_name,
            procid=os.getpid(),
            utc_timestamp=True,
            timeout=SYSLOG_TIMEOUT_S,
        )

    def _disconnect(self) -> None:
        handler, self._handler = self._handler, None
        if handler is not None:
            with contextlib.suppress(OSError):
                handler.close()
