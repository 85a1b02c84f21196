"""A JSON parser that bounds the body it reads, refuses repeated names, never lets bad JSON 500."""

import json

from django.conf import settings
from rest_framework import exceptions, status
from rest_framework.parsers import JSONParser


class RequestTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "value_too_large"


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _refuse_duplicates(pairs: list[tuple[str, object]]) -> dict:
    """Build an object, refusing a repeated name (else the last would silently win)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise ValueError(f"the name {name!r} appears twice in one object")
            seen.add(name)
    return obj


class BoundedJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.STATE_MAX_REQUEST_BYTES
        body = stream.read(limit + 1) if stream is not None else b""
        if len(body) > limit:
            raise RequestTooLarge(f"The request body exceeds {limit} bytes.")
        try:
            return json.loads(
                body.decode("utf-8"),
                parse_constant=_refuse_constant,
                object_pairs_hook=_refuse_duplicates,
            )
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise exceptions.ParseError(f"The body is not valid JSON: {exc}") from exc
