"""The OpenAPI schema states every constraint the server enforces and every response it sends.

The rules themselves live in `state.rules` and the services; here they are only described,
read from settings when the schema is generated (never at import). Field classes of
`serializers.py` name what a value is (a key, a ttl, a page size); the extensions below say
what that means in JSON Schema. `postprocess` adds what no serializer knows: the path
parameters' syntax and the error envelope of every error response.
"""

from typing import Any

from django.conf import settings
from drf_spectacular.extensions import (
    OpenApiSerializerExtension,
    OpenApiSerializerFieldExtension,
)

from state import rules

from . import serializers as s

# A key, as state.rules.validate_key accepts it: the syntax, and none of the route words.
KEY_SYNTAX = r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,255}"
NO_NUL = r"^[^\u0000]*$"
ERROR_CODES = [
    "unauthenticated", "permission_denied", "not_found", "method_not_allowed", "not_acceptable",
    "unsupported_media_type", "invalid_key", "validation_error", "value_too_large",
    "version_conflict", "cas_failed", "not_a_number", "rate_limited", "unavailable",
    "internal_error",
]  # fmt: skip
ERROR_STATUSES = {
    400: "Malformed request (`validation_error`, `invalid_key`): nothing changed.",
    401: "No or bad credentials (`unauthenticated`).",
    403: "Not yours to read or write (`permission_denied`).",
    404: "No such key, snapshot or route (`not_found`).",
    405: "Method not allowed on this path (`method_not_allowed`).",
    406: "Only JSON is served (`not_acceptable`).",
    413: "Value or request body too large (`value_too_large`).",
    415: "The body must be JSON (`unsupported_media_type`).",
    429: "Too many requests (`rate_limited`, with Retry-After).",
    500: "A bug (`internal_error`, logged with the correlation id); never bad input.",
    503: "The database is unreachable (`unavailable`).",
}
CONFLICT = "A precondition failed (`version_conflict`, `cas_failed`, `not_a_number`)."


def key_pattern() -> str:
    reserved = "|".join(sorted(rules.RESERVED_KEYS))
    return rf"^(?!(?:{reserved})$){KEY_SYNTAX}$"


def decimal_range_pattern(high: int) -> str:
    """Return a regex matching the decimal numbers 1..high, with no leading zeros."""
    digits = str(high)
    alternatives = []
    if len(digits) > 1:
        alternatives.append(f"[1-9][0-9]{{0,{len(digits) - 2}}}")
    for i, digit in enumerate(digits):
        low = 1 if i == 0 else 0
        top = int(digit) - 1
        if top >= low:
            rest = len(digits) - i - 1
            tail = f"[0-9]{{{rest}}}" if rest else ""
            alternatives.append(f"{digits[:i]}[{low}-{top}]{tail}")
    alternatives.append(digits)
    return "^(?:" + "|".join(alternatives) + ")$"


def _field(target, schema_of):
    """Register an extension describing every field of class `target` with `schema_of()`."""

    class Extension(OpenApiSerializerFieldExtension):
        target_class = target
        match_subclasses = False

        def map_serializer_field(self, auto_schema, direction):
            return schema_of()

    Extension.__name__ = f"{target.__name__}Schema"
    return Extension


def metadata_schema() -> dict[str, Any]:
    text = {"type": "string", "maxLength": settings.STATE_MAX_METADATA_VALUE_LENGTH,
            "pattern": NO_NUL}  # fmt: skip
    # patternProperties, not propertyNames: OpenAPI 3.0's JSON Schema draft has only the former.
    names = f"^[^\\u0000]{{1,{settings.STATE_MAX_METADATA_KEY_LENGTH}}}$"
    return {
        "type": "object",
        "description": 'String values. A "ttl" item (seconds, as digits) also sets the expiry.',
        "maxProperties": settings.STATE_MAX_METADATA_ENTRIES,
        "properties": {
            "ttl": {**text, "pattern": decimal_range_pattern(settings.STATE_MAX_TTL_SECS)}
        },
        "patternProperties": {names: text},
        "additionalProperties": False,
    }


