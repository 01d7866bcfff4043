"""The access log: one line per request answered (or refused, or cut short), on the
``ftx.access`` logger at level INFO.

Each record carries an :class:`AccessRecord` as its ``access`` attribute. The message itself is
the human-readable line::

    127.0.0.1:51234 GET 'docs/report.pdf' 1048576 bytes in 0.012 s: ok

The path is quoted with :func:`repr`, so a name with a newline or an escape sequence cannot forge
a log line or rewrite a terminal. :class:`JsonFormatter` writes every log record, access records
included, as one JSON object per line instead (``ftx serve --log-format json``).
"""

from __future__ import annotations

import datetime
import json
import logging
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["ACCESS_LOGGER", "AccessRecord", "JsonFormatter"]

ACCESS_LOGGER: Final = logging.getLogger("ftx.access")


@dataclass(slots=True)
class AccessRecord:
    """What one request did. Filled in as the answer goes, then :meth:`log` ged once.

    ``result`` is ``"ok"``, the error code the request was refused with (``"not-found"``,
    ``"changed"``, ...), or how the answer was cut short: ``"lost"`` (the connection broke),
    ``"timeout"`` (the client stopped reading), ``"shutting-down"``, ``"internal"`` (a server
    failure) or ``"cancelled"``.
    """

    peer: str
    op: str
    path: str
    started: float  # trio.current_time() when the request was read
    bytes: int = 0  # file bytes sent
    offset: int | None = None  # GET: where the transfer started
    size: int | None = None  # GET: the size of the whole file
    entries: int | None = None  # LIST: entries sent
    result: str = "ok"
    message: str = ""  # the reason given to the client, for a refusal

    def log(self, now: float) -> None:
        """Emit the record, ``now`` being the current time on the clock of :attr:`started`."""
        if not ACCESS_LOGGER.isEnabledFor(logging.INFO):
            return  # (ftx serve -q): a tree of small files would pay for lines nobody reads
        duration = max(0.0, now - self.started)
        fields: dict[str, Any] = {
            "peer": self.peer,
            "op": self.op,
            "path": self.path,
            "bytes": self.bytes,
            "duration": round(duration, 6),
            "result": self.result,
        }
        for name in ("offset", "size", "entries"):
            value = getattr(self, name)
            if value is not None:
                fields[name] = value
        if self.message:
            fields["message"] = self.message
        ACCESS_LOGGER.info("%s", _human(fields), extra={"access": fields})


def _human(fields: dict[str, Any]) -> str:
    line = f"{fields['peer']} {fields['op']} {fields['path']!r}"
    if fields.get("offset"):
        line += f" from byte {fields['offset']}"
    if "entries" in fields:
        line += f" {fields['entries']} entries"
    else:
        line += f" {fields['bytes']} bytes"
    duration = fields["duration"]
    line += f" in {duration:.3f} s"
    if fields["bytes"] >= 1 << 20 and duration > 0:
        line += f" ({fields['bytes'] / duration / 2**20:.1f} MiB/s)"
    line += f": {fields['result']}"
    if fields.get("message"):
        line += f" ({fields['message']!r})"
    return line


class JsonFormatter(logging.Formatter):
    """Formats each log record as one line of JSON.

    Access records become ``{"time", "event": "access", "peer", "op", "path", "bytes",
    "duration", "result", ...}``; any other record ``{"time", "event": "log", "level",
    "logger", "message"}``. ``time`` is UTC, ISO 8601 with milliseconds. Non-ASCII text is
    escaped, so a line is always plain ASCII whatever a client sends.
    """

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        entry: dict[str, Any] = {"time": when.isoformat(timespec="milliseconds")}
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            entry["event"] = "access"
            entry.update(access)
        else:
            entry.update(
                event="log",
                level=record.levelname.lower(),
                logger=record.name,
                message=record.getMessage(),
            )
            if record.exc_info:
                entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=True, separators=(",", ":"))
