"""Who may read and write which keys: the rules, and the API applying them everywhere."""

import pytest
from django.contrib.auth.models import AnonymousUser, Group, User

from state import access, selectors, services
from state.models import AccessRule, StateEntry

URL = "/api/v1/state"

READABLE_BY_ALICE = [
    "user:alice",
    "user:alice:x",
    "user:alice:x:y",
    "session:alice",
    "session:alice:tab1",
    "global:motd",
    "market:1:odds",
    "feature_flag:dark",
]
HIDDEN_FROM_ALICE = [
    "user:alicex",
    "user:alic",
    "user:bob",
    "user:bob:alice",
    "session:alicex",
    "USER:alice",
    "User:alice:x",
    "GLOBAL:motd",
    "Market:1",
    "globalx",
    "team:x",
    "reports:q1",
    "secret",
    "alice",
]


def _seed(keys) -> None:
    for key in keys:
        services.state_set(key=key, value={"k": key})


# --- the rules ----------------------------------------------------------------------------


@pytest.mark.parametrize("key", READABLE_BY_ALICE)
def test_can_read_allows_own_and_public_keys(user, key):
    assert access.can_read(user, key)
    assert not access.can_write(user, key)


@pytest.mark.parametrize("key", HIDDEN_FROM_ALICE)
def test_can_read_refuses_other_keys(user, key):
    assert not access.can_read(user, key)


def test_staff_read_and_write_everything(staff_user):
    for key in HIDDEN_FROM_ALICE:
        assert access.can_read(staff_user, key) and access.can_write(staff_user, key)
    assert access.readable_filter(staff_user) is None


def test_anonymous_may_do_nothing(db):
    anon = AnonymousUser()
    assert not access.can_read(anon, "global:x")
    assert not access.can_write(anon, "global:x")
    assert not access.can_read_prefix(anon, "global:")


def test_group_rules_grant_read_and_write_by_prefix(writer_user):
    assert access.can_write(writer_user, "team:a") and access.can_read(writer_user, "team:a")
    assert access.can_read(writer_user, "reports:q1")
    assert not access.can_write(writer_user, "reports:q1")
    assert not access.can_write(writer_user, "teamx")
    assert not access.can_write(writer_user, "Team:a")
    assert not access.can_read(writer_user, "teams:a")


def test_group_rule_applies_only_to_members(writer_user, user):
    assert not access.can_read(user, "team:a")
    assert not access.can_write(user, "team:a")


def test_readable_filter_selects_exactly_what_can_read_allows(user):
    _seed(READABLE_BY_ALICE + HIDDEN_FROM_ALICE)

    listed = set(
        StateEntry.objects.filter(access.readable_filter(user)).values_list("key", flat=True)
    )
    assert listed == set(READABLE_BY_ALICE)


@pytest.mark.parametrize(
    ("prefix", "allowed"),
    [
        ("global:", True),
        ("global:x", True),
        ("market:", True),
        ("user:alice:", True),
        ("user:alice:cart", True),
        ("session:alice:", True),
        ("reports:", False),  # alice is not in the team group
        ("", False),
        ("user:", False),
        # The owner may watch their namespace root; the stream still checks each key, so
        # user:alicex (under this prefix) never reaches alice.
        ("user:alice", True),
        ("user:alic", False),
        ("user:ali", False),
        ("glob", False),
        ("GLOBAL:", False),
    ],
)
def test_can_read_prefix_only_when_every_key_under_it_is_readable(user, prefix, allowed):
    assert access.can_read_prefix(user, prefix) is allowed


def test_can_read_prefix_covers_group_read_rules(writer_user):
    assert access.can_read_prefix(writer_user, "reports:")
    assert access.can_read_prefix(writer_user, "team:a:")
    assert not access.can_read_prefix(writer_user, "rep")


def test_keys_listing_shows_only_readable_keys(user, user_client):
    _seed(READABLE_BY_ALICE + HIDDEN_FROM_ALICE)
    body = user_client.get(f"{URL}/keys").json()["data"]
    assert body["keys"] == sorted(READABLE_BY_ALICE)
    assert body["total"] == len(READABLE_BY_ALICE)


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("user:", ["user:alice", "user:alice:x", "user:alice:x:y"]),
        ("user:alice", ["user:alice", "user:alice:x", "user:alice:x:y"]),
        ("USER:", []),
        ("global", ["global:motd"]),
        ("secret", []),
    ],
)
def test_keys_listing_with_prefix_shows_only_readable_keys(user, user_client, prefix, expected):
    _seed(READABLE_BY_ALICE + HIDDEN_FROM_ALICE)
    body = user_client.get(f"{URL}/keys", {"prefix": prefix}).json()["data"]
    assert body["keys"] == expected
    assert body["total"] == len(expected)


def test_keys_prefix_is_case_sensitive_for_staff(staff_client):
    _seed(["a:1", "A:2", "a:3", "ab"])
    body = staff_client.get(f"{URL}/keys", {"prefix": "a:"}).json()["data"]
    assert body["keys"] == ["a:1", "a:3"]
    assert selectors.keys_list(prefix="A").items == ["A:2"]


def test_entries_listing_shows_only_readable_entries(user, user_client):
    _seed(READABLE_BY_ALICE + HIDDEN_FROM_ALICE)
    body = user_client.get(f"{URL}/entries").json()["data"]
    assert [e["key"] for e in body["entries"]] == sorted(READABLE_BY_ALICE)
    assert body["total"] == len(READABLE_BY_ALICE)


