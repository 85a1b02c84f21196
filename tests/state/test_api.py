"""The REST API: envelope, status codes, headers, pagination; each action runs its service."""

import re
from datetime import UTC, datetime

import pytest
import yaml
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from state import selectors, services
from state.models import StateEntry, StateEvent

URL = "/api/v1/state"
ENTRY_FIELDS = {
    "key", "value", "version", "revision", "created_at", "updated_at", "expires_at", "source",
}  # fmt: skip
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)$")


def data(response, status: int = 200):
    """Assert the success envelope and status; return its data."""
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"success", "data"} and body["success"] is True
    return body["data"]


def error(response, status: int, code: str) -> dict:
    """Assert the error envelope, status and code; return the error."""
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"success", "error"} and body["success"] is False
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)
    return body["error"]


def put(client, key, body, **headers):
    return client.put(f"{URL}/{key}", body, format="json", headers=headers)


def post(client, action, body):
    return client.post(f"{URL}/{action}", body, format="json")


# --- GET / PUT / DELETE -------------------------------------------------------------------


def test_put_creates_with_201_and_returns_entry_with_metadata(staff_client):
    response = put(staff_client, "a", {"value": {"x": [1]}, "metadata": {"m": "1"}, "source": "s"})
    entry = data(response, 201)
    assert set(entry) == ENTRY_FIELDS | {"metadata"}
    assert (entry["key"], entry["value"], entry["version"], entry["revision"]) == (
        "a",
        {"x": [1]},
        1,
        1,
    )
    assert (entry["metadata"], entry["source"], entry["expires_at"]) == ({"m": "1"}, "s", None)
    assert ISO_UTC.match(entry["created_at"]) and ISO_UTC.match(entry["updated_at"])
    assert response["ETag"] == '"1"'
    event = StateEvent.objects.get()
    assert (event.op, event.actor, event.source) == ("set", "staffer", "s")


def test_put_updates_with_200_and_bumps_version(staff_client):
    put(staff_client, "a", {"value": 1})
    response = put(staff_client, "a", {"value": 2})
    assert data(response)["version"] == 2
    assert response["ETag"] == '"2"'


def test_put_without_source_records_api(staff_client):
    put(staff_client, "a", {"value": 1})
    assert StateEntry.objects.get(key="a").source == "api"


def test_put_ttl_sets_expires_at(staff_client, time_machine):
    time_machine.move_to(datetime(2030, 1, 1, tzinfo=UTC), tick=False)
    entry = data(put(staff_client, "a", {"value": 1, "ttl": 90}), 201)
    assert entry["expires_at"] in ("2030-01-01T00:01:30Z", "2030-01-01T00:01:30+00:00")
    time_machine.shift(90)
    error(staff_client.get(f"{URL}/a"), 404, "not_found")


def test_put_with_matching_body_key_is_accepted(staff_client):
    data(put(staff_client, "a", {"key": "a", "value": 1}), 201)


def test_put_expected_version_conflict_reports_current_version(staff_client):
    put(staff_client, "a", {"value": 1})
    err = error(
        put(staff_client, "a", {"value": 2, "expected_version": 5}), 409, "version_conflict"
    )
    assert err["details"]["current_version"] == 1
    data(put(staff_client, "a", {"value": 2, "expected_version": 1}))


def test_put_expected_version_0_creates_only(staff_client):
    data(put(staff_client, "a", {"value": 1, "expected_version": 0}), 201)
    err = error(
        put(staff_client, "a", {"value": 1, "expected_version": 0}), 409, "version_conflict"
    )
    assert err["details"]["current_version"] == 1


def test_put_if_match_is_an_optimistic_lock(staff_client):
    put(staff_client, "a", {"value": 1})
    err = error(
        put(staff_client, "a", {"value": 2}, **{"If-Match": '"7"'}), 409, "version_conflict"
    )
    assert err["details"]["current_version"] == 1
    assert data(put(staff_client, "a", {"value": 2}, **{"If-Match": '"1"'}))["version"] == 2
    assert data(put(staff_client, "a", {"value": 3}, **{"If-Match": 'W/"2"'}))["version"] == 3


def test_get_returns_entry_and_etag(staff_client):
    put(staff_client, "a", {"value": [1, "two"], "metadata": {"m": "1"}})
    response = staff_client.get(f"{URL}/a")
    entry = data(response)
    assert set(entry) == ENTRY_FIELDS
    assert entry["value"] == [1, "two"]
    assert response["ETag"] == '"1"'


def test_get_include_metadata(staff_client):
    put(staff_client, "a", {"value": 1, "metadata": {"m": "1"}})
    entry = data(staff_client.get(f"{URL}/a", {"include_metadata": "true"}))
    assert entry["metadata"] == {"m": "1"}


