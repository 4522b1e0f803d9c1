"""The base of every settings group: how a field's flat env var is named.

A group declares its flat prefix in `ENV_PREFIX`; a field's flat name is that prefix plus the field name
in upper case, unless the group's `ENV_NAMES` table gives the name the ecosystem already uses
(`AZURE_OPENAI_ENDPOINT`, `OTEL_EXPORTER_OTLP_ENDPOINT`, ...). The groups themselves are in
`settings.py`, and the telemetry group in `telemetry.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from pydantic import BaseModel


class SettingsGroup(BaseModel):
    """A settings group; `ENV_PREFIX` + FIELD_NAME is each field's flat env var unless `ENV_NAMES` says."""

    ENV_PREFIX: ClassVar[str] = ""
    #: Fields whose flat env var is a name the ecosystem already uses rather than prefix + field.
    ENV_NAMES: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def env_name(cls, field_name: str) -> str:
        return cls.ENV_NAMES.get(field_name) or f"{cls.ENV_PREFIX}{field_name.upper()}"
