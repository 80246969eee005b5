"""Logging: structlog to stdout, JSON lines unless a terminal asks for the console renderer.

Every record goes through the standard library's logging so that pynetdicom's own records
share pacsd's formatter. Association context (id, AE titles, peer) reaches pacsd's lines through
the handle's bound logger and contextvars; pynetdicom's lines, which are emitted from its
threads, get it from `ThreadContext`, a registry keyed by thread id.
"""

from __future__ import annotations

import logging
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


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        ThreadContext.processor,
        _process_fields,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _rename_stdlib_fields,
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