def test_get_if_none_match_gives_304_until_the_version_changes(staff_client):
    put(staff_client, "a", {"value": 1})
    response = staff_client.get(f"{URL}/a", headers={"If-None-Match": '"1"'})
    assert response.status_code == 304
    assert response["ETag"] == '"1"'
    assert not response.content
    put(staff_client, "a", {"value": 2})
    response = staff_client.get(f"{URL}/a", headers={"If-None-Match": '"1"'})
    assert data(response)["value"] == 2 and response["ETag"] == '"2"'


@pytest.mark.parametrize(
    ("header", "status"),
    [('W/"2"', 304), ('"1", "2"', 304), ("*", 304), ('"1"', 200), ('W/"1", "3"', 200), ("2", 200)],
)
def test_get_if_none_match_compares_weakly_and_takes_lists(staff_client, header, status):
    put(staff_client, "a", {"value": 1})
    put(staff_client, "a", {"value": 2})
    response = staff_client.get(f"{URL}/a", headers={"If-None-Match": header})
    assert response.status_code == status
    assert response["ETag"] == '"2"'


def test_get_absent_key_is_404(staff_client):
    err = error(staff_client.get(f"{URL}/nope"), 404, "not_found")
    assert err["details"] == {"key": "nope"}


def test_delete_returns_key_and_deleted(staff_client):
    put(staff_client, "a", {"value": 1})
    assert data(staff_client.delete(f"{URL}/a")) == {"key": "a", "deleted": True}
    error(staff_client.get(f"{URL}/a"), 404, "not_found")
    assert StateEvent.objects.order_by("-revision").first().op == "delete"


def test_delete_absent_key_is_404(staff_client):
    error(staff_client.delete(f"{URL}/a"), 404, "not_found")


def test_delete_honours_expected_version_and_if_match(staff_client):
    put(staff_client, "a", {"value": 1})
    err = error(staff_client.delete(f"{URL}/a?expected_version=3"), 409, "version_conflict")
    assert err["details"]["current_version"] == 1
    error(staff_client.delete(f"{URL}/a", headers={"If-Match": '"2"'}), 409, "version_conflict")
    data(staff_client.delete(f"{URL}/a", headers={"If-Match": '"1"'}))


def test_recreated_key_starts_at_version_1(staff_client):
    put(staff_client, "a", {"value": 1})
    put(staff_client, "a", {"value": 2})
    staff_client.delete(f"{URL}/a")
    assert data(put(staff_client, "a", {"value": 3}), 201)["version"] == 1


# --- metadata and history -----------------------------------------------------------------


def test_metadata_get_and_put(staff_client):
    put(staff_client, "a", {"value": 1, "metadata": {"old": "x"}})
    assert data(staff_client.get(f"{URL}/a/metadata")) == {"old": "x"}
    response = staff_client.put(f"{URL}/a/metadata", {"metadata": {"new": "y"}}, format="json")
    assert data(response) == {"new": "y"}
    entry = data(staff_client.get(f"{URL}/a", {"include_metadata": "true"}))
    assert (entry["metadata"], entry["version"], entry["revision"]) == ({"new": "y"}, 1, 2)
    assert selectors.store_revision() == 2


def test_metadata_of_absent_key_is_404(staff_client):
    error(staff_client.get(f"{URL}/a/metadata"), 404, "not_found")
    response = staff_client.put(f"{URL}/a/metadata", {"metadata": {}}, format="json")
    error(response, 404, "not_found")