def value_description() -> str:
    return (
        f"Any JSON value but null, at most {settings.STATE_MAX_VALUE_BYTES} bytes as compact "
        f"JSON and {settings.STATE_MAX_VALUE_DEPTH} levels deep; strings cannot hold NUL."
    )


EXTENSIONS = [
    _field(s.KeyText, lambda: {"type": "string", "pattern": key_pattern(), "maxLength": 256}),
    _field(s.Prefix, lambda: {"type": "string", "pattern": f"^(?:{KEY_SYNTAX})?$",
                              "description": "Only keys starting with this."}),  # fmt: skip
    _field(s.KeyCursor, lambda: {"type": "string", "pattern": f"^{KEY_SYNTAX}$",
                                 "description": "`next_cursor` of the previous page (a key)."}),
    _field(s.RevisionCursor, lambda: {"type": "string", "pattern": r"^[1-9][0-9]{0,17}$",
                                      "description": "`next_cursor` of the previous page."}),
    _field(s.SourceText, lambda: {"type": "string", "pattern": NO_NUL,
                                  "maxLength": settings.STATE_MAX_SOURCE_LENGTH}),
    _field(s.LabelText, lambda: {"type": "string", "pattern": NO_NUL, "maxLength": 128}),
    _field(s.StoredValue, lambda: {"not": {"type": "null"}, "description": value_description()}),
    _field(s.Value, dict),  # any JSON value, null included
    _field(s.Metadata, metadata_schema),
    _field(s.Ttl, lambda: {"type": "integer", "minimum": 1,
                           "maximum": settings.STATE_MAX_TTL_SECS,
                           "description": "Seconds to live; absent or null: no expiry."}),
    _field(s.Version, lambda: {"type": "integer", "minimum": 0, "maximum": rules.INT64_MAX,
                               "description": '0 means "must not exist".'}),
    _field(s.Int64, lambda: {"type": "integer", "minimum": rules.INT64_MIN,
                             "maximum": rules.INT64_MAX}),
    _field(s.QueryLimit, lambda: {"type": "integer", "minimum": 1,
                                  "maximum": settings.STATE_LIST_MAX_LIMIT}),
    _field(s.QueryVersion, lambda: {"type": "integer", "minimum": 0,
                                    "maximum": rules.INT64_MAX}),
    _field(s.QueryBoolean, lambda: {"type": "boolean"}),
    _field(s.KeyList, lambda: {"type": "array", "items": {"type": "string",
                               "pattern": key_pattern(), "maxLength": 256},
                               "minItems": 1, "maxItems": settings.STATE_MAX_MGET_KEYS}),
]  # fmt: skip


class OperationListSchema(OpenApiSerializerFieldExtension):
    """A bulk's operations: 1..STATE_MAX_BULK_OPERATIONS, each one shape by its `op`."""

    target_class = s.OperationList

    def map_serializer_field(self, auto_schema, direction):
        shapes = {op: auto_schema.resolve_serializer(shape, direction)
                  for op, shape in s.BULK_OPERATIONS.items()}  # fmt: skip
        return {
            "type": "array",
            "minItems": 1,
            "maxItems": settings.STATE_MAX_BULK_OPERATIONS,
            "items": {
                "oneOf": [shape.ref for shape in shapes.values()],
                "discriminator": {
                    "propertyName": "op",
                    "mapping": {op: shape.ref["$ref"] for op, shape in shapes.items()},
                },
            },
        }


class _Closed(OpenApiSerializerExtension):
    """A request object whose unknown fields the server refuses."""

    def map_serializer(self, auto_schema, direction):
        schema = auto_schema._map_serializer(self.target_class, direction, bypass_extensions=True)
        schema["additionalProperties"] = False
        return schema


