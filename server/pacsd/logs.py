"""Logging: structlog to stdout, JSON lines unless a terminal asks for the console renderer.

pacsd's own lines take structlog's native path (a filtering bound logger: a call below the
level costs nothing; the rest go through a short processor chain straight to stdout), which
matters on a server that writes several lines per association. Records of other libraries
(asyncio, SQLAlchemy, alembic) go through the standard library's logging and the same
processors, so that every line has the same form. Association context (ID, AE titles, peer)
reaches a line through the handle's bound logger.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

LogFormat = Literal["auto", "json", "console"]


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
    if type(value) is str:
        # Most values are plain printable ASCII: no regular expression for them.
        if value.isascii() and value.isprintable():
            return value
        return escape_control_characters(value)
    if type(value) in (int, float, bool) or value is None:
        return value
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
    (other libraries' records may quote them too, in their message), and a console renderer
    would print an ESC or CR/LF as it is. Other types are left to the renderer (JSON escapes
    them).
    """
    for key, value in event_dict.items():
        kind = type(value)
        if kind is str:
            # Most values are plain printable ASCII: one C call each, no expression.
            if not (value.isascii() and value.isprintable()) and key not in _UNESCAPED_KEYS:
                event_dict[key] = escape_control_characters(value)
        elif kind in _CONTAINERS and not key.startswith("_"):
            event_dict[key] = _escaped(value)
        elif isinstance(value, str) and key not in _UNESCAPED_KEYS:  # a str subclass (a UID)
            event_dict[key] = escape_control_characters(value)
    return event_dict


_CONTAINERS = frozenset({dict, list, tuple})


def _shared_processors() -> list[Processor]:
    """The chain of records from other libraries (the standard library's logging)."""
    return [
        _process_fields,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _rename_stdlib_fields,
        _escape_peer_strings,  # last: everything above may add peer-supplied values
    ]


_LEVELS = {"warn": "warning", "exception": "error"}
_second = [-1, ""]  # the last whole second formatted, and its text


def _timestamp() -> str:
    """ISO 8601 UTC with microseconds, as structlog's TimeStamper(fmt="iso", utc=True) writes
    it, formatting the date and time once per second."""
    now = time.time()
    second = int(now)
    if second != _second[0]:
        _second[0] = second
        _second[1] = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{_second[1]}.{int((now - second) * 1_000_000):06d}Z"


def _prepare(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """pacsd's own lines in one step: logger name, process fields, level, time, escaping."""
    name = event_dict.pop(_NAME_KEY, None)
    if name is not None:
        event_dict["logger"] = name
    for key, value in _PROCESS_FIELDS.items():
        event_dict.setdefault(key, value)
    event_dict["level"] = _LEVELS.get(method_name, method_name)
    event_dict["timestamp"] = _timestamp()
    return _escape_peer_strings(logger, method_name, event_dict)


_stack_info = structlog.processors.StackInfoRenderer()


def _exceptions(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """A traceback or stack, when the line asks for one."""
    if "exc_info" in event_dict or "stack_info" in event_dict:
        event_dict = _stack_info(logger, method_name, event_dict)
        event_dict = structlog.processors.format_exc_info(logger, method_name, event_dict)
    return event_dict


def _console(log_format: LogFormat) -> bool:
    return log_format == "console" or (log_format == "auto" and sys.stdout.isatty())


def _text_json(_: WrappedLogger, __: str, event_dict: EventDict) -> str:
    """JSON for the standard library's formatter (which wants text)."""
    return orjson.dumps(event_dict, default=repr).decode("utf-8")


def configure_logging(log_format: LogFormat = "auto", level: str = "INFO") -> None:
    """Send pacsd's and other libraries' records to stdout through one set of processors."""
    shared = _shared_processors()
    console = _console(log_format)
    if console:
        renderer: Processor = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
        factory: Any = structlog.WriteLoggerFactory(sys.stdout)
    else:  # orjson: a tenth of the json module's time per line
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps, default=repr)
        factory = structlog.BytesLoggerFactory(sys.stdout.buffer)
    structlog.configure(
        processors=[_prepare, _exceptions, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level]),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_logger_name,
            *shared,
            structlog.processors.format_exc_info,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            renderer if console else _text_json,
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))


Logger = structlog.typing.FilteringBoundLogger


def get_logger(name: str = "pacsd", **context: Any) -> Logger:
    """A pacsd logger named `name` (the "logger" field), bound to `context`.

    Lazy until its first line: module-level loggers made at import time take the
    configuration `configure_logging` sets later.
    """
    logger: Logger = structlog.get_logger(**{_NAME_KEY: name}, **context)
    return logger


# structlog.get_logger's own first parameter is called "logger": the name travels under this key
# and becomes the line's "logger" field on the way out.
_NAME_KEY = "logger_name"