def test_history_lists_changes_newest_first_in_pages(staff_client):
    for value in range(5):
        put(staff_client, "a", {"value": value})
    put(staff_client, "b", {"value": 1})
    staff_client.delete(f"{URL}/a")
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = data(staff_client.get(f"{URL}/a/history", params))
        assert page["total"] == 6
        seen += page["events"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert [e["revision"] for e in seen] == [7, 5, 4, 3, 2, 1]
    assert [e["op"] for e in seen] == ["delete"] + ["set"] * 5
    assert seen[1] == {
        "revision": 5, "key": "a", "op": "set", "old_value": 3, "new_value": 4, "version": 5,
        "source": "api", "actor": "staffer", "timestamp": seen[1]["timestamp"],
    }  # fmt: skip


def test_history_of_unknown_key_is_empty(staff_client):
    assert data(staff_client.get(f"{URL}/nope/history")) == {
        "events": [], "total": 0, "next_cursor": None,
    }  # fmt: skip


# --- listing ------------------------------------------------------------------------------


def _seed(n: int, prefix: str = "k:") -> list[str]:
    keys = [f"{prefix}{i:03d}" for i in range(n)]
    for key in keys:
        services.state_set(key=key, value=key)
    return keys


def _all_pages(client, action: str, **params) -> tuple[list[dict], int]:
    pages, cursor = [], None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        page = data(client.get(f"{URL}/{action}", query))
        pages.append(page)
        cursor = page["next_cursor"]
        if cursor is None:
            return pages, len(pages)


def test_keys_pages_through_every_key_in_order(staff_client):
    keys = _seed(7)
    services.state_set(key="other", value=1)
    pages, count = _all_pages(staff_client, "keys", prefix="k:", limit=3)
    assert count == 3
    assert [page["keys"] for page in pages] == [keys[0:3], keys[3:6], keys[6:7]]
    assert {page["total"] for page in pages} == {7}
    assert pages[-1]["next_cursor"] is None


def test_keys_exact_page_ends_with_null_cursor(staff_client):
    _seed(4)
    pages, count = _all_pages(staff_client, "keys", limit=2)
    assert count == 2 and [len(p["keys"]) for p in pages] == [2, 2]


def test_keys_default_lists_everything(staff_client):
    keys = _seed(5)
    assert data(staff_client.get(f"{URL}/keys")) == {"keys": keys, "total": 5, "next_cursor": None}


def test_keys_default_limit_comes_from_settings(staff_client, settings):
    settings.STATE_LIST_DEFAULT_LIMIT = 2
    _seed(3)
    page = data(staff_client.get(f"{URL}/keys"))
    assert len(page["keys"]) == 2 and page["next_cursor"]


def test_keys_omit_expired_keys(staff_client, time_machine):
    time_machine.move_to(datetime(2030, 1, 1, tzinfo=UTC), tick=False)
    services.state_set(key="a", value=1, ttl=1)
    services.state_set(key="b", value=1)
    time_machine.shift(1)
    assert data(staff_client.get(f"{URL}/keys"))["keys"] == ["b"]
    assert data(staff_client.get(f"{URL}/entries"))["total"] == 1


def test_keys_listing_survives_deletes_between_pages(staff_client):
    keys = _seed(6)
    page = data(staff_client.get(f"{URL}/keys", {"limit": 3}))
    services.state_delete(key=keys[2])
    services.state_delete(key=keys[3])
    rest = data(staff_client.get(f"{URL}/keys", {"limit": 3, "cursor": page["next_cursor"]}))
    assert rest["keys"] == keys[4:]


def test_entries_pages_with_revision(staff_client):
    keys = _seed(5)
    pages, count = _all_pages(staff_client, "entries", limit=2)
    assert count == 3
    entries = [e for page in pages for e in page["entries"]]
    assert [e["key"] for e in entries] == keys
    assert all(set(e) == ENTRY_FIELDS for e in entries)
    assert {page["revision"] for page in pages} == {5}
    assert {page["total"] for page in pages} == {5}


def test_entries_revision_is_the_store_revision_read_before_the_page(staff_client):
    _seed(2)
    services.state_set_metadata(key="k:000", metadata={"a": "b"})
    page = data(staff_client.get(f"{URL}/entries", {"include_metadata": "true"}))
    assert page["revision"] == 3
    assert page["entries"][0]["metadata"] == {"a": "b"}


# --- mget, cas, incr, bulk ----------------------------------------------------------------


def test_mget_returns_entries_or_null_in_order(staff_client):
    services.state_set(key="a", value=1)
    services.state_set(key="b", value=[2])
    body = data(post(staff_client, "mget", {"keys": ["b", "missing", "a"]}))
    assert list(body["entries"]) == ["b", "missing", "a"]
    assert body["entries"]["missing"] is None
    assert body["entries"]["b"]["value"] == [2] and set(body["entries"]["a"]) == ENTRY_FIELDS


def test_mget_refuses_too_many_keys(staff_client, settings):
    settings.STATE_MAX_MGET_KEYS = 2
    error(post(staff_client, "mget", {"keys": ["a", "b", "c"]}), 400, "validation_error")


def test_cas_swaps_by_value(staff_client):
    services.state_set(key="a", value={"n": 1})
    body = {"key": "a", "expected": {"n": 1.0}, "new_value": {"n": 2}}
    assert data(post(staff_client, "cas", body)) == {"swapped": True, "version": 2}
    assert selectors.entry_get(key="a").value == {"n": 2}


def test_cas_mismatch_is_409_with_current(staff_client):
    services.state_set(key="a", value=True)
    err = error(
        post(staff_client, "cas", {"key": "a", "expected": 1, "new_value": 2}), 409, "cas_failed"
    )
    assert err["details"] == {"current": True, "version": 1}


def test_cas_null_expected_creates_and_null_new_value_deletes(staff_client):
    assert data(post(staff_client, "cas", {"key": "a", "expected": None, "new_value": 1})) == {
        "swapped": True, "version": 1,
    }  # fmt: skip
    error(
        post(staff_client, "cas", {"key": "a", "expected": None, "new_value": 1}), 409, "cas_failed"
    )
    assert data(post(staff_client, "cas", {"key": "a", "expected": 1, "new_value": None})) == {
        "swapped": True, "version": 0,
    }  # fmt: skip
    assert selectors.entry_get(key="a") is None


def test_cas_by_version(staff_client):
    services.state_set(key="a", value=1)
    body = {"key": "a", "expected_version": 1, "new_value": 5}
    assert data(post(staff_client, "cas", body))["version"] == 2
    err = error(post(staff_client, "cas", body), 409, "cas_failed")
    assert err["details"] == {"current": 5, "version": 2}


def test_cas_needs_exactly_one_expectation(staff_client):
    error(post(staff_client, "cas", {"key": "a", "new_value": 1}), 400, "validation_error")
    body = {"key": "a", "expected": 1, "expected_version": 1, "new_value": 1}
    error(post(staff_client, "cas", body), 400, "validation_error")


def test_incr_counts(staff_client):
    assert data(post(staff_client, "incr", {"key": "n"})) == {"value": 1, "version": 1}
    assert data(post(staff_client, "incr", {"key": "n", "by": 41})) == {"value": 42, "version": 2}
    assert data(post(staff_client, "incr", {"key": "n", "by": -50})) == {"value": -8, "version": 3}


def test_incr_ttl_applies_on_create(staff_client):
    post(staff_client, "incr", {"key": "n", "ttl": 60})
    assert StateEntry.objects.get(key="n").expires_at is not None


def test_incr_non_integer_is_409(staff_client):
    services.state_set(key="n", value="one")
    err = error(post(staff_client, "incr", {"key": "n"}), 409, "not_a_number")
    assert err["details"]["current"] == "one"


def test_bulk_atomic_applies_all(staff_client):
    services.state_set(key="old", value=1)
    body = {
        "operations": [
            {"op": "set", "key": "a", "value": 1, "metadata": {"m": "1"}, "ttl": 60},
            {"op": "cas", "key": "a", "expected": 1, "new_value": 2},
            {"op": "cas", "key": "c", "expected_version": 0, "new_value": 3},
            {"op": "delete", "key": "old", "expected_version": 1},
        ]
    }
    result = data(post(staff_client, "bulk", body))
    assert result == {
        "atomic": True,
        "results": [
            {"index": 0, "op": "set", "key": "a", "ok": True, "version": 1},
            {"index": 1, "op": "cas", "key": "a", "ok": True, "version": 2},
            {"index": 2, "op": "cas", "key": "c", "ok": True, "version": 1},
            {"index": 3, "op": "delete", "key": "old", "ok": True, "version": 0},
        ],
    }
    assert StateEntry.objects.get(key="a").metadata == {"m": "1"}
    assert selectors.store_revision() == 5


def test_bulk_atomic_failure_is_409_with_index_and_applies_nothing(staff_client):
    services.state_set(key="a", value=1)
    body = {
        "operations": [
            {"op": "set", "key": "b", "value": 1},
            {"op": "cas", "key": "a", "expected": 2, "new_value": 3},
        ]
    }
    err = error(post(staff_client, "bulk", body), 409, "cas_failed")
    assert err["details"]["index"] == 1
    assert selectors.entry_get(key="b") is None
    assert selectors.store_revision() == 1


def test_bulk_non_atomic_reports_each_operation(staff_client):
    services.state_set(key="a", value=1)
    body = {
        "atomic": False,
        "operations": [
            {"op": "set", "key": "b", "value": 1},
            {"op": "set", "key": "a", "value": 9, "expected_version": 4},
            {"op": "delete", "key": "b"},
        ],
    }
    result = data(post(staff_client, "bulk", body))
    assert result["atomic"] is False
    ok0, failed, ok2 = result["results"]
    assert ok0 == {"index": 0, "op": "set", "key": "b", "ok": True, "version": 1}
    assert ok2 == {"index": 2, "op": "delete", "key": "b", "ok": True, "version": 0}
    assert failed["ok"] is False and failed["index"] == 1
    assert failed["error"]["code"] == "version_conflict"
    assert failed["error"]["details"]["current_version"] == 1
    assert selectors.entry_get(key="a").value == 1


# --- stats, auth, health, schema ----------------------------------------------------------


def test_stats_reports_every_field(staff_client, time_machine):
    time_machine.move_to(datetime(2030, 1, 1, tzinfo=UTC), tick=False)
    services.state_set(key="a", value="xx", metadata={"m": "1"})
    services.state_set(key="b", value=1, ttl=60)
    services.state_set(key="b", value=22, ttl=60)
    services.state_set(key="gone", value=1, ttl=1)
    time_machine.shift(1)
    stats = data(staff_client.get(f"{URL}/stats"))
    assert set(stats) >= {
        "total_keys", "total_size", "version", "metadata_keys", "expiring_keys", "snapshots",
        "last_snapshot_at", "event_log_size", "hot_keys",
    }  # fmt: skip
    assert (stats["total_keys"], stats["total_size"], stats["version"]) == (2, 6, 4)
    assert (stats["metadata_keys"], stats["expiring_keys"], stats["event_log_size"]) == (1, 1, 4)
    assert stats["hot_keys"] == []  # writes through the services are not API accesses
    assert (stats["snapshots"], stats["last_snapshot_at"]) == (0, None)


ENDPOINTS = [
    ("get", "/a", None),
    ("put", "/a", {"value": 1}),
    ("delete", "/a", None),
    ("get", "/a/metadata", None),
    ("put", "/a/metadata", {"metadata": {}}),
    ("get", "/a/history", None),
    ("get", "/keys", None),
    ("get", "/entries", None),
    ("post", "/mget", {"keys": ["a"]}),
    ("post", "/cas", {"key": "a", "expected": None, "new_value": 1}),
    ("post", "/incr", {"key": "a"}),
    ("post", "/bulk", {"operations": [{"op": "set", "key": "a", "value": 1}]}),
    ("get", "/stats", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_anonymous_gets_401_everywhere(anon_client, method, path, body):
    services.state_set(key="a", value=0)
    response = getattr(anon_client, method)(f"{URL}{path}", body, format="json")
    error(response, 401, "unauthenticated")
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert selectors.entry_get(key="a").version == 1


@pytest.mark.parametrize("header", ["Bearer nope", "Token nope", "Bearer", "Bearer a b"])
def test_bad_token_gets_401(db, header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    error(client.get(f"{URL}/keys"), 401, "unauthenticated")


def test_token_keyword_is_accepted_too(staff_user):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=staff_user).key}")
    data(client.get(f"{URL}/keys"))


def test_session_login_works_for_browsers(staff_user):
    client = APIClient()
    client.force_login(staff_user)
    data(client.get(f"{URL}/keys"))


def test_unknown_method_gets_405_in_envelope(staff_client):
    error(staff_client.patch(f"{URL}/a", {"value": 1}, format="json"), 405, "method_not_allowed")


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz(db, client):
    response = client.get("/readyz")
    assert response.status_code == 200, response.json()
    assert response.json()["checks"] == {"database": "ok", "channel_layer": "ok"}


def test_schema_describes_every_endpoint(client):
    response = client.get("/api/v1/schema/")
    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    paths = schema["paths"]
    for path, methods in {
        "/api/v1/state/{key}": {"get", "put", "delete"},
        "/api/v1/state/{key}/metadata": {"get", "put"},
        "/api/v1/state/{key}/history": {"get"},
        "/api/v1/state/keys": {"get"},
        "/api/v1/state/entries": {"get"},
        "/api/v1/state/mget": {"post"},
        "/api/v1/state/cas": {"post"},
        "/api/v1/state/incr": {"post"},
        "/api/v1/state/bulk": {"post"},
        "/api/v1/state/stats": {"get"},
    }.items():
        assert path in paths, sorted(paths)
        assert methods <= set(paths[path]), (path, set(paths[path]))
    put_op = paths["/api/v1/state/{key}"]["put"]
    assert "requestBody" in put_op and {"200", "201", "409", "413"} <= set(put_op["responses"])
    cas_schema = schema["components"]["schemas"]["CasInputRequest"]["properties"]
    assert {"key", "expected", "expected_version", "new_value", "ttl"} <= set(cas_schema)


def test_api_docs_page_is_served(client):
    assert client.get("/api/docs/").status_code == 200


# --- query counts -------------------------------------------------------------------------


def test_api_get_query_count(staff_client, django_assert_max_num_queries):
    services.state_set(key="a", value=1)
    staff_client.get(f"{URL}/a")  # warm: nothing is cached across requests anyway
    # token lookup (+ user join) and the entry
    with django_assert_max_num_queries(2):
        data(staff_client.get(f"{URL}/a"))
