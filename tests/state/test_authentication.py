"""Token authentication: both keywords, and how the per-process token cache forgets."""

import time

import pytest
from django.contrib.auth.models import Group, User
from rest_framework.authtoken.models import Token

from state.models import AccessRule

KEY = "/api/v1/state/team:plan"


def read(client) -> int:
    return client.get("/api/v1/state/stats").status_code


@pytest.mark.parametrize("keyword", ["Bearer", "Token", "bearer"])
def test_both_keywords_authenticate(client, user, keyword):
    token = Token.objects.create(user=user)
    response = client.get("/api/v1/state/stats", HTTP_AUTHORIZATION=f"{keyword} {token.key}")
    assert response.status_code == 200


@pytest.mark.parametrize("header", ["Bearer", "Bearer a b", "Bearer nope", "Basic eA=="])
def test_bad_credentials_are_401_in_the_envelope(client, db, header):
    response = client.get("/api/v1/state/stats", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"


def test_deleted_token_stops_working_at_once(user_client, user):
    assert read(user_client) == 200
    Token.objects.filter(user=user).get().delete()
    assert read(user_client) == 401


def test_deactivated_user_stops_working_at_once(user_client, user):
    assert read(user_client) == 200
    user.is_active = False
    user.save()
    assert read(user_client) == 401


def test_change_without_signals_takes_effect_within_the_cache_time(user_client, user, settings):
    settings.STATE_TOKEN_CACHE_SECS = 0.2
    assert read(user_client) == 200
    User.objects.filter(pk=user.pk).update(is_active=False)  # sends no signal
    time.sleep(0.3)
    assert read(user_client) == 401


def test_new_membership_and_rule_changes_clear_the_cached_rules_at_once(user_client, user):
    body = {"value": 1}
    assert user_client.put(KEY, body, format="json").status_code == 403
    group = Group.objects.create(name="planners")
    rule = AccessRule.objects.create(group=group, prefix="team:", access=AccessRule.Access.WRITE)
    user.groups.add(group)  # m2m change: no user save
    assert user_client.put(KEY, body, format="json").status_code == 201
    rule.delete()
    assert user_client.put(KEY, body, format="json").status_code == 403


def test_a_cached_token_reads_no_rules_from_the_database(
    user_client, writer_client, django_assert_num_queries
):
    """Group rules come with the cached user: a refused read costs no query, a GET one."""
    for client, key, status, queries in ((user_client, "reports:x", 403, 0),
                                         (writer_client, "team:x", 404, 1)):  # fmt: skip
        assert client.get(f"/api/v1/state/{key}").status_code == status
        with django_assert_num_queries(queries):
            assert client.get(f"/api/v1/state/{key}").status_code == status