class BulkSetSchema(_Closed):
    target_class = s.BulkSetInput


class BulkDeleteSchema(_Closed):
    target_class = s.BulkDeleteInput


class _ExactlyOneExpectation(OpenApiSerializerExtension):
    """A compare-and-swap: exactly one of `expected` and `expected_version`."""

    closed = False

    def map_serializer(self, auto_schema, direction):
        schema = auto_schema._map_serializer(self.target_class, direction, bypass_extensions=True)
        schema["oneOf"] = [{"required": ["expected"]}, {"required": ["expected_version"]}]
        if self.closed:
            schema["additionalProperties"] = False
        return schema


class CasSchema(_ExactlyOneExpectation):
    target_class = s.CasInput


class BulkCasSchema(_ExactlyOneExpectation):
    target_class = s.BulkCasInput
    closed = True


class SetSchema(OpenApiSerializerExtension):
    """PUT's body. The seed's optional body `key` must equal the path's: not schema-able."""

    target_class = s.SetInput

    def map_serializer(self, auto_schema, direction):
        schema = auto_schema._map_serializer(self.target_class, direction, bypass_extensions=True)
        schema["properties"].pop("key", None)
        return schema


# --- postprocessing: path parameters and the error envelope -------------------------------


def error_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["success", "error"],
        "properties": {
            "success": {"type": "boolean", "enum": [False]},
            "error": {
                "type": "object",
                "required": ["code", "message", "details"],
                "properties": {
                    "code": {"type": "string", "enum": ERROR_CODES},
                    "message": {"type": "string"},
                    "details": {
                        "type": "object",
                        "description": "`fields` ({name: [messages]}) on every "
                        "validation_error; `index` of a bulk's failing operation; "
                        "`current_version`, `current`, `version` on conflicts.",
                        "properties": {
                            "fields": {
                                "type": "object",
                                "additionalProperties": {
                                    "type": "array",
                                    "items": {"type": "string"},
                                },
                            },
                            "index": {"type": "integer"},
                        },
                    },
                },
            },
        },
    }


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


PATH_PARAMETERS = {
    "key": lambda: {"type": "string", "pattern": key_pattern(), "maxLength": 256},
    "id": lambda: {"type": "integer", "minimum": 0, "maximum": rules.INT64_MAX},
}
WRITES = {"put", "post", "delete", "patch"}


BLANK = {"type": "string", "maxLength": 0}


def _simplify(node: Any) -> Any:
    """Undo two `oneOf`s of spectacular's that a value can match twice (oneOf fails then).

    `oneOf: [{}, null]` (nullable any value) is `{}`; `oneOf: [S, ""]` (allow_blank) is S,
    whose pattern already says whether "" is allowed.
    """
    if isinstance(node, dict):
        one_of = node.get("oneOf")
        if one_of == [{}, {"type": "null"}]:
            return _simplify({k: v for k, v in node.items() if k != "oneOf"})
        if isinstance(one_of, list) and len(one_of) == 2 and one_of[1] == BLANK:
            rest = {k: v for k, v in node.items() if k != "oneOf"}
            return _simplify({**one_of[0], **rest})
        return {name: _simplify(value) for name, value in node.items()}
    if isinstance(node, list):
        return [_simplify(item) for item in node]
    return node


def postprocess(result: dict[str, Any], generator, request, public) -> dict[str, Any]:
    """Give every path parameter its syntax and every operation its error responses."""
    result = _simplify(result)
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = error_schema()
    for path_item in result.get("paths", {}).values():
        for method, operation in path_item.items():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"] in PATH_PARAMETERS:
                    parameter["schema"] = PATH_PARAMETERS[parameter["name"]]()
            responses = operation.setdefault("responses", {})
            for status_code, description in ERROR_STATUSES.items():
                responses[str(status_code)] = _error_response(description)
            if method in WRITES:
                responses["409"] = _error_response(CONFLICT)
    return result
