"""Log lines: JSON (one object per line, structured fields merged in at the top level) or text
(`time level logger event key=value ...`, for a human at a terminal)."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Any, cast

import orjson
from typing_extensions import override

from llm_service.core.aio import running_loop


class JSONFormatter(logging.Formatter):
    def __init__(self, process_fields: dict[str, Any] | None = None) -> None:
        super().__init__()
        #: Fields of every line of this process (a worker's pid), written after the event.
        self.process_fields = process_fields or {}

    @override
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **self.process_fields,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self, process_fields: dict[str, Any] | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self.process_fields = process_fields or {}

    @override
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if not isinstance(fields, dict):
            fields = {}
        if self.process_fields:
            fields = {**self.process_fields, **fields}
        if fields:
            line += " " + " ".join(f"{key}={value}" for key, value in fields.items())
        return line


class BatchingStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that, inside a running event loop, writes the lines of one loop turn together:
    one write and one flush per turn instead of one per line (the access log writes a line per request;
    under load many requests end in the same turn). Outside a loop, and on `flush()` (at exit too), it
    writes at once. Lines are held for at most the rest of the current loop turn."""

    def __init__(self) -> None:
        super().__init__()
        self._pending: list[str] = []
        self._scheduled = False

    @override
    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.write_line(line)

    def write_line(self, line: str) -> None:
        """A line formatted by the caller, written with the rest of this loop turn's lines."""
        self._pending.append(line)
        if self._scheduled:
            return
        try:
            loop = running_loop()  # without a getpid() system call (see core/aio.py)
        except RuntimeError:
            self._write()
            return
        self._scheduled = True
        loop.call_soon(self._flush_turn)

    def _flush_turn(self) -> None:
        with self.lock if self.lock is not None else contextlib.nullcontext():
            self._scheduled = False
            self._write()

    def _write(self) -> None:
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        try:
            self.stream.write(self.terminator.join(lines) + self.terminator)
            self.stream.flush()
        except Exception:  # as StreamHandler does: a broken stream must not break the service
            sys.stderr.write(f"--- logging error: could not write {len(lines)} log lines ---\n")

    @override
    def flush(self) -> None:
        with self.lock if self.lock is not None else contextlib.nullcontext():
            self._write()
            super().flush()


def info_fields(logger: logging.Logger, event: str, fields: dict[str, Any]) -> None:
    """`logger.info(event, extra={"fields": fields})`, formatted here and handed straight to the service's
    handler when that is the only place the line would go (as `configure_logging` sets it up); through
    `logging` otherwise (tests capturing records, another configuration). The access log writes a line
    a request: a LogRecord, its formatter and the handler chain cost about 25 µs of it."""
    handler = _direct_json_handler(logger)
    if handler is None:
        logger.info(event, extra={"fields": fields})
        return
    entry: dict[str, Any] = {"ts": round(time.time(), 3), "level": "info", "logger": logger.name, "event": event}
    process_fields = cast(JSONFormatter, handler.formatter).process_fields
    if process_fields:
        entry.update(process_fields)
    entry.update(fields)
    try:
        line = orjson.dumps(entry, default=str).decode()
    except (TypeError, orjson.JSONEncodeError):  # an integer past 64 bits, say: logging reports it as ever
        logger.info(event, extra={"fields": fields})
        return
    handler.write_line(line)


def _direct_json_handler(logger: logging.Logger) -> BatchingStreamHandler | None:
    """The root's one JSON BatchingStreamHandler if an INFO line of `logger` would reach it and nothing else."""
    handlers = logging.root.handlers
    if len(handlers) != 1 or not logger.isEnabledFor(logging.INFO):
        return None
    handler = handlers[0]
    if (
        type(handler) is not BatchingStreamHandler
        or type(handler.formatter) is not JSONFormatter
        or handler.filters
        or handler.level > logging.INFO
    ):
        return None
    node: logging.Logger | None = logger
    while node is not None and node is not logging.root:
        if node.handlers or node.filters or not node.propagate:
            return None
        node = node.parent
    return handler if not logging.root.filters else None


def configure_logging(level: str, log_format: str = "json", process_fields: dict[str, Any] | None = None) -> None:
    """The root logger's one handler, in `log_format`; `process_fields` go on every line (a worker of
    `serve --workers` names itself by its pid, so that the lines of several processes on one stream can be
    told apart)."""
    handler = BatchingStreamHandler()
    formatter = TextFormatter if log_format == "text" else JSONFormatter
    handler.setFormatter(formatter(process_fields))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Neither formatter writes the caller's file and line, thread or process: not looking them up for
    # every record (a stack walk, among others) saves several µs per log line on the hot path.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # azure-identity logs each failed token request with the authority's full error text; our own
    # error (provider, credential kind, status) is what reaches the log and the caller.
    logging.getLogger("azure").setLevel(max(logging.ERROR, root.level))
    logging.Formatter.converter = time.gmtime
