"""How ipledger's processes log: human lines by default, JSON lines on request, never a secret.

``configure`` is called once by ``service.cli.main`` with ``--log-level`` and ``--log-format``
(``IPLEDGER_LOG_FORMAT``): ``human`` writes ``time level logger: message``, ``json`` one JSON
object per line (``time``, ``level``, ``logger``, ``message``, then the record's context
fields, then ``exception``), for a log shipper to index without parsing prose.

Context fields are what the code passes in ``extra``: every line about one log record carries
``cluster``, ``partition``, ``offset`` and ``event_id`` (``service.allocator.loop.event_fields``),
so a line is found from the decision and the other way round; the human format appends them as
``[cluster=... partition=... offset=... event_id=...]``.

Database URLs may carry a password. The settings hand out only ``redacted_url``, and as a last
line of defence every line is passed through ``redact`` before it is written: a URL's password
(``scheme://user:password@``) and a ``password=...`` keyword of a libpq connection string are
replaced by ``***``, in the message, its arguments and a traceback alike. Standard library
only, so that the CLI may import it at module level (``simulate`` and ``schema`` need nothing
else).
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import sys
from typing import Literal, TextIO

LogFormat = Literal["human", "json"]
FORMATS: tuple[LogFormat, ...] = ("human", "json")
FORMAT_VARIABLE = "IPLEDGER_LOG_FORMAT"
# The context fields of a line about one record, in the order they are written.
CONTEXT_FIELDS = ("cluster", "partition", "offset", "event_id")

_HUMAN = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# user:password@ after a scheme (postgresql://, postgresql+asyncpg://, kafka+ssl://, ...).
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s@]*@")
# password=... in a libpq keyword/value connection string (quoted or not).
_KEYWORD_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?:'(?:[^'\\]|\\.)*'|\S+)", re.I)
# Attributes every LogRecord has: anything else in its __dict__ came from ``extra``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


def redact(text: str) -> str:
    """``text`` with the password of every URL and ``password=`` keyword replaced by ``***``."""
    if "@" in text:
        text = _URL_PASSWORD.sub(r"\g<head>***@", text)
    if "assword" in text or "ASSWORD" in text:
        text = _KEYWORD_PASSWORD.sub(r"\g<head>***", text)
    return text


def parse_format(value: str, source: str) -> LogFormat:
    """``value`` as a log format, or ``ValueError`` naming ``source`` and the choices."""
    lowered = value.strip().lower()
    for known in FORMATS:
        if lowered == known:
            return known
    raise ValueError(f"{source} must be one of {', '.join(FORMATS)}, not {value!r}")


def context(record: logging.LogRecord) -> dict[str, object]:
    """The record's fields from ``extra``: the context fields first, then any other."""
    fields = record.__dict__
    out = {name: fields[name] for name in CONTEXT_FIELDS if name in fields}
    for name, value in fields.items():
        if name not in _STANDARD and name not in out and not name.startswith("_"):
            out[name] = value
    return out


class HumanFormatter(logging.Formatter):
    """``time level logger: message [field=value ...]``, redacted."""

    def __init__(self) -> None:
        super().__init__(_HUMAN)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = context(record)
        if fields:
            shown = " ".join(f"{name}={value}" for name, value in fields.items())
            head, newline, rest = line.partition("\n")  # after the message, before a traceback
            line = f"{head} [{shown}]{newline}{rest}"
        return redact(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, redacted; non-JSON values of fields are written as text."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        document: dict[str, object] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for name, value in context(record).items():
            document.setdefault(name, _plain(value))
        if record.exc_info:
            document["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            document["exception"] = redact(record.exc_text)
        if record.stack_info:
            document["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def _plain(value: object) -> object:
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(str(value))


def configure(level: str, log_format: LogFormat, stream: TextIO | None = None) -> None:
    """Send every logger's lines to ``stream`` (standard error) at ``level`` in ``log_format``.

    Replaces whatever handlers the root logger had, so calling it again (tests) does not
    duplicate lines.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else HumanFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
