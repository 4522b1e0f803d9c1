"""Reading the structured fields the service logs with a line (`extra={"fields": ...}`, see llm_service.logs)."""

from __future__ import annotations

import logging
from typing import Any


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """`record.fields`: set on the record by `extra=`, so not an attribute LogRecord declares."""
    fields: dict[str, Any] = record.fields  # type: ignore[attr-defined]
    return fields
