"""Every malformed request gets a 4xx in the envelope with the right code, and changes nothing."""

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from state import selectors, services
from state.models import StateEntry, StateEvent

URL = "/api/v1/state"


def j(obj: Any) -> str:
    return json.dumps(obj)


def deep(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


def cursor_of(text: str) -> str:
    """A cursor of the former base64 encoding: now refused (cursors are plain keys/revisions)."""
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def case(method, path, body, status, code, *, id, index=None, headers=None, ctype=None, **cfg):
    """One malformed request: body is raw text/bytes, or None for no body."""
    return pytest.param(method, path, body, status, code, index, headers or {}, ctype, cfg, id=id)


V400, K400 = (400, "validation_error"), (400, "invalid_key")

CASES = [
    # --- bad JSON and non-object bodies
    case("put", "/a", '{"value": ', *V400, id="truncated-json"),
    case("put", "/a", '{"value": 1,}', *V400, id="trailing-comma"),
    case("put", "/a", "{'value': 1}", *V400, id="single-quotes"),
    case("put", "/a", b'{"value": "\xff\xfe"}', *V400, id="invalid-utf8"),
    case("put", "/a", "", *V400, id="empty-body"),
    case("put", "/a", "null", *V400, id="null-body"),
    case("put", "/a", "[1]", *V400, id="list-body"),
    case("put", "/a", '"value"', *V400, id="string-body"),
    case("put", "/a", "5", *V400, id="number-body"),
    case("post", "/cas", "[]", *V400, id="cas-list-body"),
    case("post", "/incr", '"n"', *V400, id="incr-string-body"),
    case("post", "/mget", "1", *V400, id="mget-number-body"),
    case("post", "/bulk", "true", *V400, id="bulk-bool-body"),
    case("put", "/a/metadata", "[]", *V400, id="metadata-list-body"),
    case("put", "/a", '{"value": NaN}', *V400, id="nan"),
    case("put", "/a", '{"value": Infinity}', *V400, id="infinity"),
    case("put", "/a", '{"value": [-Infinity]}', *V400, id="minus-infinity"),
    case("put", "/a", '{"value": 1e999}', *V400, id="overflowing-float"),
    case("post", "/cas", '{"key": "a", "expected": 1, "new_value": 1e999}', *V400, id="cas-inf"),
    case("put", "/a", '{"value": ' + deep(100_000) + "}", *V400, id="parser-blowing-nesting"),
    case("put", "/a", '{"value": ' + deep(5_000) + "}", *V400, id="very-deep-nesting"),
    case("put", "/a", '{"value": ' + deep(101) + "}", *V400, id="too-deep-nesting"),
    case(
        "put",
        "/a",
        j({"value": {"a": [{"b": 1}]}}),
        *V400,
        id="too-deep-small",
        STATE_MAX_VALUE_DEPTH=2,
    ),  # noqa: E501
    case("put", "/a", '{"value": "a\\u0000b"}', *V400, id="nul-in-value"),
    case("put", "/a", '{"value": {"a\\u0000": 1}}', *V400, id="nul-in-value-name"),
    case("put", "/a", '{"value": "\\ud800"}', *V400, id="lone-surrogate"),
    # --- wrong types and null
    case("put", "/a", j({}), *V400, id="missing-value"),
    case("put", "/a", j({"value": None}), *V400, id="null-value"),
    case("put", "/a", j({"value": 1, "metadata": "x"}), *V400, id="metadata-string"),
    case("put", "/a", j({"value": 1, "metadata": None}), *V400, id="metadata-null"),
    case("put", "/a", j({"value": 1, "metadata": {"m": 1}}), *V400, id="metadata-int"),
    case("put", "/a", j({"value": 1, "metadata": {"m": True}}), *V400, id="metadata-bool"),
    case("put", "/a", j({"value": 1, "metadata": {"m": None}}), *V400, id="metadata-value-null"),
    case("put", "/a", j({"value": 1, "metadata": {"m": ["x"]}}), *V400, id="metadata-list"),
    case("put", "/a", j({"value": 1, "metadata": {"m": "\u0000"}}), *V400, id="metadata-nul"),
    case("put", "/a", j({"value": 1, "metadata": {"": "x"}}), *V400, id="metadata-empty-name"),
    case("put", "/a", j({"value": 1, "metadata": {"m": "x" * 1025}}), *V400, id="metadata-long"),
    case(
        "put",
        "/a",
        j({"value": 1, "metadata": {"a": "1", "b": "2", "c": "3"}}),
        *V400,
        id="metadata-too-many",
        STATE_MAX_METADATA_ENTRIES=2,
    ),  # noqa: E501
    case("put", "/a", j({"value": 1, "metadata": {"ttl": "soon"}}), *V400, id="metadata-bad-ttl"),
    case(
        "put", "/a", j({"value": 1, "metadata": {"ttl": "²"}}), *V400, id="metadata-ttl-superscript"
    ),  # noqa: E501
    case("put", "/a", j({"value": 1, "source": 5}), *V400, id="source-int"),
    case("put", "/a", j({"value": 1, "source": "x" * 129}), *V400, id="source-long"),
    case("put", "/a", j({"value": 1, "source": "\u0000"}), *V400, id="source-nul"),
    case(
        "put",
        "/a",
        j({"value": "x" * 20}),
        413,
        "value_too_large",
        id="oversized",
        STATE_MAX_VALUE_BYTES=16,
    ),  # noqa: E501
    case(
        "put",
        "/a",
        j({"value": "x" * 200}),
        413,
        "value_too_large",
        id="oversized-body",
        STATE_MAX_REQUEST_BYTES=100,
    ),  # noqa: E501
    case(
        "post",
        "/cas",
        j({"key": "a", "expected": 1, "new_value": "x" * 20}),
        413,
        "value_too_large",
        id="cas-oversized",
        STATE_MAX_VALUE_BYTES=16,
    ),  # noqa: E501
    case(
        "post",
        "/bulk",
        j({"operations": [{"op": "set", "key": "b", "value": "x" * 20}]}),
        413,
        "value_too_large",
        id="bulk-oversized",
        index=0,
        STATE_MAX_VALUE_BYTES=16,
    ),  # noqa: E501
    # --- ttl
    *[
        case("put", "/a", j({"value": 1, "ttl": ttl}), *V400, id=f"ttl-{name}")
        for name, ttl in [
            ("0", 0),
            ("negative", -5),
            ("huge", 10**12),
            ("bigint", 10**30),
            ("word", "soon"),
            ("true", True),
            ("false", False),
            ("float", 1.5),
            ("list", [1]),
            ("object", {}),
        ]
    ],  # fmt: skip
    case(
        "post",
        "/cas",
        j({"key": "a", "expected": 1, "new_value": 2, "ttl": 0}),
        *V400,
        id="cas-ttl-0",
    ),  # noqa: E501
    case("post", "/incr", j({"key": "n", "ttl": -1}), *V400, id="incr-ttl-negative"),
    case("post", "/incr", j({"key": "n", "ttl": "x"}), *V400, id="incr-ttl-word"),
    # --- expected_version / If-Match
    *[
        case(
            "put",
            "/a",
            j({"value": 1, "expected_version": v}),
            *V400,
            id=f"expected-version-{name}",
        )  # noqa: E501
        for name, v in [
            ("word", "x"),
            ("negative", -1),
            ("true", True),
            ("float", 1.5),
            ("list", []),
        ]
    ],
    case("delete", "/a?expected_version=x", None, *V400, id="delete-expected-version-word"),
    case("delete", "/a?expected_version=-1", None, *V400, id="delete-expected-version-negative"),
    case(
        "post",
        "/cas",
        j({"key": "a", "expected_version": -1, "new_value": 2}),
        *V400,
        id="cas-version-negative",
    ),  # noqa: E501
    case(
        "post",
        "/cas",
        j({"key": "a", "expected_version": "one", "new_value": 2}),
        *V400,
        id="cas-version-word",
    ),  # noqa: E501
    *[
        case("put", "/a", j({"value": 2}), *V400, id=f"if-match-{name}", headers={"If-Match": h})
        for name, h in [
            ("word", "abc"),
            ("negative", '"-1"'),
            ("float", '"1.5"'),
            ("empty", ""),
            ("list", '"1", "2"'),
            ("unicode", '"١"'),
        ]
    ],  # fmt: skip
    case("delete", "/a", None, *V400, id="delete-if-match-word", headers={"If-Match": "nope"}),
    # --- keys
    case("put", "/-a", j({"value": 1}), *K400, id="key-leading-dash"),
    case("put", "/_a", j({"value": 1}), *K400, id="key-leading-underscore"),
    case("put", "/a%20b", j({"value": 1}), *K400, id="key-space"),
    case("put", "/a%00b", j({"value": 1}), *K400, id="key-nul"),
    case("put", "/%C3%A9", j({"value": 1}), *K400, id="key-non-ascii"),
    case("put", "/a*", j({"value": 1}), *K400, id="key-star"),
    case("put", "/" + "a" * 257, j({"value": 1}), *K400, id="key-too-long"),
    case("get", "/a%20b", None, *K400, id="get-key-space"),
    case("delete", "/a$", None, *K400, id="delete-key-dollar"),
    case("get", "/a%20b/metadata", None, *K400, id="metadata-key-space"),
    case("get", "/a%20b/history", None, *K400, id="history-key-space"),
    case(
        "post", "/cas", j({"key": "", "expected": None, "new_value": 1}), *K400, id="cas-key-empty"
    ),  # noqa: E501
    case("post", "/cas", j({"key": 5, "expected": None, "new_value": 1}), *V400, id="cas-key-int"),
    case("post", "/incr", j({"key": "a b"}), *K400, id="incr-key-space"),
    case("post", "/incr", j({"key": None}), *V400, id="incr-key-null"),
    case("post", "/mget", j({"keys": ["a", "b c"]}), *K400, id="mget-bad-key"),
    case("post", "/mget", j({"keys": ["a", 5]}), *V400, id="mget-int-key"),
    case("post", "/mget", j({"keys": "a"}), *V400, id="mget-keys-string"),
    case("post", "/mget", j({"keys": []}), *V400, id="mget-keys-empty"),
    case(
        "post", "/mget", j({"keys": ["a", "b"]}), *V400, id="mget-too-many", STATE_MAX_MGET_KEYS=1
    ),
    *[
        case(
            method,
            path.format(w=w),
            body.replace("W", w),
            *K400,
            id=f"reserved-{name}-{w}",
            index=index,
        )  # noqa: E501
        for w in sorted(services.RESERVED_KEYS)
        for name, method, path, body, index in [
            ("cas", "post", "/cas", j({"key": "W", "expected": None, "new_value": 1}), None),
            ("incr", "post", "/incr", j({"key": "W"}), None),
            ("mget", "post", "/mget", j({"keys": ["a", "W"]}), None),
            (
                "bulk",
                "post",
                "/bulk",
                j(
                    {
                        "operations": [
                            {"op": "set", "key": "a", "value": 1},
                            {"op": "delete", "key": "W"},
                        ]
                    }
                ),
                1,
            ),
            ("metadata", "put", "/{w}/metadata", j({"metadata": {}}), None),
        ]
    ],  # fmt: skip
    # --- body key vs path
    case("put", "/a", j({"key": "b", "value": 1}), *V400, id="body-key-differs"),
    case("put", "/a", j({"key": "A", "value": 1}), *V400, id="body-key-differs-in-case"),
    case("put", "/a", j({"key": 5, "value": 1}), *V400, id="body-key-int"),
    # --- limits and cursors
    *[
        case("get", f"/{action}?{query}", None, *V400, id=f"{action}-{name}")
        for action in ("keys", "entries")
        for name, query in [
            ("limit-0", "limit=0"),
            ("limit-negative", "limit=-1"),
            ("limit-word", "limit=ten"),
            ("limit-float", "limit=1.5"),
            ("limit-huge", "limit=10001"),
            ("limit-bigint", "limit=" + "9" * 40),
            ("cursor-garbage", "cursor=!!!"),
            ("cursor-nul", "cursor=a%00"),
            ("cursor-not-utf8", "cursor=__8"),
            ("cursor-not-a-key", "cursor=bad%20key"),
            ("cursor-reserved-start", "cursor=_a"),
            ("cursor-too-long", "cursor=" + "a" * 257),
            ("cursor-percent", "cursor=%25%25"),
            ("prefix-nul", "prefix=%00"),
            ("prefix-space", "prefix=a%20b"),
            ("prefix-too-long", "prefix=" + "a" * 300),
        ]
    ],  # fmt: skip
    case(
        "get", "/entries?include_metadata=perhaps", None, *V400, id="entries-bad-include-metadata"
    ),  # noqa: E501
    case("get", "/a?include_metadata=perhaps", None, *V400, id="get-bad-include-metadata"),
    case("get", "/a/history?limit=0", None, *V400, id="history-limit-0"),
    case("get", "/a/history?cursor=!!!", None, *V400, id="history-cursor-garbage"),
    case("get", "/a/history?cursor=x", None, *V400, id="history-cursor-not-number"),
    # --- incr and cas shapes
    case("post", "/incr", j({}), *V400, id="incr-missing-key"),
    case("post", "/incr", j({"key": "n", "by": "x"}), *V400, id="incr-by-word"),
    case("post", "/incr", j({"key": "n", "by": 1.5}), *V400, id="incr-by-float"),
    case("post", "/incr", j({"key": "n", "by": True}), *V400, id="incr-by-bool"),
    case("post", "/incr", j({"key": "n", "by": None}), *V400, id="incr-by-null"),
    case("post", "/incr", j({"key": "n", "by": 2**64}), *V400, id="incr-by-overflow"),
    case("post", "/cas", j({"key": "a", "expected": 1}), *V400, id="cas-missing-new-value"),
    case("post", "/cas", j({"expected": 1, "new_value": 1}), *V400, id="cas-missing-key"),
    case("post", "/cas", j({"key": "a", "new_value": 1}), *V400, id="cas-missing-expectation"),
    case(
        "post",
        "/cas",
        j({"key": "a", "expected": 1, "expected_version": 1, "new_value": 2}),
        *V400,
        id="cas-both-expectations",
    ),  # noqa: E501
    # --- bulk
    case("post", "/bulk", j({}), *V400, id="bulk-missing-operations"),
    case("post", "/bulk", j({"operations": []}), *V400, id="bulk-no-operations"),
    case("post", "/bulk", j({"operations": {"op": "set"}}), *V400, id="bulk-operations-object"),
    case("post", "/bulk", j({"operations": [5]}), *V400, id="bulk-operation-int"),
    case(
        "post",
        "/bulk",
        j({"operations": [{"op": "set", "key": "b", "value": 1}] * 3}),
        *V400,
        id="bulk-too-many",
        STATE_MAX_BULK_OPERATIONS=2,
    ),  # noqa: E501
    case(
        "post",
        "/bulk",
        j({"operations": [{"op": "rename", "key": "a"}]}),
        *V400,
        id="bulk-unknown-op",
    ),  # noqa: E501
    case(
        "post", "/bulk", j({"operations": [{"key": "a", "value": 1}]}), *V400, id="bulk-missing-op"
    ),  # noqa: E501
    case(
        "post",
        "/bulk",
        j({"operations": [{"op": "set", "value": 1}]}),
        *V400,
        id="bulk-missing-key",
    ),  # noqa: E501
    case(
        "post",
        "/bulk",
        j(
            {
                "operations": [
                    {"op": "set", "key": "b", "value": 1},
                    {"op": "set", "key": "b c", "value": 1},
                ]
            }
        ),
        *K400,
        id="bulk-bad-key",
        index=1,
    ),  # noqa: E501
    case(
        "post",
        "/bulk",
        j({"operations": [{"op": "set", "key": "b", "value": 1}, {"op": "set", "key": "c"}]}),
        *V400,
        id="bulk-set-without-value",
        index=1,
    ),  # noqa: E501
    case(
        "post",
        "/bulk",
        j(
            {
                "operations": [
                    {"op": "set", "key": "b", "value": 1},
                    {"op": "set", "key": "c", "value": None},
                ]
            }
        ),
        *V400,
        id="bulk-set-null",
        index=1,
    ),  # noqa: E501
    case(
        "post",
        "/bulk",
        j({"operations": [{"op": "cas", "key": "b", "expected": 1}]}),
        *V400,
        id="bulk-cas-without-new-value",
        index=0,
    ),  # noqa: E501
    case(
        "post",
        "/bulk",
        j({"operations": [{"op": "delete", "key": "b", "value": 1}]}),
        *V400,
        id="bulk-delete-with-value",
        index=0,
    ),  # noqa: E501
    case(
        "post",
        "/bulk",
        j({"operations": [{"op": "set", "key": "b", "value": 1, "ttl": 0}]}),
        *V400,
        id="bulk-bad-ttl",
        index=0,
    ),  # noqa: E501
    case(
        "post",
        "/bulk",
        j({"atomic": "perhaps", "operations": [{"op": "delete", "key": "a"}]}),
        *V400,
        id="bulk-atomic-word",
    ),  # noqa: E501
    # --- metadata PUT
    case("put", "/a/metadata", j({}), *V400, id="metadata-put-missing"),
    case("put", "/a/metadata", j({"metadata": None}), *V400, id="metadata-put-null"),
    case("put", "/a/metadata", j({"metadata": {"m": 1}}), *V400, id="metadata-put-int"),
    case("put", "/a/metadata", j({"metadata": {"m": "x\u0000"}}), *V400, id="metadata-put-nul"),
    case("put", "/a/metadata", j({"metadata": {"ttl": "0"}}), *V400, id="metadata-put-ttl-0"),
    case(
        "put",
        "/a/metadata",
        j({"metadata": {"a": "1", "b": "2"}}),
        *V400,
        id="metadata-put-too-many",
        STATE_MAX_METADATA_ENTRIES=1,
    ),  # noqa: E501
    # --- content types
    case(
        "put",
        "/a",
        "value=1",
        415,
        "unsupported_media_type",
        id="form-encoded",
        ctype="application/x-www-form-urlencoded",
    ),  # noqa: E501
    case(
        "put",
        "/a",
        '{"value": 1}',
        415,
        "unsupported_media_type",
        id="text-plain",
        ctype="text/plain",
    ),  # noqa: E501
    case(
        "post", "/cas", "<cas/>", 415, "unsupported_media_type", id="xml", ctype="application/xml"
    ),  # noqa: E501
]


# --- strict input (issue 7): one meaning for every request ---------------------------------
DEL_A = {"op": "delete", "key": "a"}
SET_C = {"op": "set", "key": "c", "value": 1}
STRICT = [
    ("bulk-atomic-no", "post", "/bulk", j({"operations": [DEL_A], "atomic": "no"})),
    ("bulk-atomic-false-text", "post", "/bulk", j({"operations": [DEL_A], "atomic": "false"})),
    ("bulk-atomic-zero", "post", "/bulk", j({"operations": [DEL_A], "atomic": 0})),
    ("restore-dry-run-zero", "post", "/snapshots/1/restore", j({"dry_run": 0})),
    ("restore-dry-run-text", "post", "/snapshots/1/restore", j({"dry_run": "false"})),
    ("put-expected-version-text", "put", "/a", j({"value": 2, "expected_version": "1"})),
    ("put-expected-version-float", "put", "/a", j({"value": 2, "expected_version": 1.0})),
    ("put-ttl-text", "put", "/a", j({"value": 2, "ttl": "60"})),
    ("put-ttl-float", "put", "/a", j({"value": 2, "ttl": 60.0})),
    ("put-ttl-bool", "put", "/a", j({"value": 2, "ttl": True})),
    ("cas-ttl-text", "post", "/cas", j({"key": "a", "expected": 1, "new_value": 2, "ttl": "60"})),
    ("cas-version-text", "post", "/cas", j({"key": "a", "expected_version": "1", "new_value": 2})),
    ("incr-by-text", "post", "/incr", j({"key": "n", "by": "1"})),
    ("incr-by-integral-float", "post", "/incr", j({"key": "n", "by": 1.0})),
    ("incr-ttl-float", "post", "/incr", j({"key": "new", "ttl": 60.0})),
    ("bulk-ttl-text", "post", "/bulk", j({"operations": [{**SET_C, "ttl": "60"}]})),
    ("bulk-version-text", "post", "/bulk", j({"operations": [{**DEL_A, "expected_version": "1"}]})),
    ("bulk-unknown-field", "post", "/bulk", j({"operations": [{**SET_C, "new_value": 2}]})),
    ("bulk-cas-null-version", "post", "/bulk", j({"operations": [{"op": "cas", "key": "a",
     "expected": 1, "expected_version": None, "new_value": 2}]})),
    ("bulk-set-null-metadata", "post", "/bulk", j({"operations": [{**SET_C, "metadata": None}]})),
    ("cas-null-version", "post", "/cas", j({"key": "a", "expected": 1, "expected_version": None,
     "new_value": 2})),
    ("bulk-op-list", "post", "/bulk", j({"operations": [{"op": ["set"], "key": "c", "value": 1}]})),
    ("duplicate-name-version", "put", "/a", '{"value": 2, "expected_version": 99, "expected_version": 1}'),  # noqa: E501
    ("duplicate-name-nested", "put", "/a", '{"value": {"x": 1, "x": 2}}'),
    ("duplicate-name-bulk", "post", "/bulk",
     '{"operations": [{"op": "delete", "key": "a"}], "atomic": true, "atomic": false}'),
    ("empty-limit", "get", "/keys?limit=", None),
    ("entries-empty-limit", "get", "/entries?limit=", None),
    ("limit-plus", "get", "/keys?limit=%2B5", None),
    ("limit-space", "get", "/keys?limit=%205", None),
    ("limit-arabic-digit", "get", "/keys?limit=%D9%A3", None),
    ("limit-superscript", "get", "/keys?limit=%C2%B2", None),
    ("empty-cursor", "get", "/keys?cursor=", None),
    ("include-metadata-1", "get", "/a?include_metadata=1", None),
    ("include-metadata-yes", "get", "/a?include_metadata=yes", None),
    ("include-metadata-empty", "get", "/a?include_metadata=", None),
    ("delete-version-empty", "delete", "/a?expected_version=", None),
    ("delete-version-float", "delete", "/a?expected_version=1.0", None),
    ("delete-version-superscript", "delete", "/a?expected_version=%C2%B2", None),
    ("history-cursor-superscript", "get", "/a/history?cursor=%C2%B2", None),
    ("history-cursor-wrI", "get", "/a/history?cursor=wrI", None),  # base64 of "²": a 500 once
    ("history-cursor-old-base64", "get", f"/a/history?cursor={cursor_of('5')}", None),
    ("history-cursor-zero", "get", "/a/history?cursor=0", None),
    ("history-cursor-negative", "get", "/a/history?cursor=-5", None),
    ("history-cursor-huge", "get", "/a/history?cursor=" + "9" * 30, None),
    ("history-cursor-long", "get", "/a/history?cursor=" + "9" * 5000, None),
    ("history-cursor-empty", "get", "/a/history?cursor=", None),
    ("metadata-ttl-fullwidth", "put", "/a/metadata", j({"metadata": {"ttl": "\uff16\uff10"}})),
    ("metadata-ttl-arabic", "put", "/a", j({"value": 1, "metadata": {"ttl": "\u0663"}})),
    ("metadata-ttl-bad-by-ttl", "put", "/a", j({"value": 1, "ttl": 5, "metadata": {"ttl": ""}})),
]  # fmt: skip
CASES += [case(method, path, body, *V400, id=name) for name, method, path, body in STRICT]
CASES += [
    case("put", "/a", j({"value": 2}), *V400, id="if-match-5000-digits",
         headers={"If-Match": '"' + "9" * 5000 + '"'}),
    case("delete", "/a", None, *V400, id="if-match-superscript", headers={"If-Match": '"²"'}),
]  # fmt: skip


def store_snapshot() -> tuple:
    """Everything a bad request must not change: every entry, the event log, the revision."""
    entries = [
        (e.key, e.value, e.metadata, e.version, e.revision, e.created_at, e.updated_at,
         e.expires_at, e.source, e.size)
        for e in StateEntry.objects.order_by("key")
    ]  # fmt: skip
    return entries, StateEvent.objects.count(), selectors.store_revision()


@pytest.fixture
def seeded(db, time_machine):
    time_machine.move_to(datetime(2030, 1, 1, tzinfo=UTC), tick=False)
    services.state_set(key="a", value=1, metadata={"m": "x"}, ttl=3600)
    services.state_set(key="b", value={"x": [1, 2]})
    services.state_incr(key="n", by=3)
    return store_snapshot()


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "index", "headers", "ctype", "cfg"), CASES
)  # noqa: E501
def test_bad_request_is_refused_in_envelope_and_changes_nothing(
    staff_client, seeded, settings, method, path, body, status, code, index, headers, ctype, cfg
):
    for name, value in cfg.items():
        setattr(settings, name, value)
    kwargs: dict[str, Any] = {"headers": headers}
    if body is not None:
        kwargs.update(data=body, content_type=ctype or "application/json")
    response = staff_client.generic(method.upper(), f"{URL}{path}", **kwargs)
    assert response.status_code == status, response.content[:500]
    payload = response.json()
    assert set(payload) == {"success", "error"} and payload["success"] is False
    assert set(payload["error"]) == {"code", "message", "details"}
    assert payload["error"]["code"] == code, payload
    assert isinstance(payload["error"]["message"], str) and payload["error"]["message"]
    assert isinstance(payload["error"]["details"], dict)
    if index is not None:
        assert payload["error"]["details"]["index"] == index
    if code == "validation_error":
        fields = payload["error"]["details"]["fields"]
        assert fields and all(
            isinstance(name, str) and messages and all(isinstance(m, str) for m in messages)
            for name, messages in fields.items()
        ), payload
    assert store_snapshot() == seeded