def test_stats_count_only_readable_keys(user, user_client):
    _seed(READABLE_BY_ALICE + HIDDEN_FROM_ALICE)
    data = user_client.get(f"{URL}/stats").json()["data"]
    assert data["total_keys"] == len(READABLE_BY_ALICE)
    assert {row["key"] for row in data["hot_keys"]} <= set(READABLE_BY_ALICE)


# --- the API applying them ----------------------------------------------------------------


@pytest.mark.parametrize("key", READABLE_BY_ALICE)
def test_user_reads_own_and_public_keys_over_api(user, user_client, key):
    _seed([key])
    response = user_client.get(f"{URL}/{key}")
    assert response.status_code == 200, response.json()
    assert response.json()["data"]["value"] == {"k": key}
    assert user_client.get(f"{URL}/{key}/metadata").status_code == 200


@pytest.mark.parametrize("key", HIDDEN_FROM_ALICE)
def test_user_cannot_read_others_keys_over_api(user, user_client, key):
    _seed([key])
    for response in (
        user_client.get(f"{URL}/{key}"),
        user_client.get(f"{URL}/{key}/metadata"),
        user_client.post(f"{URL}/mget", {"keys": ["global:x", key]}, format="json"),
    ):
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "permission_denied"


def test_forbidden_read_of_absent_key_is_403_not_404(user_client):
    """Whether a hidden key exists must not leak through the status code."""
    response = user_client.get(f"{URL}/secret")
    assert response.status_code == 403


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("put", "/user:alice", {"value": 1}),
        ("put", "/global:x", {"value": 1}),
        ("delete", "/user:alice", None),
        ("put", "/user:alice/metadata", {"metadata": {}}),
        ("post", "/cas", {"key": "user:alice", "expected": None, "new_value": 1}),
        ("post", "/incr", {"key": "user:alice"}),
        ("post", "/bulk", {"operations": [{"op": "set", "key": "user:alice", "value": 1}]}),
    ],
)
def test_non_staff_user_cannot_write(user, user_client, method, path, body):
    _seed(["user:alice"])
    before = StateEntry.objects.get(key="user:alice").version
    response = getattr(user_client, method)(f"{URL}{path}", body, format="json")
    assert response.status_code == 403, response.json()
    assert response.json()["error"]["code"] == "permission_denied"
    assert StateEntry.objects.get(key="user:alice").version == before


def test_history_is_staff_only(user, user_client, writer_client):
    _seed(["user:alice", "team:a"])
    assert user_client.get(f"{URL}/user:alice/history").status_code == 403
    assert writer_client.get(f"{URL}/team:a/history").status_code == 403


def test_writer_group_may_write_under_its_prefix(writer_client):
    assert writer_client.put(f"{URL}/team:a", {"value": 1}, format="json").status_code == 201
    assert writer_client.post(f"{URL}/incr", {"key": "team:n"}, format="json").status_code == 200
    cas = {"key": "team:a", "expected": 1, "new_value": 2}
    assert writer_client.post(f"{URL}/cas", cas, format="json").status_code == 200
    meta = {"metadata": {"m": "1"}}
    assert writer_client.put(f"{URL}/team:a/metadata", meta, format="json").status_code == 200
    bulk = {"operations": [{"op": "set", "key": "team:b", "value": 1}]}
    assert writer_client.post(f"{URL}/bulk", bulk, format="json").status_code == 200
    assert writer_client.get(f"{URL}/team:a").json()["data"]["value"] == 2
    assert writer_client.delete(f"{URL}/team:a").status_code == 200


@pytest.mark.parametrize("key", ["reports:q1", "teamx", "global:x", "user:bob", "other"])
def test_writer_group_cannot_write_outside_its_prefix(writer_client, key):
    response = writer_client.put(f"{URL}/{key}", {"value": 1}, format="json")
    assert response.status_code == 403
    assert selectors.entry_get(key=key) is None


def test_writer_bulk_with_one_forbidden_key_applies_nothing(writer_client):
    bulk = {
        "operations": [
            {"op": "set", "key": "team:a", "value": 1},
            {"op": "set", "key": "other", "value": 1},
        ],
        "atomic": False,
    }
    response = writer_client.post(f"{URL}/bulk", bulk, format="json")
    assert response.status_code == 403
    assert response.json()["error"]["details"]["index"] == 1
    assert selectors.entry_get(key="team:a") is None


def test_writer_reads_granted_prefixes(writer_client):
    _seed(["reports:q1", "team:a", "secret"])
    assert writer_client.get(f"{URL}/reports:q1").status_code == 200
    assert writer_client.get(f"{URL}/team:a").status_code == 200
    assert writer_client.get(f"{URL}/secret").status_code == 403
    keys = writer_client.get(f"{URL}/keys").json()["data"]["keys"]
    assert keys == ["reports:q1", "team:a"]


def test_new_group_rule_takes_effect_for_new_requests(user, user_client):
    _seed(["ops:x"])
    assert user_client.get(f"{URL}/ops:x").status_code == 403
    group = Group.objects.create(name="ops")
    AccessRule.objects.create(group=group, prefix="ops:", access=AccessRule.Access.READ)
    User.objects.get(pk=user.pk).groups.add(group)
    assert user_client.get(f"{URL}/ops:x").status_code == 200
