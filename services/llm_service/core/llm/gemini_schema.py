"""JSON Schema -> Gemini's Schema (an OpenAPI 3.0 subset), for function parameters and response schemas.

Types are uppercased, `["x", "null"]` and a `{"type": "null"}` anyOf branch become `nullable`, oneOf
becomes anyOf, a one-element allOf is merged, local `$ref`s are inlined (recursion is rejected, and so is
a schema that would nest past 64 levels or hold over 10,000 schemas once inlined), `const`
becomes a one-value enum, unknown keywords are dropped. Gemini accepts `enum` only on STRING: an enum on
another type is dropped and its values are named in the description, so arguments keep their declared
type. An enum without a type gets INTEGER, NUMBER or BOOLEAN when all its values are of that kind (else
STRING), so `{"enum": [1, 2]}` is answered with a number, not "1". `format` is kept only where Gemini
accepts it. What cannot be expressed is an InvalidRequestError naming the schema's path.
"""

from __future__ import annotations

from typing import Any

import orjson

from llm_service.core.config.constants import ProviderID
from llm_service.core.llm.models import InvalidRequestError
from llm_service.core.llm.request_limits import quoted

_PROVIDER = ProviderID.VERTEX_AI.value

_SCHEMA_TYPES = {
    "string": "STRING", "number": "NUMBER", "integer": "INTEGER",
    "boolean": "BOOLEAN", "array": "ARRAY", "object": "OBJECT",
}  # fmt: skip
# Keywords copied as they are; every keyword not handled here or below is dropped.
_SCHEMA_KEPT = (
    "description", "title", "nullable", "required", "minItems", "maxItems", "minimum", "maximum",
    "minLength", "maxLength", "pattern", "minProperties", "maxProperties", "propertyOrdering", "example", "default",
)  # fmt: skip
_SCHEMA_FORMATS = {"STRING": ("date-time", "enum"), "INTEGER": ("int32", "int64"), "NUMBER": ("float", "double")}
_REF_PREFIXES = {"#/$defs/": "$defs", "#/definitions/": "definitions"}
#: Bounds on a schema once its $refs are inlined (see `_SchemaConverter.convert`).
MAX_SCHEMA_DEPTH = 64
MAX_SCHEMA_SCHEMAS = 10_000
MAX_PARAM_CHARS = 300


def unsupported(param: str, message: str) -> InvalidRequestError:
    """A request part Vertex cannot take: 400 naming the field and why."""
    param = _cut(param)
    return InvalidRequestError(
        f"Unsupported '{param}' for {_PROVIDER}: {message}", param=param, code="unsupported_for_provider"
    )


def invalid(param: str, message: str) -> InvalidRequestError:
    param = _cut(param)
    return InvalidRequestError(f"Invalid '{param}': {message}", param=param, code="invalid_value")


def _cut(param: str) -> str:
    """A schema's path is spelled with the caller's property names, at any depth: its end is cut."""
    return param if len(param) <= MAX_PARAM_CHARS else param[:MAX_PARAM_CHARS] + "..."


def convert_schema(schema: dict[str, Any], path: str) -> dict[str, Any]:
    """A JSON Schema -> Gemini's Schema; `path` names the schema in errors (`tools[0].function.parameters`)."""
    return _SchemaConverter(schema).convert(schema, path, ())


