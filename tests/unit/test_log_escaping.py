"""Peer-supplied strings reach the logs escaped: no CR/LF/ESC from the wire on the console."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from pacsd.logs import LogFormat, configure_logging, escape_control_characters, get_logger

EVIL = "ANY\x1b[2J\r\nforged line\x07\x9b\u202e"


@pytest.fixture
def logging_restored() -> Iterator[None]:
    """configure_logging changes process-wide state: put it back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def test_control_characters_are_written_as_escapes() -> None:
    assert escape_control_characters(EVIL) == ("ANY\\x1b[2J\\r\\nforged line\\x07\\x9b\\u202e")
    assert escape_control_characters("PACSD ÄÖ 1.2.3\\x") == "PACSD ÄÖ 1.2.3\\x"


def _emit(log_format: LogFormat, capsys: pytest.CaptureFixture[str]) -> str:
    configure_logging(log_format)
    get_logger("pacsd.test").warning(
        "association rejected", calling_ae_title=EVIL, contexts=[EVIL], detail={"name": EVIL}
    )
    logging.getLogger("pynetdicom.acse").warning("Calling AE: %s", EVIL)
    try:
        raise ValueError("line one\nline two")
    except ValueError:
        get_logger("pacsd.test").exception("failed")
    return capsys.readouterr().out


@pytest.mark.usefixtures("logging_restored")
def test_console_lines_carry_no_raw_control_characters(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Console renderer: pacsd's and pynetdicom's records, nested values included."""
    output = _emit("console", capsys)
    records = output.split("Traceback")[0]  # a traceback is multi-line by nature
    assert not any(c in records for c in "\x1b\r\x07\x9b\u202e")
    assert records.count("\n") == 3  # three records before the traceback, one line each
    assert records.count("x1b[2J") == 4  # (the renderer repr()s values: backslashes double)


@pytest.mark.usefixtures("logging_restored")
def test_json_values_decode_to_escaped_text(capsys: pytest.CaptureFixture[str]) -> None:
    """JSON lines: a decoded value holds the escape text, not the control character."""
    lines = [json.loads(line) for line in _emit("json", capsys).splitlines()]
    rejected, pynetdicom_line, failed = lines
    assert rejected["calling_ae_title"] == escape_control_characters(EVIL)
    assert rejected["contexts"] == [escape_control_characters(EVIL)]
    assert rejected["detail"] == {"name": escape_control_characters(EVIL)}
    assert pynetdicom_line["event"] == f"Calling AE: {escape_control_characters(EVIL)}"
    assert "line one\nline two" in failed["exception"]  # the traceback stays readable
