"""Logging: structlog to stdout, JSON lines unless a terminal asks for the console renderer.

Every record goes through the standard library's logging so that pynetdicom's own records
share pacsd's formatter. Association context (id, AE titles, peer) reaches pacsd's lines through
the handle's bound logger and contextvars; pynetdicom's lines, which are emitted from its
threads, get it from `ThreadContext`, a registry keyed by thread id.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

LogFormat = Literal["auto", "json", "console"]


class ThreadContext:
    """Log context attached to threads that pacsd does not run itself (pynetdicom's)."""

    _lock = threading.Lock()
    _by_thread: dict[int, Mapping[str, Any]] = {}  # noqa: RUF012 (process-wide by design)

    @classmethod
    def bind(cls, thread_ids: Iterable[int | None], context: Mapping[str, Any]) -> None:
        """Attach `context` to every log line emitted from the given threads."""
        with cls._lock:
            for ident in thread_ids:
                if ident is not None:
                    cls._by_thread[ident] = dict(context)

    @classmethod
    def unbind(cls, thread_ids: Iterable[int | None]) -> None:
        """Forget the context of the given threads."""
        with cls._lock:
            for ident in thread_ids:
                cls._by_thread.pop(ident, None)  # type: ignore[arg-type]

    @classmethod
    def processor(cls, _: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        """structlog processor: merge the current thread's context under explicit keys."""
        context = cls._by_thread.get(threading.get_ident())
        if context:
            for key, value in context.items():
                event_dict.setdefault(key, value)
        return event_dict


_PROCESS_FIELDS: dict[str, Any] = {}


def bind_process(**fields: Any) -> None:
    """Fields added to every record of this process (a worker's index, for instance)."""
    _PROCESS_FIELDS.update(fields)


def _process_fields(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    for key, value in _PROCESS_FIELDS.items():
        event_dict.setdefault(key, value)
    return event_dict


def _rename_stdlib_fields(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Foreign (stdlib) records: keep the logger name, drop the positional-args noise."""
    event_dict.pop("positional_args", None)
    return event_dict


# C0 and C1 controls, DEL, Unicode line/paragraph separators and bidirectional overrides: what
# could move a terminal's cursor, recolour it, forge a new log line or reorder displayed text.
_CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Rendered by pacsd's own code from its own frames, added after escaping; multi-line by nature.
_UNESCAPED_KEYS = frozenset({"exception", "stack", "exc_info"})
_MAX_NESTING = 4


def escape_control_characters(text: str) -> str:
    """`text` with every control character written as an escape (ESC -> "\\x1b")."""
    return _CONTROL_CHARACTERS.sub(_escape_one, text)


def _escape_one(match: re.Match[str]) -> str:
    character = match.group()
    named = _NAMED_ESCAPES.get(character)
    if named is not None:
        return named
    code = ord(character)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def _escaped(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return escape_control_characters(value)
    if depth >= _MAX_NESTING:
        return value
    if isinstance(value, dict):
        return {key: _escaped(item, depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_escaped(item, depth + 1) for item in value)
    return value


def _escape_peer_strings(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: no raw control character reaches the console or a JSON line.

    AE titles, implementation version names, usernames and Error Comments come from the wire
    (pynetdicom's own records quote them too, in their message), and a console renderer would
    print an ESC or CR/LF as it is. Other types are left to the renderer (JSON escapes them).
    """
    for key, value in event_dict.items():
        if key not in _UNESCAPED_KEYS and not key.startswith("_"):
            event_dict[key] = _escaped(value)
    return event_dict


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        ThreadContext.processor,
        _process_fields,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _rename_stdlib_fields,
        _escape_peer_strings,  # last: everything above may add peer-supplied values
    ]


def _renderer(log_format: LogFormat) -> Processor:
    use_console = log_format == "console" or (log_format == "auto" and sys.stdout.isatty())
    if use_console:
        return structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    return structlog.processors.JSONRenderer()


def configure_logging(
    log_format: LogFormat = "auto",
    level: str = "INFO",
    pynetdicom_level: str = "WARNING",
) -> None:
    """Send pacsd's and pynetdicom's records to stdout through one structlog formatter."""
    shared = _shared_processors()
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.processors.format_exc_info],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _renderer(log_format),
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    pynetdicom_logger = logging.getLogger("pynetdicom")
    pynetdicom_logger.handlers[:] = []  # pynetdicom adds a NullHandler of its own
    pynetdicom_logger.setLevel(pynetdicom_level)
    pynetdicom_logger.propagate = True
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))


def get_logger(name: str = "pacsd", **context: Any) -> structlog.stdlib.BoundLogger:
    """A pacsd logger, optionally bound to `context`."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger.bind(**context) if context else logger