class _SchemaConverter:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.depth = 0  # schemas open around the one being converted
        self.count = 0  # schemas converted so far

    def convert(self, node: Any, path: str, refs: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(node, dict):
            raise unsupported(path, f"expected a JSON Schema object; {_PROVIDER} cannot use boolean schemas.")
        # Inlining is where a small schema grows: a chain of $refs nests without end, and a definition
        # referenced twice at each level doubles the whole (the schema form of a "billion laughs").
        self.count += 1
        if self.depth >= MAX_SCHEMA_DEPTH or self.count > MAX_SCHEMA_SCHEMAS:
            raise unsupported(
                path,
                f"with its $refs inlined the schema would nest more than {MAX_SCHEMA_DEPTH} levels or hold more "
                f"than {MAX_SCHEMA_SCHEMAS} schemas; {_PROVIDER} needs it inlined.",
            )
        self.depth += 1
        try:
            return self._convert(node, path, refs)
        finally:
            self.depth -= 1

    def _convert(self, node: dict[str, Any], path: str, refs: tuple[str, ...]) -> dict[str, Any]:
        node = self._merge_all_of(node, path)
        if "$ref" in node:
            return self._inline_ref(node, path, refs)
        out = {key: node[key] for key in _SCHEMA_KEPT if key in node}
        self._type(node, path, out)
        self._children(node, path, refs, out)
        self._enum(node, path, out)
        fmt = node.get("format")
        if fmt in _SCHEMA_FORMATS.get(out.get("type", ""), ()) and (fmt != "enum" or "enum" in out):
            out["format"] = fmt
        return out

    def _merge_all_of(self, node: dict[str, Any], path: str) -> dict[str, Any]:
        branches = node.get("allOf")
        if branches is None:
            return node
        if not isinstance(branches, list) or len(branches) != 1 or not isinstance(branches[0], dict):
            raise unsupported(
                f"{path}.allOf", f"{_PROVIDER} schemas have no allOf; only a one-element allOf can be translated."
            )
        return {**branches[0], **{k: v for k, v in node.items() if k != "allOf"}}

    def _inline_ref(self, node: dict[str, Any], path: str, refs: tuple[str, ...]) -> dict[str, Any]:
        ref = node["$ref"]
        prefix = next((p for p in _REF_PREFIXES if isinstance(ref, str) and ref.startswith(p)), None)
        if prefix is None:
            raise unsupported(
                f"{path}.$ref",
                f"only local references to #/$defs/... or #/definitions/... can be inlined, not {quoted(ref, 100)}.",
            )
        if ref in refs:
            raise unsupported(
                f"{path}.$ref",
                f"{quoted(ref, 100)} refers to itself; {_PROVIDER} schemas cannot express recursive types.",
            )
        table = self.root.get(_REF_PREFIXES[prefix])
        name = ref[len(prefix) :].replace("~1", "/").replace("~0", "~")
        target = table.get(name) if isinstance(table, dict) else None
        if not isinstance(target, dict):
            raise invalid(f"{path}.$ref", f"{quoted(ref, 100)} is not defined in the schema.")
        # Keywords beside the $ref (a description, say) refine the referenced schema.
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return self.convert(merged, path, (*refs, ref))

    def _type(self, node: dict[str, Any], path: str, out: dict[str, Any]) -> None:
        raw = node.get("type")
        if raw is None:
            return
        names = raw if isinstance(raw, list) else [raw]
        if "null" in names:
            out["nullable"] = True
        names = [n for n in names if n != "null"]
        for name in names:
            if name not in _SCHEMA_TYPES:
                raise invalid(f"{path}.type", f"unknown JSON Schema type {quoted(name)}.")
        if len(names) == 1:
            out["type"] = _SCHEMA_TYPES[names[0]]
        elif names:
            out["anyOf"] = [{"type": _SCHEMA_TYPES[n]} for n in names]

    def _children(self, node: dict[str, Any], path: str, refs: tuple[str, ...], out: dict[str, Any]) -> None:
        properties = node.get("properties")
        if isinstance(properties, dict) and properties:
            out["properties"] = {
                name: self.convert(sub, f"{path}.properties.{name}", refs) for name, sub in properties.items()
            }
        items = node.get("items")
        if isinstance(items, list):
            raise unsupported(f"{path}.items", f"{_PROVIDER} schemas have no tuple validation (items as an array).")
        if isinstance(items, dict):
            out["items"] = self.convert(items, f"{path}.items", refs)
        key = "anyOf" if "anyOf" in node else "oneOf" if "oneOf" in node else None
        if key is None:
            return
        branches = node[key]
        if not isinstance(branches, list):
            raise invalid(f"{path}.{key}", "expected an array of schemas.")
        converted = []
        for j, branch in enumerate(branches):
            if isinstance(branch, dict) and branch.get("type") == "null":
                out["nullable"] = True
            else:
                converted.append(self.convert(branch, f"{path}.{key}[{j}]", refs))
        if len(converted) == 1:  # Optional[X]: X itself, nullable; keywords beside the anyOf win
            out.update({k: v for k, v in converted[0].items() if k not in out})
        elif converted:
            out["anyOf"] = converted

    def _enum(self, node: dict[str, Any], path: str, out: dict[str, Any]) -> None:
        if "const" in node:
            values: Any = [node["const"]]
        elif "enum" in node:
            values = node["enum"]
        else:
            return
        if not isinstance(values, list):
            raise invalid(f"{path}.enum", "expected an array of values.")
        if None in values:
            out["nullable"] = True
        values = [v for v in values if v is not None]
        texts = [v if isinstance(v, str) else orjson.dumps(v).decode() for v in values]
        if out.setdefault("type", _enum_type(values)) == "STRING":
            out["enum"] = texts
        else:  # Gemini accepts enum only on STRING; keep the type, tell the model the values
            allowed = f"One of: {', '.join(texts)}."
            out["description"] = f"{out['description']} ({allowed})" if out.get("description") else allowed


def _enum_type(values: list[Any]) -> str:
    """The type of an enum without one: INTEGER, NUMBER or BOOLEAN when every value is one, else STRING."""
    if not values:
        return "STRING"
    if all(isinstance(v, bool) for v in values):
        return "BOOLEAN"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "INTEGER"
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return "NUMBER"
    return "STRING"
