"""The request-limits settings group: how much one chat request may hold, beyond its size in bytes.

The body's size is `ServerSettings.max_body_bytes` (413); these bound its structure (400), so that no
request makes the service or an upstream do unbounded work, and nothing the caller sends reaches logs,
headers or error messages at any length. The defaults sit well above what any provider accepts, so
they never refuse a request a provider would have answered (`core/llm/request_limits.py` checks them).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from llm_service.core.config.groups import SettingsGroup

#: orjson, which writes every upstream body, refuses JSON nested deeper than 254 levels; a request's
#: envelope adds a few levels around a free-form value, so the setting stays well below that.
MAX_JSON_DEPTH_CEILING = 200


class RequestLimitSettings(SettingsGroup):
    """Bounds on one chat request's structure: messages, content parts, tools, output tokens, nesting and
    name lengths. A request past one is a 400 naming the field, before anything is sent upstream."""

    ENV_PREFIX: ClassVar[str] = "LLM_REQUEST_"
    max_messages: int = Field(
        default=10_000,
        gt=0,
        description="Most messages in one request (10,000 is about 100 tokens a message in a 1M-token context)",
    )
    max_content_parts: int = Field(
        default=10_000,
        gt=0,
        description="Most content parts in one message (Gemini takes 3,000 images a prompt, each with a caption)",
    )
    max_tools: int = Field(
        default=512,
        gt=0,
        description="Most tool definitions in one request (OpenAI and Gemini take 128; self-hosted models more)",
    )
    max_output_tokens: int = Field(
        default=1_048_576,
        gt=0,
        description="Largest max_tokens or max_completion_tokens a request may ask for (no model writes 1M "
        "tokens in one answer)",
    )
    max_json_depth: int = Field(
        default=64,
        gt=0,
        le=MAX_JSON_DEPTH_CEILING,
        description="Deepest nesting of objects and arrays in a free-form value: tool parameters, a response "
        "schema, a field passed through",
    )
    max_name_length: int = Field(
        default=256,
        gt=0,
        description="Longest model name, function name, tool-call id, participant name or content-part type, in "
        "characters",
    )
