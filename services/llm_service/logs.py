"""Log lines: JSON (one object per line, structured fields merged in at the top level) or text
(`time level logger event key=value ...`, for a human at a terminal)."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from typing_extensions import override


class JSONFormatter(logging.Formatter):
    @override
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    @override
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            line += " " + " ".join(f"{key}={value}" for key, value in fields.items())
        return line


def configure_logging(level: str, log_format: str = "json") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(TextFormatter() if log_format == "text" else JSONFormatter())
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
