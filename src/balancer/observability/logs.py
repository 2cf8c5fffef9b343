"""The balancer's log: state events and one access line per connection, as text or JSON.

Both formats carry the same fields. Text is `key=value` pairs after the time and the kind, so
people can read it and `grep`/`awk` can cut it; JSON is one object per line.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import IO, Any


@dataclass(slots=True)
class AccessRecord:
    service: str
    client: str
    backend: str
    connect_ms: float
    duration_ms: float
    bytes_in: int
    bytes_out: int
    retries: int
    failures: str  # the rule that judged each failed backend, comma-separated, or "-"
    termination: str


def access_fields(record: AccessRecord) -> dict[str, Any]:
    """An access line's fields, in the order the line gives them."""
    return {
        "service": record.service,
        "client": record.client,
        "backend": record.backend,
        "connect_ms": round(record.connect_ms, 3),
        "duration_ms": round(record.duration_ms, 3),
        "bytes_in": record.bytes_in,
        "bytes_out": record.bytes_out,
        "retries": record.retries,
        "failures": record.failures,
        "termination": record.termination,
    }


_second = (-1, "")  # the last whole second formatted, and its text


def _timestamp(now: float) -> str:
    global _second
    whole = int(now)
    if whole != _second[0]:
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(whole)))
    return f"{_second[1]}.{int(now * 1000) % 1000:03d}"


_NEEDS_QUOTES = re.compile(r'[ "=\n]')


def _quote(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"  # (the only floats are times in milliseconds: to the microsecond)
    text = str(value)
    if text and _NEEDS_QUOTES.search(text) is None:
        return text
    return json.dumps(text)


@functools.lru_cache(maxsize=4096)
def _quote_name(name: str) -> str:
    """_quote for the few names that recur on every line (services, backends, reasons)."""
    return _quote(name)


class EventLog:
    """Writes log lines to a file (buffered, flushed at least every half second) and/or stderr."""

    def __init__(self, path: str | None, fmt: str = "text", echo: IO[str] | None = None) -> None:
        self.path = path
        self.json = fmt == "json"
        self._file: IO[str] | None = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115
        self._echo = echo
        self._dirty = False

    def _write(self, line: str, *, flush: bool) -> None:
        if self._file is not None:
            self._file.write(line + "\n")
            if flush:
                self._file.flush()
                self._dirty = False
            else:
                self._dirty = True

    def flush(self) -> None:
        if self._file is not None and self._dirty:
            self._file.flush()
            self._dirty = False

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _line(self, kind: str, fields: dict[str, Any], message: str | None = None) -> str:
        now = time.time()
        if self.json:
            record = {"time": _timestamp(now), "type": kind, **fields}
            if message is not None:
                record["message"] = message
            return json.dumps(record, separators=(",", ":"))
        parts = [_timestamp(now), kind]
        parts.extend(f"{k}={_quote(v)}" for k, v in fields.items())
        if message is not None:
            parts.append(f"| {message}")
        return " ".join(parts)

    @property
    def access_format(self) -> str | None:
        """How access lines are written: "text", "json", or None when there is no log file."""
        if self._file is None:
            return None
        return "json" if self.json else "text"

    @staticmethod
    def quoted(name: str) -> str:
        """A service or backend name as the text format's access line shows it."""
        return _quote_name(name)

    def lines(self, text: str) -> None:
        """Access lines made elsewhere (the compiled data plane), in the text format."""
        self._write(text, flush=False)

    def access(self, record: AccessRecord) -> None:
        if not self.json:  # (the same line as _line makes, in one step: one per connection)
            self._write(
                f"{_timestamp(time.time())} access service={_quote_name(record.service)} "
                f"client={_quote(record.client)} backend={_quote_name(record.backend)} "
                f"connect_ms={record.connect_ms:.3f} "
                f"duration_ms={record.duration_ms:.3f} bytes_in={record.bytes_in} "
                f"bytes_out={record.bytes_out} retries={record.retries} "
                f"failures={record.failures} termination={_quote_name(record.termination)}",
                flush=False,
            )
            return
        self._write(self._line("access", access_fields(record)), flush=False)

    def event(self, event: str, message: str, **fields: Any) -> None:
        """A state change: start, stop, backend added/removed/up/down, reload, ..."""
        if self.json:
            line = self._line("event", {"event": event, **fields}, message)
        else:
            line = self._line(f"event {event}", fields, message)
        self._write(line, flush=True)
        if self._echo is not None:
            print(line, file=self._echo, flush=True)


class _EventLogHandler(logging.Handler):
    """Routes Python `logging` records (from asyncio and libraries) into the event log."""

    def __init__(self, log: EventLog) -> None:
        super().__init__(logging.WARNING)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.log.event(record.levelname.lower(), self.format(record), logger=record.name)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def route_python_logging(log: EventLog) -> None:
    root = logging.getLogger()
    root.handlers[:] = [_EventLogHandler(log)]
    root.setLevel(logging.WARNING)