def test_cases_cover_every_reserved_word():
    ids = {param.id for param in CASES}
    for word in services.RESERVED_KEYS:
        assert f"reserved-cas-{word}" in ids


@pytest.mark.parametrize("word", sorted(services.RESERVED_KEYS))
def test_reserved_word_in_path_is_never_stored(staff_client, seeded, word):
    """PUT /{word} is either refused as a key or reaches that word's own route; never a 500."""
    response = staff_client.put(f"{URL}/{word}", {"value": 1}, format="json")
    assert 400 <= response.status_code < 500
    assert response.json()["success"] is False
    assert response.json()["error"]["code"] in {"invalid_key", "method_not_allowed", "not_found"}
    assert store_snapshot() == seeded


# --- fuzz: random bodies never get a 500, and a refused one changes nothing ----------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=8,
)
FIELD = st.one_of(JSON, st.sampled_from(["a", "b", "n", "keys", "bad key", "", "1", "set", "cas"]))
NAMES = [
    "key", "keys", "value", "metadata", "ttl", "expected_version", "expected", "new_value", "by",
    "source", "operations", "atomic", "op",
]  # fmt: skip
BODY = st.one_of(
    JSON,
    st.dictionaries(st.sampled_from(NAMES), FIELD, max_size=5),
    st.fixed_dictionaries(
        {
            "operations": st.lists(
                st.dictionaries(st.sampled_from(NAMES), FIELD, max_size=4), max_size=3
            )
        }
    ),
)
TARGETS = [("put", "/a"), ("put", "/a/metadata"), ("post", "/cas"), ("post", "/incr"),
           ("post", "/mget"), ("post", "/bulk")]  # fmt: skip


@hypothesis_settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(target=st.sampled_from(TARGETS), body=BODY)
def test_random_bodies_never_get_a_500(staff_client, seeded, target, body):
    method, path = target
    before = store_snapshot()
    response = staff_client.generic(
        method.upper(), f"{URL}{path}", data=json.dumps(body), content_type="application/json"
    )
    assert response.status_code < 500, (target, body, response.content[:300])
    payload = response.json()
    if response.status_code >= 400:
        assert payload["success"] is False and payload["error"]["code"], payload
        assert store_snapshot() == before, (target, body)
    else:
        assert payload["success"] is True
